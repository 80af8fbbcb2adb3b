//! Taking a snapshot of a workspace: refresh the warm index, build the tree, record the
//! snapshot (or, unchanged, none).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[cfg(test)]
use super::test_hooks;
use super::{Changes, Workspace, diff, git, now_ns, now_us};
use crate::error::Result;
use crate::store::catalog::{SnapshotRecord, Tag, Trigger};
use crate::store::records::{FileCost, MAX_COSTS};
use crate::store::{Batch, Id, Store};
use crate::store::{SnapshotId, WorkspaceId};

/// The options of a save.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Why it is taken.
    pub trigger: Trigger,
    /// A message.
    pub message: String,
    /// Pin it.
    pub pin: bool,
    /// What may have changed.
    pub changes: Changes,
    /// Changes before it may have been seen only by a rescan.
    pub rescan: bool,
    /// `key=value` labels.
    pub tags: Vec<Tag>,
    /// Record a manual snapshot even when nothing changed since the latest one.
    pub allow_empty: bool,
}

impl SaveOptions {
    /// A save of the given trigger after the given changes.
    pub fn new(trigger: Trigger, changes: Changes) -> SaveOptions {
        SaveOptions {
            trigger,
            message: String::new(),
            pin: false,
            changes,
            rescan: false,
            tags: Vec::new(),
            allow_empty: false,
        }
    }
}

/// What a save did.
#[derive(Debug, Clone)]
pub struct SaveOutcome {
    /// The new snapshot, or the latest one when nothing changed (with the save's message and
    /// tags as a note).
    pub snapshot: SnapshotRecord,
    /// Whether a new snapshot was recorded.
    pub created: bool,
}

static LAST_CREATED: AtomicU64 = AtomicU64::new(0);

/// A creation time unique and increasing within this process.
fn unique_now_us() -> u64 {
    let now = now_us();
    let mut last = LAST_CREATED.load(Ordering::SeqCst);
    loop {
        let next = now.max(last + 1);
        match LAST_CREATED.compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

impl Workspace {
    /// Takes a snapshot. An auto save that finds the tree unchanged since the last snapshot or
    /// restore records nothing and returns the latest snapshot. A manual save that finds it
    /// unchanged since the latest snapshot (unless `allow_empty`) records no snapshot either:
    /// it returns the latest one with its message and tags added as a note (and pins it when
    /// asked), so saves around every tool call of an agent do not fill the list with empty
    /// rows.
    pub fn save(&mut self, store: &Store, opts: &SaveOptions) -> Result<SaveOutcome> {
        self.recovering(store, |ws| ws.save_or_fail(store, opts))
    }

    fn save_or_fail(&mut self, store: &Store, opts: &SaveOptions) -> Result<SaveOutcome> {
        let started = Instant::now();
        let counters = Arc::clone(&self.counters);
        let batch = store.batch_counting(&counters.bytes_stored);
        let warnings = self.refresh(&batch, &opts.changes)?;
        #[cfg(test)]
        test_hooks::maybe_panic_after_refresh();
        let refreshed = started.elapsed();
        let root = self.root_tree(&batch)?;
        let latest = store.cat.latest(self.record.id)?;
        tracing::debug!(
            workspace = %self.root.display(),
            refresh_ms = refreshed.as_millis() as u64,
            trees_ms = (started.elapsed() - refreshed).as_millis() as u64,
            "save: index up to date"
        );
        if opts.trigger == Trigger::Auto
            && let Some(latest) = &latest
            && (self.baseline == Some(root) || latest.root == root)
        {
            batch.commit_objects()?;
            self.persist_index(store)?;
            batch.finish()?;
            self.baseline = Some(root);
            return Ok(SaveOutcome {
                snapshot: latest.clone(),
                created: false,
            });
        }
        if opts.trigger == Trigger::Manual
            && !opts.allow_empty
            && let Some(latest) = &latest
            && latest.root == root
        {
            batch.commit_objects()?;
            self.persist_index(store)?;
            let mut noted = latest.clone();
            noted.pinned |= opts.pin;
            if !opts.message.is_empty() || !opts.tags.is_empty() {
                noted.add_note(now_us(), &opts.message, &opts.tags);
            }
            if noted != *latest {
                store.cat.put_snapshot(&noted)?;
            }
            batch.finish()?;
            self.baseline = Some(root);
            tracing::debug!(workspace = %self.root.display(), snapshot = %noted.hex_id(), "save: nothing changed, noted on the latest snapshot");
            return Ok(SaveOutcome {
                snapshot: noted,
                created: false,
            });
        }
        let before_commit = started.elapsed();
        let snapshot =
            self.record_snapshot(store, &batch, root, latest.as_ref(), opts, warnings)?;
        batch.finish()?;
        tracing::debug!(
            workspace = %self.root.display(),
            commit_ms = (started.elapsed() - before_commit).as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "save: committed"
        );
        Ok(SaveOutcome {
            snapshot,
            created: true,
        })
    }

    /// Records a snapshot of `root` (the index's current tree): commits the batch's objects,
    /// writes the record and the index journal. The caller finishes the batch.
    pub(super) fn record_snapshot(
        &mut self,
        store: &Store,
        batch: &Batch<'_>,
        root: Id,
        latest: Option<&SnapshotRecord>,
        opts: &SaveOptions,
        mut warnings: Vec<String>,
    ) -> Result<SnapshotRecord> {
        let (git_branch, git_head) = match git::find_git_dir(&self.root) {
            Some(dir) => git::head(&dir),
            None => (String::new(), String::new()),
        };
        let t = Instant::now();
        let counts = match latest {
            Some(l) => diff::count(store, Some(l.root), Some(root))?,
            // The first snapshot adds every file: no need to read back the trees just stored.
            None => diff::Counts {
                added: self.index.totals().0,
                ..Default::default()
            },
        };
        let (new_blobs, new_bytes) = batch.written();
        let (files, bytes) = self.index.totals();
        let created_us = unique_now_us();
        warnings.truncate(100);
        // Taken, not drained: a cold save grows the map to one entry per file, and the idle
        // daemon need not keep that table.
        let mut costs: Vec<FileCost> = std::mem::take(&mut self.costs)
            .into_iter()
            .map(|(path, bytes)| FileCost { path, bytes })
            .collect();
        // Only the costliest are kept: a cold save has one per file, and sorting them all
        // (by size, then path) cost about a second at 500,000 files.
        let order =
            |a: &FileCost, b: &FileCost| b.bytes.cmp(&a.bytes).then_with(|| a.path.cmp(&b.path));
        if costs.len() > MAX_COSTS {
            costs.select_nth_unstable_by(MAX_COSTS, order);
            costs.truncate(MAX_COSTS);
        }
        costs.sort_unstable_by(order);
        let snapshot = SnapshotRecord {
            id: snapshot_id(self.record.id, created_us, &root),
            workspace: self.record.id,
            created_us,
            root,
            parent: latest.map(|l| l.id),
            trigger: opts.trigger,
            message: opts.message.clone(),
            pinned: opts.pin,
            files,
            bytes,
            new_blobs,
            new_bytes,
            added: counts.added,
            modified: counts.modified,
            deleted: counts.deleted,
            rescan: opts.rescan,
            warnings,
            git_branch,
            git_head,
            tags: opts.tags.clone(),
            notes: Vec::new(),
            costs,
        };
        let count_ms = t.elapsed().as_millis() as u64;
        batch.commit_objects()?;
        store.cat.put_snapshot(&snapshot)?;
        let t = Instant::now();
        self.persist_index(store)?;
        tracing::debug!(
            count_ms,
            persist_ms = t.elapsed().as_millis() as u64,
            "snapshot recorded"
        );
        self.baseline = Some(root);
        tracing::info!(
            workspace = %self.root.display(),
            snapshot = %snapshot.hex_id(),
            trigger = snapshot.trigger.as_str(),
            added = snapshot.added,
            modified = snapshot.modified,
            deleted = snapshot.deleted,
            new_bytes,
            "snapshot taken"
        );
        Ok(snapshot)
    }
}

fn snapshot_id(ws: WorkspaceId, created_us: u64, root: &Id) -> SnapshotId {
    let mut seed = Vec::with_capacity(40);
    seed.extend_from_slice(&ws.get().to_le_bytes());
    seed.extend_from_slice(&created_us.to_le_bytes());
    seed.extend_from_slice(root.as_bytes());
    seed.extend_from_slice(&now_ns().to_le_bytes());
    SnapshotId::new(xxhash_rust::xxh3::xxh3_64(&seed))
}
