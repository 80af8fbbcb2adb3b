//! Black-box tests: the real `chkptd` binary on a socket in a temp dir, driven over gRPC.

#![allow(clippy::unwrap_used)]

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chkpt_proto::v1 as pb;
use util::{Daemon, listing, restore_to, snapshots, wait_for};

async fn watch(
    c: &mut chkpt_proto::v1::chkpt_client::ChkptClient<tonic::transport::Channel>,
    dir: &Path,
    idle_ms: u64,
    max_delay_ms: u64,
) -> pb::WatchResponse {
    c.watch(pb::WatchRequest {
        path: dir.display().to_string(),
        idle_ms,
        max_delay_ms,
        include_dependency_dirs: false,
    })
    .await
    .expect("watch")
    .into_inner()
}

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
    let snap = wait_for(20, "an auto snapshot", || {
        let mut c = c.clone();
        let ws_path = ws_path.clone();
        async move {
            let s = snapshots(&mut c, &ws_path).await;
            s.first().filter(|s| s.files == 3).cloned()
        }
    })
    .await;
    assert_eq!(snap.trigger(), pb::Trigger::Auto);
    let out = tempfile::tempdir().unwrap();
    restore_to(&mut c, ws.path(), &snap.id, out.path()).await;
    assert_eq!(listing(out.path()), listing(ws.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_edits_still_snapshot_by_max_delay() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let mut c = d.client().await;
    watch(&mut c, ws.path(), 1000, 2000).await;
    let before = snapshots(&mut c, ws.path()).await.len();
    let start = Instant::now();
    let mut seen_during_edits = false;
    let mut i = 0;
    // Edit every 200 ms (never idle for 1 s) for up to 8 s; a snapshot must come by max_delay.
    while start.elapsed() < Duration::from_secs(8) {
        fs::write(ws.path().join("busy.txt"), format!("edit {i}")).unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if snapshots(&mut c, ws.path()).await.len() > before {
            seen_during_edits = true;
            break;
        }
    }
    assert!(
        seen_during_edits,
        "no snapshot while edits never paused:\n{}",
        d.log()
    );
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "took {:?}",
        start.elapsed()
    );
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
    let ws_path = ws.path().to_path_buf();
    let snap = wait_for(20, "the offline change to be saved", || {
        let mut c = c.clone();
        let ws_path = ws_path.clone();
        async move {
            snapshots(&mut c, &ws_path)
                .await
                .into_iter()
                .find(|s| s.files == 201)
        }
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
    watch(&mut c, ws.path(), 300, 5000).await;
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
    assert!(c.get(get(w.clone(), "@0s")).await.is_ok());
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
        })
        .await;
    assert_eq!(escape.unwrap_err().code(), tonic::Code::InvalidArgument);
}

/// Python's grpcio, with our descriptors learnt through reflection, calls Status and List.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_python_grpc_client_can_call_status_and_list() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    fs::write(ws.path().join("a.txt"), b"hello").unwrap();
    let mut c = d.client().await;
    let baseline = watch(&mut c, ws.path(), 300, 5000).await.baseline.unwrap();
    let python = util::python_with_grpc();
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/grpc_client.py"))
        .arg(&d.socket)
        .arg(ws.path())
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
}
