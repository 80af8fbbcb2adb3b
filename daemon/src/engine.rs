//! The daemon's shared state and every operation the API offers, synchronous: the service
//! calls these through `spawn_blocking`.
//!
//! Each watched workspace has a [`WsHandle`]: its [`Workspace`] behind a mutex (one save or
//! restore at a time), the changes the watcher saw since the last snapshot, and status fields
//! that reads can take without waiting for a save in flight.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::store::catalog::{SnapshotRecord, Trigger, TripwireRecord, WorkspaceRecord};
use crate::store::{Id, Kind, Store};
use crate::workspace::diff::{self, DiffEntry, normalise, validate_rel};
use crate::workspace::restore::{RestoreOptions, RestoreSummary};
use crate::workspace::{
    Changes, SaveOptions, SaveOutcome, WatchOptions, Workspace, WorkspaceCounters, now_us,
};

/// What the daemon tells `Events` subscribers.
#[derive(Debug, Clone)]
pub enum EngineEvent {
    /// A snapshot was recorded.
    SnapshotTaken(SnapshotRecord),
    /// A restore finished.
    RestoreDone(u64, RestoreSummary),
    /// A workspace was stat-walked because events may have been lost.
    Rescan(u64, String),
    /// Something the user should know.
    Warning(u64, String),
    /// A mass change fired the tripwire.
    Tripwire(u64, TripwireRecord),
}

/// How a workspace is being watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchState {
    /// Kernel notifications.
    Watching,
    /// A full stat-walk is running.
    Rescanning,
    /// No kernel notifications available: periodic stat-walks.
    Polling(String),
    /// Something is wrong (the folder vanished, …).
    Failed(String),
}

/// Changes seen by the watcher and not yet in a snapshot.
#[derive(Debug, Default)]
pub struct Pending {
    /// Dirty paths, relative.
    pub paths: BTreeSet<Vec<u8>>,
    /// Events were lost: the next save must stat-walk everything.
    pub full: bool,
    /// Why a rescan is needed (recorded on the next snapshot).
    pub rescan_reason: Option<String>,
}

impl Pending {
    /// Takes the changes out, for a save.
    pub fn take(&mut self) -> (Changes, bool) {
        let rescan = self.rescan_reason.take().is_some();
        let paths = std::mem::take(&mut self.paths);
        if std::mem::take(&mut self.full) {
            (Changes::Full, rescan)
        } else {
            (Changes::Paths(paths.into_iter().collect()), rescan)
        }
    }

    /// Puts changes back after a failed save.
    pub fn restore(&mut self, changes: Changes, rescan: bool) {
        match changes {
            Changes::Full => self.full = true,
            Changes::Paths(p) => self.paths.extend(p),
        }
        if rescan && self.rescan_reason.is_none() {
            self.rescan_reason = Some("retry".into());
        }
    }

    /// How many changes wait.
    pub fn len(&self) -> usize {
        self.paths.len() + usize::from(self.full)
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Event counters of a watcher.
#[derive(Debug, Default)]
pub struct EventCounters {
    /// Events received.
    pub received: std::sync::atomic::AtomicU64,
    /// Events under ignored paths.
    pub ignored: std::sync::atomic::AtomicU64,
    /// Full rescans.
    pub rescans: std::sync::atomic::AtomicU64,
    /// Snapshots taken.
    pub snapshots: std::sync::atomic::AtomicU64,
}

/// A watched workspace.
#[derive(Debug)]
pub struct WsHandle {
    /// Workspace id.
    pub id: u64,
    /// Canonical root.
    pub root: PathBuf,
    /// The workspace; locked for saves, restores and working-tree diffs.
    pub ws: Mutex<Workspace>,
    /// Changes since the last snapshot.
    pub pending: Mutex<Pending>,
    /// Watch state for `Status`.
    pub state: Mutex<WatchState>,
    /// Warnings for `Status`.
    pub warnings: Mutex<Vec<String>>,
    /// Work counters of the workspace (shared with it).
    pub counters: Arc<WorkspaceCounters>,
    /// Event counters.
    pub events: EventCounters,
    /// Set when the handle is being removed.
    pub stopping: AtomicBool,
    /// Wakes the watcher thread.
    pub wake: Mutex<Option<std::sync::mpsc::SyncSender<crate::watch::Msg>>>,
    /// The watcher thread.
    pub thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Event barriers the watcher has seen (see [`Engine::sync_events`]).
    barriers: Mutex<HashSet<Vec<u8>>>,
    /// Set while a restore's own writes may still be arriving as events: they are changes,
    /// but not a mass change by the user.
    pub restoring: AtomicBool,
    barrier_cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WsHandle {
    /// Locks the workspace.
    pub fn workspace(&self) -> MutexGuard<'_, Workspace> {
        lock(&self.ws)
    }

    /// Locks the pending changes.
    pub fn pending(&self) -> MutexGuard<'_, Pending> {
        lock(&self.pending)
    }

    /// The current watch state.
    pub fn state(&self) -> WatchState {
        lock(&self.state).clone()
    }

    /// Sets the watch state.
    pub fn set_state(&self, s: WatchState) {
        *lock(&self.state) = s;
    }

    /// The watcher's warnings.
    pub fn warnings(&self) -> Vec<String> {
        lock(&self.warnings).clone()
    }

    /// The watcher saw the barrier file `name`.
    pub fn barrier_seen(&self, name: Vec<u8>) {
        lock(&self.barriers).insert(name);
        self.barrier_cv.notify_all();
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
}

/// The daemon's state.
#[derive(Debug)]
pub struct Engine {
    /// The store.
    pub store: Store,
    workspaces: RwLock<HashMap<u64, Arc<WsHandle>>>,
    /// Held through `watch`: two calls for one folder must not both open its workspace.
    watch_lock: Mutex<()>,
    events: broadcast::Sender<EngineEvent>,
    /// When the daemon started.
    pub started: Instant,
    /// Defaults for new workspaces.
    pub defaults: WatchOptions,
    /// Seconds between stat-walks in polling mode.
    pub poll_interval: Duration,
    /// The socket served.
    pub socket: PathBuf,
    /// When the mass-change tripwire fires.
    pub tripwire: crate::watch::tripwire::Thresholds,
}

impl Engine {
    /// An engine over an open store.
    pub fn new(
        store: Store,
        defaults: WatchOptions,
        poll_interval: Duration,
        socket: PathBuf,
    ) -> Arc<Engine> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(Engine {
            store,
            workspaces: RwLock::new(HashMap::new()),
            watch_lock: Mutex::new(()),
            events,
            started: Instant::now(),
            defaults,
            poll_interval,
            socket,
            tripwire: crate::watch::tripwire::Thresholds::default(),
        })
    }

    /// Subscribes to events.
    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.events.subscribe()
    }

    /// Sends an event to subscribers (none listening is fine).
    pub fn emit(&self, e: EngineEvent) {
        let _ = self.events.send(e);
    }

    /// The watched workspaces.
    pub fn handles(&self) -> Vec<Arc<WsHandle>> {
        let mut v: Vec<_> = self
            .workspaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.root.cmp(&b.root));
        v
    }

    /// The path of a watched workspace, from memory (no catalog read).
    pub fn watched_path(&self, id: u64) -> Option<String> {
        self.workspaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|h| h.root.display().to_string())
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
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "{path} is not inside a watched workspace; run `chkptctl watch` there first"
                ))
            })
    }

    /// The workspace record for `path`, watched or not (snapshots outlive watching).
    pub fn record_for(&self, path: &str) -> Result<WorkspaceRecord> {
        if let Ok(h) = self.handle_for(path) {
            return Ok(h.workspace().record().clone());
        }
        let p = Path::new(path);
        let canon = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        self.store
            .cat
            .workspaces()?
            .into_iter()
            .filter(|w| canon.starts_with(Path::new(std::ffi::OsStr::from_bytes(&w.path))))
            .max_by_key(|w| w.path.len())
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "{path} is not inside a workspace; run `chkptctl watch` there first"
                ))
            })
    }

    // ---- watching

    /// Starts watching `path` with `opts`: registers it, takes its baseline snapshot, starts the
    /// watcher. Watching an already watched folder updates its options.
    pub fn watch(
        self: &Arc<Self>,
        path: &Path,
        opts: WatchOptions,
    ) -> Result<(WorkspaceRecord, SnapshotRecord)> {
        let _one_at_a_time = lock(&self.watch_lock);
        let t0 = Instant::now();
        let record = crate::workspace::register(&self.store, path, opts)?;
        if let Some(h) = self
            .workspaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&record.id)
            .cloned()
        {
            self.stop_watcher(&h);
            h.workspace().set_record(&self.store, record.clone());
            // Watch again before walking, so nothing changed in between is missed.
            crate::watch::start(self, &h);
            let snap = self.save_now(&h, Trigger::Auto, "", false, true)?.snapshot;
            return Ok((record, snap));
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
        let handle = Arc::new(WsHandle {
            id: record.id,
            root: ws.root().to_path_buf(),
            counters: ws.counters.clone(),
            ws: Mutex::new(ws),
            pending: Mutex::new(Pending {
                full: true,
                ..Default::default()
            }),
            state: Mutex::new(WatchState::Rescanning),
            warnings: Mutex::new(Vec::new()),
            events: EventCounters::default(),
            stopping: AtomicBool::new(false),
            wake: Mutex::new(None),
            thread: Mutex::new(None),
            barriers: Mutex::new(HashSet::new()),
            restoring: AtomicBool::new(false),
            barrier_cv: Condvar::new(),
        });
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
        // Watch first, then walk: a change during the baseline walk is caught either way.
        crate::watch::start(self, &handle);
        self.workspaces
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.id, handle.clone());
        let first = self.store.cat.latest(record.id)?.is_none();
        if !first {
            // Whatever changed while nobody watched was seen only by this walk.
            handle.pending().rescan_reason =
                Some("changes made while chkptd was not watching".into());
        }
        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            "watch: watcher started"
        );
        let outcome = self.save_now(
            &handle,
            Trigger::Auto,
            if first { "baseline" } else { "" },
            false,
            true,
        )?;
        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            "watch: baseline saved"
        );
        Ok((record, outcome.snapshot))
    }

    /// Re-watches the workspaces watched before a restart, reconciling each with a stat-walk.
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
                retention: record.retention,
            };
            if let Err(e) = self.watch(&path, opts) {
                tracing::warn!(workspace = %path.display(), error = %e, "could not re-watch");
            }
        }
        Ok(())
    }

    /// Stops watching; snapshots are kept.
    pub fn unwatch(&self, path: &str) -> Result<WorkspaceRecord> {
        let h = self.handle_for(path)?;
        self.stop_watcher(&h);
        self.workspaces
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&h.id);
        let mut record = match self.store.cat.workspace(h.id)? {
            Some(r) => r,
            None => h.workspace().record().clone(),
        };
        record.watched = false;
        self.store.cat.put_workspace(&record)?;
        self.store.flush()?;
        Ok(record)
    }

    fn stop_watcher(&self, h: &WsHandle) {
        h.stopping.store(true, Ordering::SeqCst);
        if let Some(tx) = lock(&h.wake).take() {
            let _ = tx.try_send(crate::watch::Msg::Stop);
        }
        if let Some(t) = lock(&h.thread).take() {
            let _ = t.join();
        }
        h.stopping.store(false, Ordering::SeqCst);
    }

    /// Stops every watcher (finishing a save in flight) and flushes the store.
    pub fn shutdown(&self) {
        for h in self.handles() {
            self.stop_watcher(&h);
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final catalog flush failed");
        }
    }

    // ---- safety nets

    /// A mass change is under way: pins the snapshot from before it, records the tripwire (shown
    /// by `Status` until acknowledged) and tells subscribers.
    pub fn fire_tripwire(
        &self,
        h: &WsHandle,
        pre_burst: Option<u64>,
        changed: u64,
    ) -> Result<TripwireRecord> {
        let mut pinned = None;
        if let Some(id) = pre_burst
            && let Some(mut s) = self.store.cat.snapshot(id)?
        {
            s.pinned = true;
            self.store.cat.put_snapshot(&s)?;
            pinned = Some(id);
        }
        let trip = TripwireRecord {
            pinned,
            changed,
            fired_us: now_us(),
        };
        if let Some(mut record) = self.store.cat.workspace(h.id)? {
            record.tripwire = Some(trip);
            self.store.cat.put_workspace(&record)?;
        }
        self.store.flush()?;
        let msg = format!(
            "mass-change tripwire: {changed} files deleted or rewritten in {}; snapshot {} from just before is pinned",
            h.root.display(),
            pinned
                .map(|p| format!("{p:016x}"))
                .unwrap_or_else(|| "(none)".into())
        );
        tracing::warn!("{msg}");
        self.emit(EngineEvent::Tripwire(h.id, trip));
        Ok(trip)
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

    /// Applies a workspace's retention policy and collects the garbage of what it removed.
    pub fn apply_retention(&self, h: &WsHandle) -> Result<usize> {
        let Some(record) = self.store.cat.workspace(h.id)? else {
            return Ok(0);
        };
        let snaps = self.store.cat.snapshots_of(h.id, None, usize::MAX)?;
        let decisions = crate::retention::decide(&snaps, &record.retention, now_us());
        let mut removed = 0;
        for (s, keep, _) in &decisions {
            if !keep {
                self.store.cat.remove_snapshot(s)?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.store.flush()?;
            let report = self.store.gc()?;
            tracing::info!(workspace = %h.root.display(), removed, reclaimed = report.bytes_reclaimed, "retention applied");
        }
        Ok(removed)
    }

    // ---- saving

    /// Makes sure every change made before this call is in `h`'s pending set: writes a barrier
    /// file in the workspace and waits until the watcher reports it (inotify delivers events in
    /// order). When that cannot be done (not watching, read-only folder, no answer within 2 s)
    /// the pending set is marked for a full stat-walk instead, which is always right.
    pub fn sync_events(&self, h: &WsHandle) {
        if h.state() != WatchState::Watching || lock(&h.wake).is_none() {
            h.pending().full = true;
            return;
        }
        let name = format!(
            ".chkpt-sync-{:016x}.tmp",
            xxhash_rust::xxh3::xxh3_64(&now_us().to_le_bytes()) ^ h.id
        );
        let path = h.root.join(&name);
        if let Err(e) = std::fs::write(&path, b"") {
            tracing::debug!(workspace = %h.root.display(), error = %e, "no event barrier; stat-walking instead");
            h.pending().full = true;
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut seen = lock(&h.barriers);
        let synced = loop {
            if seen.remove(name.as_bytes()) {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            seen = h
                .barrier_cv
                .wait_timeout(seen, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        };
        drop(seen);
        let _ = std::fs::remove_file(&path);
        if !synced {
            tracing::warn!(workspace = %h.root.display(), "the watcher did not report the event barrier; stat-walking instead");
            h.pending().full = true;
        }
    }

    /// Takes a snapshot of `h` with the pending changes. `full` forces a stat-walk.
    pub fn save_now(
        &self,
        h: &WsHandle,
        trigger: Trigger,
        message: &str,
        pin: bool,
        full: bool,
    ) -> Result<SaveOutcome> {
        let mut ws = h.workspace();
        let (changes, rescan) = h.pending().take();
        let changes = if full { Changes::Full } else { changes };
        let mut opts = SaveOptions::new(trigger, changes.clone());
        opts.message = message.to_owned();
        opts.pin = pin;
        opts.rescan = rescan;
        if matches!(changes, Changes::Full) {
            h.set_state(WatchState::Rescanning);
        }
        let res = ws.save(&self.store, &opts);
        // A stat-walk (restart, re-watch, rescan) or a large save leaves much freed memory.
        let full = matches!(opts.changes, Changes::Full);
        if full
            || res
                .as_ref()
                .is_ok_and(|o| o.created && o.snapshot.new_bytes > HEAVY_BYTES)
        {
            self.store.release_memory();
        }
        let recheck = ws.take_new_dirs();
        drop(ws);
        if !recheck.is_empty()
            && let Some(tx) = lock(&h.wake).as_ref()
        {
            // Files created in a new directory before the kernel watched it send no event:
            // list those directories again on the next save.
            let _ = tx.try_send(crate::watch::Msg::Paths(
                recheck,
                crate::watch::tripwire::PathChange::Other,
            ));
        }
        match &res {
            Ok(out) => {
                if matches!(h.state(), WatchState::Rescanning | WatchState::Failed(_)) {
                    h.set_state(WatchState::Watching);
                }
                if out.created {
                    h.events.snapshots.fetch_add(1, Ordering::Relaxed);
                    self.emit(EngineEvent::SnapshotTaken(out.snapshot.clone()));
                    for w in &out.snapshot.warnings {
                        h.warn(w.clone());
                    }
                }
            }
            Err(e) => {
                h.pending().restore(changes, rescan);
                if let Error::FailedPrecondition(msg) = e {
                    h.set_state(WatchState::Failed(msg.clone()));
                } else if matches!(h.state(), WatchState::Rescanning) {
                    h.set_state(WatchState::Watching);
                }
                self.emit(EngineEvent::Warning(h.id, format!("save failed: {e}")));
            }
        }
        res
    }

    /// A manual save of the workspace containing `path`.
    pub fn save(&self, path: &str, message: &str, pin: bool) -> Result<SaveOutcome> {
        let h = self.handle_for(path)?;
        self.sync_events(&h);
        self.save_now(&h, Trigger::Manual, message, pin, false)
    }

    // ---- reading

    /// Resolves a snapshot selector within a workspace: a full id, a unique id prefix,
    /// `latest`, `latest~N`, `@10m`/`@2h`/`@1d`/`@1w`/`@30s`, or `@YYYY-MM-DDTHH:MM[:SS]`
    /// (local time).
    pub fn resolve(&self, ws: u64, selector: &str) -> Result<SnapshotRecord> {
        let sel = selector.trim();
        let not_found = |what: String| Error::NotFound(what);
        if sel.is_empty() || sel == "latest" {
            return self
                .store
                .cat
                .latest(ws)?
                .ok_or_else(|| not_found("this workspace has no snapshot yet".into()));
        }
        if let Some(n) = sel.strip_prefix("latest~") {
            let n: usize = n.parse().map_err(|_| {
                Error::InvalidArgument(format!("{sel:?}: expected latest~N with N a number"))
            })?;
            let want = n.saturating_add(1);
            let mut list = self.store.cat.snapshots_of(ws, None, want)?;
            return if list.len() == want {
                list.pop().ok_or_else(|| not_found(sel.into()))
            } else {
                Err(not_found(format!(
                    "{sel}: the workspace has only {} snapshots",
                    list.len()
                )))
            };
        }
        if let Some(when) = sel.strip_prefix('@') {
            let at_us = parse_when(when)?;
            return self
                .store
                .cat
                .snapshots_of(ws, Some(at_us), 1)?
                .pop()
                .ok_or_else(|| not_found(format!("no snapshot at or before {sel}")));
        }
        if !sel.bytes().all(|b| b.is_ascii_hexdigit()) || sel.len() > 16 {
            return Err(Error::InvalidArgument(format!(
                "{sel:?} is not a snapshot: use an id, a unique id prefix, latest, latest~N, @10m or @2026-11-24T10:00"
            )));
        }
        let sel = sel.to_ascii_lowercase();
        let mut hits: Vec<SnapshotRecord> = self
            .store
            .cat
            .snapshots_with_prefix(&sel, 1000)?
            .into_iter()
            .filter(|s| s.workspace == ws)
            .collect();
        match hits.len() {
            0 => Err(not_found(format!("no snapshot {sel} in this workspace"))),
            1 => Ok(hits.remove(0)),
            n => Err(Error::InvalidArgument(format!(
                "{sel} is ambiguous: {n} snapshots start with it; type more digits"
            ))),
        }
    }

    /// Turns a path from a request (relative to the workspace, or absolute inside it) into a
    /// checked relative path.
    pub fn rel_path(&self, root: &Path, raw: &[u8]) -> Result<Vec<u8>> {
        if raw.contains(&0) {
            return Err(Error::InvalidArgument("a path contains a NUL byte".into()));
        }
        let rel: &[u8] = if raw.starts_with(b"/") {
            let root_b = root.as_os_str().as_bytes();
            match raw.strip_prefix(root_b) {
                Some([]) => b"",
                Some(rest) if rest.starts_with(b"/") => &rest[1..],
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "{} is outside the workspace {}",
                        String::from_utf8_lossy(raw),
                        root.display()
                    )));
                }
            }
        } else {
            raw
        };
        let rel = normalise(rel);
        if !rel.is_empty() {
            validate_rel(&rel)?;
        }
        Ok(rel)
    }

    /// Differences between two snapshots, or a snapshot and the working tree (`to` empty).
    pub fn diff(
        &self,
        path: &str,
        from: &str,
        to: &str,
    ) -> Result<(SnapshotRecord, Option<SnapshotRecord>, Vec<DiffEntry>)> {
        let record = self.record_for(path)?;
        let a = self.resolve(record.id, from)?;
        if !to.is_empty() {
            let b = self.resolve(record.id, to)?;
            let entries = diff::diff(&self.store, Some(a.root), Some(b.root))?;
            return Ok((a, Some(b), entries));
        }
        let h = self.handle_for(path)?;
        let current = self.working_tree(&h)?;
        Ok((
            a.clone(),
            None,
            diff::diff(&self.store, Some(a.root), Some(current))?,
        ))
    }

    /// The working tree's root id, with pending changes applied to the index (they stay
    /// pending, so the auto snapshot still comes).
    fn working_tree(&self, h: &WsHandle) -> Result<Id> {
        self.sync_events(h);
        let mut ws = h.workspace();
        let changes = {
            let p = h.pending();
            if p.full {
                Changes::Full
            } else {
                Changes::Paths(p.paths.iter().cloned().collect())
            }
        };
        ws.working_tree(&self.store, &changes)
    }

    /// Snapshots of a workspace (or all), newest first, after the page token.
    pub fn list(
        &self,
        path: &str,
        all: bool,
        limit: usize,
        page_token: &str,
    ) -> Result<(Vec<SnapshotRecord>, String)> {
        let before = if page_token.is_empty() {
            None
        } else {
            Some(
                page_token
                    .parse::<u64>()
                    .map_err(|_| Error::InvalidArgument("invalid page token".into()))?
                    .saturating_sub(1),
            )
        };
        let limit = if limit == 0 { 100 } else { limit.min(10_000) };
        let mut out = if all {
            let mut v = Vec::new();
            for w in self.store.cat.workspaces()? {
                v.extend(self.store.cat.snapshots_of(w.id, before, limit)?);
            }
            v.sort_by_key(|s| std::cmp::Reverse(s.created_us));
            v.truncate(limit);
            v
        } else {
            let record = self.record_for(path)?;
            self.store.cat.snapshots_of(record.id, before, limit)?
        };
        let token = if out.len() == limit {
            out.last()
                .map(|s| s.created_us.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        out.truncate(limit);
        Ok((out, token))
    }

    /// The entry at a path in a snapshot, and the snapshot.
    pub fn entry_at(
        &self,
        path: &str,
        selector: &str,
        file: &[u8],
    ) -> Result<(SnapshotRecord, crate::store::Entry)> {
        let record = self.record_for(path)?;
        let root = PathBuf::from(std::ffi::OsStr::from_bytes(&record.path));
        let rel = self.rel_path(&root, file)?;
        if rel.is_empty() {
            return Err(Error::InvalidArgument(
                "name a file inside the workspace".into(),
            ));
        }
        let snap = self.resolve(record.id, selector)?;
        let entry = diff::lookup(&self.store, snap.root, &rel)?.ok_or_else(|| {
            Error::NotFound(format!(
                "{} is not in snapshot {}",
                String::from_utf8_lossy(&rel),
                snap.hex_id()
            ))
        })?;
        if entry.kind == Kind::Dir {
            return Err(Error::InvalidArgument(format!(
                "{} is a directory",
                String::from_utf8_lossy(&rel)
            )));
        }
        Ok((snap, entry))
    }

    /// The snapshots in which `file` changed, newest first: (snapshot, change, size).
    pub fn log(
        &self,
        path: &str,
        file: &[u8],
        limit: usize,
    ) -> Result<Vec<(SnapshotRecord, diff::Change, u64)>> {
        let record = self.record_for(path)?;
        let root = PathBuf::from(std::ffi::OsStr::from_bytes(&record.path));
        let rel = self.rel_path(&root, file)?;
        let snaps = self.store.cat.snapshots_of(record.id, None, usize::MAX)?;
        let mut states = Vec::with_capacity(snaps.len());
        let mut cache: HashMap<Id, Option<crate::store::Entry>> = HashMap::new();
        for s in &snaps {
            let e = match cache.get(&s.root) {
                Some(e) => e.clone(),
                None => {
                    let e = diff::lookup(&self.store, s.root, &rel)?;
                    cache.insert(s.root, e.clone());
                    e
                }
            };
            states.push(e.map(|e| (e.kind, e.mode, e.id, e.size)));
        }
        let mut out = Vec::new();
        for (i, s) in snaps.iter().enumerate() {
            let older = states.get(i + 1).cloned().flatten();
            let change = match (&states[i], &older) {
                (Some(_), None) => diff::Change::Added,
                (None, Some(_)) => diff::Change::Deleted,
                (Some(a), Some(b)) if a != b => diff::Change::Modified,
                _ => continue,
            };
            let size = states[i].map(|s| s.3).unwrap_or(0);
            out.push((s.clone(), change, size));
            if limit > 0 && out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    // ---- changing

    /// Restores a snapshot of the workspace containing `path`.
    pub fn restore(
        &self,
        path: &str,
        selector: &str,
        mut opts: RestoreOptions,
        progress: &mut crate::workspace::restore::ProgressFn<'_>,
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
        // The pre-restore snapshot must hold every edit made before the restore was asked for.
        self.sync_events(&h);
        let in_place = !opts.dry_run && opts.to.is_none();
        if in_place {
            h.restoring.store(true, Ordering::SeqCst);
        }
        let mut ws = h.workspace();
        let (changes, rescan) = h.pending().take();
        let res = ws.restore(&self.store, &snap, &opts, &changes, progress);
        self.store.release_memory();
        drop(ws);
        if in_place {
            // Once the watcher has seen past the restore's own writes, it may judge bursts again.
            self.sync_events(&h);
            h.restoring.store(false, Ordering::SeqCst);
        }
        match &res {
            Ok(summary) => {
                if !opts.dry_run && opts.to.is_none() {
                    if summary.pre_restore_snapshot.is_some() {
                        h.events.snapshots.fetch_add(1, Ordering::Relaxed);
                    }
                    self.emit(EngineEvent::RestoreDone(h.id, summary.clone()));
                } else {
                    h.pending().restore(changes, rescan);
                }
            }
            Err(_) => h.pending().restore(changes, rescan),
        }
        res
    }

    /// Deletes snapshots, then collects garbage. Returns the ids deleted and bytes reclaimed.
    pub fn delete(&self, path: &str, selectors: &[String]) -> Result<(Vec<SnapshotRecord>, u64)> {
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
        for s in &snaps {
            self.store.cat.remove_snapshot(s)?;
        }
        self.store.flush()?;
        let report = self.store.gc()?;
        Ok((snaps, report.bytes_reclaimed))
    }

    /// Sets or clears a snapshot's pin.
    pub fn pin(&self, path: &str, selector: &str, pinned: bool) -> Result<SnapshotRecord> {
        let record = self.record_for(path)?;
        let mut s = self.resolve(record.id, selector)?;
        s.pinned = pinned;
        self.store.cat.put_snapshot(&s)?;
        self.store.flush()?;
        Ok(s)
    }

    /// Applies a retention policy (or previews it). Returns each decision and bytes reclaimed.
    pub fn prune(
        &self,
        path: &str,
        policy: &crate::retention::Policy,
        dry_run: bool,
    ) -> Result<(Vec<crate::retention::Decision>, u64)> {
        let record = self.record_for(path)?;
        // A request that sets no rule means the workspace's own policy.
        let policy = if *policy == crate::retention::Policy::default() {
            record.retention
        } else {
            *policy
        };
        let snaps = self.store.cat.snapshots_of(record.id, None, usize::MAX)?;
        let decisions = crate::retention::decide(&snaps, &policy, now_us());
        if dry_run {
            return Ok((decisions, 0));
        }
        for (s, keep, _) in &decisions {
            if !keep {
                self.store.cat.remove_snapshot(s)?;
            }
        }
        self.store.flush()?;
        let reclaimed = if decisions.iter().any(|d| !d.1) {
            self.store.gc()?.bytes_reclaimed
        } else {
            0
        };
        Ok((decisions, reclaimed))
    }
}

/// A save that added more than this gives memory back afterwards.
const HEAVY_BYTES: u64 = 64 << 20;

/// Removes event-barrier files a crash left in a workspace's root.
fn remove_stale_barriers(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
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

/// Parses the part after `@` of a time selector into µs since the epoch.
pub fn parse_when(when: &str) -> Result<u64> {
    let bad = || {
        Error::InvalidArgument(format!(
            "@{when}: use @30s, @10m, @2h, @1d, @1w or @2026-11-24T10:00"
        ))
    };
    if let Some(unit) = when.chars().last().filter(|c| c.is_ascii_alphabetic())
        && when[..when.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && when.len() > 1
    {
        let n: u64 = when[..when.len() - 1].parse().map_err(|_| bad())?;
        let unit_secs: u64 = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        // Further back than the epoch simply means "before everything".
        let back_us = n.saturating_mul(unit_secs).saturating_mul(1_000_000);
        return Ok(now_us().saturating_sub(back_us));
    }
    // YYYY-MM-DDTHH:MM[:SS], local time.
    let (date, time) = when.split_once(['T', ' ']).ok_or_else(bad)?;
    let d: Vec<i32> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    let t: Vec<i32> = time
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    if d.len() != 3 || !(2..=3).contains(&t.len()) {
        return Err(bad());
    }
    // SAFETY: a zeroed tm is a valid input to mktime, which normalises the fields we set.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = d[0] - 1900;
    tm.tm_mon = d[1] - 1;
    tm.tm_mday = d[2];
    tm.tm_hour = t[0];
    tm.tm_min = t[1];
    tm.tm_sec = t.get(2).copied().unwrap_or(0);
    tm.tm_isdst = -1;
    // SAFETY: tm is a valid, initialised struct.
    let secs = unsafe { libc::mktime(&mut tm) };
    if secs < 0 {
        return Err(bad());
    }
    Ok((secs as u64)
        .saturating_mul(1_000_000)
        .saturating_add(999_999))
}
