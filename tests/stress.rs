//! Stress, hostile-input and fidelity tests of issue 7, against the real `chkptd`.
//!
//! ```sh
//! cargo test --test stress -- --nocapture                           # CI size
//! CHKPT_FULL=1 cargo test --release --test stress -- --nocapture    # full size
//! ```
//!
//! Every test prints one `figures:` line (iterations, checks, failures, latencies) for the README.
//! `CHKPT_SEED=<n>` replays the soak's edit script.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[path = "stress/escaping.rs"]
mod escaping;
#[path = "stress/flood.rs"]
mod flood;
#[path = "stress/hostile.rs"]
mod hostile;
#[path = "stress/load.rs"]
mod load;
#[path = "stress/soak.rs"]
mod soak;
mod util;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use chkpt_testkit::Rng;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::Code;
use tonic::transport::Channel;
use util::{Daemon, restore_to, snapshots, watch};

type Client = ChkptClient<Channel>;

/// `CHKPT_FULL=1`: the full-size run.
fn full() -> bool {
    std::env::var("CHKPT_FULL").is_ok_and(|v| v == "1")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs a Restore to its end: the summary, or the first error (at the call or in the stream).
async fn restore(
    c: &mut Client,
    req: pb::RestoreRequest,
) -> Result<pb::RestoreSummary, tonic::Status> {
    let mut stream = c.restore(req).await?.into_inner();
    let mut summary = None;
    while let Some(ev) = stream.message().await? {
        if let Some(pb::restore_event::Event::Summary(s)) = ev.event {
            summary = Some(s);
        }
    }
    summary.ok_or_else(|| tonic::Status::unknown("the restore stream ended without a summary"))
}

/// Reads a whole file through ReadFile.
async fn cat(c: &mut Client, ws: &str, snap: &str, path: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    util::read_file(c, Path::new(ws), snap, path).await
}

/// The status of the workspace at `root` (canonical path).
async fn ws_status(c: &mut Client, root: &Path) -> Option<pb::WorkspaceStatus> {
    let st = c.status(pb::StatusRequest {}).await.ok()?.into_inner();
    st.workspaces.into_iter().find(|w| {
        w.workspace
            .as_ref()
            .is_some_and(|x| Path::new(&x.path) == root)
    })
}

/// Waits (up to `secs`) for a settled automatic snapshot of `root` made after `after_ms`: the
/// newest snapshot is newer than that, nothing is pending, and both stay so across two polls
/// 300 ms apart (a save may queue a re-listing of new directories right after it ends).
/// `files`: also require this file count.
async fn settled_snapshot(
    c: &mut Client,
    root: &Path,
    after_ms: u64,
    files: Option<u64>,
    secs: u64,
) -> pb::Snapshot {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut candidate: Option<String> = None;
    loop {
        let ok = async {
            let st = ws_status(c, root).await?;
            let newest = snapshots(c, root).await.into_iter().next()?;
            (st.pending_changes == 0
                && st.state() == pb::WorkspaceState::Watching
                && newest.created_unix_ms > after_ms
                && files.is_none_or(|f| newest.files == f))
            .then_some(newest)
        }
        .await;
        match (ok, &candidate) {
            (Some(snap), Some(id)) if *id == snap.id => return snap,
            (Some(snap), _) => candidate = Some(snap.id),
            (None, _) => candidate = None,
        }
        if Instant::now() > deadline {
            let st = ws_status(c, root).await;
            let newest = snapshots(c, root).await.into_iter().next();
            panic!(
                "no settled snapshot after {after_ms} within {secs} s\nstatus: {st:?}\nnewest: {newest:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One entry of a folder listing that does not follow symlinks.
#[derive(Clone, PartialEq, Eq)]
enum Node {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(PathBuf),
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Dir(m) => write!(f, "dir {m:o}"),
            Node::File(m, c) => write!(f, "file {m:o} {} bytes {:016x}", c.len(), hash(c)),
            Node::Link(t) => write!(f, "symlink -> {}", t.display()),
        }
    }
}

fn hash(b: &[u8]) -> u64 {
    // FNV-1a: only to tell contents apart in messages.
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// path → (kind, mode & 0o777, content or link target) of everything under `root`.
fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn rec(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for e in fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let md = fs::symlink_metadata(&p).unwrap();
            let mode = md.permissions().mode() & 0o777;
            if md.file_type().is_symlink() {
                out.insert(rel, Node::Link(fs::read_link(&p).unwrap()));
            } else if md.is_dir() {
                out.insert(rel, Node::Dir(mode));
                rec(root, &p, out);
            } else {
                out.insert(rel, Node::File(mode, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    rec(root, root, &mut out);
    out
}

/// The differences between two listings, as lines (at most `max`).
fn tree_diff(
    want: &BTreeMap<PathBuf, Node>,
    got: &BTreeMap<PathBuf, Node>,
    max: usize,
) -> Vec<String> {
    let keys: BTreeSet<&PathBuf> = want.keys().chain(got.keys()).collect();
    keys.into_iter()
        .filter(|k| want.get(*k) != got.get(*k))
        .take(max)
        .map(|k| {
            format!(
                "{}: folder {:?}, restored {:?}",
                k.display(),
                want.get(k),
                got.get(k)
            )
        })
        .collect()
}

/// Up to `max` bytes of text with newlines, NULs and invalid UTF-8; empty one time in ten.
fn text(rng: &mut Rng, max: usize) -> Vec<u8> {
    let n = if rng.chance(10) {
        0
    } else {
        rng.index(max) + 1
    };
    (0..n)
        .map(|_| b"abcdefghij\n\0\xff"[rng.index(13)])
        .collect()
}

/// p50, p99 and max of some latencies, in ms.
fn percentiles(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "n=0".into();
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    format!(
        "n={} p50={:.1}ms p99={:.1}ms max={:.1}ms",
        v.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}
