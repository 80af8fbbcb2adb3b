//! The running kernel watch of one workspace: notify's watcher, whose callback only converts
//! and forwards, and the intake thread behind it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};

#[cfg(not(target_os = "linux"))]
use notify::Watcher;

use super::intake::{Intake, Kernel};
use super::notifier::{Raw, WatchFailure, is_out_of_watches, make_watcher};
use super::{Feed, Notice};
use crate::workspace::rules::Rules;

/// Events buffered between notify's thread and the intake thread.
const CHANNEL: usize = 16 * 1024;

/// A running kernel watch of one workspace and its intake thread. Dropping it stops both.
#[derive(Debug)]
pub struct Source {
    root: PathBuf,
    feed: Arc<Feed>,
    rules: Arc<Rules>,
    notices: Sender<Notice>,
    kernel: Option<Arc<Mutex<Kernel>>>,
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
            kernel: None,
            intake: None,
            overflow: Arc::default(),
        }
    }

    /// Whether a kernel watch is in place.
    pub fn is_connected(&self) -> bool {
        self.kernel.is_some()
    }

    /// Places the kernel watches (again, if they were lost): on Linux one per included folder
    /// (see [`dirs`](super::dirs)), elsewhere one recursive watch. On a large tree this takes
    /// a while.
    pub fn connect(&mut self) -> Result<(), WatchFailure> {
        self.connect_known(None)
    }

    /// Like [`Source::connect`], but on Linux with `known` (the folders a loaded warm index
    /// names) watches those without listing the tree (see
    /// [`Dirs::watch_known`](super::dirs::Dirs::watch_known)); [`Source::align`] watches
    /// what the index did not know once a walk found it.
    pub fn connect_known(
        &mut self,
        known: Option<std::collections::BTreeSet<Vec<u8>>>,
    ) -> Result<(), WatchFailure> {
        self.disconnect();
        let (tx, rx) = mpsc::sync_channel::<Raw>(CHANNEL);
        let failed = |e: notify::Error| {
            if is_out_of_watches(&e) {
                WatchFailure::OutOfWatches
            } else {
                WatchFailure::Other(format!("cannot watch {}: {e}", self.root.display()))
            }
        };
        let mut watcher = make_watcher(&self.root, tx, self.overflow.clone()).map_err(failed)?;
        #[cfg(target_os = "linux")]
        let kernel = {
            let mut dirs = super::dirs::Dirs::default();
            // Out of watches part way: what was taken goes back with the watcher (other
            // programs need them).
            match known {
                Some(known) => dirs.watch_known(&mut watcher, &self.root, &self.rules, known)?,
                None => {
                    dirs.watch_tree(&mut watcher, &self.root, &self.rules, b"")?;
                }
            }
            if dirs.is_empty() {
                return Err(WatchFailure::Other(format!(
                    "cannot watch {}: it cannot be read",
                    self.root.display()
                )));
            }
            Kernel { watcher, dirs }
        };
        #[cfg(not(target_os = "linux"))]
        let kernel = {
            // FSEvents watches a tree as a whole; what is excluded is filtered by the intake.
            watcher
                .watch(&self.root, notify::RecursiveMode::Recursive)
                .map_err(failed)?;
            Kernel { watcher }
        };
        let kernel = Arc::new(Mutex::new(kernel));
        let intake = Intake {
            root: self.root.clone(),
            feed: self.feed.clone(),
            rules: self.rules.clone(),
            notices: self.notices.clone(),
            overflow: self.overflow.clone(),
            kernel: Arc::downgrade(&kernel),
        };
        intake.count_watches();
        let thread = std::thread::Builder::new()
            .name("chkpt-intake".into())
            .spawn(move || intake.run(rx))
            .map_err(|e| WatchFailure::Other(format!("could not start the intake thread: {e}")))?;
        self.kernel = Some(kernel);
        self.intake = Some(thread);
        self.feed.live.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Brings the watches in line with `want` once a walk after
    /// [`Source::connect_known`] found every folder (see
    /// [`Dirs::align`](super::dirs::Dirs::align)); returns the folders that got a watch just
    /// now. Nothing to do without a watch, or where one watch covers the tree.
    pub fn align(
        &mut self,
        want: std::collections::BTreeSet<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>, WatchFailure> {
        let Some(kernel) = self.kernel.as_ref() else {
            return Ok(Vec::new());
        };
        #[cfg(target_os = "linux")]
        {
            let mut k = crate::sync::lock(kernel);
            let k = &mut *k;
            let res = k.dirs.align(&mut k.watcher, &self.root, &self.rules, want);
            self.feed
                .counters
                .watches
                .store(k.dirs.len() as u64, Ordering::Relaxed);
            res
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (kernel, want);
            Ok(Vec::new())
        }
    }

    /// Removes the kernel watches; the intake thread ends once it drained what was sent.
    pub fn disconnect(&mut self) {
        self.feed.live.store(false, Ordering::SeqCst);
        // Dropping the watcher drops the channel's sender: the intake thread then ends. It
        // holds the watcher only weakly, and only while it changes the watches.
        drop(self.kernel.take());
        if let Some(t) = self.intake.take() {
            let _ = t.join();
        }
        self.feed.counters.watches.store(0, Ordering::Relaxed);
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.disconnect();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::mpsc::{self, Receiver};
    use std::time::Duration;

    use super::*;

    fn source(dir: &Path) -> (Source, Arc<Feed>, Receiver<Notice>) {
        let feed = Arc::new(Feed::default());
        let (tx, rx) = mpsc::channel();
        let rules = Arc::new(Rules::new(dir, &dir.join("no-store"), Default::default()));
        let mut s = Source::new(dir.to_path_buf(), feed.clone(), rules, tx);
        s.connect().unwrap();
        (s, feed, rx)
    }

    #[test]
    fn lost_events_rescan_the_workspace_that_lost_them_and_no_other() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, a_feed, a_rx) = source(a_dir.path());
        let (_b, b_feed, b_rx) = source(b_dir.path());
        // As notify's callback does when A's channel is full.
        a.overflow.store(true, Ordering::SeqCst);
        std::fs::write(a_dir.path().join("f"), b"x").unwrap();
        let rescanned = std::iter::from_fn(|| a_rx.recv_timeout(Duration::from_secs(5)).ok())
            .any(|n| matches!(n, Notice::Rescan(r) if r.contains("dropped")));
        assert!(rescanned, "A rescans");
        assert!(a_feed.dirty().full);
        // Regression: one process-wide flag was cleared by whichever workspace woke first.
        std::fs::write(b_dir.path().join("g"), b"y").unwrap();
        let notice = b_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(notice, Notice::Changed { .. }), "{notice:?}");
        assert!(!b_feed.dirty().full, "B lost nothing");
    }
}
