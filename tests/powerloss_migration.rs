//! Power cuts while chkptd moves a sled catalog into redb, which it does when it first opens a
//! data directory written by an earlier version. The data directory is the committed format
//! fixture (`daemon/tests/fixtures/store-format-1.tar.gz`, whose catalog is a sled database),
//! on the lazy file system (`lazyfs/`). chkptd is started on it, SIGKILLed at a random moment
//! of its start (during the copy, around the switch to the new file, or once it listens), and
//! the power cut, tearing whatever was not durable. Then chkptd starts again and the store
//! must hold everything the old catalog held: its three snapshots list as before, restore
//! exactly, and verify clean; sled's folder is set aside only once the new file is in place.
//!
//! CI size: 6 cuts. `CHKPT_FULL=1`: 40. `CHKPT_SEED=N` replays a run.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chkpt_lazyfs::{Cut, LazyMount};
use chkpt_proto::v1 as pb;
use chkpt_testkit::Rng;
use util::{Daemon, listing, restore_to, snapshots};

/// The fixture's workspace, as its catalog names it (the folder itself is not needed).
const FIXTURE_WS: &str = "/tmp/fx/ws";

/// The fixture's `data/` and `expected/` unpacked into `into`, durably.
fn unpack_fixture(fs: &LazyMount) {
    let archive =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("daemon/tests/fixtures/store-format-1.tar.gz");
    let st = Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(fs.path())
        .status()
        .unwrap();
    assert!(st.success(), "tar could not unpack {}", archive.display());
    fs.sync_all();
}

/// Starts chkptd on `data` and returns at once, before it listens.
fn spawn_chkptd(data: &Path, run: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_chkptd"))
        .arg("--socket")
        .arg(run.join("chkptd.sock"))
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The old catalog's content, through the daemon: the three snapshots, the two that have an
/// expected folder restored exactly, a clean verify.
async fn assert_everything_there(d: &Daemon, fs: &LazyMount, round: usize) {
    let mut c = d.client().await;
    // The daemon takes its workspaces up after it listens (this one's folder is gone: an error
    // state, but restorable).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
        if st
            .workspaces
            .iter()
            .any(|w| w.workspace.as_ref().is_some_and(|w| w.path == FIXTURE_WS))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: the workspace was not taken up:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snaps = snapshots(&mut c, Path::new(FIXTURE_WS)).await;
    let messages: Vec<_> = snaps.iter().map(|s| s.message.as_str()).collect();
    assert_eq!(
        messages,
        ["second", "first manual", "baseline"],
        "round {round}:\n{}",
        d.log()
    );
    for (snap, expected) in [(&snaps[0], "latest"), (&snaps[2], "baseline")] {
        let out = tempfile::tempdir().unwrap();
        let to = out.path().join("restored");
        restore_to(&mut c, Path::new(FIXTURE_WS), &snap.id, &to).await;
        assert!(
            listing(&to) == listing(&fs.path().join("expected").join(expected)),
            "round {round}: snapshot {expected} restored differently"
        );
    }
    let v = util::verify(&mut c).await;
    assert!(v.ok, "round {round}: {:?}", v.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_while_the_sled_catalog_moves_to_redb_loses_nothing() {
    let full = std::env::var_os("CHKPT_FULL").is_some();
    let rounds = if full { 40 } else { 6 };
    let seed = chkpt_testkit::seed();
    let mut rng = Rng::new(seed);

    // How long a whole start takes here (the move included): the cuts fall within it.
    let dir = tempfile::tempdir().unwrap();
    let fs = LazyMount::mount(&dir.path().join("backing"), &dir.path().join("mnt")).unwrap();
    unpack_fixture(&fs);
    let started = Instant::now();
    let d = Daemon::start_with_data(&fs.path().join("data"), &[]);
    let start_ms = (started.elapsed().as_millis() as u64).max(10);
    assert_everything_there(&d, &fs, 0).await;
    drop(d);
    fs.unmount().unwrap();

    let (mut before_switch, mut after_switch, mut mid_copy, mut pages_lost) = (0, 0, 0, 0);
    for round in 1..=rounds {
        let dir = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let mut fs =
            LazyMount::mount(&dir.path().join("backing"), &dir.path().join("mnt")).unwrap();
        unpack_fixture(&fs);
        let data = fs.path().join("data");
        let mut child = spawn_chkptd(&data, run.path());
        let cut_ms = rng.next_u64() % (start_ms * 2);
        std::thread::sleep(Duration::from_millis(cut_ms));
        let _ = child.kill();
        let _ = child.wait();
        let report = fs.power_cut(Cut::Torn(rng.next_u64())).unwrap();
        pages_lost += report.pages_lost;
        let switched = data.join("catalog.redb").exists();
        let copying = data.join("catalog.redb.migrating").exists();
        println!("round {round}: cut at {cut_ms} ms, copy begun: {copying}, switched: {switched}");
        mid_copy += u32::from(copying);
        if switched {
            after_switch += 1;
        } else {
            // The old catalog must be whole, whatever the copy had reached.
            assert!(data.join("catalog/conf").exists(), "round {round}");
            before_switch += 1;
        }
        let d = Daemon::start_with_data(&data, &[]);
        assert_everything_there(&d, &fs, round).await;
        assert!(!data.join("catalog").exists(), "round {round}");
        assert!(
            data.join("catalog.sled-migrated/conf").exists(),
            "round {round}"
        );
        assert!(
            !data.join("catalog.redb.migrating").exists(),
            "round {round}"
        );
        drop(d);
        fs.unmount().unwrap();
    }
    // Cuts all before or all after the switch would test half of it.
    if full {
        assert!(
            before_switch > 0 && after_switch > 0,
            "seed={seed}: {before_switch} cuts before the switch, {after_switch} after"
        );
    }
    println!(
        "figures: power cuts during the sled-to-redb move seed={seed} cuts={rounds} start_ms={start_ms} before_switch={before_switch} (of which during the copy: {mid_copy}) after_switch={after_switch} pages_lost={pages_lost}"
    );
}
