//! Running the real `chkptctl` against a test daemon, from any directory.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::Daemon;

/// What one `chkptctl` run produced.
pub struct Out {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Out {
    fn of(out: std::process::Output) -> Out {
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", self.text()))
    }
}

/// `chkptctl --socket SOCKET args...` in `cwd`, untouched by the caller's environment.
pub fn chkptctl(socket: &Path, cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chkptctl"));
    c.arg("--socket")
        .arg(socket)
        .args(args)
        .current_dir(cwd)
        .env_remove("CHKPT_SOCKET")
        .env_remove("NO_COLOR");
    c
}

/// Runs `chkptctl --socket SOCKET args...` in `cwd`, with no other workspace flag.
pub fn run_in(socket: &Path, cwd: &Path, args: &[&str]) -> Out {
    let out = chkptctl(socket, cwd, args)
        .stdin(Stdio::null())
        .output()
        .expect("run chkptctl");
    Out::of(out)
}

/// Runs `chkptctl --socket SOCKET -w WS args...` inside the workspace `ws`.
pub fn run_ws(socket: &Path, ws: &Path, args: &[&str]) -> Out {
    let ws_arg = ws.to_str().expect("a UTF-8 temp path");
    let with_ws: Vec<&str> = ["-w", ws_arg].iter().chain(args).copied().collect();
    run_in(socket, ws, &with_ws)
}

/// [`run_ws`] against `d`, asserting it succeeded.
pub fn ok_ws(d: &Daemon, ws: &Path, args: &[&str]) -> Out {
    let out = run_ws(&d.socket, ws, args);
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

/// `chkptctl --json args...` in the workspace `ws`, parsed.
pub fn json_ws(d: &Daemon, ws: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    ok_ws(d, ws, &all).json()
}

/// Saves a snapshot of the workspace `ws` and returns its id (16 hex digits).
pub fn save_ws(d: &Daemon, ws: &Path, msg: &str) -> String {
    let id = ok_ws(d, ws, &["save", "-m", msg]).text().trim().to_owned();
    assert_eq!(id.len(), 16, "not a 16-hex id: {id:?}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id:?}");
    id
}

/// [`run_in`] with `input` on chkptctl's standard input (what an agent sends a hook).
pub fn run_with_input(socket: &Path, cwd: &Path, args: &[&str], input: &str) -> Out {
    let mut child = chkptctl(socket, cwd, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chkptctl");
    child
        .stdin
        .take()
        .expect("chkptctl's stdin")
        .write_all(input.as_bytes())
        .expect("write chkptctl's stdin");
    Out::of(child.wait_with_output().expect("wait for chkptctl"))
}

/// [`run_in`], asserting it succeeded.
pub fn ok_in(d: &Daemon, cwd: &Path, args: &[&str]) -> Out {
    let out = run_in(&d.socket, cwd, args);
    assert_eq!(
        out.code,
        0,
        "chkptctl {args:?} in {} failed:\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
        cwd.display(),
        out.text(),
        out.stderr,
        d.log()
    );
    out
}

/// [`run_in`], asserting it failed with exit code 1, and returns what it printed.
pub fn fails_in(d: &Daemon, cwd: &Path, args: &[&str]) -> Out {
    let out = run_in(&d.socket, cwd, args);
    assert_eq!(
        out.code,
        1,
        "chkptctl {args:?} in {} did not fail with 1:\nstdout: {}\nstderr: {}",
        cwd.display(),
        out.text(),
        out.stderr,
    );
    out
}

/// Runs `chkptctl --json args...` in `cwd` and parses its output.
pub fn json_in(d: &Daemon, cwd: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    ok_in(d, cwd, &all).json()
}

/// A workspace with a README and `src/main.rs`, watched with auto snapshots practically off,
/// so only the test's own saves and restores make snapshots.
pub fn project(d: &Daemon) -> tempfile::TempDir {
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ws.path().join("src")).unwrap();
    std::fs::write(ws.path().join("README.md"), b"read me\n").unwrap();
    std::fs::write(ws.path().join("src/main.rs"), b"fn main() {}\n").unwrap();
    let dir = ws.path().display().to_string();
    ok_in(
        d,
        ws.path(),
        &["watch", &dir, "--idle", "1h", "--max-delay", "1h"],
    );
    ws
}

/// The snapshot id `save` prints.
pub fn save(d: &Daemon, ws: &Path, msg: &str) -> String {
    ok_in(d, ws, &["save", "-m", msg]).text().trim().to_owned()
}
