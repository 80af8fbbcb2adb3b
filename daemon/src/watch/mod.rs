//! Watching a workspace: notify events become dirty paths, and a per-workspace thread takes an
//! auto snapshot once they settle.
//!
//! The notify callback does no I/O: it turns each event into relative paths and `try_send`s
//! them. A full channel, or notify's rescan flag, marks the workspace for a full stat-walk, so a
//! lost event is never a lost change. When the kernel cannot watch the tree (out of inotify
//! watches) the thread falls back to periodic stat-walks and says so in `Status`.

pub mod debounce;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use self::debounce::Debouncer;
use crate::engine::{Engine, EngineEvent, WatchState, WsHandle};
use crate::store::catalog::Trigger;
use crate::workspace::rules::Rules;

/// Messages to a workspace's watcher thread.
#[derive(Debug)]
pub enum Msg {
    /// Paths (relative) that changed.
    Paths(Vec<Vec<u8>>),
    /// Events were lost: stat-walk everything.
    Rescan(String),
    /// Stop (after finishing a save in flight).
    Stop,
}

const CHANNEL: usize = 16 * 1024;
/// How often a workspace whose folder vanished is checked for its return.
const GONE_RECHECK: Duration = Duration::from_secs(10);

/// Starts the watcher and its thread for `h`.
pub fn start(engine: &Arc<Engine>, h: &Arc<WsHandle>) {
    let (tx, rx) = mpsc::sync_channel::<Msg>(CHANNEL);
    *h.wake.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
    let engine = engine.clone();
    let handle = h.clone();
    let thread = std::thread::Builder::new()
        .name(format!("watch-{}", h.id))
        .spawn(move || run(engine, handle, tx, rx));
    match thread {
        Ok(t) => *h.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(t),
        Err(e) => h.set_state(WatchState::Failed(format!(
            "could not start the watcher thread: {e}"
        ))),
    }
}

/// Builds the notify watcher; its callback only converts and forwards.
fn make_watcher(root: &Path, tx: SyncSender<Msg>) -> notify::Result<RecommendedWatcher> {
    let root_b = root.as_os_str().as_bytes().to_vec();
    let mut w = notify::recommended_watcher(move |res: notify::Result<Event>| {
        let msg = match res {
            Ok(ev) if ev.need_rescan() => Msg::Rescan("the kernel's event queue overflowed".into()),
            Ok(ev) => {
                if matches!(ev.kind, EventKind::Access(_)) {
                    return;
                }
                let paths: Vec<Vec<u8>> = ev
                    .paths
                    .iter()
                    .filter_map(|p| {
                        let b = p.as_os_str().as_bytes();
                        match b.strip_prefix(root_b.as_slice()) {
                            Some([]) => Some(Vec::new()),
                            Some([b'/', rest @ ..]) => Some(rest.to_vec()),
                            _ => None,
                        }
                    })
                    .collect();
                if paths.is_empty() {
                    return;
                }
                Msg::Paths(paths)
            }
            Err(e) => Msg::Rescan(format!("watch error: {e}")),
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(msg) {
            // Cannot block here; the thread notices the overflow flag on its next message.
            OVERFLOW.store(true, Ordering::SeqCst);
        }
    })?;
    w.watch(root, RecursiveMode::Recursive)?;
    Ok(w)
}

/// Set when any watcher's channel was full: every workspace rescans (rare and cheap).
static OVERFLOW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn is_out_of_watches(e: &notify::Error) -> bool {
    matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
        || matches!(&e.kind, notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::ENOSPC))
}

fn run(engine: Arc<Engine>, h: Arc<WsHandle>, tx: SyncSender<Msg>, rx: mpsc::Receiver<Msg>) {
    let (idle, max_delay, rules) = {
        let ws = h.workspace();
        let r = ws.record();
        (
            Duration::from_millis(r.idle_ms),
            Duration::from_millis(r.max_delay_ms),
            ws.rules().clone(),
        )
    };
    let mut debounce = Debouncer::new(idle, max_delay);
    let mut watcher: Option<RecommendedWatcher> = None;
    let mut poll: Option<Duration> = None;
    let mut next_poll = Instant::now();
    let connect = |h: &WsHandle,
                   watcher: &mut Option<RecommendedWatcher>,
                   poll: &mut Option<Duration>| {
        match make_watcher(&h.root, tx.clone()) {
            Ok(w) => {
                *watcher = Some(w);
                *poll = None;
                h.set_state(WatchState::Watching);
            }
            Err(e) if is_out_of_watches(&e) => {
                let msg = format!(
                    "out of inotify watches: falling back to a stat-walk every {}s; raise fs.inotify.max_user_watches",
                    engine.poll_interval.as_secs()
                );
                tracing::warn!(workspace = %h.root.display(), "{msg}");
                h.warn(msg.clone());
                engine.emit(EngineEvent::Warning(h.id, msg.clone()));
                *poll = Some(engine.poll_interval);
                h.set_state(WatchState::Polling(msg));
            }
            Err(e) => {
                let msg = format!("cannot watch {}: {e}", h.root.display());
                tracing::warn!("{msg}");
                h.set_state(WatchState::Failed(msg));
                *poll = Some(GONE_RECHECK);
            }
        }
    };
    connect(&h, &mut watcher, &mut poll);
    if !h.pending().is_empty() {
        debounce.change(Instant::now());
    }
    loop {
        let now = Instant::now();
        let mut wait = debounce
            .deadline()
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(3600));
        if let Some(p) = poll {
            if now >= next_poll {
                next_poll = now + p;
                if !h.root.is_dir() {
                    h.set_state(WatchState::Failed(format!(
                        "the folder {} is gone",
                        h.root.display()
                    )));
                } else {
                    if watcher.is_none() && matches!(h.state(), WatchState::Failed(_)) {
                        connect(&h, &mut watcher, &mut poll);
                    }
                    let mut p = h.pending();
                    p.full = true;
                    drop(p);
                    debounce.change(now);
                }
            }
            wait = wait.min(next_poll.saturating_duration_since(now));
        }
        match rx.recv_timeout(wait) {
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Ok(Msg::Paths(paths)) => on_paths(&h, &rules, paths, &mut debounce),
            Ok(Msg::Rescan(reason)) => on_rescan(&engine, &h, reason, &mut debounce),
            Err(RecvTimeoutError::Timeout) => {}
        }
        if OVERFLOW.swap(false, Ordering::SeqCst) {
            on_rescan(
                &engine,
                &h,
                "events were dropped (channel full)".into(),
                &mut debounce,
            );
        }
        if h.stopping.load(Ordering::SeqCst) {
            break;
        }
        if debounce.due(Instant::now()) {
            debounce.reset();
            if !h.root.is_dir() {
                h.set_state(WatchState::Failed(format!(
                    "the folder {} is gone",
                    h.root.display()
                )));
                watcher = None;
                poll = Some(GONE_RECHECK);
                next_poll = Instant::now() + GONE_RECHECK;
                continue;
            }
            if let Err(e) = engine.save_now(&h, Trigger::Auto, "", false, false) {
                tracing::warn!(workspace = %h.root.display(), error = %e, "auto snapshot failed");
                h.warn(format!("auto snapshot failed: {e}"));
                if watcher.is_none() || matches!(h.state(), WatchState::Failed(_)) {
                    watcher = None;
                    poll = Some(GONE_RECHECK);
                }
            }
        }
    }
    drop(watcher);
    tracing::debug!(workspace = %h.root.display(), "watcher stopped");
}

fn on_paths(h: &WsHandle, rules: &Rules, paths: Vec<Vec<u8>>, debounce: &mut Debouncer) {
    let mut any = false;
    let mut pending = h.pending();
    for p in paths {
        h.events.received.fetch_add(1, Ordering::Relaxed);
        if is_own_temp(&p) {
            continue;
        }
        if Rules::is_rule_file(&p) {
            // Ignore rules changed: what is included may have changed anywhere below.
            rules.invalidate_all();
            pending.full = true;
            any = true;
            continue;
        }
        if !p.is_empty() && rules.check_path(&p, false).is_some() {
            h.events.ignored.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        pending.paths.insert(p);
        any = true;
    }
    drop(pending);
    if any {
        debounce.change(Instant::now());
    }
}

fn on_rescan(engine: &Engine, h: &WsHandle, reason: String, debounce: &mut Debouncer) {
    tracing::info!(workspace = %h.root.display(), %reason, "full rescan");
    h.events.rescans.fetch_add(1, Ordering::Relaxed);
    let mut p = h.pending();
    p.full = true;
    p.rescan_reason = Some(reason.clone());
    drop(p);
    engine.emit(EngineEvent::Rescan(h.id, reason));
    debounce.change(Instant::now());
}

/// Restore's staged temporary files.
fn is_own_temp(rel: &[u8]) -> bool {
    let name = crate::workspace::rules::split_last(rel).1;
    name.starts_with(b".chkpt-") && name.ends_with(b".tmp")
}
