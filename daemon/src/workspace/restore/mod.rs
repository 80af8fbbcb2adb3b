//! Restoring a snapshot, in place or into another directory.
//!
//! In place, a restore:
//! 1. brings the warm index up to date and compares the current tree with the snapshot's,
//!    skipping equal subtrees: only what differs is written, nothing unchanged is re-read;
//! 2. checkpoints the current state (trigger `pre-restore`) so the restore can be undone;
//! 3. stages every file to write as a temporary file in its own directory, checking each blob
//!    against its id — a corrupt blob stops the restore here, with the workspace unchanged;
//! 4. removes what the snapshot does not have (never ignored or excluded paths: they are not in
//!    either tree), renames the staged files over their targets and fixes directory modes.
//!
//! A restore never writes through a symlink: every directory on the way to a written path must
//! be a real directory inside the target.

mod apply;
pub(crate) mod durable;
mod journal;
mod to;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub(crate) use self::apply::tmp_name;
use self::apply::{Mode, Written, apply_plan};
pub use self::journal::{Journal, read_journal};
use self::journal::{remove_journal, write_journal};
pub(crate) use self::to::move_children;
use super::diff::{Change, DiffEntry, Differ, DirChanges, Side, lookup, normalise, validate_rel};
use super::rules::{abs, split_last};
use super::scan::{Looked, Stat};
use super::{Changes, SaveOptions, Workspace, now_ns};
use crate::error::{Error, Result};
use crate::store::catalog::{SnapshotRecord, Trigger};
use crate::store::{Entry, Kind, SnapshotId, Store};

/// What to restore, and how.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Only these paths (relative to the workspace); all when empty.
    pub paths: Vec<Vec<u8>>,
    /// Only report what would change.
    pub dry_run: bool,
    /// Write into this directory instead of the workspace (nothing there is deleted).
    pub to: Option<PathBuf>,
    /// Do not checkpoint the current state first (finishing an interrupted restore, whose
    /// checkpoint exists already).
    pub skip_checkpoint: bool,
    /// Roll `.git` back too, in place, when the workspace has one now (otherwise `.git` is
    /// left alone there: a restore must not rewind a living repository by surprise).
    pub include_git: bool,
    /// Restore into a `to` that holds files (checked by the engine, which refuses otherwise).
    pub force: bool,
}

/// What a restore did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreSummary {
    /// The snapshot restored.
    pub snapshot: SnapshotId,
    /// The checkpoint taken just before, for undo.
    pub pre_restore_snapshot: Option<SnapshotId>,
    /// Files and symlinks created.
    pub added: u64,
    /// Files and symlinks rewritten.
    pub modified: u64,
    /// Files and symlinks removed.
    pub deleted: u64,
    /// Files and symlinks already as in the snapshot.
    pub unchanged: u64,
    /// Paths that change (all for a dry run, else the first thousand), with how.
    pub changed_paths: Vec<(Vec<u8>, Change)>,
    /// How many paths change in all (also past the thousand).
    pub changed_total: u64,
}

/// Progress: (entries done, entries total, bytes done, bytes total).
pub type ProgressFn<'a> = dyn FnMut(u64, u64, u64, u64) + Send + 'a;

/// Entries of `root` under each of `paths` (all when empty) compared with `current`.
fn plan_for(
    store: &Store,
    current: Option<crate::store::Id>,
    snapshot: &SnapshotRecord,
    paths: &[Vec<u8>],
) -> Result<Vec<DiffEntry>> {
    let target = snapshot.root;
    let mut d = Differ::new(store, DirChanges::Report);
    if paths.is_empty() {
        d.trees(b"", current, Some(target))?;
        Ok(d.finish())
    } else {
        let mut seen = HashSet::new();
        for p in paths {
            validate_rel(p)?;
            let p = normalise(p);
            if !seen.insert(p.clone()) {
                continue;
            }
            let new: Option<Entry> = lookup(store, target, &p)?;
            let old: Option<Entry> = match current {
                Some(c) => lookup(store, c, &p)?,
                None => None,
            };
            if new.is_none() && old.is_none() {
                return Err(Error::PathNotInSnapshot {
                    path: String::from_utf8_lossy(&p).into_owned(),
                    snapshot: snapshot.hex_id(),
                    nearest: super::diff::nearest_path(store, target, &p),
                    // Filled in by `Workspace::restore`, which knows it.
                    workspace: String::new(),
                });
            }
            d.entries(&p, old.as_ref(), new.as_ref())?;
        }
        // Overlapping paths (`src` and `src/a`) list entries twice.
        let mut plan = d.finish();
        plan.sort_by(|a, b| a.path.cmp(&b.path));
        plan.dedup_by(|a, b| a.path == b.path);
        Ok(plan)
    }
}

/// The folders on the way to the plan's paths that are symlinks on disk.
fn symlinked_parents(root: &Path, plan: &[DiffEntry]) -> Vec<Vec<u8>> {
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut linked = Vec::new();
    for e in plan {
        let mut parent = split_last(&e.path).0;
        while !parent.is_empty() && seen.insert(parent) {
            if fs::symlink_metadata(abs(root, parent)).is_ok_and(|m| m.is_symlink()) {
                linked.push(parent.to_vec());
            }
            parent = split_last(parent).0;
        }
    }
    linked
}

fn summarise(
    snapshot: &SnapshotRecord,
    plan: &[DiffEntry],
    in_scope_files: u64,
    all_paths: bool,
) -> RestoreSummary {
    let mut s = RestoreSummary {
        snapshot: snapshot.id,
        ..Default::default()
    };
    for e in plan {
        let leaf = |side: &Option<Side>| side.as_ref().is_some_and(|s| s.kind != Kind::Dir);
        match e.change {
            Change::Added if leaf(&e.after) => s.added += 1,
            Change::Deleted if leaf(&e.before) => s.deleted += 1,
            Change::Modified if leaf(&e.after) => s.modified += 1,
            Change::TypeChanged => {
                if leaf(&e.after) {
                    s.modified += 1;
                } else if leaf(&e.before) {
                    s.deleted += 1;
                }
            }
            _ => {}
        }
        s.changed_total += 1;
        if all_paths || s.changed_paths.len() < 1000 {
            s.changed_paths.push((e.path.clone(), e.change));
        }
    }
    s.unchanged = in_scope_files.saturating_sub(s.added + s.modified);
    s
}

fn files_in(
    store: &Store,
    root: crate::store::Id,
    paths: &[Vec<u8>],
    snapshot: &SnapshotRecord,
) -> Result<u64> {
    if paths.is_empty() {
        return Ok(snapshot.files);
    }
    let mut n = 0;
    for p in paths {
        match lookup(store, root, &normalise(p))? {
            Some(e) if e.kind == Kind::Dir => {
                n += super::diff::diff(store, None, Some(e.id))?.len() as u64;
            }
            Some(_) => n += 1,
            None => {}
        }
    }
    Ok(n)
}

impl Workspace {
    /// Restores `snapshot`. In place, the current state is checkpointed first (unless nothing
    /// would change), so the restore can be undone.
    pub fn restore(
        &mut self,
        store: &Store,
        snapshot: &SnapshotRecord,
        opts: &RestoreOptions,
        changes: &Changes,
        progress: &mut ProgressFn<'_>,
    ) -> Result<RestoreSummary> {
        self.recovering(store, |ws| {
            ws.restore_or_fail(store, snapshot, opts, changes, progress)
        })
        .map_err(|e| match e {
            Error::PathNotInSnapshot {
                path,
                snapshot,
                nearest,
                workspace,
            } if workspace.is_empty() => Error::PathNotInSnapshot {
                path,
                snapshot,
                nearest,
                workspace: self.root.display().to_string(),
            },
            e => e,
        })
    }

    fn restore_or_fail(
        &mut self,
        store: &Store,
        snapshot: &SnapshotRecord,
        opts: &RestoreOptions,
        changes: &Changes,
        progress: &mut ProgressFn<'_>,
    ) -> Result<RestoreSummary> {
        if snapshot.workspace != self.record.id {
            return Err(Error::InvalidArgument(
                "that snapshot belongs to another workspace".into(),
            ));
        }
        for p in &opts.paths {
            validate_rel(p)?;
        }
        let in_scope = files_in(store, snapshot.root, &opts.paths, snapshot)?;
        if let Some(to) = &opts.to {
            return self.restore_to(store, snapshot, opts, to, in_scope, progress);
        }
        let batch = store.batch();
        let mut warnings = self.refresh(&batch, changes)?;
        let mut current = self.root_tree(&batch)?;
        let mut plan = plan_for(store, Some(current), snapshot, &opts.paths)?;
        // A folder just replaced by a symlink, whose events are still on the way, is a folder
        // to the index: looked at again, it is a link the plan removes, never writes through.
        let linked = symlinked_parents(&self.root, &plan);
        if !linked.is_empty() {
            warnings.extend(self.refresh(&batch, &Changes::Paths(linked))?);
            current = self.root_tree(&batch)?;
            plan = plan_for(store, Some(current), snapshot, &opts.paths)?;
        }
        // A living repository's `.git` is rolled back only when asked, and never removed by a
        // snapshot that holds none.
        if self.root.join(".git").exists()
            && (!opts.include_git || lookup(store, snapshot.root, b".git")?.is_none())
        {
            plan.retain(|e| !super::rules::in_git_dir(&e.path));
        }
        let mut summary = summarise(snapshot, &plan, in_scope, opts.dry_run);
        if opts.dry_run || plan.is_empty() {
            batch.commit_objects()?;
            self.persist_index(store)?;
            batch.finish()?;
            return Ok(summary);
        }
        if opts.skip_checkpoint {
            batch.commit_objects()?;
            self.persist_index(store)?;
            batch.finish()?;
        } else {
            let latest = store.cat.latest(self.record.id)?;
            let mut pre_opts = SaveOptions::new(Trigger::PreRestore, Changes::Paths(Vec::new()));
            pre_opts.message = format!("before restoring {}", snapshot.hex_id());
            let pre =
                self.record_snapshot(store, &batch, current, latest.as_ref(), &pre_opts, warnings)?;
            batch.finish()?;
            summary.pre_restore_snapshot = Some(pre.id);
        }
        tracing::info!(workspace = %self.root.display(), snapshot = %snapshot.hex_id(), changes = plan.len(), "restoring");
        let mut dirs: Vec<Vec<u8>> = plan
            .iter()
            .map(|e| split_last(&e.path).0.to_vec())
            .collect();
        dirs.sort();
        dirs.dedup();
        let journal = Journal {
            snapshot: snapshot.id,
            pre_restore: summary.pre_restore_snapshot,
            paths: opts.paths.clone(),
            dirs,
            include_git: opts.include_git,
        };
        write_journal(store, self.record.id, &journal)?;

        let mut written = HashMap::new();
        let mut touched = false;
        let applied = apply_plan(
            store,
            &self.root,
            &plan,
            Mode::InPlace,
            progress,
            &mut written,
            &mut touched,
        );
        if applied.is_err() && !touched {
            // Failed before changing anything: the workspace is as the checkpoint has it, and
            // left behind, the checkpoint would be `latest`, which a retried `restore latest`
            // would then restore instead of the snapshot asked for.
            self.forget_checkpoint(store, summary.pre_restore_snapshot.take());
        }
        // Whatever happened, bring the index back in line with the disk for the paths touched.
        let noted = self.note_restored(&plan, &written);
        let touched: Vec<Vec<u8>> = plan
            .iter()
            .map(|e| e.path.clone())
            .filter(|p| !noted.contains(p))
            .collect();
        // The index, and the baseline auto saves compare with, in line with the disk.
        let settled = self
            .current_tree(store, &Changes::Paths(touched))
            .map(|root| self.baseline = Some(root));
        // Ended, well or not: a failure is reported to the caller, and the pre-restore
        // checkpoint is the way back. Left behind, the journal would have the next start
        // apply the snapshot again over whatever the user did since.
        remove_journal(store, self.record.id);
        applied?;
        settled?;
        Ok(summary)
    }

    /// Removes the checkpoint a restore took, when the restore changed nothing after all.
    fn forget_checkpoint(&mut self, store: &Store, id: Option<SnapshotId>) {
        let Some(id) = id else { return };
        let res = store
            .cat
            .snapshot(id)
            .and_then(|s| s.map_or(Ok(()), |s| store.cat.remove_snapshot(&s)))
            .and_then(|()| store.flush());
        if let Err(e) = res {
            tracing::warn!(workspace = %self.root.display(), error = %e, "could not remove the checkpoint of a restore that changed nothing");
        }
    }

    /// Finishes a restore the daemon died in (its journal is still there): removes staged
    /// temporary files it left and restores the snapshot again, which writes only what is still
    /// missing. Returns what it did, or `None` when no restore was interrupted.
    pub fn finish_interrupted_restore(&mut self, store: &Store) -> Result<Option<RestoreSummary>> {
        let Some(journal) = read_journal(store, self.record.id)? else {
            return Ok(None);
        };
        for dir in &journal.dirs {
            let path = abs(&self.root, dir);
            let Ok(entries) = fs::read_dir(&path) else {
                continue;
            };
            for e in entries.flatten() {
                if super::rules::is_own_temp(e.file_name().as_bytes()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let Some(snapshot) = store.cat.snapshot(journal.snapshot)? else {
            tracing::warn!(workspace = %self.root.display(), "an interrupted restore's snapshot is gone; nothing to finish");
            remove_journal(store, self.record.id);
            return Ok(None);
        };
        tracing::warn!(workspace = %self.root.display(), snapshot = %snapshot.hex_id(), "finishing a restore interrupted by a crash");
        let opts = RestoreOptions {
            paths: journal.paths.clone(),
            skip_checkpoint: true,
            include_git: journal.include_git,
            ..Default::default()
        };
        let mut summary = self.restore(
            store,
            &snapshot,
            &opts,
            &Changes::Full,
            &mut |_, _, _, _| {},
        )?;
        // Also when nothing was left to write (the restore had got through).
        remove_journal(store, self.record.id);
        summary.pre_restore_snapshot = journal.pre_restore;
        Ok(Some(summary))
    }

    /// Seeds the index with what a restore wrote, so the refresh after it hashes nothing: the
    /// written files' metadata is taken from disk and their ids from the plan, for each path
    /// that still holds the inode the restore wrote, unmodified since (`written`). A path
    /// edited since (even to the same size) is left to the refresh, which reads it.
    fn note_restored(
        &mut self,
        plan: &[DiffEntry],
        written: &HashMap<Vec<u8>, Written>,
    ) -> HashSet<Vec<u8>> {
        let mut noted = HashSet::new();
        for e in plan {
            let Some(after) = e.after.as_ref().filter(|s| s.kind != Kind::Dir) else {
                continue;
            };
            let Some(w) = written.get(&e.path) else {
                continue;
            };
            let path = abs(&self.root, &e.path);
            if let Ok(Looked::Stat(st)) = Stat::lstat(&path)
                && st.kind == after.kind
                && st.size == after.size
                && (st.ino, st.mtime_ns) == (w.ino, w.mtime_ns)
            {
                let racy = st.mtime_ns >= now_ns() - super::RACY_WINDOW_NS;
                self.index.insert(&e.path, st.to_meta(after.id, racy));
                noted.insert(e.path.clone());
            }
        }
        noted
    }
}
