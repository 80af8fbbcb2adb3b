//! Which snapshots a retention policy keeps, and why (modelled on restic's `forget` rules).

use std::collections::HashSet;

use crate::store::catalog::SnapshotRecord;

pub use crate::store::records::Policy;

impl Policy {
    /// All of the last hour, hourly for 24 h, daily for 14 days, weekly for 8 weeks.
    pub const DEFAULT: Policy = Policy {
        keep_last: 0,
        keep_hourly: 24,
        keep_daily: 14,
        keep_weekly: 8,
        keep_within_us: 3_600_000_000,
        max_store_bytes: 0,
    };

    /// This policy, or the default rules when it sets none (a budget alone keeps the default
    /// rules).
    pub fn or_default(self) -> Policy {
        let rules = Policy {
            max_store_bytes: 0,
            ..self
        };
        if rules == Policy::default() {
            Policy {
                max_store_bytes: self.max_store_bytes,
                ..Policy::DEFAULT
            }
        } else {
            self
        }
    }
}

/// What retention decided for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The snapshot.
    pub snapshot: SnapshotRecord,
    /// Whether it stays.
    pub keep: bool,
    /// The rule that keeps it, or why it goes.
    pub reason: String,
}

/// Decides for each snapshot (any order) whether it stays, and the rule that keeps it.
/// Pinned and manual snapshots always stay.
pub fn decide(snaps: &[SnapshotRecord], policy: &Policy, _now_us: u64) -> Vec<Decision> {
    let policy = policy.or_default();
    let mut sorted: Vec<&SnapshotRecord> = snaps.iter().collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.created_us));
    let newest = sorted.first().map(|s| s.created_us).unwrap_or(0);
    let mut hours = HashSet::new();
    let mut days = HashSet::new();
    let mut weeks = HashSet::new();
    let mut out = Vec::with_capacity(sorted.len());
    for (i, s) in sorted.iter().enumerate() {
        let secs = s.created_us / 1_000_000;
        let mut reason = None;
        if s.pinned {
            reason = Some("pinned".to_owned());
        } else if s.saved_by_hand() {
            reason = Some("manual snapshot".to_owned());
        } else if (i as u32) < policy.keep_last {
            reason = Some(format!("keep-last {}", policy.keep_last));
        } else if newest.saturating_sub(s.created_us) < policy.keep_within_us {
            reason = Some(format!(
                "keep-within {}s",
                policy.keep_within_us / 1_000_000
            ));
        }
        // Bucket rules see every snapshot, so the newest in each bucket is the one kept.
        let mut bucket = |set: &mut HashSet<u64>, key: u64, limit: u32, name: &str| {
            if (set.len() as u32) < limit && set.insert(key) && reason.is_none() {
                reason = Some(format!("{name} ({} of {limit})", set.len()));
            }
        };
        bucket(&mut hours, secs / 3600, policy.keep_hourly, "hourly");
        bucket(&mut days, secs / 86_400, policy.keep_daily, "daily");
        bucket(&mut weeks, secs / 604_800, policy.keep_weekly, "weekly");
        let keep = reason.is_some();
        out.push(Decision {
            snapshot: (*s).clone(),
            keep,
            reason: reason.unwrap_or_else(|| "no rule keeps it".to_owned()),
        });
    }
    // The budget: drop the oldest snapshots a rule (not a pin or a manual save) keeps while
    // the bytes the kept ones added exceed it.
    if policy.max_store_bytes > 0 {
        let mut used: u64 = out
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.snapshot.new_bytes)
            .sum();
        // The newest snapshot is the workspace's current state: never dropped.
        for d in out.iter_mut().skip(1).rev() {
            if used <= policy.max_store_bytes {
                break;
            }
            if d.keep && !d.snapshot.pinned && !d.snapshot.saved_by_hand() {
                d.keep = false;
                d.reason = format!("over the store budget of {} bytes", policy.max_store_bytes);
                used -= d.snapshot.new_bytes;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::catalog::Trigger;
    use crate::store::{SnapshotId, WorkspaceId};

    fn snap(id: u64, hours_ago: u64, trigger: Trigger) -> SnapshotRecord {
        let now = 1_000_000 * 3600 * 24 * 400;
        SnapshotRecord {
            id: SnapshotId::new(id),
            workspace: WorkspaceId::new(1),
            created_us: now - hours_ago * 3_600_000_000 - id,
            trigger,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_newest_per_bucket_and_manual_and_pinned() {
        let mut snaps = vec![
            snap(1, 0, Trigger::Auto),
            snap(2, 0, Trigger::Auto),
            snap(3, 5, Trigger::Auto),
            snap(4, 5, Trigger::Auto),
        ];
        snaps.push(snap(5, 1000, Trigger::Manual));
        let mut pinned = snap(6, 2000, Trigger::Auto);
        pinned.pinned = true;
        snaps.push(pinned);
        let policy = Policy {
            keep_hourly: 10,
            ..Default::default()
        };
        let d = decide(&snaps, &policy, 0);
        let kept: Vec<u64> = d
            .iter()
            .filter(|x| x.keep)
            .map(|x| x.snapshot.id.get())
            .collect();
        assert_eq!(kept, vec![1, 3, 5, 6]);
    }
}

#[cfg(test)]
mod agent_tests {
    use super::*;
    use crate::store::catalog::{Tag, Trigger};
    use crate::store::{SnapshotId, WorkspaceId};

    fn tag(k: &str, v: &str) -> Tag {
        Tag {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn agent_checkpoints_follow_the_policy_and_a_note_by_hand_keeps_an_auto_snapshot() {
        let now = 1_000_000 * 3600 * 24 * 400;
        let at = |id: u64, hours_ago: u64, trigger: Trigger| SnapshotRecord {
            id: SnapshotId::new(id),
            workspace: WorkspaceId::new(1),
            created_us: now - hours_ago * 3_600_000_000 - id,
            trigger,
            ..Default::default()
        };
        let newest = at(1, 0, Trigger::Auto);
        let mut agent = at(2, 100, Trigger::Manual);
        agent.tags = vec![tag("agent", "claude-code"), tag("session", "s1")];
        let mut noted_by_hand = at(3, 200, Trigger::Auto);
        noted_by_hand.add_note(now, "before the refactor", &[]);
        let mut noted_by_agent = at(4, 300, Trigger::Auto);
        noted_by_agent.add_note(now, "", &[tag("agent", "claude-code")]);
        let by_hand = at(5, 400, Trigger::Manual);
        let snaps = [newest, agent, noted_by_hand, noted_by_agent, by_hand];
        let policy = Policy {
            keep_last: 1,
            keep_hourly: 1,
            keep_daily: 1,
            keep_weekly: 1,
            ..Default::default()
        };
        let kept: Vec<u64> = decide(&snaps, &policy, 0)
            .iter()
            .filter(|x| x.keep)
            .map(|x| x.snapshot.id.get())
            .collect();
        assert_eq!(kept, vec![1, 3, 5]);
    }
}
