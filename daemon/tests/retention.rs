//! Retention over a synthetic 60-day history: the policy keeps exactly the expected set,
//! pinned and manual snapshots survive, and garbage collection frees what went.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use chkpt_daemon::engine::Engine;
use chkpt_daemon::retention::Policy;
use chkpt_daemon::store::Store;
use chkpt_daemon::store::catalog::Trigger;
use chkpt_daemon::workspace::restore::RestoreOptions;
use chkpt_daemon::workspace::{Changes, SaveOptions, WatchOptions, Workspace, register};

/// Wednesday 2026-11-25 12:00:00 UTC, in µs.
const BASE_US: u64 = 1_795_608_000_000_000;
const HOUR_US: u64 = 3_600_000_000;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

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
    let (preview, _) = engine.prune(&path, &policy, true).unwrap();
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
    let (decisions, reclaimed) = engine.prune(&path, &policy, false).unwrap();
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
    assert!(
        reclaimed >= 5 * 200_000,
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
    let (decisions, _) = engine.prune(&path, &policy, false).unwrap();
    let kept: Vec<bool> = decisions.iter().map(|d| d.keep).collect();
    assert_eq!(kept, vec![true, true, false, false, false], "{decisions:?}");
}

/// Builds synthetic snapshot records sharing a real snapshot's tree.
struct SnapshotLike;

impl SnapshotLike {
    fn synthetic(
        like: &chkpt_daemon::store::catalog::SnapshotRecord,
        id: u64,
    ) -> chkpt_daemon::store::catalog::SnapshotRecord {
        let mut s = like.clone();
        s.id = id;
        s.new_bytes = 0;
        s.new_blobs = 0;
        s
    }
}
