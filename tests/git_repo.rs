//! A deleted repository comes back whole when its workspace saves `.git` (`--include-git`):
//! unpushed commits, stashes, local branches and the reflog, with `git fsck` clean; and a
//! restore in place over a living repository leaves its `.git` alone unless asked.

#![allow(clippy::unwrap_used)]

mod util;

use std::fs;
use std::path::Path;

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use tonic::transport::Channel;
use util::{Daemon, git, listing, restore_to, snapshots, wait_for};

/// What a repository holds that only its `.git` knows.
fn history(dir: &Path) -> Vec<String> {
    vec![
        git(dir, &["log", "--all", "--format=%H %s"]),
        git(dir, &["stash", "list", "--format=%H %s"]),
        git(dir, &["branch", "--format=%(refname) %(objectname)"]),
        git(dir, &["reflog", "--format=%H %gs"]),
        git(dir, &["status", "--porcelain"]),
    ]
}

/// The working tree without `.git`.
fn work_tree(dir: &Path) -> Vec<(std::path::PathBuf, Option<Vec<u8>>)> {
    listing(dir)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".git"))
        .collect()
}

/// A clone with two unpushed commits, a stash, a local branch and an uncommitted edit.
fn repository(parent: &Path) -> std::path::PathBuf {
    let origin = parent.join("origin.git");
    git(
        parent,
        &["init", "-q", "--bare", "-b", "main", "origin.git"],
    );
    let seed = parent.join("seed");
    fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q", "-b", "main"]);
    fs::write(seed.join("README"), b"hello\n").unwrap();
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "-q", "-m", "first"]);
    git(&seed, &["push", "-q", origin.to_str().unwrap(), "main"]);
    let repo = parent.join("project");
    git(
        parent,
        &["clone", "-q", origin.to_str().unwrap(), "project"],
    );
    for (i, msg) in ["unpushed one", "unpushed two"].iter().enumerate() {
        fs::write(repo.join(format!("work{i}.rs")), format!("// {msg}\n")).unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", msg]);
    }
    git(&repo, &["checkout", "-q", "-b", "feature"]);
    fs::write(repo.join("feature.rs"), b"// feature\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "feature work"]);
    git(&repo, &["checkout", "-q", "main"]);
    fs::write(repo.join("README"), b"hello, stashed\n").unwrap();
    git(&repo, &["stash", "push", "-q", "-m", "half done"]);
    fs::write(repo.join("README"), b"hello, uncommitted\n").unwrap();
    repo
}

async fn watch_with_git(c: &mut ChkptClient<Channel>, dir: &Path) -> pb::WatchResponse {
    c.watch(pb::WatchRequest {
        path: dir.display().to_string(),
        idle_ms: 300,
        max_delay_ms: 3000,
        include_git: true,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

async fn restore(c: &mut ChkptClient<Channel>, ws: &Path, snap: &str, include_git: bool) {
    let mut stream = c
        .restore(pb::RestoreRequest {
            workspace: ws.display().to_string(),
            snapshot: snap.to_owned(),
            include_git,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_repository_comes_back_with_its_commits_stashes_and_branches() {
    let d = Daemon::start(&["--poll-interval", "1"]);
    let parent = tempfile::tempdir().unwrap();
    let repo = repository(parent.path());
    let before = history(&repo);
    let tree = work_tree(&repo);
    let mut c = d.client().await;
    let w = watch_with_git(&mut c, &repo).await;
    let ws = w.workspace.unwrap();
    assert!(ws.include_git);
    let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
    let git_bytes = st.workspaces[0].workspace.as_ref().unwrap().git_dir_bytes;
    assert!(git_bytes > 10_000, "status shows .git's size: {git_bytes}");
    let saved = w.baseline.unwrap();

    fs::remove_dir_all(&repo).unwrap();

    // Into another folder, from the snapshot.
    let out = tempfile::tempdir().unwrap();
    let copy = out.path().join("project");
    restore_to(&mut c, &repo, &saved.id, &copy).await;
    git(&copy, &["fsck", "--full", "--strict"]);
    assert_eq!(history(&copy), before);
    assert_eq!(work_tree(&copy), tree);

    // In place, once the folder is back (say, made again by hand).
    fs::create_dir_all(&repo).unwrap();
    wait_for(40, "the workspace watched again", || {
        let mut c = c.clone();
        async move {
            let st = c.status(pb::StatusRequest {}).await.ok()?.into_inner();
            (st.workspaces.first()?.state() == pb::WorkspaceState::Watching).then_some(())
        }
    })
    .await;
    restore(&mut c, &repo, &saved.id, false).await;
    git(&repo, &["fsck", "--full", "--strict"]);
    assert_eq!(
        history(&repo),
        before,
        "a folder without .git gets the snapshot's"
    );
    assert_eq!(work_tree(&repo), tree);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_in_place_leaves_a_living_git_alone_unless_asked_and_undo_brings_it_back() {
    let d = Daemon::start(&[]);
    let parent = tempfile::tempdir().unwrap();
    let repo = repository(parent.path());
    let mut c = d.client().await;
    let saved = watch_with_git(&mut c, &repo).await.baseline.unwrap();
    let at_snapshot = history(&repo);

    // Work goes on: a commit made after the snapshot.
    fs::write(repo.join("later.rs"), b"// later\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "after the snapshot"]);
    let with_commit = history(&repo);
    let committed = snapshots_after(&mut c, &repo, &saved.id).await;

    restore(&mut c, &repo, &saved.id, false).await;
    assert!(
        !repo.join("later.rs").exists(),
        "the working tree is the snapshot's"
    );
    let log = git(&repo, &["log", "--all", "--format=%s"]);
    assert!(
        log.contains("after the snapshot"),
        "by default .git is left alone: {log}"
    );
    assert_eq!(history(&repo)[..4], with_commit[..4]);

    // Asked for, .git goes back too.
    restore(&mut c, &repo, &saved.id, true).await;
    git(&repo, &["fsck", "--full"]);
    assert_eq!(
        history(&repo)[..4],
        at_snapshot[..4],
        "rolled back on request"
    );
    // The pre-restore snapshot held the .git with the later commit: undo brings it back.
    let pre = snapshots(&mut c, &repo)
        .await
        .into_iter()
        .find(|s| s.trigger() == pb::Trigger::PreRestore)
        .unwrap();
    restore(&mut c, &repo, &pre.id, true).await;
    let log = git(&repo, &["log", "--all", "--format=%s"]);
    assert!(log.contains("after the snapshot"), "{log}");
    assert!(committed >= 1);
}

/// Waits for an auto snapshot after `after`; returns how many came.
async fn snapshots_after(c: &mut ChkptClient<Channel>, ws: &Path, after: &str) -> usize {
    let c = c.clone();
    wait_for(30, "a snapshot after the commit", || {
        let mut c = c.clone();
        let ws = ws.to_path_buf();
        let after = after.to_owned();
        async move {
            let s = snapshots(&mut c, &ws).await;
            let n = s.iter().take_while(|s| s.id != after).count();
            (n >= 1).then_some(n)
        }
    })
    .await
}
