//! Black-box tests of the real `chkptctl` binary against a real `chkptd`.

#![allow(clippy::unwrap_used)]

mod util;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::cli::{json_ws as json, ok_ws as ok, run_ws as run_raw, save_ws as save};
use util::{Daemon, listing};

/// The workspace's snapshots, newest first.
fn list(d: &Daemon, ws: &Path) -> Vec<Value> {
    json(d, ws, &["list"]).as_array().unwrap().clone()
}

/// Polls `f` until it returns `Some`, up to `secs`.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A daemon and a watched workspace with a few files. With `quick`, auto
/// snapshots come after 0.3 s of quiet; else they practically never come, so
/// only the test's own saves and restores make snapshots.
fn setup(quick: bool) -> (Daemon, tempfile::TempDir) {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    fs::create_dir_all(ws.path().join("src")).unwrap();
    fs::write(ws.path().join("README"), b"hello\n").unwrap();
    fs::write(ws.path().join("src/main.rs"), b"fn main() {}\n").unwrap();
    fs::write(ws.path().join("bin.dat"), [0u8, 0xff, 0xfe, b'\n', 0x80]).unwrap();
    let dir = ws.path().display().to_string();
    let timing: &[&str] = if quick {
        &["--idle", "0.3", "--max-delay", "5"]
    } else {
        &["--idle", "3600", "--max-delay", "3600"]
    };
    let mut args = vec!["watch", dir.as_str()];
    args.extend_from_slice(timing);
    ok(&d, ws.path(), &args);
    (d, ws)
}

#[test]
fn save_list_show_cat() {
    let (d, ws) = setup(false);
    let w = ws.path();
    // Nothing changed since the baseline: only --allow-empty records a snapshot of its own.
    let id = ok(&d, w, &["save", "--allow-empty", "-m", "first"])
        .text()
        .trim()
        .to_owned();

    let snaps = list(&d, w);
    let s = snaps
        .iter()
        .find(|s| s["id"] == id.as_str())
        .expect("listed");
    assert_eq!(s["message"], "first");
    assert_eq!(s["trigger"], "manual");
    assert_eq!(s["files"], 3);
    assert_eq!(snaps[0]["id"], id.as_str(), "newest first");

    let human = ok(&d, w, &["list"]).text();
    assert!(human.contains(&id[..8]), "{human}");

    let shown = json(&d, w, &["show", &id[..8]]);
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["message"], "first");
    let human = ok(&d, w, &["show", &id[..8]]).text();
    assert!(human.contains(&id), "{human}");
    assert!(human.contains("first"), "{human}");

    let bytes = ok(&d, w, &["cat", "latest", "bin.dat"]).stdout;
    assert_eq!(bytes, [0u8, 0xff, 0xfe, b'\n', 0x80]);
    let bytes = ok(&d, w, &["cat", &id, "src/main.rs"]).stdout;
    assert_eq!(bytes, b"fn main() {}\n");

    // cat shows the snapshot's bytes, not the working tree's.
    fs::write(w.join("README"), b"changed\n").unwrap();
    assert_eq!(ok(&d, w, &["cat", "latest", "README"]).stdout, b"hello\n");
}

#[test]
fn every_selector_form_resolves() {
    let (d, ws) = setup(false);
    let w = ws.path();
    fs::write(w.join("README"), b"one\n").unwrap();
    let older = save(&d, w, "older");
    fs::write(w.join("README"), b"two\n").unwrap();
    let newer = save(&d, w, "newer");

    let id_of = |sel: &str| {
        json(&d, w, &["show", sel])["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(id_of(&newer), newer);
    assert_eq!(id_of(&newer[..8]), newer);
    assert_eq!(id_of(&older[..10]), older);
    assert_eq!(id_of("latest"), newer);
    assert_eq!(id_of("latest~1"), older);
    assert_eq!(id_of("@0s"), newer);
    assert_eq!(id_of("@2999-01-01T00:00"), newer);
}

#[test]
fn restore_dry_run_in_place_undo_subset_and_to() {
    let (d, ws) = setup(false);
    let w = ws.path();
    let id = save(&d, w, "good");
    let saved = listing(w);

    // Edit: modify, delete, add.
    fs::write(w.join("README"), b"broken\n").unwrap();
    fs::remove_file(w.join("src/main.rs")).unwrap();
    fs::write(w.join("new.txt"), b"new file\n").unwrap();
    let edited = listing(w);
    assert_ne!(edited, saved);

    // Dry run changes nothing but reports.
    let r = json(&d, w, &["restore", &id, "--dry-run"]);
    assert_eq!(listing(w), edited, "dry run touched the tree");
    assert_eq!(r["snapshot"], id.as_str());
    assert_eq!(r["modified"], 1, "{r}");
    assert_eq!(r["added"], 1, "{r}");
    assert_eq!(r["deleted"], 1, "{r}");

    // --to writes an exact copy and leaves the workspace alone.
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("copy");
    ok(&d, w, &["restore", &id, "--to", target.to_str().unwrap()]);
    assert_eq!(listing(&target), saved);
    assert_eq!(listing(w), edited);

    // In place brings the exact tree back.
    let r = json(&d, w, &["restore", &id]);
    assert_eq!(listing(w), saved);
    assert_eq!(r["snapshot"], id.as_str());
    assert_eq!(r["modified"], 1, "{r}");
    assert_eq!(r["added"], 1, "{r}");
    assert_eq!(r["deleted"], 1, "{r}");
    assert!(r["unchanged"].as_u64().unwrap() >= 1, "{r}");
    let pre = r["pre_restore_snapshot"]
        .as_str()
        .expect("a pre-restore id");
    let pre_snap = json(&d, w, &["show", pre]);
    assert_eq!(pre_snap["trigger"], "pre-restore");

    // Undo brings back the pre-restore tree.
    ok(&d, w, &["undo"]);
    assert_eq!(listing(w), edited);

    // Subset: only README goes back; the other edits stay.
    ok(&d, w, &["restore", &id, "README"]);
    let mut expected = edited.clone();
    expected.insert("README".into(), Some(b"hello\n".to_vec()));
    assert_eq!(listing(w), expected);
}

#[test]
fn diff_reports_added_modified_deleted() {
    let (d, ws) = setup(false);
    let w = ws.path();
    save(&d, w, "base");
    fs::write(w.join("README"), b"hello, world\n").unwrap();
    fs::write(w.join("added.txt"), b"abc").unwrap();
    fs::remove_file(w.join("src/main.rs")).unwrap();

    let diff = json(&d, w, &["diff"]);
    let entries = diff.as_array().unwrap();
    let find = |p: &str| {
        entries
            .iter()
            .find(|e| e["path"].as_str().is_some_and(|x| x.ends_with(p)))
            .unwrap_or_else(|| panic!("{p} not in diff: {diff}"))
    };
    let m = find("README");
    assert_eq!(m["change"], "modified");
    assert_eq!(m["size_before"], 6);
    assert_eq!(m["size_after"], 13);
    let a = find("added.txt");
    assert_eq!(a["change"], "added");
    assert_eq!(a["size_after"], 3);
    let del = find("main.rs");
    assert_eq!(del["change"], "deleted");
    assert_eq!(del["size_before"], 13);
    assert_eq!(entries.len(), 3, "{diff}");

    // SNAP vs SNAP2.
    let second = save(&d, w, "second");
    let diff = json(&d, w, &["diff", "latest~1", &second]);
    assert_eq!(diff.as_array().unwrap().len(), 3, "{diff}");
    // Latest vs the working tree: nothing changed.
    let diff = json(&d, w, &["diff"]);
    assert_eq!(diff.as_array().unwrap().len(), 0, "{diff}");
}

#[test]
fn pin_unpin_delete_verify_log() {
    let (d, ws) = setup(false);
    let w = ws.path();
    let a = save(&d, w, "a");
    fs::write(w.join("README"), b"v2\n").unwrap();
    let b = save(&d, w, "b");
    fs::write(w.join("bin.dat"), b"other").unwrap();
    let c = save(&d, w, "c");

    assert_eq!(json(&d, w, &["pin", &b])["pinned"], true);
    assert_eq!(json(&d, w, &["show", &b])["pinned"], true);
    assert_eq!(json(&d, w, &["unpin", &b])["pinned"], false);
    assert_eq!(json(&d, w, &["show", &b])["pinned"], false);

    // A snapshot of its own (nothing changed since c: without --allow-empty this would pin c,
    // which `delete` below then refuses without --force).
    let pinned = json(&d, w, &["save", "--pin", "--allow-empty", "-m", "pinned"]);
    assert_ne!(pinned["id"], c.as_str());
    assert_eq!(pinned["pinned"], true);

    // README changed in b (and was created at or before a).
    let log = json(&d, w, &["log", "README"]);
    let ids: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["snapshot"]["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&b.as_str()), "{log}");
    assert!(!ids.contains(&c.as_str()), "{log}");
    assert!(!ids.contains(&pinned["id"].as_str().unwrap()), "{log}");

    ok(&d, w, &["delete", &c]);
    let left: Vec<String> = list(&d, w)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!left.contains(&c), "{left:?}");
    assert!(left.contains(&a) && left.contains(&b), "{left:?}");

    ok(&d, w, &["verify"]);
    // Everything restorable after the delete.
    let out = tempfile::tempdir().unwrap();
    let t = out.path().join("b");
    ok(&d, w, &["restore", &b, "--to", t.to_str().unwrap()]);
    assert_eq!(fs::read(t.join("README")).unwrap(), b"v2\n");
}

#[test]
fn auto_snapshot_via_cli_watch() {
    let (d, ws) = setup(true);
    let w = ws.path();
    let before = list(&d, w).len();
    fs::write(w.join("auto.txt"), b"auto\n").unwrap();
    let snap = wait_for(20, "an auto snapshot", || {
        list(&d, w)
            .into_iter()
            .find(|s| s["trigger"] == "auto" && s["files"] == 4)
    });
    assert!(list(&d, w).len() > before);
    let status = json(&d, w, &["status"]);
    assert!(
        status["workspaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["path"].as_str().is_some()),
        "{status}"
    );
    let id = snap["id"].as_str().unwrap();
    assert_eq!(ok(&d, w, &["cat", id, "auto.txt"]).stdout, b"auto\n");
}

#[test]
fn error_paths() {
    let (d, ws) = setup(false);
    let w = ws.path();
    save(&d, w, "one");

    // No daemon.
    let missing = d.dir.path().join("nowhere/none.sock");
    let out = run_raw(&missing, w, &["list"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("chkptctl daemon start"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);

    // Unknown snapshot.
    let out = run_raw(&d.socket, w, &["show", "ffffffff"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("chkptctl list"), "{}", out.stderr);

    // Usage error.
    let out = run_raw(&d.socket, w, &["frobnicate"]);
    assert_eq!(out.code, 2, "{}", out.stderr);

    // Path escaping the workspace.
    let out = run_raw(&d.socket, w, &["cat", "latest", "../../etc/passwd"]);
    assert_eq!(out.code, 1, "stdout: {} stderr: {}", out.text(), out.stderr);
    assert!(out.stdout.is_empty());

    // -w outside any workspace.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = run_raw(&d.socket, elsewhere.path(), &["list"]);
    assert_eq!(out.code, 1, "stdout: {} stderr: {}", out.text(), out.stderr);
    assert!(!out.stderr.is_empty());
}

#[test]
fn watch_sets_retention_status_shows_the_tripwire_and_ack_clears_it() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    for i in 0..40 {
        fs::write(
            ws.path().join(format!("f{i:02}.txt")),
            format!("file {i}\n"),
        )
        .unwrap();
    }
    let dir = ws.path().display().to_string();
    let watched = json(
        &d,
        ws.path(),
        &[
            "watch",
            &dir,
            "--idle",
            "0.3",
            "--max-delay",
            "5",
            "--keep-last",
            "7",
            "--keep-daily",
            "3",
        ],
    );
    let retention = &watched["workspace"]["retention"];
    assert_eq!(
        (
            retention["keep_last"].as_u64(),
            retention["keep_daily"].as_u64()
        ),
        (Some(7), Some(3))
    );
    let baseline = watched["baseline"]["id"].as_str().unwrap().to_owned();

    for i in 0..40 {
        fs::remove_file(ws.path().join(format!("f{i:02}.txt"))).unwrap();
    }
    let line = wait_for(20, "the tripwire line in status", || {
        let text = ok(&d, ws.path(), &["status"]).text();
        text.lines()
            .find(|l| l.contains("mass-change tripwire"))
            .map(str::to_owned)
    });
    assert!(
        line.contains(&baseline),
        "the line names the pinned snapshot: {line}"
    );
    let st = json(&d, ws.path(), &["status"]);
    assert_eq!(
        st["workspaces"][0]["tripwire"]["pinned_snapshot"].as_str(),
        Some(baseline.as_str())
    );
    let shown = json(&d, ws.path(), &["show", &baseline]);
    assert_eq!(shown["pinned"], Value::Bool(true));

    assert!(
        ok(&d, ws.path(), &["ack"])
            .text()
            .contains("tripwire cleared")
    );
    assert!(
        !ok(&d, ws.path(), &["status"])
            .text()
            .contains("mass-change tripwire")
    );
    assert!(ok(&d, ws.path(), &["ack"]).text().contains("no tripwire"));

    // The pinned snapshot brings everything back.
    ok(&d, ws.path(), &["restore", &baseline]);
    assert_eq!(fs::read_dir(ws.path()).unwrap().count(), 40);
}

#[test]
fn list_shows_git_branch_and_head() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.invalid",
                "-c",
                "init.defaultBranch=trunk",
            ])
            .args(args)
            .current_dir(ws.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["init", "-q"]);
    fs::write(ws.path().join("a.rs"), b"a").unwrap();
    git(&["add", "."]);
    git(&["commit", "-qm", "one"]);
    let head = git(&["rev-parse", "HEAD"]);
    let dir = ws.path().display().to_string();
    ok(
        &d,
        ws.path(),
        &["watch", &dir, "--idle", "3600", "--max-delay", "3600"],
    );
    let table = ok(&d, ws.path(), &["list"]).text();
    assert!(
        table.contains(&format!("[trunk {}]", &head[..8])),
        "{table}"
    );
    let snaps = list(&d, ws.path());
    assert_eq!(snaps[0]["git_branch"].as_str(), Some("trunk"));
    assert_eq!(snaps[0]["git_head"].as_str(), Some(head.as_str()));
}

#[test]
fn completions_and_daemon_start_stop() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/chkptd.sock");
    let ctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_chkptctl"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .env("CHKPT_DATA_DIR", dir.path().join("data"))
            .env_remove("CHKPT_SOCKET")
            .output()
            .unwrap()
    };
    let bash = ctl(&["completions", "bash"]);
    assert_eq!(bash.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&bash.stdout).contains("chkptctl"));
    assert_eq!(
        ctl(&["completions", "tcsh"]).status.code(),
        Some(2),
        "unknown shell is a usage error"
    );

    assert_eq!(ctl(&["status"]).status.code(), Some(1), "no daemon yet");
    let started = ctl(&["daemon", "start"]);
    assert_eq!(
        started.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert_eq!(ctl(&["status"]).status.code(), Some(0));
    assert_eq!(
        ctl(&["daemon", "start"]).status.code(),
        Some(0),
        "already running is fine"
    );
    let stopped = ctl(&["daemon", "stop"]);
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let after = ctl(&["status"]);
    assert_eq!(after.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&after.stderr).contains("chkptctl daemon start"));
}
