//! Black-box tests: the real `chkptd` binary on a socket in a temp dir, driven over gRPC.

#![allow(clippy::unwrap_used)]

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chkpt_proto::v1 as pb;
use util::{Daemon, listing, restore_to, save, snapshots, wait_for, wait_for_snapshots, watch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_snapshot_after_idle_equals_the_folder() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    fs::write(ws.path().join("README"), b"first").unwrap();
    let mut c = d.client().await;
    let w = watch(&mut c, ws.path(), 300, 5000).await;
    let baseline = w.baseline.unwrap();
    assert_eq!(baseline.files, 1);

    fs::create_dir_all(ws.path().join("src/deep")).unwrap();
    fs::write(ws.path().join("src/main.rs"), b"fn main() {}\n").unwrap();
    fs::write(ws.path().join("src/deep/lib.rs"), vec![b'x'; 100_000]).unwrap();
    fs::write(ws.path().join("README"), b"second").unwrap();
    let ws_path = ws.path().to_path_buf();
    let deadline = Instant::now() + Duration::from_secs(20);
    let snap = loop {
        let s = snapshots(&mut c, &ws_path).await;
        if let Some(s) = s.first().filter(|s| s.files == 3) {
            break s.clone();
        }
        if Instant::now() >= deadline {
            let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
            panic!(
                "no auto snapshot of all 3 files: {s:?}\nstatus: {st:?}\n{}",
                d.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(snap.trigger(), pb::Trigger::Auto);
    let out = tempfile::tempdir().unwrap();
    restore_to(&mut c, ws.path(), &snap.id, out.path()).await;
    assert_eq!(listing(out.path()), listing(ws.path()));
}

/// Edits that never pause for the quiet period still get a snapshot, by the maximum delay.
/// It is checked as a lower bound only (a loaded machine may be late, never early): the
/// snapshot comes no sooner than the maximum delay after the first edit, so the quiet period
/// (shorter, but never reached) did not cause it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_edits_still_snapshot_by_max_delay() {
    const IDLE: Duration = Duration::from_secs(3);
    const MAX_DELAY: Duration = Duration::from_secs(4);
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let mut c = d.client().await;
    let (idle_ms, max_ms) = (IDLE.as_millis() as u64, MAX_DELAY.as_millis() as u64);
    watch(&mut c, ws.path(), idle_ms, max_ms).await;
    let before = snapshots(&mut c, ws.path()).await.len();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    let (mut i, mut last_write, mut longest_gap) = (0, start, Duration::ZERO);
    // Edit every 200 ms until a snapshot comes.
    let snap = loop {
        fs::write(ws.path().join("busy.txt"), format!("edit {i}")).unwrap();
        longest_gap = longest_gap.max(last_write.elapsed());
        last_write = Instant::now();
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = snapshots(&mut c, ws.path()).await;
        if s.len() > before {
            break s[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot in 60 s of edits that never paused:\n{}",
            d.log()
        );
    };
    let waited = start.elapsed();
    assert!(
        longest_gap < IDLE,
        "the edits paused for {longest_gap:?}: this machine is too loaded for the test to tell"
    );
    assert_eq!(snap.trigger(), pb::Trigger::Auto);
    assert!(
        waited >= MAX_DELAY,
        "a snapshot {waited:?} after the first edit: before the maximum delay"
    );
    assert_eq!(snap.files, 1, "{snap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_under_ignored_folders_take_no_snapshot() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    fs::write(ws.path().join(".gitignore"), "build/\n").unwrap();
    fs::create_dir_all(ws.path().join("target")).unwrap();
    fs::write(
        ws.path().join("target/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    fs::create_dir_all(ws.path().join("build")).unwrap();
    let mut c = d.client().await;
    watch(&mut c, ws.path(), 200, 1000).await;
    let before = snapshots(&mut c, ws.path()).await.len();
    for i in 0..50 {
        fs::write(ws.path().join(format!("build/out{i}.o")), b"obj").unwrap();
        fs::write(ws.path().join(format!("target/artifact{i}")), b"bin").unwrap();
    }
    // Wait until the daemon has seen (and dropped) the events, then past a full max_delay.
    wait_for(20, "the events to be counted", || {
        let mut c = c.clone();
        async move {
            let st = c.status(pb::StatusRequest {}).await.ok()?.into_inner();
            let w = st.workspaces.first()?;
            (w.counters.as_ref()?.events_ignored >= 100 && w.pending_changes == 0).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        snapshots(&mut c, ws.path()).await.len(),
        before,
        "ignored writes made a snapshot"
    );
    // A real change still does.
    fs::write(ws.path().join("real.rs"), b"change").unwrap();
    let ws_path = ws.path().to_path_buf();
    wait_for(20, "a snapshot of a real change", || {
        let mut c = c.clone();
        let ws_path = ws_path.clone();
        async move { (snapshots(&mut c, &ws_path).await.len() > before).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_workspaces_snapshots_and_a_warm_index() {
    let mut d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    for i in 0..200 {
        fs::write(ws.path().join(format!("f{i}.txt")), format!("content {i}")).unwrap();
    }
    // Past the racy window, so the baseline's reads are final.
    std::thread::sleep(Duration::from_millis(1200));
    let mut c = d.client().await;
    let baseline = watch(&mut c, ws.path(), 300, 5000).await.baseline.unwrap();
    d.restart();
    let mut c = d.client().await;
    let st = wait_for(20, "the workspace to be re-watched", || {
        let mut c = c.clone();
        async move {
            let st = c.status(pb::StatusRequest {}).await.ok()?.into_inner();
            let w = st.workspaces.first()?.clone();
            (w.state() == pb::WorkspaceState::Watching && w.last_snapshot.is_some()).then_some(w)
        }
    })
    .await;
    assert_eq!(
        st.last_snapshot.unwrap().id,
        baseline.id,
        "no new snapshot for an unchanged tree"
    );
    assert_eq!(
        st.counters.unwrap().files_hashed,
        0,
        "an unchanged tree was re-hashed after restart"
    );
    assert_eq!(snapshots(&mut c, ws.path()).await.len(), 1);
    // Changes made while the daemon was down are caught by the reconciling walk.
    d.stop();
    fs::write(ws.path().join("while-down.txt"), b"offline edit").unwrap();
    d.restart_after_stop();
    let c = d.client().await;
    let snap = wait_for_snapshots(&c, ws.path(), 20, "the offline change to be saved", |s| {
        s.into_iter().find(|s| s.files == 201)
    })
    .await;
    assert!(
        snap.rescan,
        "the snapshot records that a rescan found the change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_and_directories_are_private_and_one_daemon_per_data_dir() {
    let d = Daemon::start(&[]);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.socket), 0o600);
    assert_eq!(mode(d.socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&d.data), 0o700);
    // A second daemon on the same data dir (other socket) refuses to start, clearly.
    let out = Command::new(env!("CARGO_BIN_EXE_chkptd"))
        .arg("--socket")
        .arg(d.dir.path().join("other.sock"))
        .arg("--data-dir")
        .arg(&d.data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another chkptd already uses the data directory"),
        "{err}"
    );
    // And a second one on the same socket too.
    let out = Command::new(env!("CARGO_BIN_EXE_chkptd"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("--data-dir")
        .arg(d.dir.path().join("data2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already serving"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_status_codes() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let mut c = d.client().await;
    let code = |r: Result<tonic::Response<pb::Snapshot>, tonic::Status>| r.unwrap_err().code();
    let get = |ws: String, snapshot: &str| pb::GetRequest {
        workspace: ws,
        snapshot: snapshot.into(),
    };
    assert_eq!(
        code(c.get(get(ws.path().display().to_string(), "latest")).await),
        tonic::Code::NotFound
    );
    let baseline = watch(&mut c, ws.path(), 300, 5000).await.baseline.unwrap();
    let w = ws.path().display().to_string();
    assert_eq!(
        code(c.get(get(w.clone(), "ffffffffffffffff")).await),
        tonic::Code::NotFound
    );
    assert_eq!(
        code(c.get(get(w.clone(), "not-a-snapshot")).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(c.get(get(w.clone(), "latest~5")).await),
        tonic::Code::NotFound
    );
    assert_eq!(
        code(c.get(get(w.clone(), "@10m")).await),
        tonic::Code::NotFound
    );
    // `@0s`: the newest snapshot at least no time ago, which is the baseline.
    let latest = c.get(get(w.clone(), "latest")).await.unwrap().into_inner();
    assert_eq!(latest.id, baseline.id);
    assert_eq!(
        c.get(get(w.clone(), "@0s")).await.unwrap().into_inner().id,
        baseline.id
    );
    let bad = c
        .watch(pb::WatchRequest {
            path: "/definitely/not/here".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::NotFound);
    let rel = c
        .watch(pb::WatchRequest {
            path: "relative/dir".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(rel.unwrap_err().code(), tonic::Code::InvalidArgument);
    let escape = c
        .read_file(pb::ReadFileRequest {
            workspace: w.clone(),
            snapshot: "latest".into(),
            path: b"../../etc/passwd".to_vec(),
            ..Default::default()
        })
        .await;
    assert_eq!(escape.unwrap_err().code(), tonic::Code::InvalidArgument);
}

/// Python's grpcio, with our descriptors learnt through reflection, calls Status and List, and
/// finds a display string beside every bytes path of Diff, ListTree, Restore and the excluded
/// folders (JSON clients would otherwise see only base64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_python_grpc_client_can_call_status_and_list() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    fs::write(ws.path().join("a.txt"), b"hello").unwrap();
    fs::write(ws.path().join("ünï cödé.txt"), b"accents").unwrap();
    fs::create_dir_all(ws.path().join("node_modules/left-pad")).unwrap();
    fs::write(ws.path().join("node_modules/left-pad/index.js"), b"//").unwrap();
    let mut c = d.client().await;
    let baseline = watch(&mut c, ws.path(), 300, 5000).await.baseline.unwrap();
    fs::write(ws.path().join("a.txt"), b"changed").unwrap();
    fs::write(ws.path().join("new file.txt"), b"new").unwrap();
    let python = util::python_with_grpc();
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/grpc_client.py"))
        .arg(&d.socket)
        .arg(ws.path())
        .arg(&baseline.id)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("\"protocol\": {}", chkpt_proto::PROTOCOL_VERSION)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&baseline.id),
        "List did not return the baseline: {stdout}"
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let checked = &doc["checked"];
    let names = |k: &str| -> Vec<String> {
        let mut v: Vec<String> = checked[k]
            .as_array()
            .unwrap_or_else(|| panic!("{k} not checked: {stdout}"))
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("diff"), ["a.txt", "new file.txt"], "{stdout}");
    assert_eq!(names("tree"), ["a.txt", "ünï cödé.txt"], "{stdout}");
    assert_eq!(names("restore"), ["a.txt", "new file.txt"], "{stdout}");
    assert_eq!(names("excluded"), ["node_modules"], "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_hundred_files_fires_the_tripwire_and_the_pinned_snapshot_restores_them() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    for i in 0..100 {
        fs::write(
            ws.path().join(format!("precious{i:03}.rs")),
            format!("fn f{i}() {{}}\n"),
        )
        .unwrap();
    }
    let before = listing(ws.path());
    let mut c = d.client().await;
    let baseline = watch(&mut c, ws.path(), 300, 5000).await.baseline.unwrap();
    let w = ws.path().display().to_string();
    let mut events = c
        .events(pb::EventsRequest {
            workspace: w.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    for i in 0..100 {
        fs::remove_file(ws.path().join(format!("precious{i:03}.rs"))).unwrap();
    }
    let fired = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let ev = events.message().await.unwrap().expect("event stream ended");
            if let Some(pb::event::Kind::Tripwire(t)) = ev.kind {
                return t;
            }
        }
    })
    .await
    .expect("no tripwire event");
    assert_eq!(fired.pinned_snapshot, baseline.id);
    assert!(
        fired.changed_files > 20,
        "fires past 20 % of the 100 files: {}",
        fired.changed_files
    );
    let get = pb::GetRequest {
        workspace: w.clone(),
        snapshot: baseline.id.clone(),
    };
    assert!(
        c.get(get).await.unwrap().into_inner().pinned,
        "the pre-burst snapshot is pinned"
    );
    let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        st.workspaces[0].tripwire.as_ref().unwrap().pinned_snapshot,
        baseline.id
    );

    // The state after the burst is saved promptly, and says why.
    let after = wait_for_snapshots(&c, ws.path(), 20, "the post-burst snapshot", |s| {
        s.into_iter().find(|s| s.files == 0)
    })
    .await;
    assert!(after.message.contains("mass change"), "{}", after.message);

    // Restoring the pinned snapshot brings every file back.
    let mut stream = c
        .restore(pb::RestoreRequest {
            workspace: w.clone(),
            snapshot: baseline.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    assert_eq!(listing(ws.path()), before);

    let ack = c
        .acknowledge(pb::AcknowledgeRequest { workspace: w })
        .await
        .unwrap()
        .into_inner();
    assert!(ack.cleared.is_some());
    let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert!(st.workspaces[0].tripwire.is_none(), "acknowledged");
}

/// Regression: a manual save right after a write missed it when the watcher had not yet
/// received the write's event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_right_after_a_write_contains_it() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let mut c = d.client().await;
    watch(&mut c, ws.path(), 3_600_000, 3_600_000).await;
    let w = ws.path().display().to_string();
    for round in 0..20 {
        let content = format!("round {round}");
        fs::write(ws.path().join("hot.txt"), &content).unwrap();
        let snap = save(&mut c, ws.path(), "").await;
        let mut stream = c
            .read_file(pb::ReadFileRequest {
                workspace: w.clone(),
                snapshot: snap.id.clone(),
                path: b"hot.txt".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            got.extend_from_slice(&chunk.data);
        }
        assert_eq!(String::from_utf8_lossy(&got), content, "round {round}");
    }
}

/// Regression: with a symlink to a directory in the workspace, edits in that directory were
/// reported under the link's path, and the link became a directory in the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_to_a_directory_stays_a_symlink() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    fs::create_dir_all(ws.path().join("arch/dts/marvell")).unwrap();
    fs::write(ws.path().join("arch/dts/marvell/board.dtsi"), b"v1").unwrap();
    fs::create_dir_all(ws.path().join("scripts/prefixes")).unwrap();
    std::os::unix::fs::symlink("../../arch/dts", ws.path().join("scripts/prefixes/arm64")).unwrap();
    let mut c = d.client().await;
    watch(&mut c, ws.path(), 300, 5000).await;
    fs::write(ws.path().join("arch/dts/marvell/board.dtsi"), b"v2 edited").unwrap();
    fs::write(ws.path().join("arch/dts/marvell/new.dts"), b"new").unwrap();
    let snap = wait_for_snapshots(&c, ws.path(), 20, "the auto snapshot of the edit", |s| {
        s.into_iter().find(|s| s.files == 3)
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    restore_to(&mut c, ws.path(), &snap.id, out.path()).await;
    let link = out.path().join("scripts/prefixes/arm64");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link became a directory"
    );
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("../../arch/dts"));
    assert_eq!(
        fs::read(out.path().join("arch/dts/marvell/board.dtsi")).unwrap(),
        b"v2 edited"
    );
    assert_eq!(snap.files, 3, "the link, and the two files once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_is_applied_after_auto_snapshots() {
    let mut d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    fs::write(ws.path().join("f.txt"), b"0").unwrap();
    let mut c = d.client().await;
    let policy = pb::RetentionPolicy {
        keep_last: 2,
        ..Default::default()
    };
    let req = pb::WatchRequest {
        path: ws.path().display().to_string(),
        idle_ms: 300,
        max_delay_ms: 5000,
        include_dependency_dirs: false,
        retention: Some(policy),
        include_git: false,
    };
    c.watch(req).await.unwrap();
    let ws_path = ws.path().to_path_buf();
    // Auto snapshots one by one; `expect` is how many exist before retention thins them.
    let auto_save = |content: &'static str, expect: usize| {
        fs::write(ws.path().join("f.txt"), content).unwrap();
        let ws_path = ws_path.clone();
        let c = c.clone();
        async move {
            wait_for(20, "an auto snapshot", || {
                let mut c = c.clone();
                let ws_path = ws_path.clone();
                async move {
                    let s = snapshots(&mut c, &ws_path).await;
                    (s.len() == expect && s[0].files == 1).then_some(s)
                }
            })
            .await
        }
    };
    auto_save("1", 2).await; // retention ran after it: baseline + 1 kept (2 = keep-last)
    auto_save("2", 3).await; // throttled: nothing removed yet
    d.restart(); // a restarted daemon applies retention after its next auto snapshot
    let mut c2 = d.client().await;
    wait_for(20, "the workspace to be re-watched", || {
        let mut c = c2.clone();
        async move {
            let st = c.status(pb::StatusRequest {}).await.ok()?.into_inner();
            (st.workspaces.first()?.state() == pb::WorkspaceState::Watching).then_some(())
        }
    })
    .await;
    fs::write(ws.path().join("f.txt"), b"3").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let kept = loop {
        let s = snapshots(&mut c2, &ws_path).await;
        if s.len() == 2 && s[0].files == 1 && s[0].bytes == 1 && s[0].message.is_empty() {
            break s;
        }
        if Instant::now() > deadline {
            let brief: Vec<_> = s.iter().map(|s| (&s.id, &s.message, s.trigger)).collect();
            panic!(
                "retention did not keep the newest two: {brief:?}\n{}",
                d.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = tempfile::tempdir().unwrap();
    restore_to(&mut c2, ws.path(), &kept[0].id, out.path()).await;
    assert_eq!(fs::read(out.path().join("f.txt")).unwrap(), b"3");
    let v = util::verify(&mut c2).await;
    assert!(
        v.ok,
        "GC after retention left the store clean: {:?}",
        v.problems
    );
}

/// Regression: the watch subscribed to open events, so a build or an indexer reading every
/// file overflowed the kernel's event queue (16,384 by default) and forced a rescan; the next
/// save waited behind the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_every_file_does_not_overflow_the_watch() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    for dir in 0..20 {
        let dir_path = ws.path().join(format!("d{dir}"));
        fs::create_dir(&dir_path).unwrap();
        for file in 0..1000 {
            fs::write(dir_path.join(format!("f{file}")), format!("{dir}/{file}")).unwrap();
        }
    }
    let mut c = d.client().await;
    watch(&mut c, ws.path(), 3_600_000, 3_600_000).await;
    for _ in 0..2 {
        assert_eq!(listing(ws.path()).len(), 20 * 1001);
    }
    fs::write(ws.path().join("d7/f7"), b"changed").unwrap();
    let snap = save(&mut c, ws.path(), "").await;
    assert_eq!(snap.modified, 1, "{snap:?}");
    assert!(!snap.rescan, "40,000 opens forced a rescan:\n{}", d.log());
}

/// Regression: a file stored as one large block went out as one `ReadFile` message of its
/// whole size, which a gRPC client refuses past 4 MiB by default (ours included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_file_of_a_large_file_streams_chunks_any_client_accepts() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..6u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(ws.path().join("big.bin"), &big).unwrap();
    let mut c = d.client().await;
    let baseline = watch(&mut c, ws.path(), 3_600_000, 3_600_000)
        .await
        .baseline
        .unwrap();
    let mut stream = c
        .read_file(pb::ReadFileRequest {
            workspace: ws.path().display().to_string(),
            snapshot: baseline.id,
            path: b"big.bin".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut got, mut chunks) = (Vec::new(), 0);
    while let Some(chunk) = stream.message().await.unwrap() {
        assert_eq!(chunk.offset, got.len() as u64);
        assert_eq!(chunk.total_size, big.len() as u64);
        got.extend_from_slice(&chunk.data);
        chunks += 1;
    }
    assert!(got == big, "the streamed file differs");
    assert!(chunks >= 6, "{chunks} chunks");
}
