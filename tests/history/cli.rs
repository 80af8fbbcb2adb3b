//! Running the real `chkptctl` against a real daemon, for the history tests.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::util::Daemon;

pub use crate::util::cli::{Out, json_ws as json, ok_ws as ok, save_ws as save};
pub use crate::util::git;

/// The `chkptctl` command for a daemon and workspace, run inside the workspace.
pub fn command(d: &Daemon, ws: &Path) -> Command {
    let ws_arg = ws.to_str().expect("a UTF-8 temp path");
    crate::util::cli::chkptctl(&d.socket, ws, &["-w", ws_arg])
}

/// Runs `chkptctl args...` in the workspace `ws`.
pub fn run(d: &Daemon, ws: &Path, args: &[&str]) -> Out {
    crate::util::cli::run_ws(&d.socket, ws, args)
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
