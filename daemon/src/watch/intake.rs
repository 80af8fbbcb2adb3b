//! The intake thread: filters raw events into the feed and keeps the watches in step with the
//! folders (see [`dirs`](super::dirs)).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};

use notify::RecommendedWatcher;

use super::notifier::{Raw, Shape, WatchFailure};
use super::{Feed, Notice, PathChange, is_barrier};
use crate::sync::lock;
use crate::workspace::rules::{self, PathKind, Rules};

/// notify's watcher and, on Linux, which folders it watches; shared by the source (which
/// places the first watches) and the intake thread (which keeps them in step).
#[derive(Debug)]
pub(super) struct Kernel {
    pub watcher: RecommendedWatcher,
    #[cfg(target_os = "linux")]
    pub dirs: super::dirs::Dirs,
}

pub(super) struct Intake {
    pub root: std::path::PathBuf,
    pub feed: Arc<Feed>,
    pub rules: Arc<Rules>,
    pub notices: Sender<Notice>,
    pub overflow: Arc<AtomicBool>,
    /// Weak: the source owns the watcher, and dropping it is what ends this thread.
    pub kernel: Weak<Mutex<Kernel>>,
}

impl Intake {
    pub fn run(self, rx: Receiver<Raw>) {
        for raw in rx {
            match raw {
                Raw::Paths(paths, change, shape) => self.on_paths(paths, change, shape),
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

    fn on_paths(&self, paths: Vec<Vec<u8>>, change: PathChange, shape: Shape) {
        let during_restore = self.feed.restoring.load(Ordering::SeqCst);
        let mut changed = Vec::new();
        let mut rules_changed = false;
        for p in paths {
            self.feed.counters.received.fetch_add(1, Ordering::Relaxed);
            let name = rules::split_last(&p).1;
            if is_barrier(&p) {
                // Every event before this one is in the feed already.
                self.feed.barrier_arrived(name);
                continue;
            }
            if rules::is_own_temp(name) {
                continue;
            }
            if Rules::is_rule_file(&p) {
                rules_changed = true;
                continue;
            }
            self.follow_folders(&p, shape);
            if !p.is_empty() && self.rules.check_path(&p, PathKind::NotDir).is_some() {
                self.feed.counters.ignored.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            changed.push(p);
        }
        if rules_changed {
            // What is included may have changed anywhere below.
            self.rules.invalidate_all();
            self.feed.dirty().full = true;
            self.reconcile(b"");
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

    /// Watches a folder that appeared, and drops the watches of one that went (rule 4 of
    /// [`dirs`](super::dirs)).
    #[cfg(target_os = "linux")]
    fn follow_folders(&self, rel: &[u8], shape: Shape) {
        use crate::workspace::rules::Exclusion;
        match shape {
            Shape::Same => {}
            Shape::Went => {
                self.with_kernel(|k, root| {
                    k.dirs.remove_tree(&mut k.watcher, root, rel);
                    Ok(())
                });
            }
            Shape::Appeared => {
                let is_dir = std::fs::symlink_metadata(rules::abs(&self.root, rel))
                    .is_ok_and(|m| m.is_dir());
                if !is_dir || rel.is_empty() {
                    return;
                }
                // A folder renamed into place replaces whatever was watched under its name.
                self.with_kernel(|k, root| {
                    k.dirs.remove_tree(&mut k.watcher, root, rel);
                    Ok(())
                });
                match self.rules.check_path(rel, PathKind::Dir) {
                    None => self.reconcile(rel),
                    Some(Exclusion::Dependency("CACHEDIR.TAG" | "pyvenv.cfg"))
                        if self
                            .rules
                            .check_path(rules::split_last(rel).0, PathKind::Dir)
                            .is_none() =>
                    {
                        self.with_kernel(|k, root| {
                            k.dirs.add(&mut k.watcher, root, [rel.to_vec()].into())
                        });
                    }
                    Some(_) => {}
                }
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn follow_folders(&self, _rel: &[u8], _shape: Shape) {}

    /// Brings the watches under `start` in line with the rules. Folders that got a watch
    /// just now may hold files made before it: they are dirty, so the next save lists them.
    #[cfg(target_os = "linux")]
    fn reconcile(&self, start: &[u8]) {
        let rules = self.rules.clone();
        let mut added = Vec::new();
        self.with_kernel(|k, root| {
            added = k.dirs.reconcile(&mut k.watcher, root, &rules, start)?;
            Ok(())
        });
        if added.is_empty() {
            return;
        }
        tracing::debug!(workspace = %self.root.display(), start = %String::from_utf8_lossy(start), added = added.len(), "new folders watched");
        self.feed.dirty().paths.extend(added.iter().cloned());
        let paths = added.into_iter().map(|d| (d, PathChange::Other)).collect();
        let _ = self.notices.send(Notice::Changed {
            paths,
            during_restore: false,
        });
    }

    #[cfg(not(target_os = "linux"))]
    fn reconcile(&self, _start: &[u8]) {}

    /// Runs `f` on the watcher, unless the source is being stopped. A failure to place a watch
    /// (out of inotify watches) is reported: the worker falls back to polling.
    #[cfg(target_os = "linux")]
    fn with_kernel(
        &self,
        f: impl FnOnce(&mut Kernel, &std::path::Path) -> Result<(), WatchFailure>,
    ) {
        let Some(kernel) = self.kernel.upgrade() else {
            return;
        };
        let mut k = lock(&kernel);
        let res = f(&mut k, &self.root);
        self.feed
            .counters
            .watches
            .store(k.dirs.len() as u64, Ordering::Relaxed);
        drop(k);
        if let Err(failure) = res {
            tracing::warn!(workspace = %self.root.display(), ?failure, "a new folder could not be watched");
            self.feed.dirty().rescan("a folder could not be watched");
            let _ = self.notices.send(Notice::WatchLost(failure));
        }
    }

    /// Records how many watches the source holds.
    pub fn count_watches(&self) {
        #[cfg(target_os = "linux")]
        if let Some(kernel) = self.kernel.upgrade() {
            let n = lock(&kernel).dirs.len();
            self.feed
                .counters
                .watches
                .store(n as u64, Ordering::Relaxed);
        }
        #[cfg(not(target_os = "linux"))]
        self.feed.counters.watches.store(1, Ordering::Relaxed);
    }
}
