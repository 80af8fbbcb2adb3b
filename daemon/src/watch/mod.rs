//! The event source: for one workspace, places the kernel watches and turns what the kernel
//! says into dirty paths, rescan requests and barrier sightings. It knows nothing of saving:
//! the engine's autosave worker consumes what it reports (see `engine::autosave`).
//!
//! # Layout
//! - [`source`]: the running kernel watch of one workspace ([`Source`]).
//! - `intake`: the thread that filters raw events into the [`Feed`].
//! - `notifier`: notify's watcher, what its events mean here, and why a watch failed.
//! - `dirs` (Linux): which folders hold a watch: every folder a snapshot includes, none inside
//!   an excluded one (see [`dirs`]'s rules).
//!
//! The notify callback does no I/O: it turns each event into relative paths and `try_send`s
//! them to the source's intake thread. A full channel, or notify's rescan flag, marks the
//! workspace for a full stat-walk, so a lost event is never a lost change. The intake thread
//! filters (ignored paths, chkpt's own files), records dirty paths in the workspace's [`Feed`],
//! keeps the watches in step with the folders, and tells the worker that something changed;
//! it never waits for a save.
//!
//! Event barriers (see [`Feed::sync`]): a file written by the engine whose event, delivered in
//! order with every other, proves that every change made before it is in the feed. It is
//! written inside `.git/` when the workspace is a git repository (tools that watch the working
//! tree do not look there), else in the workspace's root.

#[cfg(target_os = "linux")]
pub mod dirs;
mod intake;
mod notifier;
pub mod source;

use crate::sync::lock;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use self::notifier::WatchFailure;
pub use self::source::Source;

/// The prefix of event-barrier files.
pub const BARRIER_PREFIX: &[u8] = b".chkpt-sync-";

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
    /// The kernel watch could not follow the folders any more (out of inotify watches).
    WatchLost(WatchFailure),
    /// The engine asks the worker to stop (after a save in flight).
    Stop,
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
    /// Kernel watches held now.
    pub watches: AtomicU64,
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
        let root = &barrier_dir(root);
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

    /// Barriers being waited for (none once every sync returned).
    pub fn barriers_waiting(&self) -> usize {
        lock(&self.barriers).len()
    }

    /// Records that a barrier's event arrived (only if someone waits for it); `name` is the
    /// file's name.
    fn barrier_arrived(&self, name: &[u8]) {
        if let Some(seen) = lock(&self.barriers).get_mut(name) {
            *seen = true;
            self.barrier_seen.notify_all();
        }
    }
}

/// Where event barriers of the workspace at `root` are written: its `.git` folder if it is a
/// repository (watched for git awareness, and where no other tool looks), else `root`.
pub fn barrier_dir(root: &Path) -> PathBuf {
    let git = root.join(".git");
    if git.is_dir() {
        git
    } else {
        root.to_path_buf()
    }
}

/// Whether the last component of a relative path names an event barrier.
pub fn is_barrier(rel: &[u8]) -> bool {
    crate::workspace::rules::split_last(rel)
        .1
        .starts_with(BARRIER_PREFIX)
}
