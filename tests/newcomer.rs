//! What a new user meets first (issue 20): one duration syntax, help texts that say what the
//! defaults are, paths given the way a shell user gives them, counts that add up, hints that
//! name the next step, and the safety of restores done in a hurry. Real `chkptd`, real
//! `chkptctl`, real socket.

#![allow(clippy::unwrap_used)]

mod util;

use std::fs;
use std::process::Command;

use util::Daemon;
use util::cli::{fails_in, json_in, ok_in, run_in};

/// A workspace with a README and `src/main.rs`, watched with auto snapshots practically off,
/// so only the test's own saves and restores make snapshots.
fn project(d: &Daemon) -> tempfile::TempDir {
    let ws = tempfile::tempdir().unwrap();
    fs::create_dir_all(ws.path().join("src")).unwrap();
    fs::write(ws.path().join("README.md"), b"read me\n").unwrap();
    fs::write(ws.path().join("src/main.rs"), b"fn main() {}\n").unwrap();
    let dir = ws.path().display().to_string();
    ok_in(
        d,
        ws.path(),
        &["watch", &dir, "--idle", "1h", "--max-delay", "1h"],
    );
    ws
}

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
