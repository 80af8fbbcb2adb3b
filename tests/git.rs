//! Git awareness against real git: auto snapshots wait while git holds its index lock or a
//! rebase, merge, cherry-pick or revert is half done (never longer than the maximum delay),
//! and every snapshot records the branch and the HEAD commit.
//!
//! That a snapshot did *not* come is judged only after the daemon said, in its log, that the
//! quiet period had passed and it waits for git: a sleep would prove nothing on a slow machine.

#![allow(clippy::unwrap_used)]

mod util;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use tonic::transport::Channel;
use util::{Daemon, snapshots, wait_for, watch};

fn git_output(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .args([
            "-c",
            "user.name=chkpt",
            "-c",
            "user.email=chkpt@example.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "advice.mergeConflict=false",
            "-c",
            "core.editor=true",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Runs git and returns its stdout; it must succeed.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_output(dir, args);
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// How many times the daemon logged that an auto snapshot waits for git because of `why`.
fn waits_logged(d: &Daemon, why: &str) -> usize {
    d.log()
        .lines()
        .filter(|l| l.contains("auto snapshot waits for git") && l.contains(why))
        .count()
}

async fn pending(c: &mut ChkptClient<Channel>, ws: &Path) -> u64 {
    let st = c.status(pb::StatusRequest {}).await.unwrap().into_inner();
    st.workspaces
        .iter()
        .find(|w| {
            w.workspace
                .as_ref()
                .is_some_and(|x| Path::new(&x.path) == ws)
        })
        .map_or(0, |w| w.pending_changes)
}

/// Waits until the daemon logs one more wait for git because of `why` than `before`, and
/// fails at once if a snapshot comes first (the workspace had `count`).
async fn held_back(
    d: &Daemon,
    c: &ChkptClient<Channel>,
    ws: &Path,
    (count, why, before): (usize, &str, usize),
    what: &str,
) {
    let ws = ws.to_path_buf();
    let caught = wait_for(60, &format!("the daemon to wait for {what}"), || {
        let mut c = c.clone();
        let ws = ws.clone();
        async move {
            if snapshots(&mut c, &ws).await.len() > count {
                return Some(true);
            }
            (waits_logged(d, why) > before).then_some(false)
        }
    })
    .await;
    assert!(!caught, "an auto snapshot caught {what} half way");
    // The wait was logged; nothing may have slipped in since.
    assert_eq!(
        snapshots(&mut c.clone(), &ws).await.len(),
        count,
        "an auto snapshot caught {what} half way"
    );
}

/// Waits until the workspace has `n` snapshots and returns the newest.
async fn nth_snapshot(c: &ChkptClient<Channel>, ws: &Path, n: usize, what: &str) -> pb::Snapshot {
    let ws = ws.to_path_buf();
    wait_for(60, what, || {
        let mut c = c.clone();
        let ws = ws.clone();
        async move {
            let s = snapshots(&mut c, &ws).await;
            (s.len() >= n).then(|| s[0].clone())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_snapshots_wait_for_the_index_lock_and_record_branch_and_head() {
    let d = Daemon::start(&[]);
    let repo = |name: &str| {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().canonicalize().unwrap();
        git(&ws, &["init", "-q"]);
        fs::write(ws.join("lib.rs"), format!("v1 of {name}")).unwrap();
        git(&ws, &["add", "."]);
        git(&ws, &["commit", "-qm", "first"]);
        (dir, ws)
    };
    // `waiting`: a maximum delay of an hour, so only git finishing explains a snapshot.
    let (_a, waiting) = repo("waiting");
    let head = git(&waiting, &["rev-parse", "HEAD"]);
    let mut c = d.client().await;
    let baseline = watch(&mut c, &waiting, 300, 3_600_000)
        .await
        .baseline
        .unwrap();
    assert_eq!(
        (baseline.git_branch.as_str(), baseline.git_head.as_str()),
        ("main", head.as_str())
    );

    // While git holds its index lock, a change waits...
    let lock = waiting.join(".git/index.lock");
    fs::write(&lock, b"").unwrap();
    fs::write(waiting.join("lib.rs"), b"v2 while git works").unwrap();
    let why = "git is writing its index";
    held_back(&d, &c, &waiting, (1, why, 0), "git's index lock").await;
    assert!(pending(&mut c, &waiting).await > 0, "the change was seen");
    // ... and goes once git is done.
    fs::remove_file(&lock).unwrap();
    let after = nth_snapshot(&c, &waiting, 2, "the snapshot after git finished").await;
    assert_eq!(after.trigger(), pb::Trigger::Auto);
    assert_eq!(
        util::read_file(&mut c, &waiting, &after.id, b"lib.rs")
            .await
            .unwrap(),
        b"v2 while git works"
    );
    assert_eq!(
        (after.git_branch.as_str(), after.git_head.as_str()),
        ("main", head.as_str())
    );

    // A lock that never goes delays a snapshot by the maximum delay, and no longer.
    let (_b, stale) = repo("stale");
    const MAX_DELAY: Duration = Duration::from_secs(3);
    watch(&mut c, &stale, 300, MAX_DELAY.as_millis() as u64).await;
    fs::write(stale.join(".git/index.lock"), b"").unwrap();
    let start = Instant::now();
    fs::write(stale.join("lib.rs"), b"v2 with a stale lock").unwrap();
    let snap = nth_snapshot(&c, &stale, 2, "the bounded wait to end").await;
    assert!(
        start.elapsed() >= MAX_DELAY,
        "did not wait for git: {:?}",
        start.elapsed()
    );
    assert_eq!(
        util::read_file(&mut c, &stale, &snap.id, b"lib.rs")
            .await
            .unwrap(),
        b"v2 with a stale lock"
    );
    assert!(
        d.log()
            .contains("git is still busy; taking the snapshot anyway"),
        "{}",
        d.log()
    );
}

/// A rebase (both backends), a merge, a cherry-pick and a revert stopped by a conflict: each
/// holds auto snapshots back until it is aborted, and the snapshot that follows holds the
/// tree git left and the user's own edit made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_done_rebase_merge_cherry_pick_or_revert_holds_auto_snapshots_back() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().canonicalize().unwrap();
    git(&ws, &["init", "-q"]);
    let commit = |content: &str| {
        fs::write(ws.join("file.txt"), content).unwrap();
        git(&ws, &["commit", "-qam", content.trim()]);
    };
    fs::write(ws.join("file.txt"), "a\n").unwrap();
    git(&ws, &["add", "."]);
    git(&ws, &["commit", "-qm", "a"]);
    git(&ws, &["checkout", "-qb", "other"]);
    commit("other\n");
    git(&ws, &["checkout", "-q", "main"]);
    commit("b\n");
    let b = git(&ws, &["rev-parse", "HEAD"]);
    commit("c\n");
    // Every operation below conflicts on file.txt.
    // (name, the command that stops half way, its marker under .git, why the daemon waits,
    // the command that aborts it)
    type Op<'a> = (&'a str, &'a [&'a str], &'a str, &'a str, &'a [&'a str]);
    let ops: [Op; 5] = [
        (
            "merge",
            &["merge", "other"],
            "MERGE_HEAD",
            "a merge is in progress",
            &["merge", "--abort"],
        ),
        (
            "rebase",
            &["rebase", "other"],
            "rebase-merge",
            "a rebase is in progress",
            &["rebase", "--abort"],
        ),
        (
            "rebase --apply",
            &["rebase", "--apply", "other"],
            "rebase-apply",
            "a rebase is in progress",
            &["rebase", "--abort"],
        ),
        (
            "cherry-pick",
            &["cherry-pick", "other"],
            "CHERRY_PICK_HEAD",
            "a cherry-pick is in progress",
            &["cherry-pick", "--abort"],
        ),
        (
            "revert",
            &["revert", &b],
            "REVERT_HEAD",
            "a revert is in progress",
            &["revert", "--abort"],
        ),
    ];
    let mut c = d.client().await;
    // The quiet period is a second (git writes its marker within it); the maximum delay an
    // hour, so only git finishing explains a snapshot.
    watch(&mut c, &ws, 1000, 3_600_000).await;
    let mut count = snapshots(&mut c, &ws).await.len();
    for (name, args, marker, why, abort) in ops {
        let waits = waits_logged(&d, why);
        let out = git_output(&ws, args);
        assert!(
            !out.status.success() && ws.join(".git").join(marker).exists(),
            "git {name} was meant to stop on a conflict: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let half_done = fs::read(ws.join("file.txt")).unwrap();
        assert!(
            half_done.starts_with(b"<<<<<<<"),
            "{name}: {}",
            String::from_utf8_lossy(&half_done)
        );
        let note = format!("written during the {name}\n");
        fs::write(ws.join("notes.txt"), &note).unwrap();
        held_back(&d, &c, &ws, (count, why, waits), &format!("the {name}")).await;
        git(&ws, abort);
        count += 1;
        let snap = nth_snapshot(&c, &ws, count, &format!("the snapshot after the {name}")).await;
        assert_eq!(
            util::read_file(&mut c, &ws, &snap.id, b"notes.txt")
                .await
                .unwrap(),
            note.as_bytes(),
            "{name}"
        );
        assert_eq!(
            util::read_file(&mut c, &ws, &snap.id, b"file.txt")
                .await
                .unwrap(),
            b"c\n",
            "{name}: the snapshot holds what git left"
        );
    }
}
