//! Black-box tests of issue 19 (see what changed): content diffs, `show -p`, `log -p`, the
//! terminal UI and the FUSE mount (and big files through them: chunked, sparse), each against a real `chkptd` driven by the real
//! `chkptctl`.

#![allow(clippy::unwrap_used)]

#[path = "history/chunked.rs"]
mod chunked;
#[path = "history/cli.rs"]
mod cli;
#[path = "history/diff.rs"]
mod diff;
#[path = "history/mount.rs"]
mod mount;
#[path = "history/ui.rs"]
mod ui;
mod util;

/// A number no other call in this process got, for names that must not collide.
pub fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
