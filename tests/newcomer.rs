//! What a new user meets first (issue 20): one duration syntax, help texts that say what the
//! defaults are, paths given the way a shell user gives them, counts that add up, hints that
//! name the next step, and the safety of restores done in a hurry. Real `chkptd`, real
//! `chkptctl`, real socket.

#![allow(clippy::unwrap_used)]

mod util;

use std::fs;
use std::process::Command;

use util::Daemon;
use util::cli::{fails_in, json_in, ok_in, project, run_in, save};

fn help(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(out.status.success(), "{bin} {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn chkptd_takes_durations_with_units_and_its_help_shows_real_defaults() {
    let d = Daemon::start(&[
        "--idle",
        "2s",
        "--max-delay",
        "1m30s",
        "--keep-within",
        "90m",
        "--keep-daily",
        "3",
        "--poll-interval",
        "1m",
    ]);
    let ws = tempfile::tempdir().unwrap();
    fs::write(ws.path().join("a"), b"a").unwrap();
    let dir = ws.path().display().to_string();
    let w = &json_in(&d, ws.path(), &["watch", &dir])["workspace"];
    assert_eq!(w["idle_ms"], 2000, "{w}");
    assert_eq!(w["max_delay_ms"], 90_000, "{w}");
    assert_eq!(w["retention"]["keep_within_secs"], 5400, "{w}");
    assert_eq!(w["retention"]["keep_daily"], 3, "{w}");

    // Plain seconds, as the flags took before, still mean seconds.
    let d2 = Daemon::start(&["--idle", "0.5", "--keep-within", "3600"]);
    let w = &json_in(&d2, ws.path(), &["watch", &dir])["workspace"];
    assert_eq!(w["idle_ms"], 500, "{w}");
    assert_eq!(w["retention"]["keep_within_secs"], 3600, "{w}");

    // A bad duration is a usage error that says what would do.
    let out = Command::new(env!("CARGO_BIN_EXE_chkptd"))
        .args(["--idle", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("90s"), "{stderr}");

    let text = help(env!("CARGO_BIN_EXE_chkptd"), &["--help"]);
    assert!(!text.contains("[default: 0]"), "{text}");
    assert!(!text.contains("default rule"), "{text}");
    assert!(text.contains("--idle <DURATION>"), "{text}");
    assert!(text.contains("[default: 5s]"), "{text}");
    assert!(text.contains("[default: 24"), "{text}");
}

#[test]
fn prune_help_keeps_the_global_options_apart() {
    let text = help(env!("CARGO_BIN_EXE_chkptctl"), &["prune", "--help"]);
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing:\n{text}"))
    };
    // Its own options first, then the retention rules, then the global ones.
    assert!(at("--dry-run") < at("Retention rules:"), "{text}");
    assert!(at("Retention rules:") < at("--keep-within"), "{text}");
    assert!(at("--keep-within") < at("Global options:"), "{text}");
    assert!(at("Global options:") < at("--socket"), "{text}");
    assert!(at("Global options:") < at("--workspace"), "{text}");
}

#[test]
fn chkptctl_durations_take_units() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let dir = ws.path().display().to_string();
    let args = [
        "watch",
        &dir,
        "--idle",
        "250ms",
        "--max-delay",
        "2m",
        "--keep-within",
        "1d12h",
    ];
    let w = &json_in(&d, ws.path(), &args)["workspace"];
    assert_eq!(w["idle_ms"], 250, "{w}");
    assert_eq!(w["max_delay_ms"], 120_000, "{w}");
    assert_eq!(w["retention"]["keep_within_secs"], 129_600, "{w}");
}

#[test]
fn dot_dot_inside_the_workspace_is_resolved_and_only_escapes_are_refused() {
    let d = Daemon::start(&[]);
    let ws = project(&d);
    let w = ws.path();
    ok_in(&d, w, &["save", "-m", "one"]);
    let src = w.join("src");

    let out = ok_in(&d, &src, &["cat", "latest", "../README.md"]);
    assert_eq!(out.stdout, b"read me\n");
    let out = ok_in(&d, &src, &["cat", "latest", "./../src/./main.rs"]);
    assert_eq!(out.stdout, b"fn main() {}\n");
    let abs = format!("{}/src/../README.md", w.display());
    let out = ok_in(&d, w, &["cat", "latest", &abs]);
    assert_eq!(out.stdout, b"read me\n");
    let log = json_in(&d, &src, &["log", "../README.md"]);
    assert_eq!(log.as_array().unwrap().len(), 1, "{log}");

    // A `..` that climbs out of the workspace is still refused, and says so.
    let out = fails_in(&d, &src, &["cat", "latest", "../../etc/passwd"]);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("outside the workspace"),
        "{}",
        out.stderr
    );
    let out = fails_in(&d, w, &["cat", "latest", "src/../../x"]);
    assert!(
        out.stderr.contains("outside the workspace"),
        "{}",
        out.stderr
    );
}

#[test]
fn with_w_relative_paths_are_taken_from_the_workspace_when_run_from_elsewhere() {
    let d = Daemon::start(&[]);
    let ws = project(&d);
    let w = ws.path();
    let wd = w.display().to_string();
    let one = ok_in(&d, w, &["save", "-m", "one"])
        .text()
        .trim()
        .to_owned();
    let elsewhere = tempfile::tempdir().unwrap();
    let e = elsewhere.path();

    let out = ok_in(&d, e, &["-w", &wd, "cat", "latest", "src/main.rs"]);
    assert_eq!(out.stdout, b"fn main() {}\n");
    let log = json_in(&d, e, &["-w", &wd, "log", "src/main.rs"]);
    assert_eq!(log.as_array().unwrap().len(), 1, "{log}");

    // Restore of one path, named from elsewhere, restores it in the workspace.
    fs::write(w.join("src/main.rs"), b"broken").unwrap();
    fs::write(e.join("src"), b"not the workspace's").unwrap();
    ok_in(&d, e, &["-w", &wd, "restore", &one, "src/main.rs"]);
    assert_eq!(fs::read(w.join("src/main.rs")).unwrap(), b"fn main() {}\n");
    assert_eq!(fs::read(e.join("src")).unwrap(), b"not the workspace's");

    // Inside the workspace, a relative path is still taken from the current directory.
    let out = ok_in(&d, &w.join("src"), &["-w", &wd, "cat", &one, "main.rs"]);
    assert_eq!(out.stdout, b"fn main() {}\n");
    let out = run_in(
        &d.socket,
        &w.join("src"),
        &["-w", &wd, "cat", &one, "src/main.rs"],
    );
    assert_eq!(
        out.code,
        1,
        "src/src/main.rs does not exist: {}",
        out.text()
    );
}

fn snapshots(d: &Daemon, ws: &std::path::Path) -> Vec<serde_json::Value> {
    json_in(d, ws, &["list"]).as_array().unwrap().clone()
}

#[test]
fn a_folder_or_file_replaced_by_a_symlink_is_restored_and_the_link_is_never_followed() {
    let d = Daemon::start(&[]);
    let ws = project(&d);
    let w = ws.path();
    fs::create_dir_all(w.join("a/deep")).unwrap();
    fs::write(w.join("a/x"), b"x in a").unwrap();
    fs::write(w.join("a/deep/y"), b"y in a/deep").unwrap();
    fs::create_dir(w.join("b")).unwrap();
    fs::write(w.join("b/z"), b"z in b").unwrap();
    let saved = util::listing(w);
    let id = save(&d, w, "with a/");
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("x"), b"outside's own x").unwrap();
    let outside_before = util::listing(outside.path());

    // As in the issue: `rm -rf a && ln -s b a`, then a link to anywhere, then a file made a
    // link out of the workspace.
    let targets = [
        std::path::PathBuf::from("b"),
        outside.path().to_path_buf(),
        std::path::PathBuf::from("/"),
    ];
    for target in &targets {
        fs::remove_dir_all(w.join("a")).unwrap();
        std::os::unix::fs::symlink(target, w.join("a")).unwrap();
        fs::remove_file(w.join("README.md")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("x"), w.join("README.md")).unwrap();
        let out = ok_in(&d, w, &["restore", &id]);
        assert!(
            !fs::symlink_metadata(w.join("a")).unwrap().is_symlink(),
            "a is still a link to {}: {}",
            target.display(),
            out.text()
        );
        assert_eq!(
            util::listing(w),
            saved,
            "after the link to {}",
            target.display()
        );
        assert_eq!(util::listing(outside.path()), outside_before);
    }
}

#[test]
fn a_restore_that_fails_before_changing_anything_leaves_no_checkpoint_and_a_retry_restores_the_snapshot()
 {
    let d = Daemon::start(&[]);
    let ws = project(&d);
    let w = ws.path();
    fs::create_dir(w.join("a")).unwrap();
    fs::write(w.join("a/x"), b"x in a").unwrap();
    let id = save(&d, w, "with a/");
    let saved = util::listing(w);
    let outside = tempfile::tempdir().unwrap();
    fs::remove_dir_all(w.join("a")).unwrap();
    std::os::unix::fs::symlink(outside.path(), w.join("a")).unwrap();
    let before = snapshots(&d, w).len();

    // Only `a/x`: the link `a` is the user's, not in what was asked for, and is never written
    // through, so the restore stops before it changes anything.
    let out = fails_in(&d, w, &["restore", "latest", "a/x"]);
    assert!(out.stderr.contains("symlink"), "{}", out.stderr);
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    let after = snapshots(&d, w);
    assert_eq!(after.len(), before, "a checkpoint was left: {after:?}");
    assert_eq!(after[0]["id"], id.as_str());

    // So `latest` is still the snapshot, and the retry restores it.
    ok_in(&d, w, &["restore", "latest"]);
    assert_eq!(util::listing(w), saved);
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn delete_of_a_pinned_snapshot_needs_force() {
    let d = Daemon::start(&[]);
    let ws = project(&d);
    let w = ws.path();
    fs::write(w.join("new"), b"new").unwrap();
    let id = ok_in(&d, w, &["save", "--pin"]).text().trim().to_owned();
    let out = fails_in(&d, w, &["delete", &id]);
    assert!(
        out.stderr.contains("pinned") && out.stderr.contains("--force"),
        "{}",
        out.stderr
    );
    assert!(snapshots(&d, w).iter().any(|s| s["id"] == id.as_str()));
    ok_in(&d, w, &["delete", "--force", &id]);
    assert!(!snapshots(&d, w).iter().any(|s| s["id"] == id.as_str()));
}

#[test]
fn restore_to_refuses_a_used_folder_and_the_workspace_and_makes_a_new_folder_with_the_umask() {
    let d = Daemon::start(&[]);
    let ws = project(&d);
    let w = ws.path();
    let id = save(&d, w, "one");

    let used = tempfile::tempdir().unwrap();
    fs::write(used.path().join("mine"), b"mine").unwrap();
    let u = used.path().display().to_string();
    let out = fails_in(&d, w, &["restore", &id, "--to", &u]);
    assert!(
        out.stderr.contains("not empty") && out.stderr.contains("--force"),
        "{}",
        out.stderr
    );
    assert!(!used.path().join("README.md").exists());
    ok_in(&d, w, &["restore", &id, "--to", &u, "--force"]);
    assert_eq!(
        fs::read(used.path().join("README.md")).unwrap(),
        b"read me\n"
    );
    assert_eq!(fs::read(used.path().join("mine")).unwrap(), b"mine");

    let inside = w.join("sub/copy").display().to_string();
    let out = fails_in(&d, w, &["restore", &id, "--to", &inside]);
    assert!(
        out.stderr.contains("inside the workspace"),
        "{}",
        out.stderr
    );
    assert!(
        !w.join("sub").exists(),
        "the refused --to left folders behind"
    );

    // A new folder gets the user's umask, not the daemon's 077.
    let parent = tempfile::tempdir().unwrap();
    let fresh = parent.path().join("new/copy");
    let script = format!("umask 022 && exec \"$0\" --socket \"$1\" restore {id} --to \"$2\"",);
    let st = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_chkptctl")])
        .arg(&d.socket)
        .arg(&fresh)
        .current_dir(w)
        .status()
        .unwrap();
    assert!(st.success());
    use std::os::unix::fs::PermissionsExt;
    for dir in [&fresh, &parent.path().join("new")] {
        let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "{}", dir.display());
    }
    assert_eq!(
        fs::read(fresh.join("src/main.rs")).unwrap(),
        b"fn main() {}\n"
    );
}

#[test]
fn restore_marks_each_path_and_counts_what_the_daemon_counted() {
    let d = Daemon::start(&[]);
    let ws = project(&d);
    let w = ws.path();
    fs::create_dir(w.join("many")).unwrap();
    for i in 0..1100 {
        fs::write(w.join(format!("many/f{i:04}")), format!("{i}")).unwrap();
    }
    let id = save(&d, w, "many");
    for i in 0..1050 {
        fs::remove_file(w.join(format!("many/f{i:04}"))).unwrap();
    }
    fs::write(w.join("README.md"), b"changed").unwrap();
    fs::write(w.join("extra"), b"not in the snapshot").unwrap();

    let text = ok_in(&d, w, &["restore", &id, "--dry-run"]).text();
    assert!(text.contains("\nM README.md\n"), "{text}");
    assert!(text.contains("\nD extra\n"), "{text}");
    assert!(text.contains("\nA many/f0000\n"), "{text}");

    let out = ok_in(&d, w, &["restore", &id]).text();
    assert!(
        out.starts_with(&format!("restored {id}: +1050 ~1 -1")),
        "{out}"
    );
    // 1,052 paths: 20 listed, and the rest counted by the daemon (not the 1,000 it sent).
    assert!(out.contains("  … and 1032 more\n"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("A many/")).count(),
        18,
        "{out}"
    );

    // The JSON has the total too, beside the capped list and its marks.
    for i in 0..1050 {
        fs::remove_file(w.join(format!("many/f{i:04}"))).unwrap();
    }
    let r = json_in(&d, w, &["restore", &id]);
    assert_eq!(r["changed_total"], 1050, "{r}");
    assert_eq!(r["changed_paths"].as_array().unwrap().len(), 1000);
    assert_eq!(r["changes"][0], "added");
}

#[test]
fn an_empty_diff_says_no_changes_and_log_of_a_folder_shows_no_size() {
    let d = Daemon::start(&[]);
    let ws = project(&d);
    let w = ws.path();
    save(&d, w, "one");
    let out = ok_in(&d, w, &["diff"]);
    assert_eq!(out.text(), "no changes\n");
    for form in ["--stat", "--name-status"] {
        assert_eq!(
            ok_in(&d, w, &["diff", form]).text(),
            "no changes\n",
            "{form}"
        );
    }
    assert_eq!(json_in(&d, w, &["diff"]), serde_json::json!([]));

    let table = ok_in(&d, w, &["log", "src/"]).text();
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.get(3..5), Some(&["added", "-"][..]), "{table}");
    let log = json_in(&d, w, &["log", "src/"]);
    assert_eq!(log[0]["kind"], "directory", "{log}");
    assert_eq!(log[0]["size"], 0, "{log}");
    let log = json_in(&d, w, &["log", "src/main.rs"]);
    assert_eq!(log[0]["kind"], "file", "{log}");
    assert_eq!(log[0]["size"], 13, "{log}");
}

#[test]
fn with_json_and_no_daemon_stdout_has_an_error_object_and_the_exit_is_1() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    for args in [&["--json", "status"][..], &["--json", "list"]] {
        let out = run_in(&socket, dir.path(), args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        let doc = out.json();
        let msg = doc["error"].as_str().unwrap_or_default();
        assert!(msg.contains("chkptctl daemon start"), "{doc}");
        assert_eq!(doc["exit_code"], 1);
    }
    // Without --json, stdout stays empty.
    let out = run_in(&socket, dir.path(), &["status"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_paths_come_with_display_strings() {
    use chkpt_proto::v1 as pb;
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    fs::create_dir_all(w.join("node_modules/x")).unwrap();
    fs::write(w.join("package.json"), b"{}").unwrap();
    let mut c = d.client().await;
    let watched = util::watch(&mut c, w, 3_600_000, 3_600_000).await;
    let excluded = &watched.workspace.unwrap().excluded;
    assert!(
        excluded
            .iter()
            .any(|e| e.path_text == "node_modules" && e.path == b"node_modules"),
        "{excluded:?}"
    );
    let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"caf\xe9");
    fs::write(w.join(name), b"latin-1 name").unwrap();
    let diff = c
        .diff(pb::DiffRequest {
            workspace: w.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = diff
        .entries
        .iter()
        .find(|e| e.path == b"caf\xe9")
        .expect("the new file");
    assert_eq!(e.path_text, "caf\u{fffd}");
}

#[test]
fn a_small_burst_in_a_tiny_project_pins_quietly_and_raises_no_alarm() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    for i in 0..10 {
        fs::write(w.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    let dir = w.display().to_string();
    let watched = json_in(
        &d,
        w,
        &["watch", &dir, "--idle", "300ms", "--max-delay", "5s"],
    );
    let baseline = watched["baseline"]["id"].as_str().unwrap().to_owned();
    for i in 0..5 {
        fs::remove_file(w.join(format!("f{i}"))).unwrap();
    }
    // The burst fired (half the project): the snapshot after it says so ...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let after = loop {
        let list = snapshots(&d, w);
        if let Some(s) = list.iter().find(|s| {
            s["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("after a mass change"))
        }) {
            break s.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no after-burst snapshot: {list:?}\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(after["deleted"], 5, "{after}");
    // ... and the snapshot before it is pinned, but `status` raises nothing to acknowledge.
    let list = snapshots(&d, w);
    let before = list.iter().find(|s| s["id"] == baseline.as_str()).unwrap();
    assert_eq!(before["pinned"], true, "{before}");
    let st = json_in(&d, w, &["status"]);
    assert!(st["workspaces"][0]["tripwire"].is_null(), "{st}");
    let text = ok_in(&d, w, &["status"]).text();
    assert!(!text.contains("tripwire"), "{text}");
}

#[test]
fn man_writes_the_pages_of_chkptctl_its_subcommands_and_chkptd() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("share/man/man1");
    let m = man1.display().to_string();
    let out = json_in(&d, dir.path(), &["man", &m]);
    let pages: Vec<&str> = out["pages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    for page in [
        "chkptctl.1",
        "chkptctl-restore.1",
        "chkptctl-prune.1",
        "chkptd.1",
    ] {
        assert!(pages.contains(&page), "{page} missing: {pages:?}");
    }
    let read = |p: &str| fs::read_to_string(man1.join(p)).unwrap();
    assert!(read("chkptctl.1").starts_with(".ie"), "not roff");
    assert!(read("chkptctl.1").contains(".TH chkptctl 1"));
    assert!(read("chkptctl-restore.1").contains("force"));
    let chkptd = read("chkptd.1");
    assert!(chkptd.contains(".TH chkptd 1"), "{chkptd}");
    assert!(chkptd.contains("keep\\-within"), "{chkptd}");
}
