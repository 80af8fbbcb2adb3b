//! When to take an auto snapshot: a quiet period after the last change, bounded by a maximum
//! wait after the first unsaved one.

use std::time::{Duration, Instant};

/// The debounce state of one workspace.
#[derive(Debug, Clone)]
pub struct Debouncer {
    idle: Duration,
    max_delay: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
    hurry: Option<Duration>,
}

impl Debouncer {
    /// A debouncer with the given quiet period and maximum wait.
    pub fn new(idle: Duration, max_delay: Duration) -> Debouncer {
        Debouncer {
            idle,
            max_delay: max_delay.max(idle),
            first: None,
            last: None,
            hurry: None,
        }
    }

    /// A change arrived at `now`.
    pub fn change(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// Whether changes are waiting.
    pub fn pending(&self) -> bool {
        self.first.is_some()
    }

    /// When the snapshot is due, if anything is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        let idle = self.hurry.map_or(self.idle, |h| h.min(self.idle));
        Some((last + idle).min(first + self.max_delay))
    }

    /// Whether the snapshot is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// A snapshot was taken (or attempted): start over.
    pub fn reset(&mut self) {
        self.first = None;
        self.last = None;
        self.hurry = None;
    }

    /// Until the next snapshot, a shorter quiet period is enough.
    pub fn hurry(&mut self, quiet: Duration) {
        self.hurry = Some(quiet);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_period_then_snapshot() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(d.deadline(), None);
        d.change(t0);
        d.change(t0 + Duration::from_secs(3));
        assert!(!d.due(t0 + Duration::from_secs(7)));
        assert!(d.due(t0 + Duration::from_secs(8)));
        d.reset();
        assert!(!d.pending());
    }

    #[test]
    fn continuous_edits_still_snapshot_by_max_delay() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::from_secs(5), Duration::from_secs(60));
        let mut t = t0;
        while t < t0 + Duration::from_secs(59) {
            d.change(t);
            assert!(!d.due(t));
            t += Duration::from_millis(200);
        }
        d.change(t0 + Duration::from_secs(60));
        assert!(d.due(t0 + Duration::from_secs(60)));
    }
}
