//! Watching a folder, re-watching after a restart, unwatching, and shutting down.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::autosave;
use super::registry::WsHandle;
use super::save::{SaveRequest, Walk};
use super::{Engine, EngineEvent};
use crate::error::{Error, Result};
use crate::store::catalog::{SnapshotRecord, Trigger, WorkspaceRecord};
use crate::sync::lock;
use crate::workspace::{WatchOptions, Workspace};

impl Engine {
    /// Starts watching `path` with `opts`: registers it, takes its baseline snapshot, starts the
    /// watcher. Watching an already watched folder updates its options.
    pub fn watch(
        self: &Arc<Self>,
        path: &Path,
        opts: WatchOptions,
    ) -> Result<(WorkspaceRecord, SnapshotRecord)> {
        match self.watch_with(path, opts, false)? {
            (record, Some(snap)) => Ok((record, snap)),
            // Not asked to reconcile in the background: the baseline was saved.
            (record, None) => {
                let snap = self.store.cat.latest(record.id)?.ok_or_else(|| {
                    Error::InvalidArgument(format!("{} has no snapshot", path.display()))
                })?;
                Ok((record, snap))
            }
        }
    }

    /// [`Engine::watch`]; with `background`, a workspace that has snapshots and a warm index
    /// (a restart) is watched from the folders its index knows and reconciled by its autosave
    /// worker, after this returns (no snapshot is returned then).
    fn watch_with(
        self: &Arc<Self>,
        path: &Path,
        opts: WatchOptions,
        background: bool,
    ) -> Result<(WorkspaceRecord, Option<SnapshotRecord>)> {
        let _one_at_a_time = lock(&self.watch_lock);
        let t0 = Instant::now();
        self.refuse_nested(&crate::workspace::canonical_root(path)?)?;
        let record = crate::workspace::register(&self.store, path, opts)?;
        let baseline = SaveRequest {
            trigger: Trigger::Auto,
            message: String::new(),
            pin: false,
            walk: Walk::Full,
            tags: Vec::new(),
            allow_empty: false,
        };
        if let Some(h) = self.registry.get(record.id) {
            self.stop_worker(&h);
            h.workspace(&self.store)
                .set_record(&self.store, record.clone());
            // Watch again before walking, so nothing changed in between is missed.
            self.start_worker(&h, None);
            let snap = self.save_now(&h, &baseline)?.snapshot;
            return Ok((record, Some(snap)));
        }
        let mut ws = Workspace::open(&self.store, record.clone())?;
        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            "watch: registered and opened"
        );
        remove_stale_barriers(ws.root());
        let recovered = match ws.finish_interrupted_restore(&self.store) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(workspace = %ws.root().display(), error = %e, "could not finish an interrupted restore");
                None
            }
        };
        let handle = Arc::new(WsHandle::new(ws));
        if let Some(summary) = recovered {
            let msg = format!(
                "finished restoring snapshot {:016x}, which a crash had interrupted ({} files written, {} removed); `chkptctl undo` goes back",
                summary.snapshot,
                summary.added + summary.modified,
                summary.deleted
            );
            handle.warn(msg.clone());
            self.emit(EngineEvent::Warning(handle.id, msg));
            self.emit(EngineEvent::RestoreDone(handle.id, summary));
        }
        let first = self.store.cat.latest(record.id)?.is_none();
        if !first {
            // Whatever changed while nobody watched was seen only by this walk.
            handle.feed.dirty().rescan_reason =
                Some("changes made while chkptd was not watching".into());
        }
        // The folders the index knows are watched before the walk: nothing it looks at needs
        // looking at again, and the workspace is watched as soon as they are.
        let known = {
            let ws = handle.workspace(&self.store);
            (background && !first && ws.totals().0 > 0).then(|| ws.index_dirs())
        };
        if known.is_some() {
            handle.set_reconciling(true);
            self.start_worker(&handle, known);
            self.registry.insert(handle);
            tracing::debug!(
                ms = t0.elapsed().as_millis() as u64,
                "watch: watcher started; reconciling in the background"
            );
            return Ok((record, None));
        }
        // Watch first, then walk: a change during the baseline walk is caught either way.
        self.start_worker(&handle, None);
        self.registry.insert(handle.clone());
        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            "watch: watcher started"
        );
        let baseline = SaveRequest {
            message: if first {
                "baseline".into()
            } else {
                String::new()
            },
            ..baseline
        };
        let outcome = self.save_now(&handle, &baseline)?;
        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            "watch: baseline saved"
        );
        Ok((record, Some(outcome.snapshot)))
    }

    /// A folder inside, or above, a watched workspace would have the same files saved twice.
    fn refuse_nested(&self, root: &Path) -> Result<()> {
        for h in self.handles() {
            if h.root == root {
                continue;
            }
            let inside = root.starts_with(&h.root);
            if inside || h.root.starts_with(root) {
                return Err(Error::NestedWorkspace {
                    path: root.to_path_buf(),
                    existing: h.root.clone(),
                    inside,
                });
            }
        }
        Ok(())
    }

    /// Re-watches the workspaces watched before a restart; each is reconciled with a stat-walk
    /// by its autosave worker, once its watches are in place.
    pub fn rewatch_all(self: &Arc<Self>) -> Result<()> {
        for record in self.store.cat.workspaces()? {
            if !record.watched {
                continue;
            }
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(&record.path));
            let opts = WatchOptions {
                idle_ms: record.idle_ms,
                max_delay_ms: record.max_delay_ms,
                include_dependency_dirs: record.include_dependency_dirs,
                include_git: record.include_git,
                retention: record.retention,
            };
            if let Err(e) = self.watch_with(&path, opts, true) {
                tracing::warn!(workspace = %path.display(), error = %e, "could not re-watch");
            }
        }
        Ok(())
    }

    /// Stops watching; snapshots are kept.
    pub fn unwatch(&self, path: &str) -> Result<WorkspaceRecord> {
        let h = self.handle_for(path)?;
        self.stop_worker(&h);
        self.registry.remove(h.id);
        let mut record = match self.store.cat.workspace(h.id)? {
            Some(r) => r,
            None => h.workspace(&self.store).record().clone(),
        };
        record.watched = false;
        self.store.cat.put_workspace(&record)?;
        self.store.flush()?;
        Ok(record)
    }

    fn start_worker(
        self: &Arc<Self>,
        h: &Arc<WsHandle>,
        known: Option<std::collections::BTreeSet<Vec<u8>>>,
    ) {
        let worker = autosave::start(self, h, known);
        *lock(&h.worker) = Some(worker);
    }

    fn stop_worker(&self, h: &WsHandle) {
        let worker = lock(&h.worker).take();
        if let Some(w) = worker {
            w.stop();
        }
    }

    /// Stops every watcher (finishing a save in flight) and the maintenance worker, and flushes
    /// the store.
    pub fn shutdown(&self) {
        for h in self.handles() {
            self.stop_worker(&h);
        }
        self.maintenance.stop();
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final catalog flush failed");
        }
    }
}

/// Removes event-barrier files a crash left in a workspace (its root, or its `.git`).
fn remove_stale_barriers(root: &Path) {
    remove_stale_barriers_in(root);
    remove_stale_barriers_in(&root.join(".git"));
}

fn remove_stale_barriers_in(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.as_bytes();
        if name.starts_with(crate::watch::BARRIER_PREFIX)
            && crate::workspace::rules::is_own_temp(name)
        {
            tracing::debug!(path = %e.path().display(), "removing a stale event barrier");
            let _ = std::fs::remove_file(e.path());
        }
    }
}
