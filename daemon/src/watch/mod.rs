//! Watching a workspace: notify events become dirty paths, and a per-workspace thread takes an
//! auto snapshot once they settle.
//!
//! The notify callback does no I/O: it turns each event into relative paths and `try_send`s
//! them. A full channel, or notify's rescan flag, marks the workspace for a full stat-walk, so a
//! lost event is never a lost change. When the kernel cannot watch the tree (out of inotify
//! watches) the thread falls back to periodic stat-walks and says so in `Status`.
//!
//! Before an auto snapshot the thread waits while a git operation is half done (bounded by the
//! workspace's `max_delay`), and it watches for mass changes (see [`tripwire`]). After auto
//! snapshots it applies the workspace's retention policy, at most every few minutes.

pub mod debounce;
pub mod tripwire;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use notify::event::{ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use self::debounce::Debouncer;
use self::tripwire::{PathChange, Tripwire};
use crate::engine::{Engine, EngineEvent, WatchState, WsHandle};
use crate::store::catalog::Trigger;
use crate::workspace::git;
use crate::workspace::rules::Rules;

/// Messages to a workspace's watcher thread.
#[derive(Debug)]
pub enum Msg {
    /// Paths (relative) that changed, and how.
    Paths(Vec<Vec<u8>>, PathChange),
    /// Events were lost: stat-walk everything.
    Rescan(String),
    /// Stop (after finishing a save in flight).
    Stop,
}

const CHANNEL: usize = 16 * 1024;
/// How often a workspace whose folder vanished is checked for its return.
const GONE_RECHECK: Duration = Duration::from_secs(10);
/// How often a pending snapshot re-checks whether git is done.
const GIT_POLL: Duration = Duration::from_millis(200);
/// Quiet period for the snapshot after a mass change.
const AFTER_BURST_QUIET: Duration = Duration::from_secs(1);
/// Retention runs after an auto snapshot at most this often.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// Starts watching `h` in a new thread, which places the kernel watch and then debounces and
/// saves. Placing the watch on a large tree takes a while (notify walks it), so it runs beside
/// the stat-walk that usually follows: the workspace is told when the watch is in place, and a
/// full refresh checks again what it looked at before then (see `Workspace::refresh`). The
/// caller must not hold the workspace's lock.
pub fn start(engine: &Arc<Engine>, h: &Arc<WsHandle>) {
    let (tx, rx) = mpsc::sync_channel::<Msg>(CHANNEL);
    *h.wake.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
    let placed = Placed(Arc::default());
    let (idle, max_delay, rules) = {
        let mut ws = h.workspace();
        ws.set_watching(placed.0.clone());
        let r = ws.record();
        (
            Duration::from_millis(r.idle_ms),
            Duration::from_millis(r.max_delay_ms),
            ws.rules().clone(),
        )
    };
    let mut w = Watch {
        git_dir: git::find_git_dir(&h.root),
        tripwire: Tripwire::new(engine.tripwire),
        engine: engine.clone(),
        h: h.clone(),
        tx,
        rules,
        max_delay,
        debounce: Debouncer::new(idle, max_delay),
        watcher: None,
        poll: None,
        next_poll: Instant::now(),
        git_limit: None,
        git_retry: None,
        after_burst: None,
        last_retention: None,
    };
    let thread = std::thread::Builder::new()
        .name(format!("watch-{}", h.id))
        .spawn(move || {
            w.connect();
            drop(placed);
            w.run(rx)
        });
    match thread {
        Ok(t) => *h.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(t),
        Err(e) => h.set_state(WatchState::Failed(format!(
            "could not start the watcher thread: {e}"
        ))),
    }
}

/// Signals that the kernel watch is in place, or could not be placed, when dropped: after
/// `connect`, or when the thread panics or never starts. Waiting for it always ends.
struct Placed(Arc<OnceLock<Instant>>);

impl Drop for Placed {
    fn drop(&mut self) {
        let _ = self.0.set(Instant::now());
    }
}

fn classify(kind: &EventKind) -> Option<PathChange> {
    Some(match kind {
        EventKind::Access(_) => return None,
        EventKind::Create(_) => PathChange::Created,
        EventKind::Remove(_)
        | EventKind::Modify(ModifyKind::Data(_))
        | EventKind::Modify(ModifyKind::Any)
        | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => PathChange::Destructive,
        _ => PathChange::Other,
    })
}

/// Builds the notify watcher; its callback only converts and forwards.
fn make_watcher(root: &Path, tx: SyncSender<Msg>) -> notify::Result<RecommendedWatcher> {
    let root_b = root.as_os_str().as_bytes().to_vec();
    let handler = move |res: notify::Result<Event>| {
        let msg = match res {
            Ok(ev) if ev.need_rescan() => Msg::Rescan("the kernel's event queue overflowed".into()),
            Ok(ev) => {
                let Some(change) = classify(&ev.kind) else {
                    return;
                };
                let paths: Vec<Vec<u8>> = ev
                    .paths
                    .iter()
                    .filter_map(|p| {
                        match p.as_os_str().as_bytes().strip_prefix(root_b.as_slice()) {
                            Some([]) => Some(Vec::new()),
                            Some([b'/', rest @ ..]) => Some(rest.to_vec()),
                            _ => None,
                        }
                    })
                    .collect();
                if paths.is_empty() {
                    return;
                }
                Msg::Paths(paths, change)
            }
            Err(e) => Msg::Rescan(format!("watch error: {e}")),
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(msg) {
            // Cannot block here; the thread notices the overflow flag on its next wake-up.
            OVERFLOW.store(true, Ordering::SeqCst);
        }
    };
    // Symlinks are saved as links, never followed: a watched link to a directory would report
    // that directory's events under the link's path. Only changes are subscribed to: a build or
    // an indexer opening every file would otherwise flood the kernel queue with open events.
    let config = notify::Config::default()
        .with_follow_symlinks(false)
        .with_event_kinds(notify::EventKindMask::CORE);
    let mut w = RecommendedWatcher::new(handler, config)?;
    w.watch(root, RecursiveMode::Recursive)?;
    Ok(w)
}

/// Set when any watcher's channel was full: every workspace rescans (rare and cheap).
static OVERFLOW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn is_out_of_watches(e: &notify::Error) -> bool {
    matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
        || matches!(&e.kind, notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::ENOSPC))
}

/// The watcher thread's state.
struct Watch {
    engine: Arc<Engine>,
    h: Arc<WsHandle>,
    tx: SyncSender<Msg>,
    rules: Arc<Rules>,
    max_delay: Duration,
    debounce: Debouncer,
    tripwire: Tripwire,
    watcher: Option<RecommendedWatcher>,
    poll: Option<Duration>,
    next_poll: Instant,
    git_dir: Option<PathBuf>,
    git_limit: Option<Instant>,
    git_retry: Option<Instant>,
    after_burst: Option<u64>,
    last_retention: Option<Instant>,
}

impl Watch {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let w = &mut self;
        if !w.h.pending().is_empty() {
            w.debounce.change(Instant::now());
        }
        loop {
            let now = Instant::now();
            let mut wait = w
                .debounce
                .deadline()
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(3600));
            if let Some(t) = w.git_retry {
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
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Msg::Paths(paths, change)) => w.on_paths(paths, change),
                Ok(Msg::Rescan(reason)) => w.on_rescan(reason),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if OVERFLOW.swap(false, Ordering::SeqCst) {
                w.on_rescan("events were dropped (channel full)".into());
            }
            if w.h.stopping.load(Ordering::SeqCst) {
                break;
            }
            let now = Instant::now();
            if w.debounce.due(now) && w.git_retry.is_none_or(|t| now >= t) {
                w.on_due(now);
            }
        }
        drop(w.watcher.take());
        tracing::debug!(workspace = %w.h.root.display(), "watcher stopped");
    }

    fn connect(&mut self) {
        let h = &self.h;
        let started = Instant::now();
        match make_watcher(&h.root, self.tx.clone()) {
            Ok(watcher) => {
                tracing::debug!(
                    workspace = %h.root.display(),
                    ms = started.elapsed().as_millis() as u64,
                    "watching"
                );
                self.watcher = Some(watcher);
                self.poll = None;
                // A workspace being (re)watched stays "rescanning" until its first walk is done.
                if h.state() != WatchState::Rescanning {
                    h.set_state(WatchState::Watching);
                }
            }
            Err(e) if is_out_of_watches(&e) => {
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
            Err(e) => {
                let msg = format!("cannot watch {}: {e}", h.root.display());
                tracing::warn!("{msg}");
                h.set_state(WatchState::Failed(msg));
                self.poll = Some(GONE_RECHECK);
            }
        }
    }

    /// Polling mode (or a vanished folder): stat-walk on a timer.
    fn on_poll(&mut self, now: Instant) {
        if !self.h.root.is_dir() {
            self.h.set_state(WatchState::Failed(format!(
                "the folder {} is gone",
                self.h.root.display()
            )));
            return;
        }
        if self.watcher.is_none() && matches!(self.h.state(), WatchState::Failed(_)) {
            self.connect();
        }
        let mut p = self.h.pending();
        p.full = true;
        if self.watcher.is_none() {
            p.rescan_reason
                .get_or_insert_with(|| "polling: changes seen only by a stat-walk".into());
        }
        drop(p);
        self.debounce.change(now);
    }

    fn on_paths(&mut self, paths: Vec<Vec<u8>>, change: PathChange) {
        let h = self.h.clone();
        let now = Instant::now();
        let mut any = false;
        let mut fired = None;
        for p in paths {
            h.events.received.fetch_add(1, Ordering::Relaxed);
            if p.starts_with(BARRIER_PREFIX) {
                // Every event before this one is in `pending` now.
                h.barrier_seen(p);
                continue;
            }
            if is_own_temp(&p) {
                continue;
            }
            if Rules::is_rule_file(&p) {
                // Ignore rules changed: what is included may have changed anywhere below.
                self.rules.invalidate_all();
                h.pending().full = true;
                any = true;
                continue;
            }
            if !p.is_empty() && self.rules.check_path(&p, false).is_some() {
                h.events.ignored.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let engine = &self.engine;
            let latest = || engine.store.cat.latest(h.id).ok().flatten().map(|s| s.id);
            let total = || {
                engine
                    .store
                    .cat
                    .latest(h.id)
                    .ok()
                    .flatten()
                    .map_or(0, |s| s.files)
            };
            let change = if h.restoring.load(Ordering::SeqCst) {
                PathChange::Other
            } else {
                change
            };
            if let Some(f) = self.tripwire.observe(now, &p, change, latest, total) {
                fired = Some(f);
            }
            h.pending().paths.insert(p);
            any = true;
        }
        if let Some((pre_burst, changed)) = fired {
            match self.engine.fire_tripwire(&h, pre_burst, changed) {
                Ok(_) => {
                    self.after_burst = Some(changed);
                    self.debounce.hurry(AFTER_BURST_QUIET);
                }
                Err(e) => {
                    tracing::error!(workspace = %h.root.display(), error = %e, "could not record the tripwire")
                }
            }
        }
        if any {
            self.debounce.change(now);
        }
    }

    fn on_rescan(&mut self, reason: String) {
        let h = &self.h;
        tracing::info!(workspace = %h.root.display(), %reason, "full rescan");
        h.events.rescans.fetch_add(1, Ordering::Relaxed);
        let mut p = h.pending();
        p.full = true;
        p.rescan_reason = Some(reason.clone());
        drop(p);
        self.engine.emit(EngineEvent::Rescan(h.id, reason));
        self.debounce.change(Instant::now());
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
        self.debounce.reset();
        if !h.root.is_dir() {
            h.set_state(WatchState::Failed(format!(
                "the folder {} is gone",
                h.root.display()
            )));
            self.watcher = None;
            self.poll = Some(GONE_RECHECK);
            self.next_poll = Instant::now() + GONE_RECHECK;
            return;
        }
        let message = match self.after_burst.take() {
            Some(n) => format!("after a mass change ({n} files deleted or rewritten)"),
            None => String::new(),
        };
        match self
            .engine
            .save_now(&h, Trigger::Auto, &message, false, false)
        {
            Ok(out) => {
                if out.created
                    && self
                        .last_retention
                        .is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
                {
                    self.last_retention = Some(Instant::now());
                    if let Err(e) = self.engine.apply_retention(&h) {
                        tracing::warn!(workspace = %h.root.display(), error = %e, "retention failed");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(workspace = %h.root.display(), error = %e, "auto snapshot failed");
                h.warn(format!("auto snapshot failed: {e}"));
                if self.watcher.is_none() || matches!(h.state(), WatchState::Failed(_)) {
                    self.watcher = None;
                    self.poll = Some(GONE_RECHECK);
                }
            }
        }
    }
}

/// chkpt's own short-lived files.
fn is_own_temp(rel: &[u8]) -> bool {
    crate::workspace::rules::is_own_temp(crate::workspace::rules::split_last(rel).1)
}

/// The prefix of event-barrier files (see [`Engine::sync_events`](crate::engine::Engine)).
pub const BARRIER_PREFIX: &[u8] = b".chkpt-sync-";
