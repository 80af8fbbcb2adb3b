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

/// Sends `sig` to the daemon (its pid from `Status`).
fn signal(pid: u32, sig: i32) {
    // SAFETY: kill with a valid pid.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill");
}

/// Rewrites `path` with `content` (a different length than before, so the change shows in
/// the metadata whatever the clock's resolution).
fn rewrite(path: &Path, content: &str) {
    fs::write(path, content.as_bytes()).unwrap();
}

/// Once `Status` says the (first) workspace is watching and `ready` holds of it, stops the
/// daemon with SIGSTOP (it must still be reconciling then); returns its pid and how many files
/// the walk had looked at.
async fn freeze_when(
    d: &Daemon,
    c: &mut chkpt_proto::v1::chkpt_client::ChkptClient<tonic::transport::Channel>,
    ready: impl Fn(&pb::WorkspaceStatus) -> bool,
) -> (u32, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
        if let Some(w) = st.workspaces.first()
            && w.state() == pb::WorkspaceState::Watching
            && (ready(w) || !w.reconciling)
        {
            assert!(
                w.reconciling,
                "the walk after the restart ended before the test saw it: make the tree larger"
            );
            signal(st.pid, libc::SIGSTOP);
            return (st.pid, w.counters.map_or(0, |k| k.files_walked));
        }
        assert!(Instant::now() < deadline, "not watched again:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A restart is watched before the walk that reconciles it is done: changes made while the
/// daemon was down, and changes made while that walk runs (the daemon frozen with SIGSTOP in
/// the middle of it and again once it looked at every file, then let go), all end up in a
/// snapshot, byte for byte, among them changes in folders made or renamed while the daemon was
/// down (which only the walk finds, and which are watched only after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_while_down_and_during_the_reconciling_walk_all_reach_a_snapshot() {
    const DIRS: usize = 50;
    const PER_DIR: usize = 50;
    let mut d = Daemon::start(&[]);
    let ws = d.dir.path().join("ws");
    for i in 0..DIRS {
        let dir = ws.join(format!("d{i:03}"));
        fs::create_dir_all(&dir).unwrap();
        for j in 0..PER_DIR {
            rewrite(&dir.join(format!("f{j:03}.txt")), &format!("{i} {j}\n"));
        }
    }
    let mut c = d.client().await;
    watch(&mut c, &ws, 300, 2_000).await;
    drop(c);
    sigterm(&mut d);

    // While the daemon is down.
    rewrite(&ws.join("d000/f000.txt"), "changed while down\n");
    fs::remove_file(ws.join("d001/f001.txt")).unwrap();
    fs::rename(ws.join("d002"), ws.join("d002-renamed")).unwrap();
    fs::create_dir_all(ws.join("made-while-down/deeper")).unwrap();
    rewrite(&ws.join("made-while-down/a.txt"), "new while down\n");
    rewrite(
        &ws.join("made-while-down/deeper/b.txt"),
        "new while down too\n",
    );

    d.start_again();
    let mut c = d.client().await;
    // Frozen as soon as it says it is watching (and still reconciling).
    let (pid, walked) = freeze_when(&d, &mut c, |_| true).await;
    // While the walk runs (the daemon cannot end it while stopped): one change in every
    // folder, whether the walk passed it or not, and in the folders only the walk knows.
    for i in 3..DIRS {
        rewrite(
            &ws.join(format!("d{i:03}/f{:03}.txt", i % PER_DIR)),
            &format!("changed during the walk {i}\n"),
        );
    }
    fs::remove_file(ws.join("d003/f040.txt")).unwrap();
    fs::create_dir_all(ws.join("made-during/x")).unwrap();
    rewrite(&ws.join("made-during/x/c.txt"), "new during the walk\n");
    rewrite(
        &ws.join("made-while-down/a.txt"),
        "changed during the walk\n",
    );
    rewrite(
        &ws.join("made-while-down/deeper/new.txt"),
        "new in it during the walk\n",
    );
    signal(pid, libc::SIGCONT);
    // Frozen again once the walk looked at every file, before it is done (it still settles
    // what it found, saves, and watches the folders only it found): changes now reach no walk.
    let files = (DIRS * PER_DIR) as u64;
    let (pid, walked_late) = freeze_when(&d, &mut c, |w| {
        w.counters.is_some_and(|k| k.files_walked >= files)
    })
    .await;
    rewrite(&ws.join("d010/f020.txt"), "changed after the walk looked\n");
    rewrite(
        &ws.join("made-while-down/a.txt"),
        "changed after the walk looked at it\n",
    );
    rewrite(
        &ws.join("made-while-down/deeper/b.txt"),
        "changed after the walk, too\n",
    );
    rewrite(
        &ws.join("made-while-down/deeper/later.txt"),
        "new after the walk\n",
    );
    rewrite(
        &ws.join("d002-renamed/f005.txt"),
        "changed in the renamed folder\n",
    );
    signal(pid, libc::SIGCONT);
    let expected = listing(&ws);

    // Once reconciled and saved (and still so a while later: every event is in), the newest
    // snapshot is the folder as it is.
    let settled = || {
        let mut c = c.clone();
        let ws = ws.clone();
        async move {
            let st = c.status(pb::StatusRequest {}).await.ok()?.into_inner();
            let w = st.workspaces.first()?;
            let settled = w.state() == pb::WorkspaceState::Watching
                && !w.reconciling
                && w.pending_changes == 0;
            if !settled {
                return None;
            }
            snapshots(&mut c, &ws).await.into_iter().next()
        }
    };
    let newest = loop {
        let first = wait_for(60, "the reconciled workspace saved", settled).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if settled().await.is_some_and(|s| s.id == first.id) {
            break first;
        }
    };
    let out = tempfile::tempdir().unwrap();
    restore_to(&mut c, &ws, &newest.id, out.path()).await;
    let got = listing(out.path());
    let differ: Vec<_> = expected
        .iter()
        .filter(|(p, v)| got.get(*p) != Some(v))
        .map(|(p, _)| p.clone())
        .chain(got.keys().filter(|p| !expected.contains_key(*p)).cloned())
        .collect();
    assert!(
        differ.is_empty(),
        "the newest snapshot misses changes: {differ:?}\n{}",
        d.log()
    );
    let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
    let counters = st.workspaces[0].counters.unwrap();
    assert_eq!(counters.rescans, 0, "no rescan after the restart");
    println!(
        "figures: reconciling walk frozen after {walked} and after {walked_late} of {files} files"
    );
}
