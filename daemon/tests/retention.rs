//! Retention over a synthetic 60-day history: the policy keeps exactly the expected set,
//! pinned and manual snapshots survive, and garbage collection frees what went.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use chkpt_daemon::engine::{Engine, PruneMode};
use chkpt_daemon::retention::{self, Policy};
use chkpt_daemon::store::Store;
use chkpt_daemon::store::catalog::{SnapshotRecord, Trigger};
use chkpt_daemon::workspace::restore::RestoreOptions;
use chkpt_daemon::workspace::{Changes, SaveOptions, WatchOptions, Workspace, register};
use chkpt_testkit::noise;

/// Wednesday 2026-11-25 12:00:00 UTC, in µs.
const BASE_US: u64 = 1_795_608_000_000_000;
const HOUR_US: u64 = 3_600_000_000;

#[test]
fn sixty_days_of_snapshots_are_thinned_exactly_and_gc_frees_the_bytes() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = Workspace::open(
        &store,
        register(&store, ws_dir.path(), WatchOptions::default()).unwrap(),
    )
    .unwrap();
    // Six real snapshots with distinct content; the last one is the workspace's current state.
    let mut real = Vec::new();
    for k in 0..6u64 {
        fs::write(ws_dir.path().join("data.bin"), noise(200_000, k + 1)).unwrap();
        real.push(
            ws.save(&store, &SaveOptions::new(Trigger::Auto, Changes::Full))
                .unwrap()
                .snapshot,
        );
    }
    let cat = store.catalog();
    // A snapshot every 4 hours for 60 days, newest at BASE: index i is i*4 hours old.
    // Indices 100..=104 are the five older real snapshots, index 0 the newest real one; the
    // rest share its tree.
    let newest = real[5].clone();
    for s in &real {
        cat.remove_snapshot(s).unwrap();
    }
    let mut ids = Vec::new();
    for i in 0..360u64 {
        let mut s = match i {
            0 => newest.clone(),
            100..=104 => real[(i - 100) as usize].clone(),
            _ => SnapshotLike::synthetic(&newest, 0x10_0000 + i),
        };
        s.created_us = BASE_US - i * 4 * HOUR_US;
        if i == 200 {
            s.trigger = Trigger::Manual;
        }
        if i == 300 {
            s.pinned = true;
        }
        cat.put_snapshot(&s).unwrap();
        ids.push(s.id);
    }
    store.flush().unwrap();
    let engine = Engine::new(
        store,
        WatchOptions::default(),
        Duration::from_secs(30),
        "unused".into(),
    );

    // keep-within 1h, hourly 24, daily 14, weekly 3 (epoch weeks start on Thursdays).
    let policy = Policy {
        keep_within_us: HOUR_US,
        keep_hourly: 24,
        keep_daily: 14,
        keep_weekly: 3,
        ..Policy::default()
    };
    let path = ws_dir.path().canonicalize().unwrap().display().to_string();
    let (preview, _) = engine.prune(&path, &policy, PruneMode::DryRun).unwrap();
    assert_eq!(
        engine
            .store
            .catalog()
            .snapshots_of(newest.workspace, None, usize::MAX)
            .unwrap()
            .len(),
        360,
        "a dry run removes nothing"
    );
    let (decisions, reclaimed) = engine.prune(&path, &policy, PruneMode::Apply).unwrap();
    assert_eq!(preview, decisions);

    let mut expected: BTreeSet<u64> = (0..24).collect(); // within 1h ⊂ the 24 newest hours
    expected.extend((1..14).map(|k| 4 + 6 * (k - 1))); // newest of each of 13 earlier days
    expected.extend([40, 82]); // newest of the two earlier weeks (Wed 20:00)
    expected.extend([200, 300]); // manual, pinned
    let kept: BTreeSet<u64> = engine
        .store
        .catalog()
        .snapshots_of(newest.workspace, None, usize::MAX)
        .unwrap()
        .iter()
        .map(|s| ids.iter().position(|id| *id == s.id).unwrap() as u64)
        .collect();
    assert_eq!(kept, expected);
    for d in &decisions {
        let (s, keep, reason) = (&d.snapshot, d.keep, &d.reason);
        let i = ids.iter().position(|id| *id == s.id).unwrap();
        match i {
            200 => assert_eq!(reason, "manual snapshot"),
            300 => assert_eq!(reason, "pinned"),
            40 => assert!(reason.starts_with("daily"), "{reason}"),
            82 => assert!(reason.starts_with("weekly"), "{reason}"),
            _ if !keep => assert_eq!(reason, "no rule keeps it"),
            _ => {}
        }
    }
    // All of it but, where dead records are freed in place, the partly live block at either
    // end of a run of them.
    assert!(
        reclaimed >= 5 * 200_000 - 8192,
        "the five pruned real snapshots' data was not freed: {reclaimed}"
    );
    assert!(engine.store.verify(None).unwrap().problems.is_empty());
    let out = tempfile::tempdir().unwrap();
    let opts = RestoreOptions {
        to: Some(out.path().to_path_buf()),
        ..Default::default()
    };
    ws.restore(
        &engine.store,
        &newest,
        &opts,
        &Changes::Full,
        &mut |_, _, _, _| {},
    )
    .unwrap();
    assert_eq!(
        fs::read(out.path().join("data.bin")).unwrap(),
        noise(200_000, 6)
    );
}

#[test]
fn a_store_budget_drops_the_oldest_automatic_snapshots_first() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = Workspace::open(
        &store,
        register(&store, ws_dir.path(), WatchOptions::default()).unwrap(),
    )
    .unwrap();
    for k in 0..5u64 {
        fs::write(ws_dir.path().join("data.bin"), noise(100_000, k + 10)).unwrap();
        ws.save(&store, &SaveOptions::new(Trigger::Auto, Changes::Full))
            .unwrap();
    }
    let engine = Engine::new(
        store,
        WatchOptions::default(),
        Duration::from_secs(30),
        "unused".into(),
    );
    let path = ws_dir.path().canonicalize().unwrap().display().to_string();
    // Every snapshot is within the last hour, so the rules keep all; the budget allows ~2.
    let policy = Policy {
        keep_within_us: HOUR_US,
        max_store_bytes: 250_000,
        ..Policy::default()
    };
    let (decisions, _) = engine.prune(&path, &policy, PruneMode::Apply).unwrap();
    let kept: Vec<bool> = decisions.iter().map(|d| d.keep).collect();
    assert_eq!(kept, vec![true, true, false, false, false], "{decisions:?}");
}

/// Builds synthetic snapshot records sharing a real snapshot's tree.
struct SnapshotLike;

impl SnapshotLike {
    fn synthetic(like: &SnapshotRecord, id: u64) -> SnapshotRecord {
        let mut s = like.clone();
        s.id = chkpt_daemon::store::SnapshotId::new(id);
        s.new_bytes = 0;
        s.new_blobs = 0;
        s
    }
}

/// A snapshot record `hours` hours before [`BASE_US`] (ids break ties: a higher id is older).
fn record(id: u64, hours: u64, trigger: Trigger, pinned: bool, new_bytes: u64) -> SnapshotRecord {
    SnapshotRecord {
        id: chkpt_daemon::store::SnapshotId::new(id),
        workspace: chkpt_daemon::store::WorkspaceId::new(1),
        created_us: BASE_US - hours * HOUR_US - id,
        root: chkpt_daemon::store::Id::default(),
        parent: None,
        trigger,
        message: String::new(),
        pinned,
        files: 0,
        bytes: 0,
        new_blobs: 0,
        new_bytes,
        added: 0,
        modified: 0,
        deleted: 0,
        rescan: false,
        warnings: vec![],
        git_branch: String::new(),
        git_head: String::new(),
        tags: vec![],
        notes: vec![],
        costs: vec![],
    }
}

/// id → (kept, reason), for comparing decisions.
fn decisions(snaps: &[SnapshotRecord], policy: &Policy) -> Vec<(u64, bool, String)> {
    retention::decide(snaps, policy, BASE_US)
        .into_iter()
        .map(|d| (d.snapshot.id.get(), d.keep, d.reason))
        .collect()
}

fn keep(id: u64, reason: &str) -> (u64, bool, String) {
    (id, true, reason.to_owned())
}

fn remove(id: u64) -> (u64, bool, String) {
    (id, false, "no rule keeps it".to_owned())
}

/// The newest snapshot of an hour represents that hour whatever its kind: a manual or pinned
/// one takes the hour's slot (kept as manual or pinned), and the automatic ones beside it in
/// that hour go. The slots left reach further back.
#[test]
fn pinned_and_manual_snapshots_take_the_bucket_slot_of_their_hour() {
    use Trigger::{Auto, Manual};
    let snaps = [
        record(1, 0, Manual, false, 0), // hour 0: manual newest
        record(2, 0, Auto, false, 0),
        record(3, 1, Auto, true, 0), // hour 1: pinned newest
        record(4, 1, Auto, false, 0),
        record(5, 2, Auto, false, 0), // hour 2: the third slot
        record(6, 2, Auto, false, 0),
        record(7, 3, Auto, false, 0), // hour 3: no slot left
    ];
    let policy = Policy {
        keep_hourly: 3,
        ..Policy::default()
    };
    assert_eq!(
        decisions(&snaps, &policy),
        vec![
            keep(1, "manual snapshot"),
            remove(2),
            keep(3, "pinned"),
            remove(4),
            keep(5, "hourly (3 of 3)"),
            remove(6),
            remove(7),
        ]
    );
}

/// keep-last counts the newest snapshots of any kind, and the bucket rules see those too: a
/// snapshot kept by keep-last still takes its hour's and day's slot.
#[test]
fn keep_last_combined_with_buckets_and_keep_within() {
    use Trigger::{Auto, Manual};
    let snaps = [
        record(1, 0, Auto, false, 0),
        record(2, 0, Manual, false, 0),
        record(3, 0, Auto, false, 0),
        record(4, 1, Auto, false, 0),
        record(5, 30, Auto, false, 0),
        record(6, 31, Auto, false, 0),
        record(7, 60, Auto, false, 0),
    ];
    let policy = Policy {
        keep_last: 2,
        keep_hourly: 2,
        keep_daily: 2,
        ..Policy::default()
    };
    assert_eq!(
        decisions(&snaps, &policy),
        vec![
            keep(1, "keep-last 2"), // also hour 0's and day 0's slot
            keep(2, "manual snapshot"),
            remove(3), // hour 0 and day 0 are taken
            keep(4, "hourly (2 of 2)"),
            keep(5, "daily (2 of 2)"), // 30 h ago: the day before
            remove(6),
            remove(7),
        ]
    );
    // keep-within counts from the newest snapshot, and keep-last wins when both apply.
    let policy = Policy {
        keep_last: 1,
        keep_within_us: 2 * HOUR_US,
        ..Policy::default()
    };
    assert_eq!(
        decisions(&snaps, &policy),
        vec![
            keep(1, "keep-last 1"),
            keep(2, "manual snapshot"),
            keep(3, "keep-within 7200s"),
            keep(4, "keep-within 7200s"),
            remove(5),
            remove(6),
            remove(7),
        ]
    );
}

/// A budget smaller than what pinned and manual snapshots added alone: every automatic
/// snapshot goes, oldest first, except the newest (the workspace's current state); pinned and
/// manual ones stay whatever they cost.
#[test]
fn a_budget_smaller_than_the_pinned_and_manual_snapshots_keeps_them_and_the_newest() {
    use Trigger::{Auto, Manual};
    let snaps = [
        record(1, 0, Auto, false, 10),
        record(2, 1, Auto, false, 10),
        record(3, 2, Manual, false, 1000),
        record(4, 3, Auto, true, 1000),
        record(5, 4, Auto, false, 10),
    ];
    let policy = Policy {
        keep_within_us: 24 * HOUR_US,
        max_store_bytes: 500,
        ..Policy::default()
    };
    let over = |id| (id, false, "over the store budget of 500 bytes".to_owned());
    assert_eq!(
        decisions(&snaps, &policy),
        vec![
            keep(1, "keep-within 86400s"),
            over(2),
            keep(3, "manual snapshot"),
            keep(4, "pinned"),
            over(5),
        ]
    );
}
