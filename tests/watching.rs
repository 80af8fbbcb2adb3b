//! What the watcher does when the kernel cannot tell it everything, and what it reports: the
//! polling fallback when inotify watches run out (at the start or later), a kernel queue
//! overflow that forces a rescan, the stat-walk a save falls back to when its event barrier
//! cannot be written, and the `Events` stream (all workspaces or one).
//!
//! Nothing here changes the machine for anyone else: the watch limit is lowered inside a user
//! namespace of the daemon's own (`/proc/sys/user/max_inotify_watches` is per user namespace,
//! unlike `fs.inotify.max_user_watches`), and the queue overflows because the daemon is
//! stopped (SIGSTOP) while more changes are made than the queue holds.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use tonic::Streaming;
use tonic::transport::Channel;
use util::{Daemon, listing, restore_to, save, snapshots, wait_for, watch};

type Client = ChkptClient<Channel>;

/// A daemon in a user namespace of its own whose inotify watch limit is `limit`.
fn daemon_with_watch_limit(limit: u32, args: &[&str]) -> Daemon {
    let script = format!("echo {limit} > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\"");
    Daemon::start_with_prefix(
        &[
            "unshare",
            "--user",
            "--map-root-user",
            "--",
            "sh",
            "-c",
            &script,
        ],
        args,
    )
}

async fn workspace_status(c: &mut Client, ws: &Path) -> pb::WorkspaceStatus {
    let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
    st.workspaces
        .into_iter()
        .find(|w| {
            w.workspace
                .as_ref()
                .is_some_and(|x| Path::new(&x.path) == ws)
        })
        .unwrap_or_else(|| panic!("{} is not watched", ws.display()))
}

async fn events(c: &mut Client, ws: &str) -> Streaming<pb::Event> {
    c.events(pb::EventsRequest {
        workspace: ws.to_owned(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// The next event of `stream` for which `pick` returns something, within 60 s.
async fn next_event<T>(
    stream: &mut Streaming<pb::Event>,
    what: &str,
    mut pick: impl FnMut(&pb::Event) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let ev = stream
                .message()
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("the Events stream ended waiting for {what}"));
            if let Some(v) = pick(&ev) {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within 60 s"))
}

/// Makes `dirs` folders with one file each under `root`.
fn make_dirs(root: &Path, prefix: &str, dirs: usize) {
    for i in 0..dirs {
        let d = root.join(format!("{prefix}{i:02}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("f.txt"), format!("{prefix} {i}")).unwrap();
    }
}

/// Waits for an auto snapshot holding `path` with `content`, and returns it.
async fn snapshot_holding(c: &Client, ws: &Path, path: &str, content: &[u8]) -> pb::Snapshot {
    let ws = ws.to_path_buf();
    wait_for(60, &format!("a snapshot holding {path}"), || {
        let mut c = c.clone();
        let ws = ws.clone();
        async move {
            let latest = snapshots(&mut c, &ws).await.into_iter().next()?;
            let got = util::read_file(&mut c, &ws, &latest.id, path.as_bytes())
                .await
                .ok()?;
            (got == content).then_some(latest)
        }
    })
    .await
}

/// Too few watches for the tree: the workspace is polled (a stat-walk every second here),
/// `Status` and an `Events` warning say why, and a change deep in the tree still reaches a
/// snapshot marked as seen by a rescan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_inotify_watches_at_the_start_falls_back_to_polling() {
    let d = daemon_with_watch_limit(8, &["--poll-interval", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().canonicalize().unwrap();
    make_dirs(&ws, "d", 20);
    let mut c = d.client().await;
    let mut all = events(&mut c, "").await;
    let baseline = watch(&mut c, &ws, 300, 5000).await.baseline.unwrap();
    assert_eq!(
        baseline.files, 20,
        "the baseline still holds the whole tree"
    );
    let warning = next_event(&mut all, "the out-of-watches warning", |ev| {
        match &ev.kind {
            Some(pb::event::Kind::Warning(w)) => Some((ev.workspace.clone(), w.message.clone())),
            _ => None,
        }
    })
    .await;
    assert_eq!(warning.0, ws.display().to_string());
    assert!(
        warning.1.contains("out of inotify watches"),
        "{}",
        warning.1
    );
    let st = workspace_status(&mut c, &ws).await;
    assert_eq!(st.state(), pb::WorkspaceState::Polling, "{st:?}");
    assert!(st.state_detail.contains("max_user_watches"), "{st:?}");

    fs::write(ws.join("d17/f.txt"), b"changed where no watch is").unwrap();
    let snap = snapshot_holding(&c, &ws, "d17/f.txt", b"changed where no watch is").await;
    assert_eq!(snap.trigger(), pb::Trigger::Auto);
    assert!(
        snap.rescan,
        "a change seen by polling is marked as such: {snap:?}"
    );
    assert_eq!(
        workspace_status(&mut c, &ws).await.state(),
        pb::WorkspaceState::Polling
    );
}

/// Watches run out only as the tree grows (new folders after the watch was placed): the
/// workspace falls back to polling too, so a change in a folder the kernel could not watch
/// still reaches a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_inotify_watches_later_falls_back_to_polling() {
    let d = daemon_with_watch_limit(12, &["--poll-interval", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().canonicalize().unwrap();
    make_dirs(&ws, "d", 4);
    let mut c = d.client().await;
    watch(&mut c, &ws, 300, 5000).await;
    assert_eq!(
        workspace_status(&mut c, &ws).await.state(),
        pb::WorkspaceState::Watching
    );
    make_dirs(&ws, "new", 30);
    let st = wait_for(60, "the fallback to polling", || {
        let mut c = c.clone();
        let ws = ws.clone();
        async move {
            let st = workspace_status(&mut c, &ws).await;
            (st.state() == pb::WorkspaceState::Polling).then_some(st)
        }
    })
    .await;
    assert!(st.state_detail.contains("out of inotify watches"), "{st:?}");
    // Past the folders the kernel could watch: a change there has no event to send.
    let snap = snapshot_holding(&c, &ws, "new29/f.txt", b"new 29").await;
    assert_eq!(snap.files, 34);
    fs::write(ws.join("new29/f.txt"), b"changed where no watch is").unwrap();
    snapshot_holding(&c, &ws, "new29/f.txt", b"changed where no watch is").await;
}

/// The kernel's event queue overflows while nothing reads it: the daemon reports a rescan on
/// the `Events` stream, counts it, and its next snapshot holds every file, marked as seen by
/// a rescan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_queue_overflow_leads_to_a_rescan_that_misses_nothing() {
    let queue: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().canonicalize().unwrap();
    let mut c = d.client().await;
    watch(&mut c, &ws, 300, 5000).await;
    let mut stream = events(&mut c, &ws.display().to_string()).await;
    let pid = c
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .pid as i32;
    // Stopped, the daemon reads no events: the kernel queues them until it is full, then
    // drops the rest and queues an overflow.
    // SAFETY: signalling a child we started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let files = queue + 2000;
    let made = std::panic::catch_unwind(|| {
        for i in 0..files {
            fs::write(ws.join(format!("f{i:05}")), i.to_string()).unwrap();
        }
    });
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    made.unwrap();
    let reason = next_event(&mut stream, "a Rescan event", |ev| match &ev.kind {
        Some(pb::event::Kind::Rescan(r)) => Some(r.reason.clone()),
        _ => None,
    })
    .await;
    println!(
        "figures: queue overflow: {files} files created past a queue of {queue}; rescan reason {reason:?}"
    );
    assert!(
        reason.contains("the kernel's event queue overflowed"),
        "{reason}"
    );
    let snap = next_event(
        &mut stream,
        "the snapshot after the rescan",
        |ev| match &ev.kind {
            Some(pb::event::Kind::SnapshotTaken(s)) => {
                s.snapshot.clone().filter(|s| s.files == files as u64)
            }
            _ => None,
        },
    )
    .await;
    assert!(snap.rescan, "{snap:?}");
    assert!(
        workspace_status(&mut c, &ws)
            .await
            .counters
            .unwrap()
            .rescans
            >= 1
    );
    let out = tempfile::tempdir().unwrap();
    restore_to(&mut c, &ws, &snap.id, out.path()).await;
    assert_eq!(listing(out.path()), listing(&ws));
}

/// Writes `content` into `path` through a shared mapping: the file changes, its mtime too, and
/// inotify reports nothing (man 7 inotify). Only a stat-walk can see it.
fn write_through_mapping(path: &Path, content: &[u8]) {
    use std::os::fd::AsRawFd;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    assert_eq!(f.metadata().unwrap().len(), content.len() as u64);
    // SAFETY: a fresh shared mapping of a file we opened read-write, exactly its length, used
    // only here and unmapped before the file is closed.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            content.len(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        std::ptr::copy_nonoverlapping(content.as_ptr(), p.cast::<u8>(), content.len());
        assert_eq!(libc::munmap(p, content.len()), 0);
    }
}

/// A save's event barrier is a file in the workspace's top folder; when the daemon cannot
/// write it there, the save stat-walks the tree instead, and holds a change no event reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_that_cannot_write_its_barrier_stat_walks_instead() {
    // As root, permission bits bind only without the capabilities that override them.
    let d = Daemon::start_bound_by_permissions(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().canonicalize().unwrap();
    fs::create_dir(ws.join("sub")).unwrap();
    fs::write(ws.join("sub/data.bin"), vec![b'a'; 4096]).unwrap();
    // Past the racy window: the baseline's read of data.bin is final, and only a look at its
    // metadata can tell the save that it changed.
    std::thread::sleep(Duration::from_millis(1200));
    fs::set_permissions(&ws, fs::Permissions::from_mode(0o555)).unwrap();
    let mut c = d.client().await;
    watch(&mut c, &ws, 3_600_000, 3_600_000).await;
    write_through_mapping(&ws.join("sub/data.bin"), &[b'b'; 4096]);
    let snap = save(&mut c, &ws, "after a change no event reported").await;
    fs::set_permissions(&ws, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        d.log().contains("no event barrier"),
        "the barrier was written after all:\n{}",
        d.log()
    );
    assert_eq!(
        util::read_file(&mut c, &ws, &snap.id, b"sub/data.bin")
            .await
            .unwrap(),
        vec![b'b'; 4096]
    );
}

/// `Events` for all workspaces carries every workspace's events, each naming its workspace;
/// `Events` for one carries only that one's. A restore in place sends `RestoreDone` with its
/// summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_all_workspaces_or_one_and_restore_done() {
    let d = Daemon::start(&[]);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = da.path().canonicalize().unwrap();
    let b = db.path().canonicalize().unwrap();
    fs::write(b.join("kept.txt"), b"first").unwrap();
    let mut c = d.client().await;
    watch(&mut c, &a, 300, 3_600_000).await;
    let b_baseline = watch(&mut c, &b, 300, 3_600_000).await.baseline.unwrap();
    let (wa, wb) = (a.display().to_string(), b.display().to_string());
    let mut all = events(&mut c, "").await;
    let mut only_a = events(&mut c, &wa).await;

    let taken = |ws: &str| {
        let ws = ws.to_owned();
        move |ev: &pb::Event| match &ev.kind {
            Some(pb::event::Kind::SnapshotTaken(s)) if ev.workspace == ws => s.snapshot.clone(),
            _ => None,
        }
    };
    fs::write(b.join("kept.txt"), b"second").unwrap();
    let b_snap = next_event(&mut all, "B's auto snapshot", taken(&wb)).await;
    assert_eq!(b_snap.workspace, wb);
    let mut restore = c
        .restore(pb::RestoreRequest {
            workspace: wb.clone(),
            snapshot: b_baseline.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut summary = None;
    while let Some(ev) = restore.message().await.unwrap() {
        if let Some(pb::restore_event::Event::Summary(s)) = ev.event {
            summary = Some(s);
        }
    }
    let summary = summary.unwrap();
    let done = next_event(&mut all, "RestoreDone", |ev| match &ev.kind {
        Some(pb::event::Kind::RestoreDone(r)) => {
            Some((ev.workspace.clone(), r.summary.clone().unwrap()))
        }
        _ => None,
    })
    .await;
    assert_eq!(done.0, wb);
    assert_eq!(done.1, summary);
    assert_eq!(done.1.snapshot, b_baseline.id);
    assert_eq!(done.1.modified, 1);
    assert!(!done.1.pre_restore_snapshot.is_empty());
    assert_eq!(fs::read(b.join("kept.txt")).unwrap(), b"first");

    // Now A: its events reach both streams. Everything the stream for A carried up to A's
    // snapshot is A's (one stream delivers in order, so B's events would have come first).
    fs::write(a.join("a.txt"), b"in A").unwrap();
    let a_snap = next_event(&mut all, "A's auto snapshot", taken(&wa)).await;
    let mut seen = Vec::new();
    let from_a = next_event(&mut only_a, "A's snapshot on A's stream", |ev| {
        seen.push((ev.workspace.clone(), format!("{:?}", ev.kind)));
        taken(&wa)(ev)
    })
    .await;
    assert_eq!(from_a.id, a_snap.id);
    assert!(
        seen.iter().all(|(ws, _)| *ws == wa),
        "the stream for A carried another workspace's events: {seen:?}"
    );
}
