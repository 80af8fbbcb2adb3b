//! Changing things: restore, delete, pin, prune and retention, the tripwire.

use std::collections::HashSet;

use super::autosave::tripwire::Fired;
use super::save::Taken;
use super::{Engine, EngineEvent};
use crate::error::{Error, Result};
use crate::retention::{self, Decision, Policy};
use crate::store::Kind;
use crate::store::catalog::{SnapshotRecord, TripwireRecord};
use crate::store::{SnapshotId, WorkspaceId};
use crate::workspace::git::{self, Loss};
use crate::workspace::restore::{ProgressFn, RestoreOptions, RestoreSummary};
use crate::workspace::{diff, now_us};

/// What [`Engine::delete`] does with a pinned snapshot among those named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfPinned {
    /// Deletes nothing and says which one is pinned.
    Refuse,
    /// Deletes it with the others (`--force`).
    Delete,
}

/// Whether [`Engine::prune`] drops what the policy lets go, or only says what it would drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneMode {
    /// Drops nothing; the answer is what would go and what that would free.
    DryRun,
    /// Drops them and collects what they leave.
    Apply,
}

impl Engine {
    /// Restores a snapshot of the workspace containing `path`.
    pub fn restore(
        &self,
        path: &str,
        selector: &str,
        mut opts: RestoreOptions,
        progress: &mut ProgressFn<'_>,
    ) -> Result<RestoreSummary> {
        let h = self.handle_for(path)?;
        let snap = self.resolve(h.id, selector)?;
        opts.paths = opts
            .paths
            .iter()
            .map(|p| self.rel_path(&h.root, p))
            .collect::<Result<_>>()?;
        if opts.paths.iter().any(|p| p.is_empty()) {
            opts.paths.clear();
        }
        if let Some(to) = &opts.to {
            check_restore_target(&h.root, to, opts.force)?;
        }
        // The pre-restore snapshot must hold every edit made before the restore was asked for.
        self.sync_events(&h);
        let in_place = !opts.dry_run && opts.to.is_none();
        if in_place {
            h.feed.set_restoring(true);
        }
        let mut ws = h.workspace(&self.store);
        let taken = Taken::from(&h);
        let res = ws.restore(&self.store, &snap, &opts, &taken.changes, progress);
        self.store.release_memory();
        drop(ws);
        if in_place {
            // Once the watcher has seen past the restore's own writes, it may judge bursts again.
            self.sync_events(&h);
            h.feed.set_restoring(false);
        }
        match &res {
            // An in-place restore consumed the changes: the pre-restore snapshot holds them.
            Ok(summary) if in_place => {
                if summary.pre_restore_snapshot.is_some() {
                    h.count_snapshot();
                }
                self.emit(EngineEvent::RestoreDone(h.id, summary.clone()));
            }
            _ => taken.put_back(&h),
        }
        res
    }

    /// Deletes snapshots, then collects garbage. Returns the snapshots deleted and the bytes
    /// reclaimed. A pinned snapshot is deleted only with [`IfPinned::Delete`].
    pub fn delete(
        &self,
        path: &str,
        selectors: &[String],
        if_pinned: IfPinned,
    ) -> Result<(Vec<SnapshotRecord>, u64)> {
        if selectors.is_empty() {
            return Err(Error::InvalidArgument(
                "name at least one snapshot to delete".into(),
            ));
        }
        let record = self.record_for(path)?;
        let snaps: Vec<SnapshotRecord> = selectors
            .iter()
            .map(|s| self.resolve(record.id, s))
            .collect::<Result<_>>()?;
        if if_pinned == IfPinned::Refuse
            && let Some(s) = snaps.iter().find(|s| s.pinned)
        {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {} is pinned: nothing was deleted; `chkptctl unpin {}` first, or pass --force",
                s.hex_id(),
                &s.hex_id()[..8]
            )));
        }
        let reclaimed = self.forget(&snaps)?;
        Ok((snaps, reclaimed))
    }

    /// Pins a snapshot: retention and the store budget never drop it.
    pub fn pin(&self, path: &str, selector: &str) -> Result<SnapshotRecord> {
        self.set_pinned(path, selector, true)
    }

    /// Clears a snapshot's pin.
    pub fn unpin(&self, path: &str, selector: &str) -> Result<SnapshotRecord> {
        self.set_pinned(path, selector, false)
    }

    fn set_pinned(&self, path: &str, selector: &str, pinned: bool) -> Result<SnapshotRecord> {
        let record = self.record_for(path)?;
        let mut s = self.resolve(record.id, selector)?;
        s.pinned = pinned;
        self.store.cat.put_snapshot(&s)?;
        self.store.flush()?;
        Ok(s)
    }

    /// Applies a retention policy, or previews it. Returns each decision and the bytes
    /// reclaimed (or that would be).
    pub fn prune(
        &self,
        path: &str,
        policy: &Policy,
        mode: PruneMode,
    ) -> Result<(Vec<Decision>, u64)> {
        let record = self.record_for(path)?;
        // A request that sets no rule means the workspace's own policy.
        let policy = if *policy == Policy::default() {
            record.retention
        } else {
            *policy
        };
        let snaps = self.store.cat.snapshots_of(record.id, None, usize::MAX)?;
        let decisions = retention::decide(&snaps, &policy, now_us());
        if mode == PruneMode::DryRun {
            let gone: HashSet<SnapshotId> = decisions
                .iter()
                .filter(|d| !d.keep)
                .map(|d| d.snapshot.id)
                .collect();
            let would_free = if gone.is_empty() {
                0
            } else {
                self.store.reclaimable_without(&gone)?
            };
            return Ok((decisions, would_free));
        }
        let reclaimed = self.forget_dropped(&decisions)?;
        Ok((decisions, reclaimed))
    }

    /// Applies workspace `ws`'s retention policy and collects the garbage of what it removed.
    /// Returns how many snapshots went.
    pub fn apply_retention(&self, ws: WorkspaceId) -> Result<usize> {
        let Some(record) = self.store.cat.workspace(ws)? else {
            return Ok(0);
        };
        let snaps = self.store.cat.snapshots_of(ws, None, usize::MAX)?;
        let decisions = retention::decide(&snaps, &record.retention, now_us());
        let removed = decisions.iter().filter(|d| !d.keep).count();
        let reclaimed = self.forget_dropped(&decisions)?;
        if removed > 0 {
            tracing::info!(workspace = %String::from_utf8_lossy(&record.path), removed, reclaimed, "retention applied");
        }
        Ok(removed)
    }

    /// Forgets the snapshots the decisions do not keep.
    fn forget_dropped(&self, decisions: &[Decision]) -> Result<u64> {
        let dropped: Vec<SnapshotRecord> = decisions
            .iter()
            .filter(|d| !d.keep)
            .map(|d| d.snapshot.clone())
            .collect();
        self.forget(&dropped)
    }

    /// Removes snapshot records, makes that durable, then collects the garbage they leave.
    /// Returns the bytes reclaimed. The one way snapshots go (delete, prune, retention, and
    /// the store budget through [`Engine::forget_repacking`]).
    fn forget(&self, snaps: &[SnapshotRecord]) -> Result<u64> {
        self.forget_repacking(snaps, crate::store::gc::REPACK_DEAD_FRACTION)
    }

    /// [`Engine::forget`], rewriting packs more dead than `repack_dead_fraction` (the store
    /// budget uses a lower one: its bytes must really go).
    pub(super) fn forget_repacking(
        &self,
        snaps: &[SnapshotRecord],
        repack_dead_fraction: f64,
    ) -> Result<u64> {
        if snaps.is_empty() {
            return Ok(0);
        }
        for s in snaps {
            self.store.cat.remove_snapshot(s)?;
        }
        self.store.flush()?;
        Ok(self.store.gc_with(repack_dead_fraction)?.bytes_reclaimed)
    }

    /// A mass change is under way: pins the snapshot from before it and, when the burst
    /// destroyed work git does not have, records the tripwire (shown by `Status` until
    /// acknowledged) and tells subscribers. A burst git made over committed work (a clean
    /// branch switch, a pull) pins quietly: returns `None` then.
    pub fn fire_tripwire(
        &self,
        h: &super::WsHandle,
        fired: &Fired,
    ) -> Result<Option<TripwireRecord>> {
        let changed = fired.paths.len() as u64;
        let mut pinned = None;
        let mut loss = Loss::Unknown("no snapshot from before the burst".into());
        if let Some(id) = fired.pre_burst
            && let Some(mut s) = self.store.cat.snapshot(id)?
        {
            loss = self.judge_burst(h, &s, &fired.paths);
            s.pinned = true;
            self.store.cat.put_snapshot(&s)?;
            pinned = Some(id);
        }
        if loss == Loss::None {
            self.store.flush()?;
            tracing::info!(workspace = %h.root.display(), changed, "a mass change git made over committed work; the snapshot before it is pinned");
            return Ok(None);
        }
        if changed < self.tripwire.alarm_files {
            // Big for this workspace, small in itself: pinned, and the alarm waits for the
            // recount once the burst is over (see `settle_tripwire`).
            self.store.flush()?;
            tracing::info!(workspace = %h.root.display(), changed, "a burst of changes; the snapshot before it is pinned");
            return Ok(None);
        }
        self.raise_tripwire(h, pinned, changed, loss.describe())
    }

    /// Records a tripwire (shown by `Status` until acknowledged) and tells subscribers.
    fn raise_tripwire(
        &self,
        h: &super::WsHandle,
        pinned: Option<SnapshotId>,
        changed: u64,
        detail: String,
    ) -> Result<Option<TripwireRecord>> {
        let trip = TripwireRecord {
            pinned,
            changed,
            fired_us: now_us(),
            detail,
        };
        if let Some(mut record) = self.store.cat.workspace(h.id)? {
            record.tripwire = Some(trip.clone());
            self.store.cat.put_workspace(&record)?;
        }
        self.store.flush()?;
        let msg = format!(
            "mass-change tripwire: {changed} files deleted or rewritten in {} ({}); snapshot {} from just before is pinned",
            h.root.display(),
            trip.detail,
            pinned
                .map(|p| format!("{p:016x}"))
                .unwrap_or_else(|| "(none)".into())
        );
        tracing::warn!("{msg}");
        self.emit(EngineEvent::Tripwire(h.id, trip.clone()));
        Ok(Some(trip))
    }

    /// The burst is over: `after` is the state after it. Its tripwire (if it raised one) is
    /// recounted over everything the burst deleted or rewritten, not only what it had done
    /// when it fired, and judged again; the after-burst snapshot's message says the count.
    pub fn settle_tripwire(
        &self,
        h: &super::WsHandle,
        fired: &Fired,
        after: &SnapshotRecord,
    ) -> Result<()> {
        let Some(pre) = fired
            .pre_burst
            .and_then(|id| self.store.cat.snapshot(id).ok().flatten())
        else {
            return Ok(());
        };
        let lost: Vec<Vec<u8>> = diff::diff(&self.store, Some(pre.root), Some(after.root))?
            .into_iter()
            .filter(|e| e.before.as_ref().is_some_and(|b| b.kind != Kind::Dir))
            .filter(|e| e.change != diff::Change::Added)
            .map(|e| e.path)
            .collect();
        let changed = lost.len() as u64;
        if after.id != pre.id && after.message.starts_with("after a mass change") {
            let mut s = after.clone();
            s.message = format!("after a mass change ({changed} files deleted or rewritten)");
            self.store.cat.put_snapshot(&s)?;
        }
        if let Some(mut record) = self.store.cat.workspace(h.id)? {
            match record.tripwire.as_mut() {
                Some(trip) if trip.pinned == Some(pre.id) => {
                    trip.changed = changed;
                    trip.detail = self.judge_burst(h, &pre, &lost).describe();
                    self.store.cat.put_workspace(&record)?;
                }
                // Not raised when it fired (too few paths then): raised now if the whole
                // burst is big enough and destroyed work git does not have.
                None if changed >= self.tripwire.alarm_files => {
                    let loss = self.judge_burst(h, &pre, &lost);
                    if loss != Loss::None {
                        self.store.flush()?;
                        self.raise_tripwire(h, Some(pre.id), changed, loss.describe())?;
                    }
                }
                _ => {}
            }
        }
        self.store.flush()
    }

    /// Whether the versions a burst replaced are all in git's HEAD commit of the time (then
    /// git can give them back), judged from the snapshot taken before it.
    fn judge_burst(&self, h: &super::WsHandle, pre: &SnapshotRecord, paths: &[Vec<u8>]) -> Loss {
        if git::find_git_dir(&h.root).is_none() {
            return Loss::Unknown("not a git repository".into());
        }
        if pre.git_head.is_empty() {
            return Loss::Unknown("the repository had no commit".into());
        }
        let mut lost = Vec::new();
        for p in paths {
            match diff::lookup(&self.store, pre.root, p) {
                Ok(Some(e)) if e.kind != Kind::Dir => lost.push((p.clone(), e)),
                Ok(_) => {}
                Err(e) => return Loss::Unknown(format!("a stored version is unreadable: {e}")),
            }
        }
        let paths: Vec<Vec<u8>> = lost.iter().map(|(p, _)| p.clone()).collect();
        let in_git = match git::blobs_at(&h.root, &pre.git_head, &paths) {
            Ok(m) => m,
            Err(why) => return Loss::Unknown(why),
        };
        let (mut uncommitted, mut untracked) = (0, 0);
        for (p, e) in &lost {
            let Some(id) = in_git.get(p) else {
                untracked += 1;
                continue;
            };
            let mut content = Vec::with_capacity(e.size.min(64 << 20) as usize);
            if let Err(e) = self.store.read_into(&e.id, &mut content) {
                return Loss::Unknown(format!("a stored version is unreadable: {e}"));
            }
            if git::blob_id(&content) != *id {
                uncommitted += 1;
            }
        }
        if uncommitted + untracked == 0 {
            Loss::None
        } else {
            Loss::Work {
                uncommitted,
                untracked,
            }
        }
    }

    /// Clears a fired tripwire; returns it.
    pub fn acknowledge(&self, path: &str) -> Result<Option<TripwireRecord>> {
        let record = self.record_for(path)?;
        let Some(mut record) = self.store.cat.workspace(record.id)? else {
            return Ok(None);
        };
        let cleared = record.tripwire.take();
        if cleared.is_some() {
            self.store.cat.put_workspace(&record)?;
            self.store.flush()?;
        }
        Ok(cleared)
    }
}

/// `restore --to DIR`: refused inside the workspace (the copy would be snapshotted with it, and
/// could overwrite what it copies), and into a folder that holds anything unless `force`
/// (a merge there would be silent).
fn check_restore_target(root: &std::path::Path, to: &std::path::Path, force: bool) -> Result<()> {
    // As given and as the file system resolves it (a symlinked way into the workspace).
    let real = |p: &std::path::Path| p.canonicalize().ok();
    let mut resolved = real(to);
    if resolved.is_none() {
        // Not there yet: its nearest existing ancestor decides.
        resolved = to
            .ancestors()
            .find_map(|a| real(a).map(|r| r.join(to.strip_prefix(a).unwrap_or(to))));
    }
    let root_real = real(root).unwrap_or_else(|| root.to_path_buf());
    if to.starts_with(root) || resolved.as_ref().is_some_and(|r| r.starts_with(&root_real)) {
        return Err(Error::InvalidArgument(format!(
            "--to {} is inside the workspace {}: its copy would be snapshotted with it; pick a \
             folder outside the workspace",
            to.display(),
            root.display()
        )));
    }
    let used = std::fs::read_dir(to).is_ok_and(|mut d| d.next().is_some());
    if used && !force {
        return Err(Error::FailedPrecondition(format!(
            "--to {} is not empty: nothing was restored; pick an empty or new folder, or pass \
             --force to restore into it (files of the same names are replaced, others kept)",
            to.display()
        )));
    }
    Ok(())
}
