//! Running the real `chkptctl` against a real daemon, for the history tests.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::util::Daemon;

pub use crate::util::cli::Out;

/// The `chkptctl` command for a daemon and workspace, run inside the workspace.
pub fn command(d: &Daemon, ws: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chkptctl"));
    c.arg("--socket")
        .arg(&d.socket)
        .arg("-w")
        .arg(ws)
        .current_dir(ws)
        .env_remove("CHKPT_SOCKET")
        .env_remove("NO_COLOR");
    c
}

/// Runs `chkptctl args...`.
pub fn run(d: &Daemon, ws: &Path, args: &[&str]) -> Out {
    let out = command(d, ws).args(args).output().expect("run chkptctl");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `chkptctl args...` and asserts it succeeded.
pub fn ok(d: &Daemon, ws: &Path, args: &[&str]) -> Out {
    let out = run(d, ws, args);
    assert_eq!(
        out.code,
        0,
        "chkptctl {args:?} failed:\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
        out.text(),
        out.stderr,
        d.log()
    );
    out
}

/// `chkptctl --json args...`, parsed.
pub fn json(d: &Daemon, ws: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    ok(d, ws, &all).json()
}

/// Saves a snapshot and returns its id.
pub fn save(d: &Daemon, ws: &Path, msg: &str) -> String {
    let id = ok(d, ws, &["save", "-m", msg]).text().trim().to_owned();
    assert_eq!(id.len(), 16, "not a 16-hex id: {id:?}");
    id
}

/// A daemon watching a new workspace that never takes auto snapshots (only the test's saves).
pub fn setup() -> (Daemon, tempfile::TempDir) {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    fs::write(ws.path().join("README"), b"hello\n").unwrap();
    let dir = ws.path().display().to_string();
    ok(
        &d,
        ws.path(),
        &["watch", &dir, "--idle", "3600", "--max-delay", "3600"],
    );
    (d, ws)
}

/// Runs `git args...` in `dir`, asserting success; returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git (install git)");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
