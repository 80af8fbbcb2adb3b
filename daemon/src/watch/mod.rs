//! The event source: for one workspace, places the kernel watch and turns what the kernel says
//! into dirty paths, rescan requests and barrier sightings. It knows nothing of saving: the
//! engine's autosave worker consumes what it reports (see `engine::autosave`).
//!
//! The notify callback does no I/O: it turns each event into relative paths and `try_send`s
//! them to the source's intake thread. A full channel, or notify's rescan flag, marks the
//! workspace for a full stat-walk, so a lost event is never a lost change. The intake thread
//! filters (ignored paths, chkpt's own files), records dirty paths in the workspace's [`Feed`]
//! and tells the worker that something changed; it never waits for a save.
//!
//! Event barriers (see [`Feed::sync`]): a file written by the engine whose event, delivered in
//! order with every other, proves that every change made before it is in the feed.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use notify::event::{ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::workspace::rules::{self, Rules};

/// The prefix of event-barrier files.
pub const BARRIER_PREFIX: &[u8] = b".chkpt-sync-";

/// Events buffered between notify's thread and the intake thread.
const CHANNEL: usize = 16 * 1024;

/// What an event did to a path (the tripwire's view of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathChange {
    /// Created (a new file is not a loss).
    Created,
    /// Removed, renamed away or its content rewritten.
    Destructive,
    /// Anything else (metadata, renamed in, …).
    Other,
}

/// What the source tells the workspace's autosave worker. Dirty paths themselves are already
/// in the [`Feed`] when a notice arrives.
#[derive(Debug)]
pub enum Notice {
    /// These paths changed (already recorded as dirty); `during_restore` is set when a
    /// restore's own writes may be among them.
    Changed {
        /// The paths, and how each changed.
        paths: Vec<(Vec<u8>, PathChange)>,
        /// A restore was writing when the events arrived.
        during_restore: bool,
    },
    /// Events were lost or the rules changed: the next save walks everything.
    Rescan(String),
    /// The engine asks the worker to stop (after a save in flight).
    Stop,
}

/// Why a kernel watch could not be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchFailure {
    /// The kernel has no inotify watches left for this user.
    OutOfWatches,
    /// Anything else (the folder vanished, permissions…).
    Other(String),
}

/// Changes the source saw and the engine has not yet consumed, one per workspace.
#[derive(Debug, Default)]
pub struct Dirty {
    /// Dirty paths, relative.
    pub paths: BTreeSet<Vec<u8>>,
    /// Events were lost: the next save must stat-walk everything.
    pub full: bool,
    /// Why a rescan is needed (recorded on the next snapshot).
    pub rescan_reason: Option<String>,
}

impl Dirty {
    /// How many changes wait.
    pub fn len(&self) -> usize {
        self.paths.len() + usize::from(self.full)
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks everything dirty, for `reason` when it is the first one.
    pub fn rescan(&mut self, reason: impl Into<String>) {
        self.full = true;
        self.rescan_reason.get_or_insert_with(|| reason.into());
    }
}

/// Counters of what the source received.
#[derive(Debug, Default)]
pub struct FeedCounters {
    /// Events received.
    pub received: AtomicU64,
    /// Events under ignored paths.
    pub ignored: AtomicU64,
    /// Full rescans requested.
    pub rescans: AtomicU64,
}

/// What a workspace's sources (one at a time; a re-watch starts a new one) have reported: the
/// dirty set, the barriers seen, and counters. Outlives any one source.
#[derive(Debug, Default)]
pub struct Feed {
    dirty: Mutex<Dirty>,
    /// Barrier names being waited for, and whether each was seen.
    barriers: Mutex<HashMap<Vec<u8>, bool>>,
    barrier_seen: Condvar,
    /// Set while a restore's own writes may still be arriving as events.
    restoring: AtomicBool,
    /// Set while a kernel watch delivers events (a barrier can then be seen).
    live: AtomicBool,
    /// Counters.
    pub counters: FeedCounters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Feed {
    /// A feed whose first save walks everything.
    pub fn new_full() -> Feed {
        let feed = Feed::default();
        feed.dirty().full = true;
        feed
    }

    /// The dirty set.
    pub fn dirty(&self) -> MutexGuard<'_, Dirty> {
        lock(&self.dirty)
    }

    /// Marks a restore's writes as under way (or over): they are changes, but not a mass
    /// change by the user.
    pub fn set_restoring(&self, on: bool) {
        self.restoring.store(on, Ordering::SeqCst);
    }

    /// Whether a kernel watch is delivering events.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// Makes sure every change made in `root` before this call is in the dirty set: writes a
    /// barrier file and waits until the source reports it (inotify delivers events in order).
    /// Returns false when that cannot be done (no live watch, a read-only folder, no report
    /// within `timeout`); the caller must then walk everything.
    pub fn sync(&self, root: &Path, salt: u64, timeout: Duration) -> bool {
        if !self.is_live() {
            return false;
        }
        let name = format!(
            ".chkpt-sync-{:016x}.tmp",
            xxhash_rust::xxh3::xxh3_64(&crate::workspace::now_us().to_le_bytes()) ^ salt
        );
        let path = root.join(&name);
        let key = name.into_bytes();
        lock(&self.barriers).insert(key.clone(), false);
        if let Err(e) = std::fs::write(&path, b"") {
            tracing::debug!(workspace = %root.display(), error = %e, "no event barrier");
            lock(&self.barriers).remove(&key);
            return false;
        }
        let deadline = Instant::now() + timeout;
        let mut seen = lock(&self.barriers);
        let synced = loop {
            if seen.get(&key) == Some(&true) {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            seen = self
                .barrier_seen
                .wait_timeout(seen, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        };
        // Forgotten before the file goes: its delete event then finds nobody waiting.
        seen.remove(&key);
        drop(seen);
        let _ = std::fs::remove_file(&path);
        if !synced {
            tracing::warn!(workspace = %root.display(), "the watcher did not report the event barrier");
        }
        synced
    }

    /// Records that a barrier's event arrived (only if someone waits for it).
    fn barrier_arrived(&self, name: &[u8]) {
        if let Some(seen) = lock(&self.barriers).get_mut(name) {
            *seen = true;
            self.barrier_seen.notify_all();
        }
    }
}

/// Raw events from notify's thread to the intake thread.
enum Raw {
    Paths(Vec<Vec<u8>>, PathChange),
    Rescan(String),
}

/// A running kernel watch of one workspace and its intake thread. Dropping it stops both.
#[derive(Debug)]
pub struct Source {
    root: PathBuf,
    feed: Arc<Feed>,
    rules: Arc<Rules>,
    notices: Sender<Notice>,
    watcher: Option<RecommendedWatcher>,
    intake: Option<std::thread::JoinHandle<()>>,
    /// Set when the channel from notify was full: events were dropped.
    overflow: Arc<AtomicBool>,
}

impl Source {
    /// A source for `root` reporting into `feed` and `notices`; no watch is placed yet
    /// ([`Source::connect`]).
    pub fn new(root: PathBuf, feed: Arc<Feed>, rules: Arc<Rules>, notices: Sender<Notice>) -> Self {
        Source {
            root,
            feed,
            rules,
            notices,
            watcher: None,
            intake: None,
            overflow: Arc::default(),
        }
    }

    /// Whether a kernel watch is in place.
    pub fn is_connected(&self) -> bool {
        self.watcher.is_some()
    }

    /// Places the kernel watch (again, if it was lost). On a large tree this takes a while:
    /// notify walks it.
    pub fn connect(&mut self) -> Result<(), WatchFailure> {
        self.disconnect();
        let (tx, rx) = mpsc::sync_channel::<Raw>(CHANNEL);
        let watcher = make_watcher(&self.root, tx, self.overflow.clone()).map_err(|e| {
            if is_out_of_watches(&e) {
                WatchFailure::OutOfWatches
            } else {
                WatchFailure::Other(format!("cannot watch {}: {e}", self.root.display()))
            }
        })?;
        let intake = Intake {
            root: self.root.clone(),
            feed: self.feed.clone(),
            rules: self.rules.clone(),
            notices: self.notices.clone(),
            overflow: self.overflow.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("chkpt-intake".into())
            .spawn(move || intake.run(rx))
            .map_err(|e| WatchFailure::Other(format!("could not start the intake thread: {e}")))?;
        self.watcher = Some(watcher);
        self.intake = Some(thread);
        self.feed.live.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Removes the kernel watch; the intake thread ends once it drained what was sent.
    pub fn disconnect(&mut self) {
        self.feed.live.store(false, Ordering::SeqCst);
        // Dropping the watcher drops the channel's sender: the intake thread then ends.
        drop(self.watcher.take());
        if let Some(t) = self.intake.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.disconnect();
    }
}

/// The intake thread: filters raw events into the feed.
struct Intake {
    root: PathBuf,
    feed: Arc<Feed>,
    rules: Arc<Rules>,
    notices: Sender<Notice>,
    overflow: Arc<AtomicBool>,
}

impl Intake {
    fn run(self, rx: Receiver<Raw>) {
        for raw in rx {
            match raw {
                Raw::Paths(paths, change) => self.on_paths(paths, change),
                Raw::Rescan(reason) => self.rescan(reason),
            }
            if self.overflow.swap(false, Ordering::SeqCst) {
                self.rescan("events were dropped (channel full)".into());
            }
        }
        tracing::debug!(workspace = %self.root.display(), "intake stopped");
    }

    fn rescan(&self, reason: String) {
        tracing::info!(workspace = %self.root.display(), %reason, "full rescan");
        self.feed.counters.rescans.fetch_add(1, Ordering::Relaxed);
        {
            let mut d = self.feed.dirty();
            d.full = true;
            d.rescan_reason = Some(reason.clone());
        }
        let _ = self.notices.send(Notice::Rescan(reason));
    }

    fn on_paths(&self, paths: Vec<Vec<u8>>, change: PathChange) {
        let during_restore = self.feed.restoring.load(Ordering::SeqCst);
        let mut changed = Vec::new();
        let mut rules_changed = false;
        for p in paths {
            self.feed.counters.received.fetch_add(1, Ordering::Relaxed);
            if p.starts_with(BARRIER_PREFIX) {
                // Every event before this one is in the feed already.
                self.feed.barrier_arrived(&p);
                continue;
            }
            if rules::is_own_temp(rules::split_last(&p).1) {
                continue;
            }
            if Rules::is_rule_file(&p) {
                rules_changed = true;
                continue;
            }
            if !p.is_empty() && self.rules.check_path(&p, false).is_some() {
                self.feed.counters.ignored.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            changed.push(p);
        }
        if rules_changed {
            // What is included may have changed anywhere below.
            self.rules.invalidate_all();
            self.feed.dirty().full = true;
        }
        if changed.is_empty() && !rules_changed {
            return;
        }
        self.feed.dirty().paths.extend(changed.iter().cloned());
        let paths = changed.into_iter().map(|p| (p, change)).collect();
        let _ = self.notices.send(Notice::Changed {
            paths,
            during_restore,
        });
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
fn make_watcher(
    root: &Path,
    tx: SyncSender<Raw>,
    overflow: Arc<AtomicBool>,
) -> notify::Result<RecommendedWatcher> {
    let root_b = root.as_os_str().as_bytes().to_vec();
    let handler = move |res: notify::Result<Event>| {
        let raw = match res {
            Ok(ev) if ev.need_rescan() => Raw::Rescan("the kernel's event queue overflowed".into()),
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
                Raw::Paths(paths, change)
            }
            Err(e) => Raw::Rescan(format!("watch error: {e}")),
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(raw) {
            // Cannot block here; the intake thread sees the flag after its next message (the
            // channel is full, so there is one).
            overflow.store(true, Ordering::SeqCst);
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

fn is_out_of_watches(e: &notify::Error) -> bool {
    matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
        || matches!(&e.kind, notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::ENOSPC))
}
