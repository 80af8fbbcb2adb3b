//! The autosave worker: one thread per watched workspace that owns its event source, the
//! debouncer, the mass-change tripwire, the wait for git and the watch state, and asks the
//! engine for a snapshot once changes settle.
//!
//! Dirty paths reach the workspace's feed on the source's own intake thread, so a save in
//! progress here never delays events or event barriers. When the kernel cannot watch the tree
//! (out of inotify watches) the worker falls back to periodic stat-walks and says so in
//! `Status`; when the folder vanishes it waits for it to come back.
//!
//! Retention runs on the engine's maintenance worker, never here.

pub mod debounce;
pub mod tripwire;

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use self::debounce::Debouncer;
use self::tripwire::{Fired, Tripwire};
use super::registry::WsHandle;
use super::save::SaveRequest;
use super::worker::Worker;
use super::{Engine, EngineEvent, WatchState};
use crate::error::Error;
use crate::watch::{Notice, PathChange, Source, WatchFailure};
use crate::workspace::git;

/// How often a workspace whose folder vanished is checked for its return.
const GONE_RECHECK: Duration = Duration::from_secs(10);
/// How often a pending snapshot re-checks whether git is done.
const GIT_POLL: Duration = Duration::from_millis(200);
/// Quiet period for the snapshot after a mass change.
const AFTER_BURST_QUIET: Duration = Duration::from_secs(1);
/// How often paused automatic snapshots look again for free space.
const SPACE_RECHECK: Duration = Duration::from_secs(1);

/// Starts the autosave worker of `h`, which places the kernel watch and then debounces and
/// saves. Placing the watch on a large tree takes a while (notify walks it), so it runs beside
/// the stat-walk that usually follows: the workspace is told when the watch is in place, and a
/// full refresh checks again what it looked at before then (see `Workspace::refresh`). The
/// caller must not hold the workspace's lock.
///
/// With `known` (a restart: the folders the loaded warm index names), the worker watches those
/// without listing the tree, says `Watching` at once, and then reconciles: the full walk that
/// finds what changed while chkptd was not running runs as an ordinary save, after the watches
/// are in place (so nothing it looks at needs looking at again), and the folders only it found
/// are watched after it (see [`Autosave::reconcile`]).
pub fn start(
    engine: &Arc<Engine>,
    h: &Arc<WsHandle>,
    known: Option<std::collections::BTreeSet<Vec<u8>>>,
) -> Worker {
    let (tx, rx) = mpsc::channel::<Notice>();
    let placed = Placed(Arc::default());
    let (idle, max_delay, rules) = {
        let mut ws = h.workspace(&engine.store);
        ws.set_watching(placed.0.clone());
        let r = ws.record();
        (
            Duration::from_millis(r.idle_ms),
            Duration::from_millis(r.max_delay_ms),
            ws.rules().clone(),
        )
    };
    let source = Source::new(h.root.clone(), h.feed.clone(), rules, tx.clone());
    let mut w = Autosave {
        git_dir: git::find_git_dir(&h.root),
        tripwire: Tripwire::new(engine.tripwire),
        engine: engine.clone(),
        h: h.clone(),
        source,
        idle,
        max_delay,
        debounce: Debouncer::new(idle, max_delay),
        poll: None,
        next_poll: Instant::now(),
        git_limit: None,
        git_retry: None,
        after_burst: None,
        space_retry: None,
        paused_from: None,
    };
    let thread = std::thread::Builder::new()
        .name(format!("autosave-{}", h.id.get()))
        .spawn(move || {
            let reconcile = known.is_some();
            w.connect(known);
            drop(placed);
            if reconcile {
                w.reconcile();
            }
            w.run(rx)
        });
    let thread = match thread {
        Ok(t) => Some(t),
        Err(e) => {
            h.set_state(WatchState::Failed(format!(
                "could not start the watcher thread: {e}"
            )));
            None
        }
    };
    Worker::new(tx, thread)
}

/// Signals that the kernel watch is in place, or could not be placed, when dropped: after
/// `connect`, or when the thread panics or never starts. Waiting for it always ends.
struct Placed(Arc<OnceLock<Instant>>);

impl Drop for Placed {
    fn drop(&mut self) {
        let _ = self.0.set(Instant::now());
    }
}

/// The worker thread's state.
struct Autosave {
    engine: Arc<Engine>,
    h: Arc<WsHandle>,
    source: Source,
    idle: Duration,
    max_delay: Duration,
    debounce: Debouncer,
    tripwire: Tripwire,
    /// Stat-walk on this timer (polling fallback, or waiting for a vanished folder).
    poll: Option<Duration>,
    next_poll: Instant,
    git_dir: Option<std::path::PathBuf>,
    git_limit: Option<Instant>,
    git_retry: Option<Instant>,
    /// A burst fired the tripwire: the next snapshot is the state after it.
    after_burst: Option<Fired>,
    /// Paused for want of free space: when to look again.
    space_retry: Option<Instant>,
    /// The state the pause replaced (polling stays polling once it is over).
    paused_from: Option<WatchState>,
}

impl Autosave {
    fn run(mut self, rx: Receiver<Notice>) {
        let w = &mut self;
        if !w.h.feed.dirty().is_empty() {
            w.debounce.change(Instant::now());
        }
        loop {
            let now = Instant::now();
            let mut wait = w
                .debounce
                .deadline()
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(3600));
            if let Some(t) = w.git_retry.or(w.space_retry) {
                wait = wait.max(t.saturating_duration_since(now));
            }
            if let Some(p) = w.poll {
                if now >= w.next_poll {
                    w.next_poll = now + p;
                    w.on_poll(now);
                }
                wait = wait.min(w.next_poll.saturating_duration_since(now));
            }
            match rx.recv_timeout(wait) {
                Ok(Notice::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Notice::Changed {
                    paths,
                    during_restore,
                }) => w.on_changed(paths, during_restore),
                Ok(Notice::Rescan(reason)) => w.on_rescan(reason),
                Ok(Notice::WatchLost(failure)) => w.on_watch_lost(failure),
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if w.debounce.due(now)
                && w.git_retry.is_none_or(|t| now >= t)
                && w.space_retry.is_none_or(|t| now >= t)
            {
                w.on_due(now);
            }
        }
        w.source.disconnect();
        tracing::debug!(workspace = %w.h.root.display(), "autosave stopped");
    }

    fn connect(&mut self, known: Option<std::collections::BTreeSet<Vec<u8>>>) {
        let started = Instant::now();
        let res = self.source.connect_known(known);
        tracing::debug!(
            workspace = %self.h.root.display(),
            ms = started.elapsed().as_millis() as u64,
            watches = self.h.feed.counters.watches.load(std::sync::atomic::Ordering::Relaxed),
            ok = res.is_ok(),
            "kernel watch placed"
        );
        self.placed(res);
    }

    /// After a restart, once the watches of the folders the index knew are in place: the full
    /// walk that finds what changed while chkptd was not running, as an ordinary save (a change
    /// made meanwhile is recorded by the watches and saved by the next one), then watches for
    /// the folders only the walk found. Those were listed before their watch existed, so they
    /// and what they hold are looked at again by the next save.
    fn reconcile(&mut self) {
        let h = self.h.clone();
        let started = Instant::now();
        let req = SaveRequest::auto(String::new());
        match self.engine.save_now(&h, &req) {
            Ok(out) => {
                if out.created {
                    self.engine.maintenance().retention_due(h.id);
                }
            }
            Err(Error::WorkspaceGone { .. }) => {
                h.set_reconciling(false);
                self.gone();
                return;
            }
            Err(e) => {
                // The changes stay pending (a full walk): the next save tries again.
                tracing::warn!(workspace = %h.root.display(), error = %e, "the walk after the restart failed");
                h.warn(format!("auto snapshot failed: {e}"));
            }
        }
        if self.source.is_connected() {
            let want = h.workspace(&self.engine.store).watch_wanted();
            match self.source.align(want) {
                Ok(added) if !added.is_empty() => {
                    let again = h.workspace(&self.engine.store).recheck_paths(&added);
                    tracing::debug!(workspace = %h.root.display(), folders = added.len(), paths = again.len(), "watched the folders the walk found");
                    h.feed.dirty().paths.extend(again);
                    self.debounce.change(Instant::now());
                }
                Ok(_) => {}
                Err(failure) => self.on_watch_lost(failure),
            }
        }
        h.set_reconciling(false);
        tracing::debug!(
            workspace = %h.root.display(),
            ms = started.elapsed().as_millis() as u64,
            "reconciled after the restart"
        );
    }

    /// The kernel watch could not follow a new folder: poll instead.
    fn on_watch_lost(&mut self, failure: WatchFailure) {
        self.source.disconnect();
        self.placed(Err(failure));
        self.debounce.change(Instant::now());
    }

    /// Sets the watch state after placing the kernel watch.
    fn placed(&mut self, res: Result<(), WatchFailure>) {
        let h = &self.h;
        match res {
            Ok(()) => {
                self.poll = None;
                // A workspace being (re)watched stays "rescanning" until its first walk is done,
                // unless that walk reconciles it while it is watched.
                if h.state() != WatchState::Rescanning || h.is_reconciling() {
                    h.set_state(WatchState::Watching);
                }
            }
            Err(WatchFailure::OutOfWatches) => {
                let msg = format!(
                    "out of inotify watches: falling back to a stat-walk every {}s; raise fs.inotify.max_user_watches",
                    self.engine.poll_interval.as_secs()
                );
                tracing::warn!(workspace = %h.root.display(), "{msg}");
                h.warn(msg.clone());
                self.engine.emit(EngineEvent::Warning(h.id, msg.clone()));
                self.poll = Some(self.engine.poll_interval);
                h.set_state(WatchState::Polling(msg));
            }
            Err(WatchFailure::Other(msg)) => {
                tracing::warn!("{msg}");
                h.set_state(WatchState::Failed(msg));
                self.poll = Some(GONE_RECHECK);
            }
        }
    }

    /// The workspace's folder is gone (deleted, or a disk unmounted): say so once, drop the
    /// watch and look for its return on a timer.
    fn gone(&mut self) {
        let h = &self.h;
        if !matches!(h.state(), WatchState::Missing(_)) {
            let msg = format!(
                "the folder {} is gone; chkpt watches it again, with a full stat-walk, once it is back (snapshots are kept; `chkptctl unwatch` stops this)",
                h.root.display()
            );
            tracing::warn!("{msg}");
            h.warn(msg.clone());
            self.engine.emit(EngineEvent::Warning(h.id, msg.clone()));
            h.set_state(WatchState::Missing(msg));
        }
        self.source.disconnect();
        self.poll = Some(GONE_RECHECK);
        self.next_poll = Instant::now() + GONE_RECHECK;
    }

    /// Polling mode (or a vanished folder): stat-walk on a timer.
    fn on_poll(&mut self, now: Instant) {
        if !self.h.root.is_dir() {
            self.gone();
            return;
        }
        let was_missing = matches!(self.h.state(), WatchState::Missing(_));
        if !self.source.is_connected()
            && matches!(
                self.h.state(),
                WatchState::Missing(_) | WatchState::Failed(_)
            )
        {
            if was_missing {
                tracing::info!(workspace = %self.h.root.display(), "the folder is back; watching it again");
                self.h.set_state(WatchState::Rescanning);
            }
            self.connect(None);
        }
        if was_missing {
            self.h
                .feed
                .dirty()
                .rescan("the folder was gone and came back");
        }
        let mut d = self.h.feed.dirty();
        d.full = true;
        if !self.source.is_connected() {
            d.rescan_reason
                .get_or_insert_with(|| "polling: changes seen only by a stat-walk".into());
        }
        drop(d);
        self.debounce.change(now);
    }

    fn on_changed(&mut self, paths: Vec<(Vec<u8>, PathChange)>, during_restore: bool) {
        let h = self.h.clone();
        let now = Instant::now();
        let mut fired = None;
        let store = &self.engine.store;
        for (p, change) in &paths {
            // git's own churn (gc, repack, a commit) inside an included `.git` is no mass change.
            if crate::workspace::rules::in_git_dir(p) {
                continue;
            }
            let latest = || store.cat.latest(h.id).ok().flatten().map(|s| s.id);
            let total = || store.cat.latest(h.id).ok().flatten().map_or(0, |s| s.files);
            // A restore's own writes are changes, but not a mass change by the user.
            let change = if during_restore {
                PathChange::Other
            } else {
                *change
            };
            if let Some(f) = self.tripwire.observe(now, p, change, latest, total) {
                fired = Some(f);
            }
        }
        if let Some(fired) = fired {
            match self.engine.fire_tripwire(&h, &fired) {
                Ok(_) => {
                    self.after_burst = Some(fired);
                    self.debounce.hurry(AFTER_BURST_QUIET);
                }
                Err(e) => {
                    tracing::error!(workspace = %h.root.display(), error = %e, "could not record the tripwire")
                }
            }
        }
        self.debounce.change(now);
    }

    fn on_rescan(&mut self, reason: String) {
        self.engine.emit(EngineEvent::Rescan(self.h.id, reason));
        self.debounce.change(Instant::now());
    }

    /// Whether there is room for an automatic snapshot. Below the free-space floor they pause
    /// (the changes stay pending, `Status` says why, one `Events` warning goes out) and look
    /// again every [`SPACE_RECHECK`]; they resume by themselves once there is room.
    fn room_to_save(&mut self, now: Instant) -> bool {
        let h = &self.h;
        match self.engine.below_floor() {
            Some(why) => {
                let state = h.state();
                if !matches!(state, WatchState::Paused(_)) {
                    self.paused_from = Some(state);
                    tracing::warn!(workspace = %h.root.display(), "{why}");
                    self.engine.emit(EngineEvent::Warning(h.id, why.clone()));
                    // Dropping old automatic snapshots may be what makes room.
                    self.engine.maintenance().budget_due();
                }
                h.set_state(WatchState::Paused(why));
                self.space_retry = Some(now + SPACE_RECHECK);
                false
            }
            None => {
                if self.space_retry.take().is_some() && matches!(h.state(), WatchState::Paused(_)) {
                    tracing::info!(workspace = %h.root.display(), "free space is back above the floor: automatic snapshots resume");
                    h.set_state(self.paused_from.take().unwrap_or(WatchState::Watching));
                }
                true
            }
        }
    }

    /// The quiet period passed: take the auto snapshot, unless git is half way through
    /// something (then wait, at most `max_delay` longer).
    fn on_due(&mut self, now: Instant) {
        let h = self.h.clone();
        if let Some(why) = self.git_dir.as_deref().and_then(git::busy) {
            let limit = *self.git_limit.get_or_insert(now + self.max_delay);
            if now < limit {
                if self.git_retry.is_none() {
                    tracing::debug!(workspace = %h.root.display(), why, "auto snapshot waits for git");
                }
                self.git_retry = Some(now + GIT_POLL);
                return;
            }
            tracing::warn!(workspace = %h.root.display(), why, "git is still busy; taking the snapshot anyway");
        }
        self.git_limit = None;
        self.git_retry = None;
        if !self.room_to_save(now) {
            return;
        }
        self.debounce.reset();
        if !h.root.is_dir() {
            self.gone();
            return;
        }
        let burst = self.after_burst.take();
        let message = match &burst {
            Some(_) => "after a mass change".to_owned(),
            None => String::new(),
        };
        let req = SaveRequest::auto(message);
        match self.engine.save_now(&h, &req) {
            Ok(out) => {
                if let Some(fired) = burst {
                    if let Err(e) = self.engine.settle_tripwire(&h, &fired, &out.snapshot) {
                        tracing::warn!(workspace = %h.root.display(), error = %e, "could not count the mass change");
                    }
                    // The state after the burst is saved: a new burst is judged from it (unless
                    // the burst goes on, and the save came from the maximum delay).
                    let quiet = AFTER_BURST_QUIET.min(self.idle).mul_f32(0.9);
                    self.tripwire.rearm_if_quiet(Instant::now(), quiet);
                }
                if out.created {
                    self.engine.maintenance().retention_due(h.id);
                }
            }
            Err(Error::WorkspaceGone { .. }) => self.gone(),
            Err(e) => {
                tracing::warn!(workspace = %h.root.display(), error = %e, "auto snapshot failed");
                h.warn(format!("auto snapshot failed: {e}"));
                if !self.source.is_connected() || matches!(h.state(), WatchState::Failed(_)) {
                    self.source.disconnect();
                    self.poll = Some(GONE_RECHECK);
                }
            }
        }
    }
}
