//! Big, hot files against the real `chkptd`: a store on a small real file system pauses
//! automatic snapshots before the disk is full and resumes once there is room; a hot file
//! changed every second keeps the store within its budget; `status` names what cost most.
//!
//! ```sh
//! cargo test --test bigfiles                              # CI size
//! CHKPT_FULL=1 cargo test --release --test bigfiles -- --nocapture   # 10-minute soak
//! ```

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use tonic::transport::Channel;
use util::Daemon;

fn full() -> bool {
    std::env::var_os("CHKPT_FULL").is_some_and(|v| v == "1")
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    chkpt_testkit::noise(len, seed)
}

/// The daemon's data directory as seen from outside its mount namespace.
async fn data_dir_inside(d: &Daemon, c: &mut ChkptClient<Channel>) -> PathBuf {
    let pid = status(c).await.pid;
    PathBuf::from(format!("/proc/{pid}/root")).join(d.data.strip_prefix("/").unwrap())
}

async fn status(c: &mut ChkptClient<Channel>) -> pb::StatusResponse {
    c.status(pb::StatusRequest {}).await.unwrap().into_inner()
}

/// Waits for the automatic snapshot after the last write (at `written_ms`, Unix ms): none is
/// pending and the newest snapshot was taken after the write, on two looks a second apart (a
/// save still running when the first look found nothing pending would have ended by the
/// second and be the newest).
async fn next_auto(c: &mut ChkptClient<Channel>, d: &Daemon, written_ms: u64) -> pb::Snapshot {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut candidate: Option<pb::Snapshot> = None;
    loop {
        let st = status(c).await;
        let w = &st.workspaces[0];
        let newest = w
            .last_snapshot
            .clone()
            .filter(|s| w.pending_changes == 0 && s.created_unix_ms >= written_ms);
        match (&candidate, newest) {
            (Some(c), Some(n)) if c.id == n.id => return n,
            (_, n) => candidate = n,
        }
        assert!(
            Instant::now() < deadline,
            "no automatic snapshot after the write at {written_ms}: {w:?}\n{}",
            d.log()
        );
        let pause = if candidate.is_some() { 1000 } else { 50 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Restores `snap` into a fresh directory and checks it holds exactly `expected`.
async fn restores_to(
    c: &mut ChkptClient<Channel>,
    ws: &Path,
    snap: &str,
    expected: &std::collections::BTreeMap<PathBuf, Option<Vec<u8>>>,
) {
    let out = tempfile::tempdir().unwrap();
    let to = out.path().join("r");
    util::restore_to(c, ws, snap, &to).await;
    let got = util::listing(&to);
    assert!(
        got == *expected,
        "snapshot {snap} restored other content: {:?} vs {:?}",
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
}

/// On a 64 MiB file system (data directory only; a ballast file stands for everything else
/// on the disk), saves of 2 MiB of new, incompressible data each: automatic snapshots pause
/// before the disk is full, with one Events warning and a `paused` state that says why; the
/// daemon keeps answering; a manual save that fits still works; every acknowledged snapshot
/// restores byte for byte; deleting the ballast lets them resume by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_disk_pauses_automatic_snapshots_and_they_resume_once_there_is_room() {
    let d = Daemon::on_a_tmpfs(
        "size=64m",
        &["--min-free-bytes", "16M", "--max-store-bytes", "0"],
    );
    let mut c = d.client().await;
    // The rest of the disk: 16 MiB of someone else's files.
    let ballast = data_dir_inside(&d, &mut c).await.join("ballast");
    std::fs::write(&ballast, random(16 << 20, 99)).unwrap();
    let ws_dir = tempfile::tempdir().unwrap();
    let ws = ws_dir.path().to_path_buf();
    std::fs::write(ws.join("readme.txt"), b"hello").unwrap();
    let mut events = c
        .events(pb::EventsRequest {
            workspace: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let base = util::watch(&mut c, &ws, 300, 3000).await;
    let mut last = base.baseline.unwrap().id;
    let mut acknowledged = vec![(last.clone(), util::listing(&ws))];
    let mut paused = None;
    for i in 0..40u64 {
        std::fs::write(ws.join(format!("blob{i:02}.bin")), random(2 << 20, i)).unwrap();
        let expected = util::listing(&ws);
        let outcome = util::wait_for(60, "a snapshot or a pause", || {
            let mut c = c.clone();
            let last = last.clone();
            async move {
                let st = status(&mut c).await;
                let w = st.workspaces[0].clone();
                if w.state() == pb::WorkspaceState::Paused {
                    return Some(Err(w));
                }
                let snap = w.last_snapshot.clone()?;
                (w.pending_changes == 0 && snap.id != last).then_some(Ok(snap))
            }
        })
        .await;
        match outcome {
            Ok(snap) => {
                last = snap.id.clone();
                acknowledged.push((snap.id, expected));
            }
            Err(w) => {
                paused = Some((i, w));
                break;
            }
        }
    }
    let (at, w) = paused.expect("automatic snapshots never paused");
    let st = status(&mut c).await;
    let space = st.store.unwrap();
    println!(
        "figures: paused after {at} saves of 2 MiB; free {} of {} (floor {}), store {}; {}",
        space.free_bytes, space.fs_bytes, space.floor_bytes, space.size_bytes, w.state_detail
    );
    assert!(space.free_bytes > 0, "the disk filled up");
    assert!(space.free_bytes < space.floor_bytes);
    assert!(w.state_detail.contains("paused"), "{}", w.state_detail);
    assert!(w.pending_changes > 0, "the change waits");
    // Still paused a moment later (no snapshot sneaks in), and the daemon answers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let snaps = util::snapshots(&mut c, &ws).await;
    assert_eq!(snaps[0].id, last, "no automatic snapshot while paused");
    assert_eq!(
        status(&mut c).await.workspaces[0].state(),
        pb::WorkspaceState::Paused
    );
    // A manual save that fits still works: the pending 2 MiB file is below the free space.
    let manual = util::save(&mut c, &ws, "manual while paused").await;
    acknowledged.push((manual.id.clone(), util::listing(&ws)));

    for (snap, expected) in &acknowledged {
        restores_to(&mut c, &ws, snap, expected).await;
    }
    // Room again: automatic snapshots resume by themselves.
    std::fs::remove_file(&ballast).unwrap();
    std::fs::write(ws.join("after.txt"), b"after the pause").unwrap();
    let resumed = util::wait_for(60, "automatic snapshots to resume", || {
        let mut c = c.clone();
        let manual = manual.id.clone();
        async move {
            let w = status(&mut c).await.workspaces[0].clone();
            let snap = w.last_snapshot.clone()?;
            (w.pending_changes == 0 && snap.id != manual).then_some(snap)
        }
    })
    .await;
    restores_to(&mut c, &ws, &resumed.id, &util::listing(&ws)).await;
    assert_eq!(
        status(&mut c).await.workspaces[0].state(),
        pb::WorkspaceState::Watching
    );
    // One warning about the pause, however long it lasted.
    let mut warnings = Vec::new();
    while let Ok(Some(Ok(ev))) =
        tokio::time::timeout(Duration::from_millis(200), events.next_message()).await
    {
        if let Some(pb::event::Kind::Warning(w)) = ev.kind {
            warnings.push(w.message);
        }
    }
    let pauses = warnings.iter().filter(|w| w.contains("paused")).count();
    assert_eq!(pauses, 1, "{warnings:?}\n{}", d.log());
}

/// Extension so the loop above reads like a stream.
trait NextMessage {
    async fn next_message(&mut self) -> Option<Result<pb::Event, tonic::Status>>;
}

impl NextMessage for tonic::Streaming<pb::Event> {
    async fn next_message(&mut self) -> Option<Result<pb::Event, tonic::Status>> {
        self.message().await.transpose()
    }
}

/// A file changed in a few places every second (a database, a VM image) with snapshots after
/// 1 s of quiet: the store stays within its budget, sampled snapshots restore byte for byte,
/// nothing fails, each snapshot after the first stores the changes rather than the file, and
/// `status` names the file as what costs most. CI: 16 MiB for 20 s; full
/// (`CHKPT_FULL=1`): 64 MiB for 10 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_file_keeps_the_store_within_its_budget() {
    let (size, secs, budget) = if full() {
        (64usize << 20, 600u64, 96u64 << 20)
    } else {
        (16 << 20, 20, 22 << 20)
    };
    let d = Daemon::start(&["--max-store-bytes", &budget.to_string()]);
    let mut c = d.client().await;
    let ws_dir = tempfile::tempdir().unwrap();
    let ws = ws_dir.path().to_path_buf();
    let hot = ws.join("app.db");
    std::fs::write(&hot, random(size, 1)).unwrap();
    std::fs::write(ws.join("notes.txt"), b"a small file").unwrap();
    util::watch(&mut c, &ws, 1000, 3000).await;
    let started = Instant::now();
    let (mut edits, mut samples, mut max_store) = (0u64, 0u64, 0u64);
    let mut written = now_ms();
    let mut seed = 7u64;
    while started.elapsed() < Duration::from_secs(secs) {
        // A few 4 KiB writes in place, and sometimes an append.
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&hot).unwrap();
            for _ in 0..8 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let len = f.metadata().unwrap().len();
                f.seek(SeekFrom::Start((seed >> 16) % len)).unwrap();
                f.write_all(&random(4096, seed)).unwrap();
            }
            if seed.is_multiple_of(5) {
                f.seek(SeekFrom::End(0)).unwrap();
                f.write_all(&random(4096, seed ^ 1)).unwrap();
            }
            edits += 1;
        }
        written = now_ms();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let st = status(&mut c).await;
        max_store = max_store.max(st.store.unwrap().size_bytes);
        let w = &st.workspaces[0];
        assert!(
            !w.warnings.iter().any(|w| w.contains("failed")),
            "{:?}",
            w.warnings
        );
        // Every ~10 s: let the edits settle, and restore what was saved.
        if edits % 10 == 0 {
            let snap = next_auto(&mut c, &d, written).await;
            restores_to(&mut c, &ws, &snap.id, &util::listing(&ws)).await;
            samples += 1;
        }
    }
    // The last edits saved.
    let snap = next_auto(&mut c, &d, written).await;
    restores_to(&mut c, &ws, &snap.id, &util::listing(&ws)).await;
    // The budget is enforced after each snapshot, on the maintenance worker: give it the
    // time of one round, then the store is within it.
    let within = util::wait_for(30, "the store within its budget", || {
        let mut c = c.clone();
        async move {
            let s = status(&mut c).await.store.unwrap();
            (s.size_bytes <= s.budget_bytes).then_some(s.size_bytes)
        }
    })
    .await;
    let st = status(&mut c).await;
    let w = &st.workspaces[0];
    let snaps = util::snapshots(&mut c, &ws).await;
    println!(
        "figures: hot file of {} MiB, {edits} edits over {secs} s, {} snapshots taken, {} kept, {samples} sampled restores byte-exact, store {} (max seen {}) within a budget of {}",
        size >> 20,
        w.counters.as_ref().unwrap().snapshots_taken,
        snaps.len(),
        within,
        max_store,
        budget
    );
    // Between a snapshot and the budget's enforcement the store is over by at most what a
    // few snapshots add, never by much.
    assert!(
        max_store <= budget + budget / 10,
        "store reached {max_store} with a budget of {budget}\n{}",
        d.log()
    );
    // Each snapshot after the first costs the places that changed (a few 4 KiB writes, a
    // chunk or two each), not the file again.
    let whole = snaps
        .iter()
        .filter(|s| s.new_bytes > size as u64 / 4)
        .count();
    assert!(
        whole <= 1,
        "{whole} snapshots stored a quarter of the file or more: {:?}",
        snaps.iter().map(|s| s.new_bytes).collect::<Vec<_>>()
    );
    let taken = w.counters.as_ref().unwrap().snapshots_taken;
    assert!(
        (snaps.len() as u64) < taken,
        "the budget never had to drop a snapshot ({taken} taken): the run proves nothing"
    );
    let top = w.top_files.first().expect("a file that cost something");
    assert_eq!(top.path, b"app.db");
    assert!(top.bytes_added > 1 << 20, "{top:?}");
    let text = Command::new(env!("CARGO_BIN_EXE_chkptctl"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("stored most in the last day"), "{text}");
    assert!(text.contains("app.db"), "{text}");
    assert!(text.contains("budget"), "{text}");
}

/// Bytes of the daemon's pack files.
fn pack_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data.join("packs"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Once the daemon has been idle for `--recompress-after`, what its saves wrote with LZ4's fast
/// mode is rewritten with LZ4 HC: `status` counts the bytes still to do and then none, the packs
/// shrink, every snapshot still restores byte for byte, the store verifies, and a save after it
/// (and a restart) changes none of that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_recompression_shrinks_the_store_and_every_snapshot_still_restores() {
    let d = Daemon::start(&["--recompress-after", "2s"]);
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    for i in 0..120u64 {
        let dir = root.join(format!("src/m{}", i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        let text = chkpt_testkit::source_text(30_000 + (i as usize * 977) % 20_000, i);
        std::fs::write(dir.join(format!("f{i}.rs")), text).unwrap();
    }
    std::fs::write(root.join("noise.bin"), random(200_000, 3)).unwrap();
    let mut c = d.client().await;
    let first = util::watch_without_autosave(&mut c, root).await;
    let first_listing = util::listing(root);
    for i in 0..10u64 {
        let p = root.join(format!("src/m{}/f{i}.rs", i % 7));
        std::fs::write(p, chkpt_testkit::source_text(40_000, 1000 + i)).unwrap();
    }
    let second = util::save(&mut c, root, "ten files rewritten").await;
    let second_listing = util::listing(root);
    let pending = status(&mut c).await.store.unwrap().recompress_pending_bytes;
    let before = pack_bytes(&d.data);
    assert!(
        pending > before / 2,
        "saves count what they wrote fast: {pending} of {before} bytes"
    );

    util::wait_for(60, "the idle recompression", || {
        let mut c = c.clone();
        async move {
            let st = status(&mut c).await.store.unwrap();
            (st.recompress_pending_bytes == 0).then_some(())
        }
    })
    .await;
    let after = pack_bytes(&d.data);
    println!("figures: recompression packs {before} -> {after} bytes");
    assert!(
        after < before - before / 20,
        "LZ4 HC saves more than 5 % here (10 % of the text): {before} -> {after}\n{}",
        d.log()
    );
    restores_to(&mut c, root, &first.id, &first_listing).await;
    restores_to(&mut c, root, &second.id, &second_listing).await;
    util::assert_store_verifies(&mut c).await;
    let json = util::cli::json_ws(&d, root, &["status"]);
    assert_eq!(json["store"]["recompress_pending_bytes"], 0, "{json}");

    // A save after it adds to the count; a restart keeps every snapshot.
    std::fs::write(
        root.join("src/late.rs"),
        chkpt_testkit::source_text(60_000, 77),
    )
    .unwrap();
    let third = util::save(&mut c, root, "one more").await;
    let third_listing = util::listing(root);
    assert!(status(&mut c).await.store.unwrap().recompress_pending_bytes > 0);
    let mut d = d;
    d.restart();
    let mut c = util::ready(&d).await;
    for (snap, listing) in [
        (&first.id, &first_listing),
        (&second.id, &second_listing),
        (&third.id, &third_listing),
    ] {
        restores_to(&mut c, root, snap, listing).await;
    }
    util::assert_store_verifies(&mut c).await;
}
