//! The watcher watches only what is saved: the real chkptd's inotify watches (counted by the
//! kernel, in /proc) cover the folders a snapshot includes and not those inside excluded ones,
//! follow folders as they come, go, are renamed and change status; a build writing inside
//! `target/` costs the daemon next to nothing; a vanished workspace comes back by itself;
//! nested workspaces are refused; event barriers leave the working tree alone.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod util;

use std::fs;
use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use tonic::transport::Channel;
use util::{Daemon, cpu_ms, git, kernel_watches, restore_to, snapshots, wait_for, watch};

const CACHEDIR_TAG: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55\n";

async fn status(c: &mut ChkptClient<Channel>) -> pb::StatusResponse {
    c.status(pb::StatusRequest {}).await.unwrap().into_inner()
}

/// Waits until the workspace's newest snapshot satisfies `pred`.
async fn wait_snapshot(
    c: &ChkptClient<Channel>,
    ws: &Path,
    what: &str,
    pred: impl Fn(&pb::Snapshot) -> bool,
) -> pb::Snapshot {
    wait_for(30, what, || {
        let mut c = c.clone();
        let ws = ws.to_path_buf();
        let pred = &pred;
        async move {
            let s = snapshots(&mut c, &ws).await;
            s.into_iter().next().filter(|s| pred(s))
        }
    })
    .await
}

async fn reported_watches(c: &mut ChkptClient<Channel>) -> u64 {
    status(c).await.workspaces[0]
        .counters
        .as_ref()
        .unwrap()
        .kernel_watches
}

/// Waits until the daemon holds `n` watches, as reported and as the kernel counts them.
async fn wait_watches(c: &ChkptClient<Channel>, pid: u32, n: usize, what: &str) {
    wait_for(20, what, || {
        let mut c = c.clone();
        async move {
            let reported = reported_watches(&mut c).await;
            (kernel_watches(pid) == n && reported == n as u64).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_folders_a_snapshot_includes_are_watched_and_the_watches_follow_the_folders() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    for dir in ["src/a", "src/b/inner", ".git/objects"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join(".git/HEAD"), b"ref: refs/heads/main\n").unwrap();
    fs::write(root.join("src/a/x.rs"), b"x").unwrap();
    fs::write(root.join("src/b/y.rs"), b"y").unwrap();
    fs::write(root.join("src/b/inner/z.rs"), b"z").unwrap();
    fs::create_dir_all(root.join("target")).unwrap();
    fs::write(root.join("target/CACHEDIR.TAG"), CACHEDIR_TAG).unwrap();
    for i in 0..3000 {
        fs::create_dir_all(root.join(format!("target/debug/d{i}"))).unwrap();
        if i < 300 {
            fs::create_dir_all(root.join(format!("node_modules/m{i}/lib"))).unwrap();
        }
    }
    let mut c = d.client().await;
    let pid = status(&mut c).await.pid;
    watch(&mut c, root, 300, 3000).await;
    // root, src, src/a, src/b, src/b/inner; target (its evidence may go) and .git.
    wait_watches(
        &c,
        pid,
        7,
        "7 watches for 5 included folders and 2 excluded roots",
    )
    .await;
    println!(
        "figures: watches={} for 5 included folders, 3,000 under target/, 600 under node_modules/",
        kernel_watches(pid)
    );

    // 30,000 writes inside target/ cost next to nothing and make no snapshot.
    let before = snapshots(&mut c, root).await.len();
    let cpu0 = cpu_ms(pid);
    util::write_build_output(root, 30_000);
    let cpu = cpu_ms(pid) - cpu0;
    // The watcher has seen everything before this marker once the marker is saved.
    fs::write(root.join("src/a/marker.rs"), b"m").unwrap();
    let s = wait_snapshot(&c, root, "the marker's snapshot", |s| s.files == 4).await;
    assert_eq!(
        (s.added, s.modified, s.deleted),
        (1, 0, 0),
        "only the marker"
    );
    assert_eq!(snapshots(&mut c, root).await.len(), before + 1);
    println!("figures: cpu_ms_for_30000_writes_in_target={cpu}");
    assert!(
        cpu <= 300,
        "30,000 writes in target/ cost the daemon {cpu} ms of CPU"
    );

    // A folder made and filled at once is watched, down to its deepest folder.
    fs::create_dir_all(root.join("src/new/deep")).unwrap();
    fs::write(root.join("src/new/deep/f.rs"), b"f").unwrap();
    wait_snapshot(&c, root, "the new folder's file", |s| s.files == 5).await;
    wait_watches(&c, pid, 9, "src/new and src/new/deep watched").await;
    // Its events now arrive by themselves.
    fs::write(root.join("src/new/deep/g.rs"), b"g").unwrap();
    wait_snapshot(&c, root, "a file written in the new deep folder", |s| {
        s.files == 6
    })
    .await;

    // A renamed folder is watched under its new name.
    fs::rename(root.join("src/new"), root.join("src/renamed")).unwrap();
    wait_snapshot(&c, root, "the rename", |s| s.added == 2 && s.deleted == 2).await;
    fs::write(root.join("src/renamed/deep/h.rs"), b"h").unwrap();
    wait_snapshot(&c, root, "a file in the renamed folder", |s| s.files == 7).await;
    wait_watches(&c, pid, 9, "the renamed folders watched, the old names not").await;

    // A folder that becomes a build folder loses the watches below it, and its files leave
    // the snapshots; when its evidence goes, it comes back.
    fs::write(root.join("src/b/CACHEDIR.TAG"), CACHEDIR_TAG).unwrap();
    wait_snapshot(&c, root, "src/b left out", |s| s.files == 5).await;
    wait_watches(&c, pid, 8, "src/b/inner no longer watched").await;
    fs::remove_file(root.join("src/b/CACHEDIR.TAG")).unwrap();
    wait_snapshot(&c, root, "src/b back", |s| s.files == 7).await;
    wait_watches(&c, pid, 9, "src/b/inner watched again").await;
    fs::write(root.join("src/b/inner/z.rs"), b"z2").unwrap();
    wait_snapshot(&c, root, "an edit in src/b/inner", |s| s.modified == 1).await;

    // A deleted folder's watches go.
    fs::remove_dir_all(root.join("src/renamed")).unwrap();
    wait_snapshot(&c, root, "the deletion", |s| s.files == 4).await;
    wait_watches(&c, pid, 7, "the deleted folders' watches gone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cargo_build_in_a_watched_crate_makes_no_snapshot_of_target() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    fs::create_dir_all(root.join("src")).unwrap();
    fs::write(
        root.join("Cargo.toml"),
        b"[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    fs::write(
        root.join("src/main.rs"),
        b"fn main() { println!(\"hi\"); }\n",
    )
    .unwrap();
    let mut c = d.client().await;
    let pid = status(&mut c).await.pid;
    watch(&mut c, root, 300, 3000).await;
    let cpu0 = cpu_ms(pid);
    let started = Instant::now();
    let out = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet"])
        .current_dir(root)
        .env_remove("CARGO_TARGET_DIR")
        .env(
            "CARGO_HOME",
            std::env::var_os("CARGO_HOME").unwrap_or_default(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wall = started.elapsed();
    assert!(root.join("target/CACHEDIR.TAG").exists());
    // Everything the build did has been seen once this marker is saved.
    fs::write(root.join("src/marker.rs"), b"// m\n").unwrap();
    // Cargo.toml, Cargo.lock (the build wrote it), src/main.rs, src/marker.rs.
    let s = wait_snapshot(&c, root, "the marker's snapshot", |s| s.files == 4).await;
    let cpu = cpu_ms(pid) - cpu0;
    // That CPU includes the marker's own snapshot, which is no cost of the build (and would
    // weigh more the quicker the build): one more marker snapshot measures it, to leave out.
    let before = cpu_ms(pid);
    fs::write(root.join("src/marker.rs"), b"// m2\n").unwrap();
    let first = s.id.clone();
    wait_snapshot(&c, root, "the second marker's snapshot", |x| {
        x.id != first && x.modified == 1
    })
    .await;
    let one_save = cpu_ms(pid) - before;
    let build_cpu = cpu.saturating_sub(one_save);
    let share = build_cpu as f64 / wall.as_millis().max(1) as f64 * 100.0;
    println!(
        "figures: cargo_build_ms={} daemon_cpu_ms={cpu} one_save_ms={one_save} share={share:.2}% of a core",
        wall.as_millis()
    );
    for s in snapshots(&mut c, root).await {
        assert!(
            s.files <= 4,
            "a snapshot holds {} files: target/ crept in",
            s.files
        );
    }
    let out_dir = tempfile::tempdir().unwrap();
    restore_to(&mut c, root, &s.id, out_dir.path()).await;
    assert!(!out_dir.path().join("target").exists());
    assert!(
        share <= 10.0,
        "the daemon used {share:.1}% of a core during the build"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_deleted_and_made_again_is_watched_again_by_itself() {
    let d = Daemon::start(&["--poll-interval", "1"]);
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("project");
    fs::create_dir_all(root.join("src")).unwrap();
    fs::write(root.join("src/a.txt"), b"one").unwrap();
    let mut c = d.client().await;
    watch(&mut c, &root, 300, 3000).await;
    fs::remove_dir_all(&root).unwrap();
    let st = wait_for(30, "the workspace to be missing", || {
        let mut c = c.clone();
        async move {
            let w = status(&mut c).await.workspaces.into_iter().next()?;
            (w.state() == pb::WorkspaceState::Missing).then_some(w)
        }
    })
    .await;
    assert!(st.state_detail.contains("is gone"), "{}", st.state_detail);
    let gone_warnings = st.warnings.iter().filter(|w| w.contains("is gone")).count();
    assert_eq!(gone_warnings, 1, "one warning: {:?}", st.warnings);
    // Cloned again into the same place.
    fs::create_dir_all(root.join("src")).unwrap();
    fs::write(root.join("src/a.txt"), b"two").unwrap();
    fs::write(root.join("src/b.txt"), b"new").unwrap();
    wait_for(40, "the workspace watched again", || {
        let mut c = c.clone();
        async move {
            let w = status(&mut c).await.workspaces.into_iter().next()?;
            (w.state() == pb::WorkspaceState::Watching).then_some(())
        }
    })
    .await;
    let s = wait_snapshot(&c, &root, "a snapshot of the new folder", |s| s.files == 2).await;
    // Events flow again: an edit is saved by itself.
    fs::write(root.join("src/b.txt"), b"newer").unwrap();
    let first = s.id.clone();
    let s2 = wait_snapshot(&c, &root, "an edit after the return", |s| {
        s.id != first && s.modified == 1 && s.files == 2
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    restore_to(&mut c, &root, &s2.id, out.path()).await;
    assert_eq!(fs::read(out.path().join("src/b.txt")).unwrap(), b"newer");
    // And an in-place restore into the recreated folder works.
    fs::write(root.join("src/a.txt"), b"scribbled").unwrap();
    let mut stream = c
        .restore(pb::RestoreRequest {
            workspace: root.display().to_string(),
            snapshot: s2.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    assert_eq!(fs::read(root.join("src/a.txt")).unwrap(), b"two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_inside_or_above_a_watched_workspace_is_refused() {
    let d = Daemon::start(&[]);
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("project");
    fs::create_dir_all(root.join("src/deep")).unwrap();
    let mut c = d.client().await;
    watch(&mut c, &root, 300, 3000).await;
    for other in [root.join("src"), parent.path().to_path_buf()] {
        let e = c
            .watch(pb::WatchRequest {
                path: other.display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        let msg = e.message();
        assert!(msg.contains(&root.display().to_string()), "{msg}");
        assert!(msg.contains("chkptctl unwatch"), "{msg}");
    }
    // Watching it again (new options) is still fine; once unwatched, a part of it may be
    // watched on its own.
    watch(&mut c, &root, 500, 3000).await;
    c.unwatch(pb::UnwatchRequest {
        path: root.display().to_string(),
    })
    .await
    .unwrap();
    watch(&mut c, &root.join("src"), 300, 3000).await;
}

/// What `inotifywait -m -r` sees of `dir` during `f`, one line per event.
async fn seen_by_another_watcher<F: Future<Output = ()>>(
    dir: &Path,
    exclude: Option<&str>,
    f: F,
) -> Vec<String> {
    let mut cmd = Command::new("inotifywait");
    cmd.args(["-m", "-r", "-q", "--format", "%e %w%f"]);
    if let Some(x) = exclude {
        cmd.args(["--exclude", x]);
    }
    let child = cmd
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("inotifywait (Debian package inotify-tools; .ci/run installs it)");
    // inotifywait prints nothing when its watches are placed: give it a moment on a tiny tree.
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SAFETY: kill with a valid pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_shows_nothing_to_other_watchers_of_a_git_working_tree() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    fs::create_dir_all(root.join(".git")).unwrap();
    fs::write(root.join(".git/HEAD"), b"ref: refs/heads/main\n").unwrap();
    fs::write(root.join("a.txt"), b"a").unwrap();
    let mut c = d.client().await;
    watch(&mut c, root, 60_000, 120_000).await;
    let mut c2 = c.clone();
    let seen = seen_by_another_watcher(root, Some("/\\.git(/|$)"), async move {
        for i in 0..3 {
            util::save(&mut c2, root, &format!("hook {i}")).await;
        }
    })
    .await;
    assert!(
        seen.is_empty(),
        "another watcher of the working tree saw {seen:?}"
    );

    // Outside a git repository the barrier is in the root: say what a watcher sees.
    let plain = tempfile::tempdir().unwrap();
    fs::write(plain.path().join("a.txt"), b"a").unwrap();
    watch(&mut c, plain.path(), 60_000, 120_000).await;
    let mut c2 = c.clone();
    let p = plain.path().to_path_buf();
    let seen = seen_by_another_watcher(plain.path(), None, async move {
        util::save(&mut c2, &p, "one save").await;
    })
    .await;
    println!("figures: one save outside a git repository shows another watcher {seen:?}");
    assert!(!seen.is_empty(), "inotifywait saw the barrier");
    for line in &seen {
        assert!(line.contains("/.chkpt-sync-"), "only the barrier: {line}");
    }
}

/// A repository of 700 committed files on `main`, and a branch `other` that rewrites all of
/// them; `main` checked out.
fn repo_of_700(root: &Path) {
    git(root, &["init", "-q", "-b", "main"]);
    for i in 0..700 {
        fs::write(root.join(format!("f{i}.txt")), format!("main {i}\n")).unwrap();
    }
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "main"]);
    git(root, &["checkout", "-q", "-b", "other"]);
    for i in 0..700 {
        fs::write(root.join(format!("f{i}.txt")), format!("other {i}\n")).unwrap();
    }
    git(root, &["commit", "-q", "-am", "other"]);
    git(root, &["checkout", "-q", "main"]);
}

async fn tripwire_of(c: &mut ChkptClient<Channel>) -> Option<pb::Tripwire> {
    status(c).await.workspaces.into_iter().next()?.tripwire
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_branch_switch_pins_quietly_and_a_reset_over_uncommitted_work_raises_the_alarm() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    repo_of_700(root);
    let mut c = d.client().await;
    let baseline = watch(&mut c, root, 300, 5000).await.baseline.unwrap();

    // A clean switch of 700 files: git has every version, so no alarm.
    git(root, &["checkout", "-q", "other"]);
    let switched = wait_snapshot(&c, root, "the snapshot after the switch", |s| {
        s.modified == 700 && s.git_branch == "other"
    })
    .await;
    assert!(
        tripwire_of(&mut c).await.is_none(),
        "no alarm for a clean branch switch"
    );
    let pinned = snapshots(&mut c, root)
        .await
        .into_iter()
        .find(|s| s.id == baseline.id)
        .unwrap();
    assert!(
        pinned.pinned,
        "the snapshot before the switch is pinned all the same"
    );

    // 100 uncommitted edits, saved; then `git reset --hard` throws them away.
    for i in 0..100 {
        fs::write(
            root.join(format!("f{i}.txt")),
            format!("work in progress {i}\n"),
        )
        .unwrap();
    }
    let edited = wait_snapshot(&c, root, "the edits saved", |s| {
        s.id != switched.id && s.modified == 100
    })
    .await;
    git(root, &["reset", "-q", "--hard"]);
    let trip = wait_for(30, "the tripwire", || {
        let mut c = c.clone();
        async move { tripwire_of(&mut c).await }
    })
    .await;
    assert_eq!(trip.pinned_snapshot, edited.id, "the edits are pinned");
    assert!(
        trip.detail.contains("uncommitted changes"),
        "{}",
        trip.detail
    );
    assert!(trip.detail.contains("git reset --hard"), "{}", trip.detail);
    // And what was lost restores from the pinned snapshot.
    let out = tempfile::tempdir().unwrap();
    restore_to(&mut c, root, &edited.id, out.path()).await;
    assert_eq!(
        fs::read_to_string(out.path().join("f7.txt")).unwrap(),
        "work in progress 7\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clean_of_untracked_files_raises_the_alarm() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    repo_of_700(root);
    for i in 0..100 {
        fs::write(root.join(format!("new{i}.txt")), format!("untracked {i}\n")).unwrap();
    }
    let mut c = d.client().await;
    watch(&mut c, root, 300, 5000).await;
    git(root, &["clean", "-q", "-f"]);
    let fired = wait_for(30, "the tripwire", || {
        let mut c = c.clone();
        async move { tripwire_of(&mut c).await }
    })
    .await;
    assert!(fired.detail.contains("git never had"), "{}", fired.detail);
    // Counted again once the burst is over: all of it, not only what it had done when it fired.
    let trip = wait_for(30, "the whole burst counted", || {
        let mut c = c.clone();
        async move { tripwire_of(&mut c).await.filter(|t| t.changed_files == 100) }
    })
    .await;
    assert!(
        trip.detail.contains("100 files git never had"),
        "{}",
        trip.detail
    );
}
