//! The targets of issue 19 (see what changed), each beside a baseline measured in the same
//! run: `chkptctl diff` with the patches of 5 changed files (against `diff -ru` of the same 5
//! files), `chkptctl log -p` of one path across `list_n` snapshots (against `cat` of the same
//! file as many times), and the first frame of `chkptctl ui` (against tmux running `true`).
//! Beside them, issue 22's hook: `chkptctl hook claude-code` on a warm daemon, once when the
//! tool changed nothing (a note on the latest snapshot) and once after a tool changed a file (a
//! new snapshot), against `chkptctl --version` (the same process's start alone).
//! All are whole `chkptctl` processes, timed end to end.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chkpt_proto::v1 as pb;

use crate::Run;
use crate::tree;
use crate::util::Daemon;

/// One step's samples (seconds), its baseline's, and its target.
#[derive(Clone)]
struct Row {
    what: String,
    ours: Vec<f64>,
    baseline: Vec<f64>,
    baseline_name: &'static str,
    target: f64,
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("—".into(), |s| format!("{:.1} ms", s * 1e3))
}

/// What the history steps found, as a markdown table, and whether one of them failed.
pub struct Report {
    pub table: String,
    pub failed: bool,
}

/// Runs the three steps on `run.tree` with a fresh daemon.
pub async fn run(run: &Run) -> Report {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    if let Err(e) = steps(run, &mut rows).await {
        errors.push(e);
    }
    let mut table = String::from(
        "\n| history and hook step (issues 19, 22) | ours | baseline | ours/baseline | target | met? |\n|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        let (o, b) = (median(&r.ours), median(&r.baseline));
        let ratio = o
            .zip(b)
            .map_or("—".into(), |(o, b)| format!("{:.2}", o / b.max(1e-9)));
        let met = match o {
            Some(o) if o <= r.target => "yes",
            Some(_) => "**no**",
            None => "**FAILED**",
        };
        table.push_str(&format!(
            "| {} | {} | {} ({}) | {ratio} | ≤ {:.0} ms | {met} |\n",
            r.what,
            ms(o),
            ms(b),
            r.baseline_name,
            r.target * 1e3
        ));
    }
    for e in &errors {
        eprintln!("bench: history FAILED: {e}");
        table.push_str(&format!("\nHistory failure: {e}\n"));
    }
    Report {
        table,
        failed: !errors.is_empty(),
    }
}

/// Runs `cmd` to the end with its output thrown away; the seconds it took and its stdout.
fn time(cmd: &mut Command) -> Result<(f64, Vec<u8>), String> {
    time_fed(cmd, b"")
}

/// As `time`, with `input` on the command's stdin.
fn time_fed(cmd: &mut Command, input: &[u8]) -> Result<(f64, Vec<u8>), String> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let dt = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((dt, out.stdout))
}

fn chkptctl(d: &Daemon, ws: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chkptctl"));
    c.arg("--socket")
        .arg(&d.socket)
        .arg("-w")
        .arg(ws)
        .current_dir(ws);
    c
}

async fn steps(run: &Run, rows: &mut Vec<Row>) -> Result<(), String> {
    let t = run.tree.as_path();
    let ws = t.display().to_string();
    let d = Daemon::start(&[]);
    let mut c = d.client().await;
    eprintln!("bench: history: a fresh daemon watches the corpus");
    c.watch(pb::WatchRequest {
        path: ws.clone(),
        idle_ms: 3_600_000,
        max_delay_ms: 36_000_000,
        include_dependency_dirs: false,
        retention: None,
        include_git: false,
    })
    .await
    .map_err(|e| e.to_string())?;
    let reps = run.reps.max(3) * 2 - 1;
    let five = &run.picks[..5];
    let originals = tree::read_files(t, five);

    // diff with the patches of 5 changed files, latest vs the working tree.
    tree::append_line(t, five, "history bench");
    wait_pending(&mut c, 5).await?;
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (old, new) = (scratch.path().join("a"), scratch.path().join("b"));
    for (f, bytes) in &originals {
        let name = f.to_string_lossy().replace('/', "_");
        std::fs::create_dir_all(&old).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&new).map_err(|e| e.to_string())?;
        std::fs::write(old.join(&name), bytes).map_err(|e| e.to_string())?;
        std::fs::copy(t.join(f), new.join(&name)).map_err(|e| e.to_string())?;
    }
    let mut row = Row {
        what: "`chkptctl diff`, patches of 5 changed files".into(),
        ours: Vec::new(),
        baseline: Vec::new(),
        baseline_name: "`diff -ru` of the 5 files",
        target: 0.05,
    };
    for _ in 0..reps {
        let (dt, out) = time(chkptctl(&d, t).arg("diff"))?;
        let files = out.windows(11).filter(|w| w == b"diff --git ").count();
        if files != 5 {
            tree::put_back(t, &originals);
            return Err(format!("the diff has {files} files, not 5"));
        }
        row.ours.push(dt);
        // diff exits 1 when files differ: that is its success here.
        let t0 = Instant::now();
        Command::new("diff")
            .arg("-ru")
            .arg(&old)
            .arg(&new)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        row.baseline.push(t0.elapsed().as_secs_f64());
    }
    eprintln!("bench: history diff: {}", ms(median(&row.ours)));
    rows.push(row);
    tree::put_back(t, &originals);

    // log -p of one path across list_n snapshots, each changing it.
    let path = &run.picks[0];
    eprintln!(
        "bench: history: {} saves changing {}",
        run.list_n,
        path.display()
    );
    for i in 0..run.list_n {
        tree::append_line(t, std::slice::from_ref(path), &format!("log {i}"));
        c.save(pb::SaveRequest {
            workspace: ws.clone(),
            message: format!("log {i}"),
            pin: false,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    let mut row = Row {
        what: format!(
            "`chkptctl log -p`, one path across {} snapshots",
            run.list_n
        ),
        ours: Vec::new(),
        baseline: Vec::new(),
        baseline_name: "`cat` of the file",
        target: 0.2,
    };
    for _ in 0..reps {
        let (dt, out) = time(chkptctl(&d, t).args(["log", "-p"]).arg(path))?;
        let entries = out.windows(9).filter(|w| w == b"snapshot ").count();
        if entries < run.list_n {
            tree::put_back(t, &originals);
            return Err(format!(
                "log -p listed {entries} snapshots, not {}",
                run.list_n
            ));
        }
        row.ours.push(dt);
        row.baseline
            .push(time(Command::new("cat").arg(t.join(path)))?.0);
    }
    eprintln!("bench: history log -p: {}", ms(median(&row.ours)));
    rows.push(row);
    tree::put_back(t, &originals);

    // ui's first frame with those snapshots, in tmux.
    let mut row = Row {
        what: format!("`chkptctl ui`, first frame with {}+ snapshots", run.list_n),
        ours: Vec::new(),
        baseline: Vec::new(),
        baseline_name: "tmux running `true`",
        target: 0.15,
    };
    for i in 0..reps {
        let ui = format!(
            "{} --socket {} -w {} ui --first-frame",
            env!("CARGO_BIN_EXE_chkptctl"),
            d.socket.display(),
            t.display()
        );
        let took = in_tmux(&ui, i)?;
        let baseline = in_tmux("true", i)?;
        // The target is the UI's: tmux's own start is taken off.
        row.ours.push((took - baseline).max(0.0));
        row.baseline.push(baseline);
    }
    eprintln!("bench: history ui first frame: {}", ms(median(&row.ours)));
    rows.push(row);

    hook_steps(&d, &mut c, run, reps, rows).await
}

/// `chkptctl hook claude-code` as Claude Code runs it: a PreToolUse hook after nothing changed,
/// and a PostToolUse hook after the tool changed one file. Each must leave what it claims: the
/// snapshot count unchanged, or one more.
async fn hook_steps(
    d: &Daemon,
    c: &mut pb::chkpt_client::ChkptClient<tonic::transport::Channel>,
    run: &Run,
    reps: usize,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let t = run.tree.as_path();
    let ws = t.display().to_string();
    let event = |name: &str| {
        serde_json::json!({
            "session_id": "bench", "cwd": t, "hook_event_name": name, "tool_name": "Bash",
            "tool_input": { "command": "true" },
        })
        .to_string()
    };
    let latest = async |c: &mut pb::chkpt_client::ChkptClient<tonic::transport::Channel>| {
        c.list(pb::ListRequest {
            workspace: ws.clone(),
            limit: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .snapshots
        .first()
        .map(|s| s.id.clone())
        .ok_or_else(|| "no snapshot".to_string())
    };
    let version = || {
        let mut v = Command::new(env!("CARGO_BIN_EXE_chkptctl"));
        v.arg("--version");
        v
    };
    let hook = |input: &str| -> Result<f64, String> {
        let (dt, out) = time_fed(
            chkptctl(d, t).args(["hook", "claude-code"]),
            input.as_bytes(),
        )?;
        if !out.is_empty() {
            return Err("the hook printed on stdout".into());
        }
        Ok(dt)
    };
    let mut unchanged = Row {
        what: "`chkptctl hook claude-code`, nothing changed".into(),
        ours: Vec::new(),
        baseline: Vec::new(),
        baseline_name: "`chkptctl --version`",
        target: 0.05,
    };
    let mut changed = Row {
        what: "`chkptctl hook claude-code`, 1 file changed".into(),
        ..unchanged.clone()
    };
    let path = &run.picks[1];
    let original = tree::read_files(t, std::slice::from_ref(path));
    // The working tree equal to the latest snapshot first, so the first hook finds nothing.
    c.save(pb::SaveRequest {
        workspace: ws.clone(),
        message: "before the hooks".into(),
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    for i in 0..reps {
        let before = latest(c).await?;
        unchanged.ours.push(hook(&event("PreToolUse"))?);
        unchanged.baseline.push(time(&mut version())?.0);
        if latest(c).await? != before {
            tree::put_back(t, &original);
            return Err("a hook that found nothing changed added a snapshot".into());
        }
        tree::append_line(t, std::slice::from_ref(path), &format!("hook {i}"));
        wait_pending(c, 1).await?;
        changed.ours.push(hook(&event("PostToolUse"))?);
        changed.baseline.push(time(&mut version())?.0);
        if latest(c).await? == before {
            tree::put_back(t, &original);
            return Err("a hook after a change added no snapshot".into());
        }
    }
    tree::put_back(t, &original);
    eprintln!(
        "bench: hook: {} unchanged, {} changed",
        ms(median(&unchanged.ours)),
        ms(median(&changed.ours))
    );
    rows.push(unchanged);
    rows.push(changed);
    Ok(())
}

/// Seconds from starting `cmd` in a new tmux session to its end.
fn in_tmux(cmd: &str, i: usize) -> Result<f64, String> {
    // A server of its own per call: a name reused right after `kill-server` can still be the
    // old server's, going away.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let sock = format!("chkpt-bench-{}-{i}-{n}", std::process::id());
    let tmux = || {
        let mut c = Command::new("tmux");
        c.args(["-L", &sock, "-f", "/dev/null"]);
        c
    };
    // The pane outlives the signal: when a quick command's session ended at once, the server
    // exited with it, and a `wait-for` that reached the server as it went hung (seen with
    // `true`). `kill-server` below ends the sleep.
    let line = format!("{cmd}; tmux -L {sock} wait-for -S done; exec sleep 600");
    let t0 = Instant::now();
    let out = tmux()
        .args(["new-session", "-d", "-x", "200", "-y", "50"])
        .arg(&line)
        .output()
        .map_err(|e| format!("tmux: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // Bounded: a signal lost while the server goes away must fail the step, not hang the run.
    let waited = Command::new("timeout")
        .args([
            "120",
            "tmux",
            "-L",
            &sock,
            "-f",
            "/dev/null",
            "wait-for",
            "done",
        ])
        .status();
    let dt = t0.elapsed().as_secs_f64();
    let _ = tmux().arg("kill-server").output();
    let waited = waited.map_err(|e| e.to_string())?;
    if waited.code() == Some(124) {
        return Err(format!("{cmd} did not end within 120 s in tmux"));
    }
    if !waited.success() {
        return Err(format!("tmux wait-for failed ({waited}) for {cmd}"));
    }
    Ok(dt)
}

async fn wait_pending(
    c: &mut pb::chkpt_client::ChkptClient<tonic::transport::Channel>,
    n: u64,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = c
            .status(pb::StatusRequest {})
            .await
            .map_err(|e| e.to_string())?;
        let pending = st
            .into_inner()
            .workspaces
            .first()
            .map_or(0, |w| w.pending_changes);
        if pending >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the daemon never saw the {n} changed files"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
