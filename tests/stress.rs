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
    let mut stream = c
        .read_file(pb::ReadFileRequest {
            workspace: ws.to_owned(),
            snapshot: snap.to_owned(),
            path: path.to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

/// Every snapshot of a workspace, following page tokens.
async fn all_snapshots(c: &mut Client, ws: &Path) -> Vec<pb::Snapshot> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list(pb::ListRequest {
                workspace: s(ws),
                limit: 1000,
                page_token: token.clone(),
                all: false,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        out.extend(r.snapshots);
        if r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
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

/// A small seeded PRNG (splitmix64), so an edit script can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        (!v.is_empty()).then(|| &v[self.below(v.len())])
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = if self.chance(10) {
            0
        } else {
            self.below(max) + 1
        };
        (0..n)
            .map(|_| b"abcdefghij\n\0\xff"[self.below(13)])
            .collect()
    }
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

// ---------------------------------------------------------------------------------------------
// 1. Hostile RPCs
// ---------------------------------------------------------------------------------------------

const ALLOWED: [Code; 6] = [
    Code::InvalidArgument,
    Code::NotFound,
    Code::FailedPrecondition,
    Code::PermissionDenied,
    Code::OutOfRange,
    Code::ResourceExhausted,
];

/// One random request.
#[derive(Clone)]
enum Req {
    Watch(pb::WatchRequest),
    Unwatch(pb::UnwatchRequest),
    Save(pb::SaveRequest),
    List(pb::ListRequest),
    Get(pb::GetRequest),
    Diff(pb::DiffRequest),
    Restore(pb::RestoreRequest),
    ReadFile(pb::ReadFileRequest),
    Log(pb::LogRequest),
    Delete(pb::DeleteRequest),
    Pin(pb::PinRequest),
    Unpin(pb::PinRequest),
    Prune(pb::PruneRequest),
    Verify(pb::VerifyRequest),
    Acknowledge(pb::AcknowledgeRequest),
}

/// Shortens runs of one repeated character (the 1 MiB fields) and long output.
fn shorten(text: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let mut j = i;
        while j < chars.len() && chars[j] == chars[i] {
            j += 1;
        }
        if j - i > 16 {
            out.push_str(&format!("{}…(×{})", chars[i], j - i));
        } else {
            out.extend(&chars[i..j]);
        }
        i = j;
    }
    if out.len() > 1500 {
        let mut cut = 1500;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

impl fmt::Debug for Req {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Req::Watch(m) => format!("Watch({m:?})"),
            Req::Unwatch(m) => format!("Unwatch({m:?})"),
            Req::Save(m) => format!("Save({m:?})"),
            Req::List(m) => format!("List({m:?})"),
            Req::Get(m) => format!("Get({m:?})"),
            Req::Diff(m) => format!("Diff({m:?})"),
            Req::Restore(m) => {
                let paths: Vec<String> = m
                    .paths
                    .iter()
                    .map(|p| format!("{:?}", String::from_utf8_lossy(p)))
                    .collect();
                format!(
                    "Restore {{ workspace: {:?}, snapshot: {:?}, paths: [{}], dry_run: {}, to: {:?} }}",
                    m.workspace,
                    m.snapshot,
                    paths.join(", "),
                    m.dry_run,
                    m.to
                )
            }
            Req::ReadFile(m) => format!(
                "ReadFile {{ workspace: {:?}, snapshot: {:?}, path: {:?} }}",
                m.workspace,
                m.snapshot,
                String::from_utf8_lossy(&m.path)
            ),
            Req::Log(m) => format!(
                "Log {{ workspace: {:?}, path: {:?}, limit: {} }}",
                m.workspace,
                String::from_utf8_lossy(&m.path),
                m.limit
            ),
            Req::Delete(m) => format!("Delete({m:?})"),
            Req::Pin(m) => format!("Pin({m:?})"),
            Req::Unpin(m) => format!("Unpin({m:?})"),
            Req::Prune(m) => format!("Prune({m:?})"),
            Req::Verify(m) => format!("Verify({m:?})"),
            Req::Acknowledge(m) => format!("Acknowledge({m:?})"),
        };
        f.write_str(&shorten(&text))
    }
}

impl Req {
    fn name(&self) -> &'static str {
        match self {
            Req::Watch(_) => "Watch",
            Req::Unwatch(_) => "Unwatch",
            Req::Save(_) => "Save",
            Req::List(_) => "List",
            Req::Get(_) => "Get",
            Req::Diff(_) => "Diff",
            Req::Restore(_) => "Restore",
            Req::ReadFile(_) => "ReadFile",
            Req::Log(_) => "Log",
            Req::Delete(_) => "Delete",
            Req::Pin(_) => "Pin",
            Req::Unpin(_) => "Unpin",
            Req::Prune(_) => "Prune",
            Req::Verify(_) => "Verify",
            Req::Acknowledge(_) => "Acknowledge",
        }
    }

    /// Sends it; Ok or the status (streams are read to their end).
    async fn send(self, c: &mut Client) -> Result<(), tonic::Status> {
        match self {
            Req::Watch(m) => c.watch(m).await.map(drop),
            Req::Unwatch(m) => c.unwatch(m).await.map(drop),
            Req::Save(m) => c.save(m).await.map(drop),
            Req::List(m) => c.list(m).await.map(drop),
            Req::Get(m) => c.get(m).await.map(drop),
            Req::Diff(m) => c.diff(m).await.map(drop),
            Req::Restore(m) => restore(c, m).await.map(drop),
            Req::ReadFile(m) => cat(c, &m.workspace, &m.snapshot, &m.path).await.map(drop),
            Req::Log(m) => c.log(m).await.map(drop),
            Req::Delete(m) => c.delete(m).await.map(drop),
            Req::Pin(m) => c.pin(m).await.map(drop),
            Req::Unpin(m) => c.unpin(m).await.map(drop),
            Req::Prune(m) => c.prune(m).await.map(drop),
            Req::Verify(m) => c.verify(m).await.map(drop),
            Req::Acknowledge(m) => c.acknowledge(m).await.map(drop),
        }
    }
}

/// The places random requests may name. Everything that could be written to is a temp dir.
#[derive(Clone)]
struct Places {
    /// Workspace-ish strings: the real workspace, inside it, outside, invalid, oversized.
    workspaces: Vec<String>,
    /// Folders it is safe to watch (small, in the sandbox) and invalid ones.
    watchable: Vec<String>,
    /// Restore targets: in place, in the sandbox, the data dir, invalid.
    tos: Vec<String>,
    /// Snapshot selectors.
    selectors: Vec<String>,
    /// Paths inside a workspace, hostile or not.
    paths: Vec<Vec<u8>>,
    sandbox: String,
    big: String,
}

fn big_string() -> String {
    "a".repeat(1 << 20)
}

fn strings(v: &[String]) -> BoxedStrategy<String> {
    select(v.to_vec()).boxed()
}

fn workspace_strategy(p: &Places) -> BoxedStrategy<String> {
    prop_oneof![
        6 => strings(&p.workspaces),
        1 => "[a-z/.]{0,20}",
        1 => any::<String>(),
        1 => proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| format!("/{}", String::from_utf8_lossy(&b))),
    ]
    .boxed()
}

fn selector_strategy(p: &Places) -> BoxedStrategy<String> {
    let units = vec!['s', 'm', 'h', 'd', 'w', 'y', 'x'];
    prop_oneof![
        6 => strings(&p.selectors),
        1 => any::<u64>().prop_map(|n| format!("latest~{n}")),
        1 => (any::<u64>(), select(units)).prop_map(|(n, u)| format!("@{n}{u}")),
        1 => (any::<i32>(), any::<i32>(), any::<i32>(), any::<i32>(), any::<i32>())
            .prop_map(|(y, m, d, h, mi)| format!("@{y}-{m}-{d}T{h}:{mi}")),
        1 => "[0-9a-fA-F]{1,18}",
        1 => any::<String>(),
    ]
    .boxed()
}

fn path_strategy(p: &Places) -> BoxedStrategy<Vec<u8>> {
    let parts: Vec<&'static [u8]> = vec![
        b"..", b".", b"a.txt", b"sub", b"link", b"", b"b.txt", b"\0", b"evil", b".git",
    ];
    prop_oneof![
        6 => select(p.paths.clone()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => proptest::collection::vec(select(parts), 1..6).prop_map(|v| v.join(&b'/')),
    ]
    .boxed()
}

fn to_strategy(p: &Places) -> BoxedStrategy<String> {
    let sandbox = p.sandbox.clone();
    prop_oneof![
        3 => Just(String::new()),
        3 => strings(&p.tos),
        2 => (0..6u32).prop_map(move |n| format!("{sandbox}/out/o{n}")),
    ]
    .boxed()
}

fn request_strategy(p: &Places) -> BoxedStrategy<Req> {
    let ws = || workspace_strategy(p);
    let sel = || selector_strategy(p);
    let path = || path_strategy(p);
    let big = p.big.clone();
    let message = prop_oneof![
        3 => "[ -~]{0,40}",
        1 => Just(big),
    ];
    let millis = || prop_oneof![Just(0u64), 1..5000u64, any::<u64>()];
    let small = || prop_oneof![Just(0u32), 1..5u32, any::<u32>()];
    let retention = proptest::option::of(
        (
            small(),
            small(),
            small(),
            small(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(
                    keep_last,
                    keep_hourly,
                    keep_daily,
                    keep_weekly,
                    keep_within_secs,
                    max_store_bytes,
                )| {
                    pb::RetentionPolicy {
                        keep_last,
                        keep_hourly,
                        keep_daily,
                        keep_weekly,
                        keep_within_secs,
                        max_store_bytes,
                    }
                },
            ),
    );
    let watch = (
        strings(&p.watchable),
        millis(),
        millis(),
        any::<bool>(),
        retention,
    )
        .prop_map(
            |(path, idle_ms, max_delay_ms, include_dependency_dirs, retention)| {
                Req::Watch(pb::WatchRequest {
                    path,
                    idle_ms,
                    max_delay_ms,
                    include_dependency_dirs,
                    retention,
                    include_git: false,
                })
            },
        );
    let arms: Vec<BoxedStrategy<Req>> = vec![
        watch.boxed(),
        ws().prop_map(|path| Req::Unwatch(pb::UnwatchRequest { path }))
            .boxed(),
        (ws(), message, any::<bool>())
            .prop_map(|(workspace, message, pin)| {
                Req::Save(pb::SaveRequest {
                    workspace,
                    message,
                    pin,
                    ..Default::default()
                })
            })
            .boxed(),
        (
            ws(),
            small(),
            prop_oneof![
                Just(String::new()),
                "[0-9]{1,25}",
                "-?[0-9a-z]{0,8}",
                any::<String>()
            ],
            any::<bool>(),
        )
            .prop_map(|(workspace, limit, page_token, all)| {
                Req::List(pb::ListRequest {
                    workspace,
                    limit,
                    page_token,
                    all,
                    ..Default::default()
                })
            })
            .boxed(),
        (ws(), sel())
            .prop_map(|(workspace, snapshot)| {
                Req::Get(pb::GetRequest {
                    workspace,
                    snapshot,
                })
            })
            .boxed(),
        (
            ws(),
            sel(),
            prop_oneof![2 => Just(String::new()), 1 => sel()],
        )
            .prop_map(|(workspace, from, to)| {
                Req::Diff(pb::DiffRequest {
                    workspace,
                    from,
                    to,
                    ..Default::default()
                })
            })
            .boxed(),
        (
            ws(),
            sel(),
            proptest::collection::vec(path(), 0..3),
            any::<bool>(),
            to_strategy(p),
        )
            .prop_map(|(workspace, snapshot, paths, dry_run, to)| {
                Req::Restore(pb::RestoreRequest {
                    workspace,
                    snapshot,
                    paths,
                    dry_run,
                    to,
                    include_git: false,
                })
            })
            .boxed(),
        (ws(), sel(), path())
            .prop_map(|(workspace, snapshot, path)| {
                Req::ReadFile(pb::ReadFileRequest {
                    workspace,
                    snapshot,
                    path,
                    ..Default::default()
                })
            })
            .boxed(),
        (ws(), path(), small())
            .prop_map(|(workspace, path, limit)| {
                Req::Log(pb::LogRequest {
                    workspace,
                    path,
                    limit,
                    ..Default::default()
                })
            })
            .boxed(),
        (ws(), proptest::collection::vec(sel(), 0..3))
            .prop_map(|(workspace, snapshots)| {
                Req::Delete(pb::DeleteRequest {
                    workspace,
                    snapshots,
                })
            })
            .boxed(),
        (ws(), sel())
            .prop_map(|(workspace, snapshot)| {
                Req::Pin(pb::PinRequest {
                    workspace,
                    snapshot,
                })
            })
            .boxed(),
        (ws(), sel())
            .prop_map(|(workspace, snapshot)| {
                Req::Unpin(pb::PinRequest {
                    workspace,
                    snapshot,
                })
            })
            .boxed(),
        (
            ws(),
            any::<bool>(),
            (small(), small(), small(), small()),
            prop_oneof![Just(0u64), 1..100_000u64, any::<u64>()],
        )
            .prop_map(|(workspace, dry_run, (a, b, c, d), keep_within_secs)| {
                Req::Prune(pb::PruneRequest {
                    workspace,
                    dry_run,
                    keep_last: a,
                    keep_hourly: b,
                    keep_daily: c,
                    keep_weekly: d,
                    keep_within_secs,
                })
            })
            .boxed(),
        prop_oneof![Just(String::new()), ws()]
            .prop_map(|workspace| Req::Verify(pb::VerifyRequest { workspace }))
            .boxed(),
        ws().prop_map(|workspace| Req::Acknowledge(pb::AcknowledgeRequest { workspace }))
            .boxed(),
    ];
    Union::new(arms).boxed()
}

#[derive(Default)]
struct HostileStats {
    requests: u64,
    ok: u64,
    codes: BTreeMap<String, u64>,
    per_rpc: BTreeMap<&'static str, u64>,
    latencies: Vec<Duration>,
    bad: Vec<String>,
}

#[test]
fn hostile_rpcs_get_correct_codes_and_the_daemon_keeps_serving() {
    let cases = if full() { 1000 } else { 64 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let d = Daemon::start(&[]);
    let mut c = rt.block_on(d.client());

    // The real workspace, with a few snapshots.
    let ws_dir = tempfile::tempdir().unwrap();
    let ws = ws_dir.path().canonicalize().unwrap();
    fs::write(ws.join("a.txt"), b"alpha").unwrap();
    fs::create_dir(ws.join("sub")).unwrap();
    fs::write(ws.join("sub/b.txt"), b"beta").unwrap();
    std::os::unix::fs::symlink("a.txt", ws.join("link")).unwrap();
    let baseline = rt.block_on(watch(&mut c, &ws, 300, 5000)).baseline.unwrap();
    for i in 0..3 {
        fs::write(ws.join("a.txt"), format!("alpha {i}")).unwrap();
        rt.block_on(c.save(pb::SaveRequest {
            workspace: s(&ws),
            message: format!("save {i}"),
            pin: false,
            ..Default::default()
        }))
        .unwrap();
    }

    // The sandbox: small folders that may be watched and restored into.
    let sandbox_dir = tempfile::tempdir().unwrap();
    let sb = sandbox_dir.path().canonicalize().unwrap();
    for w in ["w0", "w1", "w2"] {
        fs::create_dir_all(sb.join(w).join("d")).unwrap();
        fs::write(sb.join(w).join("f.txt"), w).unwrap();
        fs::write(sb.join(w).join("d/g.txt"), w).unwrap();
    }
    fs::write(sb.join("file.txt"), b"not a dir").unwrap();
    fs::create_dir(sb.join("out")).unwrap();
    let data = d.data.canonicalize().unwrap();
    let big = big_string();
    let sbs = s(&sb);
    let wss = s(&ws);
    let places = Places {
        workspaces: vec![
            wss.clone(),
            wss.clone(),
            wss.clone(),
            format!("{wss}/sub"),
            format!("{wss}/a.txt"),
            format!("{wss}/../.."),
            format!("{wss}/nope/deeper"),
            format!("{wss}\0x"),
            format!("{sbs}/w0"),
            format!("{sbs}/w1"),
            String::new(),
            "relative/zz".into(),
            "/".into(),
            "/nonexistent/chkpt/zz".into(),
            s(&data),
            format!("/{big}"),
            big.clone(),
            format!("{wss}/{big}"),
        ],
        watchable: vec![
            format!("{sbs}/w0"),
            format!("{sbs}/w1"),
            format!("{sbs}/w2"),
            format!("{sbs}/w0/../w1"),
            format!("{sbs}/w0/d"),
            format!("{sbs}/nonexistent"),
            format!("{sbs}/file.txt"),
            format!("{sbs}/w0\0/x"),
            format!("{sbs}/{big}"),
            format!("{sbs}/{}", "d/".repeat(3000)),
            String::new(),
            "relative/zz".into(),
            big.clone(),
            s(&data),
            format!("{}/catalog", s(&data)),
        ],
        tos: vec![
            format!("{sbs}/out/fixed"),
            format!("{sbs}/file.txt"),
            format!("{sbs}/file.txt/below"),
            format!("{sbs}/out/../out/dots"),
            format!("{sbs}/out/x\0y"),
            format!("{sbs}/{big}"),
            format!("{wss}/restored-inside"),
            s(&data),
            format!("{}/sub", s(&data)),
            "relative/out".into(),
            "..".into(),
        ],
        selectors: vec![
            String::new(),
            "latest".into(),
            "latest~0".into(),
            "latest~1".into(),
            "latest~99999".into(),
            "latest~18446744073709551615".into(),
            "latest~-1".into(),
            "latest~".into(),
            "zz".into(),
            "@bogus".into(),
            "@".into(),
            "@10m".into(),
            "@0s".into(),
            "@18446744073709551615m".into(),
            "@99999999999999s".into(),
            "@999999-01-01T00:00".into(),
            "@2026-13-45T99:99".into(),
            "@-2147483648-01-01T00:00".into(),
            "ffffffffffffffff".into(),
            "0".into(),
            "00000000000000000".into(),
            baseline.id.clone(),
            baseline.id[..4].to_owned(),
            big.clone(),
        ],
        paths: vec![
            Vec::new(),
            b"a.txt".to_vec(),
            b"sub/b.txt".to_vec(),
            b"sub".to_vec(),
            b"link".to_vec(),
            b"link/evil".to_vec(),
            b"../x".to_vec(),
            b"../../etc/passwd".to_vec(),
            b"/etc/passwd".to_vec(),
            b"a\0b".to_vec(),
            b"./a.txt".to_vec(),
            b"sub/../../x".to_vec(),
            b"//".to_vec(),
            format!("{wss}/a.txt").into_bytes(),
            format!("{wss}/../x").into_bytes(),
            big.clone().into_bytes(),
        ],
        sandbox: sbs.clone(),
        big: big.clone(),
    };

    let strategy = proptest::collection::vec(request_strategy(&places), 1..4);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 300,
        ..Config::default()
    });
    // CHKPT_KEEP_GOING=1: list every bad answer instead of stopping (and shrinking) at the first.
    let keep_going = std::env::var("CHKPT_KEEP_GOING").is_ok_and(|v| v == "1");
    let stats = RefCell::new(HostileStats::default());
    let started = Instant::now();
    let socket = d.socket.clone();
    let result = runner.run(&strategy, |reqs| {
        // One connection per case; after each request it must still carry a Status call (a
        // reply the client cannot take, e.g. an oversized trailer, resets the connection).
        let mut client = rt.block_on(util::connect(&socket));
        for req in reqs {
            let name = req.name();
            let shown = format!("{req:?}");
            let t = Instant::now();
            let res = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(60), req.send(&mut client)).await
            });
            let took = t.elapsed();
            let alive = rt.block_on(client.status(pb::StatusRequest {}));
            let mut st = stats.borrow_mut();
            st.requests += 1;
            *st.per_rpc.entry(name).or_default() += 1;
            st.latencies.push(took);
            let verdict = match res {
                Err(_) => Err(format!("no answer within 60 s to {shown}")),
                Ok(Ok(())) => {
                    st.ok += 1;
                    Ok(())
                }
                Ok(Err(status)) => {
                    *st.codes.entry(format!("{:?}", status.code())).or_default() += 1;
                    // The client library reports transport failures with codes of its own.
                    let transport = status.message().contains("protocol error")
                        || std::error::Error::source(&status).is_some();
                    if ALLOWED.contains(&status.code()) && !transport {
                        Ok(())
                    } else {
                        Err(format!(
                            "{:?} ({}) for {shown}",
                            status.code(),
                            shorten(status.message())
                        ))
                    }
                }
            };
            let verdict = verdict.and_then(|()| match alive {
                Ok(_) => Ok(()),
                Err(e) => Err(format!(
                    "the connection failed ({:?}: {}) after {shown}",
                    e.code(),
                    e.message()
                )),
            });
            if let Err(e) = verdict {
                st.bad.push(e.clone());
                if !keep_going {
                    return Err(TestCaseError::fail(e));
                }
                client = rt.block_on(util::connect(&socket));
            }
        }
        Ok(())
    });
    let elapsed = started.elapsed();

    // Still serving: Status, and a real save of a freshly watched workspace.
    let after = rt.block_on(async {
        let mut c = d.client().await;
        c.status(pb::StatusRequest {}).await.map(drop)?;
        let fresh = tempfile::tempdir().unwrap();
        fs::write(fresh.path().join("x.txt"), b"one").unwrap();
        watch(&mut c, fresh.path(), 3_600_000, 3_600_000).await;
        fs::write(fresh.path().join("x.txt"), b"two, after the storm").unwrap();
        let saved = c
            .save(pb::SaveRequest {
                workspace: s(fresh.path()),
                message: "after".into(),
                pin: false,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(saved.created, "the save after the storm created nothing");
        let id = saved.snapshot.unwrap().id;
        let got = cat(&mut c, &s(fresh.path()), &id, b"x.txt").await?;
        assert_eq!(got, b"two, after the storm");
        Ok::<_, tonic::Status>(())
    });
    let log = d.log();
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();

    let mut st = stats.into_inner();
    let lat = percentiles(&mut st.latencies);
    println!(
        "figures: hostile_rpcs cases={cases} requests={} ok={} errors={:?} per_rpc={:?} bad={} daemon_panics={} latency {lat} elapsed={:.1}s",
        st.requests,
        st.ok,
        st.codes,
        st.per_rpc,
        st.bad.len(),
        panics.len(),
        elapsed.as_secs_f64()
    );
    for b in &st.bad {
        println!("bad answer: {b}");
    }
    for p in panics.iter().collect::<BTreeSet<_>>() {
        println!("daemon: {}", shorten(p));
    }
    if let Err(e) = result {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<String> = tail.into_iter().rev().map(shorten).collect();
        panic!(
            "{}\ndaemon log tail:\n{}",
            shorten(&e.to_string()),
            tail.join("\n")
        );
    }
    assert!(st.bad.is_empty(), "{} bad answers", st.bad.len());
    after.expect("the daemon stopped serving after the hostile requests");
    assert!(
        panics.is_empty(),
        "the daemon panicked:\n{}",
        panics.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Escaping paths
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaping_paths_are_refused_and_nothing_is_written_outside() {
    let d = Daemon::start(&[]);
    let mut c = d.client().await;
    let outside_dir = tempfile::tempdir().unwrap();
    let outside = outside_dir.path().canonicalize().unwrap();
    let ws_dir = tempfile::tempdir().unwrap();
    let ws = ws_dir.path().canonicalize().unwrap();
    let sandbox_dir = tempfile::tempdir().unwrap();
    let sb = sandbox_dir.path().canonicalize().unwrap();
    let data = d.data.canonicalize().unwrap();
    fs::write(ws.join("a.txt"), b"secret-marker-a").unwrap();
    fs::create_dir(ws.join("sub")).unwrap();
    fs::write(ws.join("sub/evil"), b"secret-marker-evil").unwrap();
    std::os::unix::fs::symlink(&outside, ws.join("link")).unwrap();
    std::os::unix::fs::symlink(&data, sb.join("datalink")).unwrap();
    let passwd = fs::read("/etc/passwd").ok();
    let wss = s(&ws);

    let baseline = watch(&mut c, &ws, 300, 5000).await.baseline.unwrap();
    // A later snapshot where `sub` is a symlink to the outside.
    fs::rename(ws.join("sub"), sb.join("sub-was")).unwrap();
    std::os::unix::fs::symlink(&outside, ws.join("sub")).unwrap();
    let later = util::save(&mut c, &ws, "sub is a link now").await;

    const REFUSED: [Code; 3] = [
        Code::InvalidArgument,
        Code::FailedPrecondition,
        Code::NotFound,
    ];
    let mut checks = 0;
    let mut failures = Vec::new();
    fn judge(
        checks: &mut u32,
        failures: &mut Vec<String>,
        what: String,
        res: Result<(), tonic::Status>,
    ) {
        *checks += 1;
        match res {
            Err(e) if REFUSED.contains(&e.code()) => {}
            Err(e) => failures.push(format!("{what}: {:?} {}", e.code(), e.message())),
            Ok(()) => failures.push(format!("{what}: accepted")),
        }
    }
    macro_rules! check {
        ($what:expr, $res:expr $(,)?) => {
            judge(&mut checks, &mut failures, $what, $res)
        };
    }

    // Restore in place with escaping paths, from both snapshots.
    let bad_paths: Vec<Vec<u8>> = vec![
        b"../x".to_vec(),
        b"../../x".to_vec(),
        b"/etc/passwd".to_vec(),
        format!("{}/x", s(&outside)).into_bytes(),
        b"a\0b".to_vec(),
        b"link/evil".to_vec(),
        b"link/../../x".to_vec(),
        b"sub/../../x".to_vec(),
        format!("{wss}/../x").into_bytes(),
    ];
    for snap in [&baseline.id, &later.id] {
        for p in &bad_paths {
            for dry_run in [true, false] {
                let r = restore(
                    &mut c,
                    pb::RestoreRequest {
                        workspace: wss.clone(),
                        snapshot: snap.clone(),
                        paths: vec![p.clone()],
                        dry_run,
                        to: String::new(),
                        include_git: false,
                    },
                )
                .await;
                check!(
                    format!(
                        "restore {:?} of {snap} dry_run={dry_run}",
                        String::from_utf8_lossy(p)
                    ),
                    r.map(drop),
                );
            }
        }
    }
    // The later snapshot's `sub` is a link: restoring a path below it is refused.
    let r = restore(
        &mut c,
        pb::RestoreRequest {
            workspace: wss.clone(),
            snapshot: later.id.clone(),
            paths: vec![b"sub/evil".to_vec()],
            ..Default::default()
        },
    )
    .await;
    check!(
        "restore sub/evil of the snapshot where sub is a link".into(),
        r.map(drop)
    );
    // The baseline has `sub/evil` under a real `sub`; the workspace's `sub` is now a link to the
    // outside: restoring `sub/evil` must not write through it (refusing or replacing the link
    // are both fine).
    let r = restore(
        &mut c,
        pb::RestoreRequest {
            workspace: wss.clone(),
            snapshot: baseline.id.clone(),
            paths: vec![b"sub/evil".to_vec()],
            ..Default::default()
        },
    )
    .await;
    checks += 1;
    match &r {
        Ok(_) => assert!(
            !fs::symlink_metadata(ws.join("sub"))
                .unwrap()
                .file_type()
                .is_symlink(),
            "restore of sub/evil succeeded but sub is still a link"
        ),
        Err(e) if REFUSED.contains(&e.code()) => {}
        Err(e) => failures.push(format!("restore sub/evil through the link: {e:?}")),
    }

    // ReadFile escapes.
    for p in [
        &b"../../etc/passwd"[..],
        b"/etc/passwd",
        b"link/../../etc/passwd",
        b"link/x",
        b"a\0b",
        b"..",
    ] {
        let r = cat(&mut c, &wss, "latest", p).await;
        check!(
            format!("read_file {:?}", String::from_utf8_lossy(p)),
            r.map(drop)
        );
    }

    // --to inside the data dir (directly, below, through a link, with dots), or relative.
    for to in [
        s(&data),
        format!("{}/sub", s(&data)),
        format!("{}/datalink", s(&sb)),
        format!("{}/datalink/x", s(&sb)),
        format!(
            "{}/../{}/x",
            s(&data),
            data.file_name().unwrap().to_string_lossy()
        ),
        "relative/out".into(),
        format!("{}/x\0y", s(&sb)),
    ] {
        let r = restore(
            &mut c,
            pb::RestoreRequest {
                workspace: wss.clone(),
                snapshot: baseline.id.clone(),
                to: to.clone(),
                ..Default::default()
            },
        )
        .await;
        check!(format!("restore --to {to}"), r.map(drop));
    }

    // Watch of the data dir, below it, through a link to it, relative, NUL.
    for path in [
        s(&data),
        format!("{}/.", s(&data)),
        format!("{}/datalink", s(&sb)),
        "relative".into(),
        format!("{}\0", s(&sb)),
    ] {
        let r = c
            .watch(pb::WatchRequest {
                path: path.clone(),
                ..Default::default()
            })
            .await;
        check!(format!("watch {path:?}"), r.map(drop));
    }
    for entry in fs::read_dir(&data).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            let r = c
                .watch(pb::WatchRequest {
                    path: s(&p),
                    ..Default::default()
                })
                .await;
            check!(format!("watch {}", p.display()), r.map(drop));
        }
    }

    // Nothing was written outside, nor into the data dir as plain files.
    let left: Vec<PathBuf> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let mut leaked = Vec::new();
    let mut stack = vec![data.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if fs::read(&p).is_ok_and(|b| b.starts_with(b"secret-marker")) {
                leaked.push(p);
            }
        }
    }
    assert_eq!(fs::read("/etc/passwd").ok(), passwd, "/etc/passwd changed");
    let st = c.status(pb::StatusRequest {}).await;
    println!(
        "figures: escaping_paths checks={checks} failures={} outside_entries={} data_dir_leaks={} daemon_alive={}",
        failures.len(),
        left.len(),
        leaked.len(),
        st.is_ok()
    );
    assert!(failures.is_empty(), "not refused:\n{}", failures.join("\n"));
    assert!(left.is_empty(), "written outside: {left:?}");
    assert!(
        leaked.is_empty(),
        "workspace files written into the data dir: {leaked:?}"
    );
    st.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 3. Load
// ---------------------------------------------------------------------------------------------

const OPS: [&str; 5] = ["List", "Status", "Diff", "ReadFile", "Save"];
const KNOWN: &[u8] = b"a file nobody edits\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_under_constant_edits() {
    let (nfiles, secs, clients) = if full() {
        (50_000, 30, 32)
    } else {
        (5_000, 5, 32)
    };
    let d = Daemon::start(&[]);
    let ws_dir = tempfile::tempdir().unwrap();
    let ws = ws_dir.path().canonicalize().unwrap();
    for i in 0..nfiles {
        let dir = ws.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            fs::create_dir(&dir).unwrap();
        }
        fs::write(dir.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    fs::write(ws.join("known.txt"), KNOWN).unwrap();
    let mut c = d.client().await;
    let t = Instant::now();
    watch(&mut c, &ws, 1000, 10_000).await;
    let baseline_s = t.elapsed().as_secs_f64();

    // The editor: one write every ~20 ms, now and then a new file.
    let stop = Arc::new(AtomicBool::new(false));
    let edits = Arc::new(AtomicU64::new(0));
    let editor = {
        let (stop, edits, ws) = (stop.clone(), edits.clone(), ws.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(7);
            fs::create_dir(ws.join("new")).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let n = edits.fetch_add(1, Ordering::Relaxed);
                if n % 10 == 0 {
                    fs::write(ws.join(format!("new/e{n}.txt")), format!("new {n}")).unwrap();
                } else {
                    let i = rng.below(nfiles);
                    let p = ws.join(format!("d{:03}/f{i}.txt", i / 100));
                    fs::write(p, format!("file {i} edit {n}\n")).unwrap();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let deadline = Instant::now() + Duration::from_secs(secs);
    let lat: Arc<Mutex<HashMap<&'static str, Vec<Duration>>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let saved: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..clients {
        let socket = d.socket.clone();
        let (lat, failures, saved, wss) = (lat.clone(), failures.clone(), saved.clone(), s(&ws));
        tasks.push(tokio::spawn(async move {
            let mut c = util::connect(&socket).await;
            let mut mine: HashMap<&'static str, Vec<Duration>> = HashMap::new();
            let mut k = t;
            while Instant::now() < deadline {
                let op = OPS[k % OPS.len()];
                k += 1;
                let start = Instant::now();
                let res: Result<(), String> = match op {
                    "List" => c
                        .list(pb::ListRequest {
                            workspace: wss.clone(),
                            limit: 20,
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    "Status" => c
                        .status(pb::StatusRequest {})
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    "Diff" => c
                        .diff(pb::DiffRequest {
                            workspace: wss.clone(),
                            from: "latest".into(),
                            to: String::new(),
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    "ReadFile" => match cat(&mut c, &wss, "latest", b"known.txt").await {
                        Ok(b) if b == KNOWN => Ok(()),
                        Ok(b) => Err(format!(
                            "known.txt read back as {:?}",
                            String::from_utf8_lossy(&b)
                        )),
                        Err(e) => Err(e.to_string()),
                    },
                    _ => c
                        .save(pb::SaveRequest {
                            workspace: wss.clone(),
                            message: format!("client {t}"),
                            pin: false,
                            ..Default::default()
                        })
                        .await
                        .map(|r| {
                            saved
                                .lock()
                                .unwrap()
                                .push(r.into_inner().snapshot.unwrap().id);
                        })
                        .map_err(|e| e.to_string()),
                };
                mine.entry(op).or_default().push(start.elapsed());
                if let Err(e) = res {
                    failures.lock().unwrap().push(format!("{op}: {e}"));
                }
            }
            let mut all = lat.lock().unwrap();
            for (op, v) in mine {
                all.entry(op).or_default().extend(v);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    editor.join().unwrap();

    let listed: BTreeSet<String> = all_snapshots(&mut c, &ws)
        .await
        .into_iter()
        .map(|s| s.id)
        .collect();
    let saved = saved.lock().unwrap().clone();
    let lost: Vec<&String> = saved.iter().filter(|id| !listed.contains(*id)).collect();
    let failures = failures.lock().unwrap().clone();
    let mut lat = lat.lock().unwrap().clone();
    let calls: usize = lat.values().map(Vec::len).sum();
    let mut per_op = Vec::new();
    let mut p99 = HashMap::new();
    for op in OPS {
        let v = lat.entry(op).or_default();
        per_op.push(format!("{op}[{}]", percentiles(v)));
        if !v.is_empty() {
            p99.insert(op, v[((v.len() - 1) as f64 * 0.99).round() as usize]);
        }
    }
    println!(
        "figures: concurrent_clients clients={clients} files={nfiles} secs={secs} baseline={baseline_s:.1}s calls={calls} failures={} edits={} saves={} distinct_saved={} snapshots_listed={} lost={} {}",
        failures.len(),
        edits.load(Ordering::Relaxed),
        saved.len(),
        saved.iter().collect::<BTreeSet<_>>().len(),
        listed.len(),
        lost.len(),
        per_op.join(" ")
    );
    assert!(
        failures.is_empty(),
        "{} failed calls, e.g.:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        lost.is_empty(),
        "saved snapshots missing from List: {lost:?}"
    );
    if full() && !cfg!(debug_assertions) {
        for op in ["List", "Status"] {
            let p = p99[op];
            assert!(p < Duration::from_millis(50), "p99 of {op} is {p:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Capture fidelity soak
// ---------------------------------------------------------------------------------------------

/// Everything under `root` (relative paths), split into files, symlinks and directories.
fn entries(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>) {
    let (mut files, mut links, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
    for (p, n) in tree(root) {
        match n {
            Node::File(..) => files.push(p),
            Node::Link(_) => links.push(p),
            Node::Dir(_) => dirs.push(p),
        }
    }
    (files, links, dirs)
}

/// One random edit; returns a description.
fn random_edit(rng: &mut Rng, root: &Path, counter: &mut u64) -> String {
    let (files, links, dirs) = entries(root);
    let mut parents = vec![PathBuf::new()];
    parents.extend(dirs.iter().cloned());
    *counter += 1;
    let n = *counter;
    let parent = rng.pick(&parents).unwrap().clone();
    match rng.below(100) {
        // create a file
        0..=24 => {
            let p = parent.join(format!("f{n}.txt"));
            fs::write(root.join(&p), rng.bytes(3000)).unwrap();
            format!("create {}", p.display())
        }
        // modify (overwrite or append)
        25..=44 => match rng.pick(&files) {
            Some(p) => {
                let data = rng.bytes(3000);
                if rng.chance(50) {
                    use std::io::Write;
                    let mut f = fs::OpenOptions::new()
                        .append(true)
                        .open(root.join(p))
                        .unwrap();
                    f.write_all(&data).unwrap();
                } else {
                    fs::write(root.join(p), data).unwrap();
                }
                format!("modify {}", p.display())
            }
            None => "modify (nothing)".into(),
        },
        // delete a file or link, sometimes a directory
        45..=56 => {
            if rng.chance(15)
                && let Some(d) = rng.pick(&dirs)
            {
                fs::remove_dir_all(root.join(d)).unwrap();
                return format!("delete dir {}", d.display());
            }
            let mut gone: Vec<PathBuf> = files.clone();
            gone.extend(links.iter().cloned());
            match rng.pick(&gone) {
                Some(p) => {
                    fs::remove_file(root.join(p)).unwrap();
                    format!("delete {}", p.display())
                }
                None => "delete (nothing)".into(),
            }
        }
        // rename a file, link or directory (never into itself)
        57..=69 => {
            let mut all: Vec<PathBuf> = files.clone();
            all.extend(links.iter().cloned());
            all.extend(dirs.iter().cloned());
            let Some(from) = rng.pick(&all).cloned() else {
                return "rename (nothing)".into();
            };
            if parent.starts_with(&from) {
                return "rename (into itself, skipped)".into();
            }
            let to = parent.join(format!("r{n}"));
            fs::rename(root.join(&from), root.join(&to)).unwrap();
            format!("rename {} -> {}", from.display(), to.display())
        }
        // chmod
        70..=79 => {
            if rng.chance(25)
                && let Some(d) = rng.pick(&dirs)
            {
                let m = *rng.pick(&[0o755, 0o700, 0o750, 0o775]).unwrap();
                fs::set_permissions(root.join(d), fs::Permissions::from_mode(m)).unwrap();
                return format!("chmod {m:o} {}", d.display());
            }
            match rng.pick(&files) {
                Some(p) => {
                    let m = *rng
                        .pick(&[0o644, 0o600, 0o755, 0o700, 0o640, 0o444])
                        .unwrap();
                    fs::set_permissions(root.join(p), fs::Permissions::from_mode(m)).unwrap();
                    format!("chmod {m:o} {}", p.display())
                }
                None => "chmod (nothing)".into(),
            }
        }
        // symlink: to a file in the tree, dangling, absolute outside
        80..=89 => {
            let target: PathBuf = match rng.below(3) {
                0 => match rng.pick(&files) {
                    Some(f) => f.clone(),
                    None => "nowhere".into(),
                },
                1 => format!("../dangling{n}").into(),
                _ => "/nonexistent/outside".into(),
            };
            let p = parent.join(format!("l{n}"));
            std::os::unix::fs::symlink(&target, root.join(&p)).unwrap();
            format!("symlink {} -> {}", p.display(), target.display())
        }
        // mkdir (sometimes with a file right away)
        _ => {
            let p = parent.join(format!("d{n}"));
            fs::create_dir(root.join(&p)).unwrap();
            if rng.chance(60) {
                fs::write(root.join(&p).join("inner.txt"), rng.bytes(500)).unwrap();
            }
            format!("mkdir {}", p.display())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_fidelity_soak() {
    let target_checks = if full() { 500 } else { 15 };
    let seed: u64 = std::env::var("CHKPT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c4c7);
    let mut rng = Rng(seed);
    let d = Daemon::start(&[]);
    let mut c = d.client().await;
    let ws_dir = tempfile::tempdir().unwrap();
    let ws = ws_dir.path().canonicalize().unwrap();
    let mut counter = 0;
    for _ in 0..20 {
        random_edit(&mut rng, &ws, &mut counter);
    }
    watch(&mut c, &ws, 300, 10_000).await;

    let started = Instant::now();
    let (mut checks, mut mismatches, mut edits) = (0u64, 0u64, 0u64);
    let mut waits = Vec::new();
    let mut reports = Vec::new();
    let mut history: Vec<String> = Vec::new();
    while checks < target_checks {
        // A burst: 1-25 edits, sometimes paced, ending with a sure change.
        let burst = rng.below(25) + 1;
        let paced = rng.chance(30);
        history.clear();
        for _ in 0..burst {
            history.push(random_edit(&mut rng, &ws, &mut counter));
            edits += 1;
            if paced {
                tokio::time::sleep(Duration::from_millis(rng.below(60) as u64)).await;
            }
        }
        counter += 1;
        let sure = PathBuf::from(format!("f{counter}.txt"));
        fs::write(ws.join(&sure), format!("burst end {counter}")).unwrap();
        history.push(format!("create {}", sure.display()));
        let last_write = now_ms();

        // The pause: wait for the auto snapshot after the burst.
        let t = Instant::now();
        let snap = settled_snapshot(&mut c, &ws, last_write, None, 60).await;
        waits.push(t.elapsed());
        assert_eq!(snap.trigger(), pb::Trigger::Auto);
        let out = tempfile::tempdir().unwrap();
        restore_to(&mut c, &ws, &snap.id, out.path()).await;
        let want = tree(&ws);
        let got = tree(out.path());
        checks += 1;
        if want != got {
            mismatches += 1;
            reports.push(format!(
                "check {checks} (snapshot {}): {}\nburst: {}",
                snap.id,
                tree_diff(&want, &got, 10).join("\n"),
                history.join("; ")
            ));
        }
        // Sometimes a longer pause, with nothing going on.
        if rng.chance(10) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let final_entries = tree(&ws).len();
    println!(
        "figures: capture_fidelity_soak seed={seed} checks={checks} mismatches={mismatches} edits={edits} final_entries={final_entries} wait_for_snapshot[{}] elapsed={:.1}s",
        percentiles(&mut waits),
        started.elapsed().as_secs_f64()
    );
    assert!(
        reports.is_empty(),
        "{mismatches} mismatches (seed {seed}):\n{}",
        reports.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Event flood
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_flood_is_captured_exactly() {
    let n: u64 = if full() { 100_000 } else { 10_000 };
    let d = Daemon::start(&[]);
    let mut c = d.client().await;
    let ws_dir = tempfile::tempdir().unwrap();
    let ws = ws_dir.path().canonicalize().unwrap();
    watch(&mut c, &ws, 500, 5_000).await;

    let t = Instant::now();
    for i in 0..n {
        let dir = ws.join(format!("a{}/b{}", i / 1000, (i / 100) % 10));
        if i % 100 == 0 {
            fs::create_dir_all(&dir).unwrap();
        }
        fs::write(dir.join(format!("f{i}")), i.to_string()).unwrap();
    }
    let create_s = t.elapsed().as_secs_f64();
    let last_write = now_ms();
    let t = Instant::now();
    let snap = settled_snapshot(&mut c, &ws, last_write.saturating_sub(1), Some(n), 300).await;
    let capture_s = t.elapsed().as_secs_f64();
    let out = tempfile::tempdir().unwrap();
    let t = Instant::now();
    restore_to(&mut c, &ws, &snap.id, out.path()).await;
    let restore_s = t.elapsed().as_secs_f64();
    let want = tree(&ws);
    let got = tree(out.path());
    let diff = tree_diff(&want, &got, 20);
    let st = ws_status(&mut c, &ws).await.unwrap();
    let counters = st.counters.unwrap_or_default();
    println!(
        "figures: event_flood files={n} create={create_s:.1}s snapshot_after={capture_s:.1}s restore={restore_s:.1}s snapshots={} rescans={} events_received={} snapshot_rescan={} entries_compared={} mismatches={}",
        snapshots(&mut c, &ws).await.len(),
        counters.rescans,
        counters.events_received,
        snap.rescan,
        want.len(),
        want.keys().chain(got.keys()).collect::<BTreeSet<_>>().len()
            - want.iter().filter(|(k, v)| got.get(*k) == Some(v)).count(),
    );
    assert!(
        diff.is_empty(),
        "the snapshot differs from the folder:\n{}",
        diff.join("\n")
    );
}
