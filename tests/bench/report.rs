//! Samples, their statistics, and the results table with the targets of issue 6.

use std::collections::BTreeMap;
use std::fmt::Write;

/// A measured step (issue 6 numbers them 1–7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    ColdSave,
    IncrSave,
    IncrSaveRpc,
    AutoLatency,
    RestoreSmall,
    RestoreFull,
    RestoreDurable,
    StoreSize,
    StoreRecompressed,
    StoreGrowth,
    DaemonRss,
    IdleCpu,
    List,
}

const STEPS: [Step; 13] = [
    Step::ColdSave,
    Step::IncrSave,
    Step::IncrSaveRpc,
    Step::AutoLatency,
    Step::RestoreSmall,
    Step::RestoreFull,
    Step::RestoreDurable,
    Step::StoreSize,
    Step::StoreRecompressed,
    Step::StoreGrowth,
    Step::DaemonRss,
    Step::IdleCpu,
    Step::List,
];

/// Who was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tool {
    Ours,
    Peer,
    Tar,
    Git,
}

/// One measurement (seconds or bytes), or why it failed.
pub type Sample = Result<f64, String>;

enum Unit {
    Secs,
    Bytes,
    CpuSecs,
}

impl Step {
    fn unit(self) -> Unit {
        match self {
            Step::StoreSize | Step::StoreRecompressed | Step::StoreGrowth | Step::DaemonRss => {
                Unit::Bytes
            }
            Step::IdleCpu => Unit::CpuSecs,
            _ => Unit::Secs,
        }
    }
}

/// Everything one run measured, plus what the table needs to judge the targets.
#[derive(Debug, Default)]
pub struct Results {
    samples: BTreeMap<(Step, Tool), Vec<Sample>>,
    /// Remarks printed under the table.
    pub notes: Vec<String>,
    /// What this run could not measure that a full run must (a tool or the corpus missing):
    /// printed above the table, and a full run with any fails.
    pub missing: Vec<String>,
    /// The lz4-compressed size of the files an incremental save changed.
    pub changed_lz4: u64,
    /// Length of the idle-CPU window, in seconds.
    pub idle_secs: u64,
    /// Snapshots in the store for the list step.
    pub list_n: usize,
}

impl Results {
    pub fn new(idle_secs: u64, list_n: usize, changed_lz4: u64) -> Results {
        Results {
            idle_secs,
            list_n,
            changed_lz4,
            ..Results::default()
        }
    }

    pub fn add(&mut self, step: Step, tool: Tool, sample: Sample) {
        match &sample {
            Err(e) => eprintln!("bench: {step:?} with {tool:?} FAILED: {e}"),
            Ok(v) => eprintln!("bench: {step:?} with {tool:?}: {}", show(step, *v)),
        }
        self.samples.entry((step, tool)).or_default().push(sample);
    }

    pub fn note(&mut self, note: String) {
        if self.notes.contains(&note) {
            return;
        }
        eprintln!("bench: {note}");
        self.notes.push(note);
    }

    /// Records that something a full run measures was not measured, and why.
    pub fn missing(&mut self, what: String) {
        eprintln!("bench: NOT MEASURED: {what}");
        self.missing.push(what);
    }

    /// Whether any of our own steps failed (a failed restore check, or an error).
    pub fn ours_failed(&self) -> bool {
        self.samples
            .iter()
            .any(|((_, tool), s)| *tool == Tool::Ours && s.iter().any(Result::is_err))
    }

    /// Median, min and max, or the first failure.
    fn stats(&self, step: Step, tool: Tool) -> Option<Result<(f64, f64, f64), String>> {
        let samples = self.samples.get(&(step, tool))?;
        let failed = samples.iter().filter(|s| s.is_err()).count();
        if let Some(Err(e)) = samples.iter().find(|s| s.is_err()) {
            return Some(Err(format!("FAILED ({failed} of {}): {e}", samples.len())));
        }
        let mut v: Vec<f64> = samples.iter().filter_map(|s| s.clone().ok()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Ok((median, v[0], v[n - 1])))
    }

    fn cell(&self, step: Step, tool: Tool) -> String {
        match self.stats(step, tool) {
            None => "—".into(),
            Some(Err(_)) => "**FAILED**".into(),
            Some(Ok((med, lo, hi))) if lo == hi => show(step, med),
            Some(Ok((med, lo, hi))) => {
                format!(
                    "{} ({}–{})",
                    show(step, med),
                    show(step, lo),
                    show(step, hi)
                )
            }
        }
    }

    fn label(&self, step: Step) -> String {
        match step {
            Step::ColdSave => "1 cold save (empty store; ours: `chkptctl watch`)".into(),
            Step::IncrSave => "2 incremental save, 5 files appended (ours: `chkptctl save`)".into(),
            Step::IncrSaveRpc => {
                "2 the same through the Save RPC of a connected client, edits already seen".into()
            }
            Step::AutoLatency => "2 auto snapshot: last write → snapshot, minus idle".into(),
            Step::RestoreSmall => {
                "3 restore latest after 5 modified + 5 deleted (ours: `chkptctl restore`)".into()
            }
            Step::RestoreFull => {
                "4 full restore into an empty dir (ours: `chkptctl restore --to`)".into()
            }
            Step::RestoreDurable => {
                "4 the same until it is on disk: the restore, then `sync` (ours is durable before it answers; the others never sync)".into()
            }
            Step::StoreSize => "5 store size after cold save".into(),
            Step::StoreRecompressed => {
                "5 the same once ours has recompressed it at idle (the peer's as it is)".into()
            }
            Step::StoreGrowth => "5 store growth per incremental snapshot".into(),
            Step::DaemonRss => "6 daemon resident memory watching the tree".into(),
            Step::IdleCpu => format!("6 daemon CPU over {} idle s", self.idle_secs),
            Step::List => format!(
                "7 list with {} snapshots (ours: `chkptctl list`)",
                self.list_n
            ),
        }
    }

    /// The target's text and whether our median meets it (None: cannot tell).
    fn target(&self, step: Step) -> (String, Option<bool>) {
        let ours = self
            .stats(step, Tool::Ours)
            .and_then(Result::ok)
            .map(|s| s.0);
        let peer = self
            .stats(step, Tool::Peer)
            .and_then(Result::ok)
            .map(|s| s.0);
        let ratio = |max: f64| {
            let met = ours.zip(peer).map(|(o, p)| o / p <= max);
            (format!("ratio ≤ {max}"), met)
        };
        let below = |text: String, max: f64| (text, ours.map(|o| o <= max));
        match step {
            Step::ColdSave => ratio(0.8),
            Step::IncrSave => ratio(0.05),
            Step::IncrSaveRpc => ("none (for comparison with the row above)".into(), None),
            Step::RestoreSmall => ratio(0.1),
            Step::RestoreFull | Step::RestoreDurable | Step::StoreSize => ratio(1.0),
            Step::StoreRecompressed => ratio(0.9),
            Step::StoreGrowth => below(
                format!(
                    "≤ changed content ({} lz4) + 64 KiB",
                    show(step, self.changed_lz4 as f64)
                ),
                self.changed_lz4 as f64 + 65536.0,
            ),
            Step::DaemonRss => below("≤ 150 MiB".into(), 150.0 * 1048576.0),
            Step::IdleCpu => below(
                "≈ 0 (≤ 0.1 % of a core)".into(),
                self.idle_secs as f64 * 0.001,
            ),
            Step::AutoLatency => below("≤ 100 ms".into(), 0.1),
            Step::List => below("≤ 20 ms".into(), 0.02),
        }
    }

    /// The results as a markdown table, with the failures and notes under it.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if !self.missing.is_empty() {
            out.push_str("**INCOMPLETE RUN: not what a full run measures.**\n\n");
            for m in &self.missing {
                writeln!(out, "- **Not measured:** {m}").unwrap();
            }
            out.push('\n');
        }
        out.push_str(
            "| step | ours: chkptd | peer: chkpt 0.3.0 | ours/peer | tar \\| lz4 -1 | git | target | met? |\n",
        );
        out.push_str("|---|---|---|---|---|---|---|---|\n");
        for step in STEPS {
            let ours = self.stats(step, Tool::Ours).and_then(Result::ok);
            let peer = self.stats(step, Tool::Peer).and_then(Result::ok);
            let ratio = match (ours, peer) {
                (Some(o), Some(p)) if p.0 > 0.0 => format!("{:.3}", o.0 / p.0),
                _ => "—".into(),
            };
            let (target, met) = self.target(step);
            let failed = matches!(self.stats(step, Tool::Ours), Some(Err(_)));
            let met = match met {
                _ if failed => "**FAILED**",
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            writeln!(
                out,
                "| {} | {} | {} | {ratio} | {} | {} | {target} | {met} |",
                self.label(step),
                self.cell(step, Tool::Ours),
                self.cell(step, Tool::Peer),
                self.cell(step, Tool::Tar),
                self.cell(step, Tool::Git),
            )
            .unwrap();
        }
        let failures: Vec<String> = self
            .samples
            .keys()
            .filter_map(|&(step, tool)| match self.stats(step, tool) {
                Some(Err(e)) => Some(format!("- {} — {tool:?}: {e}", self.label(step))),
                _ => None,
            })
            .collect();
        if !failures.is_empty() {
            out.push_str("\nFailures:\n");
            out.push_str(&failures.join("\n"));
            out.push('\n');
        }
        if !self.notes.is_empty() {
            out.push_str("\nNotes:\n");
            for n in &self.notes {
                writeln!(out, "- {n}").unwrap();
            }
        }
        out
    }
}

fn show(step: Step, v: f64) -> String {
    match step.unit() {
        Unit::Secs if v < 0.001 => format!("{:.0} µs", v * 1e6),
        Unit::Secs if v < 1.0 => format!("{:.1} ms", v * 1e3),
        Unit::Secs if v < 10.0 => format!("{v:.2} s"),
        Unit::Secs => format!("{v:.1} s"),
        Unit::CpuSecs => format!("{:.0} ms CPU", v * 1e3),
        Unit::Bytes if v < 1048576.0 => format!("{:.1} KiB", v / 1024.0),
        Unit::Bytes => format!("{:.1} MiB", v / 1048576.0),
    }
}

/// The machine, from /proc: CPU model, cores, memory, kernel.
pub fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    let cpu = field(&read("/proc/cpuinfo"), "model name");
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: f64 = field(&read("/proc/meminfo"), "MemTotal")
        .trim_end_matches(" kB")
        .parse()
        .unwrap_or(0.0);
    let kernel = read("/proc/sys/kernel/osrelease");
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    format!(
        "Machine: {cpu}, {nproc} CPUs (nproc), {:.1} GiB memory, Linux {}; {build} build.",
        mem_kib / 1048576.0,
        kernel.trim()
    )
}
