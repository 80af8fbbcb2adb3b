//! Black-box tests of issue 19 (see what changed): content diffs, `show -p`, `log -p`, the
//! terminal UI and the FUSE mount, each against a real `chkptd` driven by the real
//! `chkptctl`.

#![allow(clippy::unwrap_used)]

#[path = "history/cli.rs"]
mod cli;
#[path = "history/diff.rs"]
mod diff;
mod util;
