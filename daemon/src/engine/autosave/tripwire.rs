//! The mass-change tripwire: many files deleted or rewritten within a short window (an `rm -rf`
//! in the wrong folder, a runaway agent) fires it once per burst.

use crate::store::SnapshotId;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

pub use crate::watch::PathChange;

/// Thresholds: fire when more than `files` paths, or more than `percent` % of the workspace
/// (and at least 5 paths), were deleted or rewritten within `window`. Firing pins the snapshot
/// from before (which costs nothing); the alarm that `status` shows until `ack` is raised only
/// for a burst of at least `alarm_files` paths, so a small change in a tiny project (5 of its
/// 10 files) needs no acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Absolute count.
    pub files: u64,
    /// Share of the workspace's files, in percent.
    pub percent: u64,
    /// The window.
    pub window: Duration,
    /// The fewest paths a burst must hit to raise the alarm.
    pub alarm_files: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            files: 50,
            percent: 20,
            window: Duration::from_secs(10),
            alarm_files: 20,
        }
    }
}

/// Burst tracking for one workspace.
#[derive(Debug)]
pub struct Tripwire {
    limits: Thresholds,
    recent: VecDeque<(Instant, Vec<u8>)>,
    counts: HashMap<Vec<u8>, usize>,
    created: HashSet<Vec<u8>>,
    last_event: Option<Instant>,
    pre_burst: Option<SnapshotId>,
    fired: bool,
}

impl Tripwire {
    /// A tripwire with these limits.
    pub fn new(limits: Thresholds) -> Tripwire {
        Tripwire {
            limits,
            recent: VecDeque::new(),
            counts: HashMap::new(),
            created: HashSet::new(),
            last_event: None,
            pre_burst: None,
            fired: false,
        }
    }

    /// Records an event. `latest` gives the newest snapshot (asked only when a burst starts),
    /// `total_files` the workspace's size (asked only when the count could matter). Returns
    /// the snapshot before the burst and the paths hit when the tripwire fires.
    pub fn observe(
        &mut self,
        now: Instant,
        path: &[u8],
        change: PathChange,
        latest: impl FnOnce() -> Option<SnapshotId>,
        total_files: impl FnOnce() -> u64,
    ) -> Option<Fired> {
        let quiet = self
            .last_event
            .is_none_or(|t| now.duration_since(t) > self.limits.window);
        self.last_event = Some(now);
        if quiet {
            // A new burst: forget the old one, remember what the workspace was before it.
            self.recent.clear();
            self.counts.clear();
            self.created.clear();
            self.fired = false;
            self.pre_burst = None;
        }
        match change {
            PathChange::Created => {
                self.created.insert(path.to_vec());
                return None;
            }
            PathChange::Other => return None,
            PathChange::Destructive if self.created.contains(path) => return None,
            PathChange::Destructive => {}
        }
        if self.counts.is_empty() {
            // The first loss of this burst: what the workspace was before it.
            self.pre_burst = latest();
        }
        self.recent.push_back((now, path.to_vec()));
        *self.counts.entry(path.to_vec()).or_default() += 1;
        while let Some((t, p)) = self.recent.front() {
            if now.duration_since(*t) <= self.limits.window {
                break;
            }
            if let Some(c) = self.counts.get_mut(p) {
                *c -= 1;
                if *c == 0 {
                    self.counts.remove(p);
                }
            }
            self.recent.pop_front();
        }
        let hit = self.counts.len() as u64;
        if self.fired || hit < 5 {
            return None;
        }
        if hit > self.limits.files || hit * 100 > self.limits.percent * total_files() {
            self.fired = true;
            let mut paths: Vec<Vec<u8>> = self.counts.keys().cloned().collect();
            paths.sort();
            return Some(Fired {
                pre_burst: self.pre_burst,
                paths,
            });
        }
        None
    }
}

impl Tripwire {
    /// Forgets the burst under way if no event came for `quiet`: the state after it is saved,
    /// and the next burst is judged from there.
    pub fn rearm_if_quiet(&mut self, now: Instant, quiet: Duration) {
        if self
            .last_event
            .is_none_or(|t| now.duration_since(t) >= quiet)
        {
            self.last_event = None;
        }
    }
}

/// A burst that fired the tripwire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The newest snapshot from before the burst.
    pub pre_burst: Option<SnapshotId>,
    /// The paths deleted or rewritten in it so far.
    pub paths: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("f{i}").into_bytes()).collect()
    }

    #[test]
    fn fires_once_per_burst_past_fifty_files() {
        let mut t = Tripwire::new(Thresholds::default());
        let t0 = Instant::now();
        let mut fired = Vec::new();
        for (i, p) in paths(120).iter().enumerate() {
            let now = t0 + Duration::from_millis(i as u64);
            if let Some(f) = t.observe(
                now,
                p,
                PathChange::Destructive,
                || Some(SnapshotId::new(7)),
                || 100_000,
            ) {
                fired.push((i, (f.pre_burst.map(SnapshotId::get), f.paths.len() as u64)));
            }
        }
        assert_eq!(fired, vec![(50, (Some(7), 51))]);
        // After a quiet window, a new burst can fire again.
        let later = t0 + Duration::from_secs(30);
        let again = paths(60)
            .iter()
            .filter_map(|p| {
                t.observe(
                    later,
                    p,
                    PathChange::Destructive,
                    || Some(SnapshotId::new(9)),
                    || 100_000,
                )
            })
            .count();
        assert_eq!(again, 1);
    }

    #[test]
    fn small_workspaces_use_the_share_and_new_files_do_not_count() {
        let mut t = Tripwire::new(Thresholds::default());
        let now = Instant::now();
        let mut fired = None;
        for p in paths(30) {
            t.observe(now, &p, PathChange::Created, || None, || 20);
        }
        for p in paths(30) {
            assert!(
                t.observe(now, &p, PathChange::Destructive, || None, || 20)
                    .is_none(),
                "new files are not losses"
            );
        }
        for p in paths(10).iter().map(|p| [b"old-".as_slice(), p].concat()) {
            fired = fired.or(t
                .observe(
                    now,
                    &p,
                    PathChange::Destructive,
                    || Some(SnapshotId::new(1)),
                    || 20,
                )
                .map(|f| (f.pre_burst.map(SnapshotId::get), f.paths.len() as u64)));
        }
        assert_eq!(fired, Some((Some(1), 5)), "5 of 20 files is over 20 %");
    }

    #[test]
    fn slow_edits_never_fire() {
        let mut t = Tripwire::new(Thresholds::default());
        let t0 = Instant::now();
        for (i, p) in paths(200).iter().enumerate() {
            let now = t0 + Duration::from_secs(i as u64);
            assert!(
                t.observe(now, p, PathChange::Destructive, || None, || 100_000)
                    .is_none()
            );
        }
    }
}
