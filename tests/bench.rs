//! The benchmark of issue 6: `chkptd` against the `chkpt` 0.3.0 CLI (the peer), with
//! `tar | lz4` and `git` as baselines, on one tree in one run.
//!
//! ```sh
//! cargo test --test bench                      # smoke run (what CI runs): ~2,000 files
//! cargo test --release --test bench -- --full  # the kernel source, median of 3 repetitions
//! ```
//!
//! `--only big-files` runs the big files section alone. `--corpus generated|kernel` picks the corpus, `--reps N` the repetitions (a full run takes at
//! least 5 samples of the cold save, the noisiest step, still alternating). The table goes to
//! stdout and to `target/bench-results.md` (`target/bench-results-smoke.md` for smoke runs, so CI
//! never overwrites a full run's table). Every restore is checked against the expected tree, for
//! chkptd executable bits included; the process exits 1 when one of ours fails (a failed peer or
//! baseline check is reported in the table, not turned into a red CI).
//!
//! What a run could not measure is listed above the table in bold: the peer (a smoke run does
//! not install it), `tar | lz4`, `git`, the kernel tarball. A run without `tar`, `lz4` or `git`
//! exits 1 (`.ci/run` installs them), and so does a full run without the peer or, unless
//! `--corpus generated` was asked for, without the kernel tarball.
//!
//! # Layout
//! - `bench/tree.rs`: the corpus, page-cache warming, edits, manifests and restore checks
//! - `bench/ours.rs`: a fresh `chkptd` per repetition, driven over gRPC
//! - `bench/others.rs`: the peer and the baselines
//! - `bench/report.rs`: statistics, targets and the table
//! - `bench/watcher.rs`: what watching a busy Rust project costs (its own table)
//! - `bench/git.rs`: what saving a real repository's `.git` costs (its own table)
//! - `bench/bigfiles.rs`: the targets of issue 17 (a small change to a big file, a SQLite
//!   database, a sparse file's restore), with a table of their own
//! - `bench/history.rs`: the targets of issue 19 (diff with patches, `log -p`, the UI's first
//!   frame), with a table of their own
//! - `bench/remote.rs`: replication of the corpus to a local Garage (issue 21): upload
//!   throughput, an auto snapshot to replicated, a remote restore beside a local one (its own
//!   table)
//! - `bench/scale.rs`: monorepo-sized generated trees, and a folder of 200,000 entries (its own
//!   table; a smoke run measures 20,000 files, a full run 100,000, 500,000 and 1,000,000 and
//!   the folder, `--only scale` the folder too)
//!
//! `--only scale` runs the scale section alone (its table goes to
//! `target/bench-results-scale.md`), `--scale-sizes 100000,500000` picks its tree sizes.
//! `--only main,remote` (any of `main`, `watcher`, `git`, `history`, `scale`, `big-files`,
//! `remote`) runs those sections on the corpus; a full run's table then goes to
//! `target/bench-results-some.md`, so that a whole run's is never overwritten by a part.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "bench/bigfiles.rs"]
mod bigfiles;
#[path = "bench/git.rs"]
mod git;
#[path = "bench/history.rs"]
mod history;
#[path = "bench/others.rs"]
mod others;
#[path = "bench/ours.rs"]
mod ours;
#[path = "bench/remote.rs"]
mod remote;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/scale.rs"]
mod scale;
#[path = "bench/tree.rs"]
mod tree;
mod util;
#[path = "bench/watcher.rs"]
mod watcher;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use others::Peer;
use report::{Results, Tool};

/// What one run measures, and on which tree.
#[derive(Debug)]
pub struct Run {
    /// Repetitions of every step.
    pub reps: usize,
    /// Cold saves per tool in all: the noisiest step gets samples beyond `reps`.
    pub cold_reps: usize,
    /// Auto-snapshot latency samples per repetition.
    pub auto_reps: usize,
    /// Window for the daemon's idle CPU.
    pub idle_cpu: Duration,
    /// Snapshots in the store for the list step.
    pub list_n: usize,
    /// The corpus.
    pub tree: PathBuf,
    /// 15 files every tool saves: 0..5 get appended to, 5..10 modified, 10..15 deleted.
    pub picks: Vec<PathBuf>,
    /// Files `git` considers ignored, which chkptd leaves out too.
    pub gitignored: BTreeSet<PathBuf>,
    /// Where trees the run is done with wait until it ends (see [`Run::bury`]).
    pub graveyard: PathBuf,
    /// Trees moved there so far.
    pub buried: std::sync::atomic::AtomicUsize,
}

impl Run {
    /// Whether chkptd leaves `rel` out of its snapshots.
    pub fn skip_ours(&self, rel: &Path) -> bool {
        self.gitignored.contains(rel)
    }

    /// Moves a tree the run is done with (a restore's output, git's repository) out of the way
    /// instead of deleting it; the graveyard goes after the last timing. Without a journal (as
    /// on the benchmark VM), ext4 skips inodes deleted in the last minutes when it allocates
    /// new ones, scanning past them: deleting 86,000 files made the next tool's full restore
    /// two to three times slower, whichever tool that was.
    pub fn bury(&self, path: &Path) {
        let n = self
            .buried
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let to = self.graveyard.join(n.to_string());
        if let Err(e) = std::fs::rename(path, &to) {
            eprintln!(
                "bench: could not move {} aside ({e}); deleting it",
                path.display()
            );
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// The value after `flag` on the command line.
fn arg_value(args: &[String], flag: &str) -> Option<String> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).cloned()
}

/// `target/`, found from this test binary's path (`target/<profile>/deps/bench-…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
}

/// Makes the corpus under `scratch`; returns its root, a description, and why it is not the
/// kernel tree a full run measures, if it is not.
fn corpus(full: bool, kind: Option<&str>, scratch: &Path) -> (PathBuf, String, Option<String>) {
    let kernel = match kind {
        Some("generated") => false,
        Some("kernel") => true,
        _ => full,
    };
    let mut missing = None;
    if kernel {
        match tree::unpack_kernel(scratch) {
            Ok(root) => {
                return (
                    root,
                    format!("the Linux source from {}", tree::KERNEL_TARBALL),
                    None,
                );
            }
            Err(e) => {
                missing = Some(format!(
                    "the kernel tree ({e}; `apt-get install linux-source-6.12`): a generated corpus was measured instead"
                ))
            }
        }
    }
    let spec = if full {
        tree::Spec {
            small: 49_960,
            small_max: 14_000,
            big: vec![5 << 20; 20],
            random: vec![1 << 20; 20],
        }
    } else {
        tree::Spec {
            small: 1_990,
            small_max: 4_000,
            big: vec![2 << 20, 5 << 20],
            random: vec![256 << 10, 768 << 10, 1 << 20],
        }
    };
    let root = scratch.join("corpus");
    tree::generate(&root, &spec);
    (root, "a generated corpus".into(), missing)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        // `cargo test -- --list`: a harness-less bench has no tests to list.
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let full = args.iter().any(|a| a == "--full");
    let sizes: Vec<usize> = match arg_value(&args, "--scale-sizes") {
        Some(list) => list.split(',').filter_map(|n| n.parse().ok()).collect(),
        None if full => vec![100_000, 500_000, 1_000_000],
        None => vec![20_000],
    };
    if arg_value(&args, "--only").as_deref() == Some("scale") {
        return only_scale(&sizes);
    }
    if arg_value(&args, "--only").as_deref() == Some("big-files") {
        return only_big_files(full);
    }
    let reps = arg_value(&args, "--reps")
        .and_then(|n| n.parse().ok())
        .unwrap_or(if full { 3 } else { 1 });
    let target = target_dir();
    let scratch = tempfile::tempdir().unwrap();
    let (root, what, no_kernel) = corpus(
        full,
        arg_value(&args, "--corpus").as_deref(),
        scratch.path(),
    );
    let (files, bytes) = tree::warm(&root);
    let peer = Peer::find(&target, full);
    let manifest = tree::manifest(&root);
    let gitignored = tree::gitignored(&root, scratch.path());
    let picks = tree::pick(&manifest, 15, &|p| {
        gitignored.contains(p) || others::peer_skips(p)
    });
    assert_eq!(picks.len(), 15, "the corpus has too few plain files");
    let run = Run {
        reps,
        cold_reps: if full { reps.max(5) } else { reps },
        auto_reps: if full { 3 } else { 1 },
        idle_cpu: Duration::from_secs(if full { 60 } else { 3 }),
        list_n: if full { 1000 } else { 100 },
        tree: root,
        picks,
        gitignored,
        graveyard: scratch.path().join("graveyard"),
        buried: Default::default(),
    };
    std::fs::create_dir(&run.graveyard).unwrap();
    let mut res = Results::new(
        run.idle_cpu.as_secs(),
        run.list_n,
        tree::lz4_size(&run.tree, &run.picks[..5]),
    );
    res.note(format!(
        "Corpus: {what}, {files} files, {:.0} MiB; {} repetition(s) ({} of the cold save), tools alternating, page cache warmed before each step.",
        bytes as f64 / 1048576.0,
        run.reps,
        run.cold_reps
    ));
    if !run.gitignored.is_empty() {
        res.note(format!(
            "chkptd leaves out the {} files git ignores; the peer leaves out every `target` folder.",
            run.gitignored.len()
        ));
    }
    // A full run fails when any of these is missing; any run fails without the baselines.
    let mut fatal = false;
    if let Some(m) = no_kernel {
        res.missing(m);
        fatal |= full;
    }
    if peer.is_none() {
        res.missing(if full {
            "the peer, chkpt-cli 0.3.0 (its install failed, see above): no ratio is judged".into()
        } else {
            "the peer, chkpt-cli 0.3.0 (a smoke run does not install it; `-- --full` does): no ratio is judged".into()
        });
        fatal |= full;
    }
    for tool in ["tar", "lz4", "git"] {
        if !others::have(tool) {
            res.missing(format!(
                "`{tool}` is not installed: its baseline is missing"
            ));
            fatal = true;
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `--only a,b`: the sections named (`main` is the table above), on the corpus.
    let only: Option<Vec<String>> =
        arg_value(&args, "--only").map(|l| l.split(',').map(str::to_owned).collect());
    let wants = |s: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));
    let mut tables: Vec<String> = Vec::new();
    let mut failed = false;
    if wants("main") {
        rt.block_on(bench(&run, peer.as_ref(), &mut res));
        failed |= res.ours_failed();
    }
    if wants("watcher") {
        eprintln!("bench: the watcher section");
        tables.push(rt.block_on(watcher::section(scratch.path())).0);
    }
    if wants("git") {
        eprintln!("bench: the .git section");
        tables.push(rt.block_on(git::section(scratch.path())));
    }
    if wants("history") {
        eprintln!("bench: the history section");
        let history = rt.block_on(history::run(&run));
        tables.push(history.table);
        failed |= history.failed;
    }
    let mut figures = String::new();
    if wants("scale") {
        eprintln!("bench: the scale section");
        let scale = rt.block_on(scale::section(&target, scratch.path(), &sizes, full));
        tables.push(scale.table());
        figures = scale.figures();
        failed |= scale.failed();
    }
    if wants("big-files") {
        eprintln!("bench: the big files section");
        let big = rt.block_on(bigfiles::section(scratch.path(), full, peer.as_ref()));
        tables.push(big.table);
        failed |= big.failed;
    }
    if wants("remote") {
        eprintln!("bench: the remote section");
        let remote = remote::section(&run, scratch.path());
        if let Some(m) = &remote.missing {
            res.missing(m.clone());
            fatal = true;
        }
        tables.push(remote.table);
        failed |= remote.failed;
    }

    // Last: what could not be measured, listed above the main table, includes the sections'.
    if wants("main") {
        tables.insert(0, res.table());
    } else if !res.missing.is_empty() {
        tables.insert(0, format!("**Not measured: {}**\n", res.missing.join("; ")));
    }
    let machine = report::machine();
    let table = tables.join("\n");
    println!("\n{table}\n{machine}");
    println!("{figures}");
    println!("Took {:.0} s.", started.elapsed().as_secs_f64());
    let file = target.join(match (full, &only) {
        (true, None) => "bench-results.md",
        (true, Some(_)) => "bench-results-some.md",
        (false, _) => "bench-results-smoke.md",
    });
    let doc = format!("# chkpt benchmark\n\n{machine}\n\n{table}");
    if let Err(e) = std::fs::write(&file, doc) {
        eprintln!("bench: could not write {}: {e}", file.display());
    }
    if failed {
        eprintln!("bench: FAILED: a step of chkptd failed (see the table)");
        return ExitCode::FAILURE;
    }
    if fatal {
        eprintln!(
            "bench: FAILED: not measured: {} (see the top of the table)",
            res.missing.join("; ")
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `--only scale`: the scale section alone, its table in `target/bench-results-scale.md`.
fn only_scale(sizes: &[usize]) -> ExitCode {
    let started = Instant::now();
    let target = target_dir();
    let scratch = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let scale = rt.block_on(scale::section(&target, scratch.path(), sizes, true));
    let machine = report::machine();
    let table = scale.table();
    println!("\n{table}\n{machine}\n{}", scale.figures());
    println!("Took {:.0} s.", started.elapsed().as_secs_f64());
    let file = target.join("bench-results-scale.md");
    let doc = format!("# chkpt benchmark: scale\n\n{machine}\n\n{table}");
    if let Err(e) = std::fs::write(&file, doc) {
        eprintln!("bench: could not write {}: {e}", file.display());
    }
    if scale.failed() {
        eprintln!("bench: FAILED: a step of chkptd failed (see the table)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `--only big-files`: the big files section alone (it needs no corpus), e.g. to measure the
/// issue's sizes with `--full` without the kernel tree.
fn only_big_files(full: bool) -> ExitCode {
    let scratch = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let peer = Peer::find(&target_dir(), full);
    let big = rt.block_on(bigfiles::section(scratch.path(), full, peer.as_ref()));
    println!("{}\n{}", big.table, report::machine());
    if big.failed {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// All repetitions of all steps, ours and the peer alternating who goes first.
async fn bench(run: &Run, peer: Option<&Peer>, res: &mut Results) {
    for rep in 0..run.reps {
        eprintln!("bench: repetition {} of {}", rep + 1, run.reps);
        let ours_first = rep % 2 == 0;
        if ours_first {
            ours::rep(run, res, rep).await;
        }
        if let Some(p) = peer {
            others::peer_rep(p, run, res, rep);
        }
        if !ours_first {
            ours::rep(run, res, rep).await;
        }
        others::baselines_rep(run, res);
    }
    eprintln!("bench: the cold save's store after the idle recompression");
    ours::recompressed(run, res).await;
    for i in run.reps..run.cold_reps {
        eprintln!("bench: cold save {} of {}", i + 1, run.cold_reps);
        if i % 2 == 0 {
            ours::cold_sample(run, res).await;
        }
        if let Some(p) = peer {
            others::peer_cold_sample(p, run, res);
        }
        if i % 2 == 1 {
            ours::cold_sample(run, res).await;
        }
    }
    eprintln!("bench: {} saves per tool for the list step", run.list_n);
    let mut lister = match ours::lister(run.list_n).await {
        Ok(l) => Some(l),
        Err(e) => {
            res.add(report::Step::List, Tool::Ours, Err(e));
            None
        }
    };
    let peer_lister = peer.map(|p| others::peer_lister(p, run.list_n));
    for rep in 0..run.reps {
        let ours_first = rep % 2 == 0;
        for ours in [ours_first, !ours_first] {
            if ours && let Some(l) = lister.as_mut() {
                res.add(report::Step::List, Tool::Ours, ours::time_list(l).await);
            }
            if !ours && let Some((p, l)) = peer.zip(peer_lister.as_ref()) {
                let s = l
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|l| others::time_list(p, l));
                res.add(report::Step::List, Tool::Peer, s);
            }
        }
    }
}
