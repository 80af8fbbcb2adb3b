//! SIGTERM while a save is in flight, as `systemctl stop` or a logout sends it: the daemon
//! finishes the save (or abandons it cleanly: the caller gets an error), exits 0, and the
//! next start verifies clean, with every snapshot it lists restoring byte for byte.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod util;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use chkpt_proto::v1 as pb;
use chkpt_testkit::noise;
use util::{Daemon, listing, restore_to, snapshots, wait_for, watch};

/// Bytes in the daemon's pack files.
fn pack_bytes(data: &Path) -> u64 {
    fs::read_dir(data.join("packs"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Writes `n` incompressible files of 1 MiB under `dir`: a save of them takes a while.
fn big_change(dir: &Path, n: u64, seed: u64) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        fs::write(dir.join(format!("f{i:03}.bin")), noise(1 << 20, seed + i)).unwrap();
    }
}

/// Waits until the packs grew by `by` bytes past `from`: a save is writing.
fn wait_until_writing(d: &Daemon, from: u64, by: u64, done: &dyn Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while pack_bytes(&d.data) < from + by {
        assert!(
            !done(),
            "the save ended before it was seen writing: make it larger"
        );
        assert!(
            Instant::now() < deadline,
            "no save started writing:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Stops the daemon with SIGTERM; it must exit 0 within the deadline `Daemon::stop` keeps.
fn sigterm(d: &mut Daemon) {
    let status = tokio::task::block_in_place(|| d.stop());
    assert!(
        status.success(),
        "chkptd exited with {status}:\n{}",
        d.log()
    );
}

/// After a restart: the store verifies clean, and each listed snapshot that the test knows
/// the content of restores to it.
async fn check_after_restart(
    d: &Daemon,
    ws: &Path,
    known: &[(String, util::Listing)],
) -> Vec<pb::Snapshot> {
    let mut c = d.client().await;
    let v = util::verify(&mut c).await;
    assert!(
        v.ok,
        "the next start did not verify clean: {:?}",
        v.problems
    );
    let listed = snapshots(&mut c, ws).await;
    for (id, tree) in known {
        if listed.iter().any(|s| &s.id == id) {
            let out = tempfile::tempdir().unwrap();
            restore_to(&mut c, ws, id, out.path()).await;
            assert!(
                &listing(out.path()) == tree,
                "snapshot {id} does not restore exactly"
            );
        }
    }
    listed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_save_finishes_or_abandons_it_and_the_next_start_verifies_clean() {
    /// Files of 1 MiB per change: a save of them takes long enough to be caught writing.
    const FILES: u64 = 64;
    let mut d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().canonicalize().unwrap();
    fs::write(ws.join("small.txt"), b"saved long ago").unwrap();
    let mut c = d.client().await;
    let baseline = watch(&mut c, &ws, 3_600_000, 3_600_000)
        .await
        .baseline
        .unwrap();
    let mut known = vec![(baseline.id.clone(), listing(&ws))];

    // 1. A manual save in flight: the RPC's answer is a snapshot, or an error.
    big_change(&ws.join("manual"), FILES, 1);
    let tree = listing(&ws);
    let before = pack_bytes(&d.data);
    let mut client = c.clone();
    let w = ws.display().to_string();
    let save = tokio::spawn(async move {
        client
            .save(pb::SaveRequest {
                workspace: w,
                message: "in flight".into(),
                pin: false,
                ..Default::default()
            })
            .await
    });
    wait_until_writing(&d, before, 8 << 20, &|| save.is_finished());
    sigterm(&mut d);
    let outcome = save.await.unwrap();
    println!(
        "figures: SIGTERM during a manual save: {}",
        match &outcome {
            Ok(_) => "finished".to_owned(),
            Err(e) => format!("abandoned ({:?})", e.code()),
        }
    );
    if let Ok(r) = &outcome {
        known.push((
            r.get_ref().snapshot.as_ref().unwrap().id.clone(),
            tree.clone(),
        ));
    }
    d.restart_after_stop();
    let listed = check_after_restart(&d, &ws, &known).await;
    if let Ok(r) = &outcome {
        let id = &r.get_ref().snapshot.as_ref().unwrap().id;
        assert!(
            listed.iter().any(|s| &s.id == id),
            "an acknowledged save is gone"
        );
    }
    assert!(listed.iter().any(|s| s.id == baseline.id));
    // The start's own walk and a save after it hold everything.
    let mut c = d.client().await;
    let snap = util::save(&mut c, &ws, "after the restart").await;
    known.push((snap.id.clone(), tree));

    // 2. An auto snapshot in flight (the watcher's own save): it finishes before the daemon
    // exits, and its snapshot is complete.
    c.watch(pb::WatchRequest {
        path: ws.display().to_string(),
        idle_ms: 200,
        max_delay_ms: 3_600_000,
        ..Default::default()
    })
    .await
    .unwrap();
    let count = snapshots(&mut c, &ws).await.len();
    let before = pack_bytes(&d.data);
    big_change(&ws.join("auto"), FILES, 1000);
    let tree = listing(&ws);
    wait_until_writing(&d, before, 8 << 20, &|| false);
    sigterm(&mut d);
    d.restart_after_stop();
    let c = d.client().await;
    // The snapshot the watcher was taking, or (abandoned) the one the start's walk takes:
    // once the start's walk is done, the newest holds the whole change.
    let ws2 = ws.clone();
    let listed = wait_for(60, "the start's walk", || {
        let mut c = c.clone();
        let ws = ws2.clone();
        async move {
            let st = c.status(pb::StatusRequest {}).await.ok()?.into_inner();
            let watching = st.workspaces.first()?.state() == pb::WorkspaceState::Watching;
            let s = snapshots(&mut c, &ws).await;
            (watching && s.len() > count).then_some(s)
        }
    })
    .await;
    let newest = &listed[0];
    assert_eq!(newest.files, 1 + 2 * FILES, "{newest:?}");
    println!(
        "figures: SIGTERM during an auto snapshot: {}",
        if newest.message.is_empty() && !newest.rescan {
            "finished before the exit"
        } else {
            "abandoned; the next start's walk saved the change"
        }
    );
    known.push((newest.id.clone(), tree));
    check_after_restart(&d, &ws, &known).await;
    assert!(d.log().contains("shutting down"), "{}", d.log());
}
