//! The watched workspaces: one [`WsHandle`] each, and the lookups requests use to find theirs.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use super::Engine;
use super::costs::{CostCache, FileCostSum};
use super::worker::Worker;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::WorkspaceId;
use crate::store::catalog::WorkspaceRecord;
use crate::sync::{lock, read, write};
use crate::watch::Feed;
use crate::workspace::{Workspace, WorkspaceCounters};

/// How a workspace is being watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchState {
    /// Kernel notifications.
    Watching,
    /// A full stat-walk is running.
    Rescanning,
    /// No kernel notifications available: periodic stat-walks.
    Polling(String),
    /// The folder is gone; watched again once it is back.
    Missing(String),
    /// Something is wrong (permissions, …).
    Failed(String),
    /// Watching, but automatic snapshots wait: the disk is short of free space (why, for
    /// `Status`). They resume by themselves once there is room.
    Paused(String),
}

/// A watched workspace.
#[derive(Debug)]
pub struct WsHandle {
    /// Workspace id.
    pub id: WorkspaceId,
    /// Canonical root.
    pub root: PathBuf,
    /// The workspace; locked for saves, restores and working-tree diffs (see
    /// [`WsHandle::workspace`]).
    ws: Mutex<Workspace>,
    /// What the watcher reported and no save consumed yet.
    pub feed: Arc<Feed>,
    /// Watch state for `Status`.
    state: Mutex<WatchState>,
    /// Set while the walk that reconciles a re-watched workspace with the changes made while
    /// chkptd was not running is under way (the state is `Watching` meanwhile: every change
    /// from the moment the watches were placed is recorded).
    reconciling: AtomicBool,
    /// Warnings for `Status`.
    warnings: Mutex<Vec<String>>,
    /// Work counters of the workspace (shared with it).
    pub counters: Arc<WorkspaceCounters>,
    /// Snapshots taken since the daemon started.
    pub snapshots_taken: AtomicU64,
    /// The autosave worker, while one runs.
    pub(super) worker: Mutex<Option<Worker>>,
    /// The size of `.git`, and when it was measured.
    git_size: Mutex<Option<(Instant, u64)>>,
    /// The last answer of [`Engine::top_files`].
    costs: CostCache,
}

impl WsHandle {
    /// A handle over an opened workspace whose first save walks everything.
    pub(super) fn new(ws: Workspace) -> WsHandle {
        WsHandle {
            id: ws.record().id,
            root: ws.root().to_path_buf(),
            counters: ws.counters.clone(),
            ws: Mutex::new(ws),
            feed: Arc::new(Feed::new_full()),
            state: Mutex::new(WatchState::Rescanning),
            reconciling: AtomicBool::new(false),
            warnings: Mutex::new(Vec::new()),
            snapshots_taken: AtomicU64::new(0),
            worker: Mutex::new(None),
            git_size: Mutex::new(None),
            costs: CostCache::default(),
        }
    }

    /// The size of the workspace's `.git` folder in bytes (0 when there is none), measured at
    /// most a minute ago.
    pub fn git_dir_bytes(&self) -> u64 {
        const FRESH: Duration = Duration::from_secs(60);
        let mut cached = lock(&self.git_size);
        if let Some((at, bytes)) = *cached
            && at.elapsed() < FRESH
        {
            return bytes;
        }
        let bytes = super::space::files_under(&self.root.join(".git"), |m| m.len());
        *cached = Some((Instant::now(), bytes));
        bytes
    }

    /// Locks the workspace. If an operation panicked while holding it, its warm index may be
    /// half updated and the changes it had taken are lost: the index is taken back from the
    /// catalog and the next save walks the whole tree, before anything else uses it.
    pub fn workspace(&self, store: &Store) -> MutexGuard<'_, Workspace> {
        match self.ws.lock() {
            Ok(ws) => ws,
            Err(poisoned) => {
                let mut ws = poisoned.into_inner();
                tracing::error!(workspace = %self.root.display(), "an operation panicked; reloading the warm index and walking the whole tree");
                ws.recover_after_panic(store);
                self.feed.dirty().rescan("an earlier save did not finish");
                self.ws.clear_poison();
                ws
            }
        }
    }

    /// The workspace if no operation holds it now (for status reads that must not wait).
    pub fn try_workspace(&self) -> Option<MutexGuard<'_, Workspace>> {
        // A poisoned lock is left for `workspace` to mend.
        self.ws.try_lock().ok()
    }

    /// The current watch state.
    pub fn state(&self) -> WatchState {
        lock(&self.state).clone()
    }

    /// Sets the watch state.
    pub fn set_state(&self, s: WatchState) {
        *lock(&self.state) = s;
    }

    /// Whether the walk reconciling a re-watched workspace is under way.
    pub fn is_reconciling(&self) -> bool {
        self.reconciling.load(Ordering::SeqCst)
    }

    /// Marks the reconciling walk as under way, or over.
    pub fn set_reconciling(&self, on: bool) {
        self.reconciling.store(on, Ordering::SeqCst);
    }

    /// The watcher's warnings.
    pub fn warnings(&self) -> Vec<String> {
        lock(&self.warnings).clone()
    }

    /// Adds a warning (the last 20 are kept).
    pub fn warn(&self, w: String) {
        let mut ws = lock(&self.warnings);
        ws.push(w);
        let n = ws.len();
        if n > 20 {
            ws.drain(..n - 20);
        }
    }

    /// Counts a snapshot taken.
    pub fn count_snapshot(&self) {
        self.snapshots_taken.fetch_add(1, Ordering::Relaxed);
    }
}

/// The watched workspaces by id.
#[derive(Debug, Default)]
pub struct Registry {
    workspaces: RwLock<HashMap<WorkspaceId, Arc<WsHandle>>>,
}

impl Registry {
    /// The handle of workspace `id`, if watched.
    pub fn get(&self, id: WorkspaceId) -> Option<Arc<WsHandle>> {
        read(&self.workspaces).get(&id).cloned()
    }

    pub(super) fn insert(&self, h: Arc<WsHandle>) {
        write(&self.workspaces).insert(h.id, h);
    }

    pub(super) fn remove(&self, id: WorkspaceId) {
        write(&self.workspaces).remove(&id);
    }

    /// Every handle, by path.
    pub fn all(&self) -> Vec<Arc<WsHandle>> {
        let mut v: Vec<_> = read(&self.workspaces).values().cloned().collect();
        v.sort_by(|a, b| a.root.cmp(&b.root));
        v
    }
}

impl Engine {
    /// The watched workspaces.
    pub fn handles(&self) -> Vec<Arc<WsHandle>> {
        self.registry.all()
    }

    /// The files of `h` whose new versions added the most to the store in the last day, most
    /// first.
    pub fn top_files(&self, h: &WsHandle) -> Result<Vec<FileCostSum>> {
        h.costs.top_files(&self.store.cat, h.id)
    }

    /// The path of a watched workspace, from memory (no catalog read).
    pub fn watched_path(&self, id: WorkspaceId) -> Option<String> {
        self.registry.get(id).map(|h| h.root.display().to_string())
    }

    /// The watched workspace containing `path` (the deepest one), for requests that name any
    /// path inside a workspace.
    pub fn handle_for(&self, path: &str) -> Result<Arc<WsHandle>> {
        if path.is_empty() {
            return Err(Error::InvalidArgument(
                "no workspace given: pass the workspace path".into(),
            ));
        }
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "{path} is not an absolute path"
            )));
        }
        let canon = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        self.handles()
            .into_iter()
            .filter(|h| canon.starts_with(&h.root) || p.starts_with(&h.root))
            .max_by_key(|h| h.root.as_os_str().len())
            .ok_or_else(|| Error::WorkspaceNotFound {
                path: path.to_owned(),
                watched: true,
            })
    }

    /// The workspace record for `path`, watched or not (snapshots outlive watching).
    pub fn record_for(&self, path: &str) -> Result<WorkspaceRecord> {
        if let Ok(h) = self.handle_for(path) {
            // From the catalog, not the workspace: a save in flight holds that.
            if let Some(record) = self.store.cat.workspace(h.id)? {
                return Ok(record);
            }
            return Ok(h.workspace(&self.store).record().clone());
        }
        let p = Path::new(path);
        let canon = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        self.store
            .cat
            .workspaces()?
            .into_iter()
            .filter(|w| canon.starts_with(Path::new(std::ffi::OsStr::from_bytes(&w.path))))
            .max_by_key(|w| w.path.len())
            .ok_or_else(|| Error::WorkspaceNotFound {
                path: path.to_owned(),
                watched: false,
            })
    }
}
