//! Our side: a fresh `chkptd` per repetition. Every step the peer runs as a command is timed
//! the same way for us: a whole `chkptctl` process, from its start to its exit (connect, the
//! event barrier, the RPC, the output). The incremental save is also timed as the bare `Save`
//! RPC on a connected client once the daemon has seen the edits, in a row of its own.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use tonic::transport::Channel;

use crate::Run;
use crate::report::{Results, Sample, Step, Tool};
use crate::tree;
use crate::util::Daemon;

pub type Client = ChkptClient<Channel>;

/// Quiet period while timing steps 1–4: no auto snapshot may interfere.
const LONG_IDLE_MS: u64 = 3_600_000;
/// Quiet period for the auto-snapshot latency (step 2b).
const AUTO_IDLE_MS: u64 = 200;

fn watch_req(ws: &str, idle_ms: u64) -> pb::WatchRequest {
    pb::WatchRequest {
        path: ws.to_owned(),
        idle_ms,
        max_delay_ms: idle_ms * 10,
        include_dependency_dirs: false,
        retention: None,
        include_git: false,
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

pub async fn workspace_status(c: &mut Client) -> Result<pb::WorkspaceStatus, String> {
    let st = c.status(pb::StatusRequest {}).await.map_err(err)?;
    st.into_inner()
        .workspaces
        .into_iter()
        .next()
        .ok_or_else(|| "the daemon watches no workspace".into())
}

/// Polls `Status` every 5 ms until the daemon has seen `n` changed paths: a save or restore is
/// asked for once the daemon knows of the edits, as it would be seconds later in real use.
async fn wait_pending(c: &mut Client, n: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while workspace_status(c).await?.pending_changes < n {
        if Instant::now() > deadline {
            return Err(format!("the daemon never saw the {n} changed paths"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Waits until the daemon is watching (not rescanning) on two polls in a row.
pub async fn settle(c: &mut Client) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut calm = 0;
    while calm < 2 {
        let watching = workspace_status(c).await?.state() == pb::WorkspaceState::Watching;
        calm = if watching { calm + 1 } else { 0 };
        if Instant::now() > deadline {
            return Err("the daemon did not settle".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `chkptctl --json <args>` against `d`, timed as a whole process like the peer's CLI; its
/// parsed output.
pub fn ctl(d: &Daemon, args: &[&str]) -> Result<(serde_json::Value, f64), String> {
    let mut cmd = Command::new(crate::util::bench_bin(
        "chkptctl",
        env!("CARGO_BIN_EXE_chkptctl"),
    ));
    cmd.arg("--socket").arg(&d.socket).arg("--json").args(args);
    let t0 = Instant::now();
    let out = cmd.output();
    let dt = secs(t0);
    let out = out.map_err(|e| format!("chkptctl {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "chkptctl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("chkptctl {args:?}: bad JSON ({e})"))?;
    Ok((v, dt))
}

/// A restore check for chkptd: the files and their bytes, and their executable bits too.
fn exact(checked: Result<u64, String>) -> Result<(), String> {
    match checked? {
        0 => Ok(()),
        n => Err(format!("{n} files lost their executable bit")),
    }
}

/// A manual save; `None` when nothing changed.
async fn save(c: &mut Client, ws: &str) -> Result<Option<pb::Snapshot>, String> {
    let r = c
        .save(pb::SaveRequest {
            workspace: ws.to_owned(),
            message: "bench".into(),
            pin: false,
            ..Default::default()
        })
        .await
        .map_err(err)?
        .into_inner();
    Ok(r.snapshot.filter(|_| r.created))
}

/// A `kB` field of /proc/<pid>/status, in bytes (`VmRSS`, `RssAnon`, `RssFile`).
pub fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU time of a process, in seconds, from /proc/<pid>/stat.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

fn secs(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

/// One repetition of steps 1–6 on a fresh daemon with an empty store.
pub async fn rep(run: &Run, res: &mut Results, rep: usize) {
    // No idle recompression while steps are timed (its own step measures it).
    let d = Daemon::start(&["--recompress-after", "0"]);
    let mut c = d.client().await;
    if let Err((step, e)) = steps(run, res, &d, &mut c, rep).await {
        res.add(step, Tool::Ours, Err(e));
        res.note(format!("chkptd log tail: {}", tail(&d.log())));
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}

async fn steps(
    run: &Run,
    res: &mut Results,
    d: &Daemon,
    c: &mut Client,
    rep: usize,
) -> Result<(), (Step, String)> {
    let t = run.tree.as_path();
    let ws = t.display().to_string();
    let tag = format!("ours, repetition {rep}");
    let at = |step: Step| move |e: String| (step, e);

    // 1. Cold save: the baseline snapshot `chkptctl watch` takes, into an empty store.
    let (watched, dt) = cold_save(t, d).map_err(at(Step::ColdSave))?;
    res.add(Step::ColdSave, Tool::Ours, Ok(dt));
    let files = watched["baseline"]["files"].as_u64().unwrap_or(0);
    if rep == 0 {
        res.note(format!("chkptd's baseline snapshot holds {files} files."));
    }
    let store0 = tree::du(&d.data);
    res.add(Step::StoreSize, Tool::Ours, Ok(store0 as f64));

    // 2. Incremental save right after the edits, as the peer's: `chkptctl save` as a process.
    settle(c).await.map_err(at(Step::IncrSave))?;
    tree::warm(t);
    settle(c).await.map_err(at(Step::IncrSave))?;
    tree::append_line(t, &run.picks[..5], &tag);
    let (saved, dt) = ctl(d, &["-w", &ws, "save", "-m", "bench"]).map_err(at(Step::IncrSave))?;
    let modified = saved["modified"].as_u64().unwrap_or(0);
    res.add(
        Step::IncrSave,
        Tool::Ours,
        if modified == 5 {
            Ok(dt)
        } else {
            Err(format!("the snapshot has {modified} modified paths, not 5"))
        },
    );
    let growth = tree::du(&d.data).saturating_sub(store0);
    res.add(Step::StoreGrowth, Tool::Ours, Ok(growth as f64));

    // 2 (RPC). The same through the `Save` RPC of a connected client, once the daemon has
    // seen the edits: what a hook that keeps a connection costs.
    settle(c).await.map_err(at(Step::IncrSaveRpc))?;
    tree::append_line(t, &run.picks[..5], &format!("{tag}, rpc"));
    wait_pending(c, 5).await.map_err(at(Step::IncrSaveRpc))?;
    let t0 = Instant::now();
    let snap = save(c, &ws).await;
    let dt = secs(t0);
    let snap = snap
        .and_then(|s| s.ok_or_else(|| "Save created no snapshot".to_owned()))
        .map_err(at(Step::IncrSaveRpc))?;
    res.add(
        Step::IncrSaveRpc,
        Tool::Ours,
        if snap.modified == 5 {
            Ok(dt)
        } else {
            Err(format!(
                "the snapshot has {} modified paths, not 5",
                snap.modified
            ))
        },
    );

    // 3. In-place restore of that snapshot after 5 files were modified and 5 deleted, right
    // after the edits, as the peer's: `chkptctl restore` as a process.
    let expected = tree::manifest(t);
    let originals = tree::read_files(t, &run.picks[5..15]);
    settle(c).await.map_err(at(Step::RestoreSmall))?;
    tree::modify(t, &run.picks[5..10], &tag);
    tree::delete(t, &run.picks[10..15]);
    let r = ctl(d, &["-w", &ws, "restore", &snap.id]);
    let checked = r.and_then(|(_, dt)| {
        exact(tree::check(&expected, &tree::manifest(t), &|_| false)).map(|()| dt)
    });
    if checked.is_err() {
        tree::put_back(t, &originals);
    }
    res.add(Step::RestoreSmall, Tool::Ours, checked);

    // 4. Full restore into an empty directory: `chkptctl restore --to`.
    let out = tempfile::tempdir()
        .map_err(err)
        .map_err(at(Step::RestoreFull))?;
    tree::warm(t);
    let to = out.path().display().to_string();
    let r = ctl(d, &["-w", &ws, "restore", &snap.id, "--to", &to]);
    let synced = tree::sync_secs();
    let checked = r.and_then(|(_, dt)| {
        exact(tree::check(&expected, &tree::manifest(out.path()), &|p| {
            run.skip_ours(p)
        }))
        .map(|()| dt)
    });
    res.add(
        Step::RestoreDurable,
        Tool::Ours,
        checked.clone().map(|dt| dt + synced),
    );
    res.add(Step::RestoreFull, Tool::Ours, checked);
    run.bury(&out.keep());

    // 2b. Auto snapshot latency: last write → snapshot acknowledged, minus the idle setting.
    let auto = auto_latency(run, c, &ws, &tag).await;
    for s in auto {
        res.add(Step::AutoLatency, Tool::Ours, s);
    }

    // 6. Resident memory while watching, and CPU over an idle window.
    settle(c).await.map_err(at(Step::IdleCpu))?;
    let st = c
        .status(pb::StatusRequest {})
        .await
        .map_err(err)
        .map_err(at(Step::DaemonRss))?;
    let pid = st.into_inner().pid;
    let rss = proc_status(pid, "VmRSS:").ok_or_else(|| format!("no VmRSS for pid {pid}"));
    let anon = proc_status(pid, "RssAnon:").unwrap_or(0) >> 20;
    let file = proc_status(pid, "RssFile:").unwrap_or(0) >> 20;
    if rep == 0 {
        res.note(format!(
            "chkptd's resident memory: {anon} MiB anonymous + {file} MiB file-backed (mapped packs, binary)."
        ));
    }
    res.add(Step::DaemonRss, Tool::Ours, rss.map(|b| b as f64));
    let cpu0 = cpu_secs(pid);
    tokio::time::sleep(run.idle_cpu).await;
    let cpu = cpu0.zip(cpu_secs(pid)).map(|(a, b)| b - a);
    res.add(
        Step::IdleCpu,
        Tool::Ours,
        cpu.ok_or_else(|| format!("no /proc/{pid}/stat")),
    );
    let w = workspace_status(c).await.map_err(at(Step::IdleCpu))?;
    let rescans = w.counters.map_or(0, |k| k.rescans);
    if rescans > 0 {
        res.note(format!(
            "repetition {rep}: chkptd ran {rescans} full rescans (lost events, e.g. an inotify queue overflow from reading the tree)."
        ));
    }
    Ok(())
}

/// Step 1: warms the tree and times `chkptctl watch`, which takes its baseline snapshot.
fn cold_save(t: &Path, d: &Daemon) -> Result<(serde_json::Value, f64), String> {
    tree::warm(t);
    let idle = (LONG_IDLE_MS / 1000).to_string();
    let path = t.display().to_string();
    ctl(d, &["watch", &path, "--idle", &idle, "--max-delay", &idle])
}

/// One more cold-save sample, on a fresh daemon with an empty store.
pub async fn cold_sample(run: &Run, res: &mut Results) {
    let d = Daemon::start(&["--recompress-after", "0"]);
    let sample = cold_save(&run.tree, &d).map(|(_, dt)| dt);
    res.add(Step::ColdSave, Tool::Ours, sample);
}

/// Appends to 5 files `run.auto_reps` times and times each auto snapshot from the Events stream.
async fn auto_latency(run: &Run, c: &mut Client, ws: &str, tag: &str) -> Vec<Sample> {
    let setup = async {
        c.watch(watch_req(ws, AUTO_IDLE_MS)).await.map_err(err)?;
        settle(c).await?;
        let req = pb::EventsRequest {
            workspace: ws.to_owned(),
        };
        Ok::<_, String>(c.events(req).await.map_err(err)?.into_inner())
    };
    let mut events = match setup.await {
        Ok(s) => s,
        Err(e) => return vec![Err(e)],
    };
    let mut out = Vec::new();
    for i in 0..run.auto_reps {
        tree::append_line(&run.tree, &run.picks[..5], &format!("{tag}, auto {i}"));
        let last_write = Instant::now();
        let sample = loop {
            let next = tokio::time::timeout(Duration::from_secs(30), events.message()).await;
            match next {
                Err(_) => break Err("no auto snapshot within 30 s".into()),
                Ok(Err(e)) => break Err(e.to_string()),
                Ok(Ok(None)) => break Err("the Events stream ended".into()),
                Ok(Ok(Some(pb::Event {
                    kind:
                        Some(pb::event::Kind::SnapshotTaken(pb::SnapshotTaken { snapshot: Some(s) })),
                    ..
                }))) if s.trigger() == pb::Trigger::Auto => {
                    let idle = Duration::from_millis(AUTO_IDLE_MS).as_secs_f64();
                    break Ok(secs(last_write) - idle);
                }
                Ok(Ok(Some(_))) => {}
            }
        };
        out.push(sample);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    out
}

/// A daemon whose small workspace holds `n` manual snapshots (plus the baseline), for step 7.
pub struct Lister {
    daemon: Daemon,
    ws: tempfile::TempDir,
    n: usize,
}

pub async fn lister(n: usize) -> Result<Lister, String> {
    let daemon = Daemon::start(&[]);
    let ws = tempfile::tempdir().map_err(err)?;
    for i in 0..20 {
        std::fs::write(ws.path().join(format!("f{i}.txt")), format!("file {i}\n")).map_err(err)?;
    }
    let mut client = daemon.client().await;
    let path = ws.path().display().to_string();
    client
        .watch(watch_req(&path, LONG_IDLE_MS))
        .await
        .map_err(err)?;
    for i in 0..n {
        tree::append_line(ws.path(), &[format!("f{}.txt", i % 20).into()], "touch");
        let deadline = Instant::now() + Duration::from_secs(10);
        // The save captures the edit once the daemon has seen its event; until then it is a no-op.
        while save(&mut client, &path).await?.is_none() {
            if Instant::now() > deadline {
                return Err("a save never captured the edit".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(Lister { daemon, ws, n })
}

/// Times one `chkptctl list --limit <n>`, as a process like the peer's `chkpt list`.
pub async fn time_list(l: &mut Lister) -> Sample {
    let ws = l.ws.path().display().to_string();
    let n = l.n.to_string();
    let (listed, dt) = ctl(&l.daemon, &["-w", &ws, "list", "--limit", &n])?;
    let got = listed.as_array().map_or(0, Vec::len);
    if got == l.n {
        Ok(dt)
    } else {
        Err(format!(
            "chkptctl list printed {got} snapshots, not {}",
            l.n
        ))
    }
}

/// Step 5 once the idle recompression has run: a cold save on a fresh daemon that recompresses
/// after 1 s idle, then the store's size once `status` counts nothing left to do. Notes how long
/// that took, the CPU it used, and the daemon's CPU over the idle seconds after it.
pub async fn recompressed(run: &Run, res: &mut Results) {
    let d = Daemon::start(&["--recompress-after", "1s"]);
    let sample = async {
        cold_save(&run.tree, &d)?;
        let fast = tree::du(&d.data);
        let mut c = d.client().await;
        let st = c
            .status(pb::StatusRequest {})
            .await
            .map_err(err)?
            .into_inner();
        let pid = st.pid;
        let cpu0 = cpu_secs(pid);
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(900);
        loop {
            let st = c
                .status(pb::StatusRequest {})
                .await
                .map_err(err)?
                .into_inner();
            if st.store.is_some_and(|s| s.recompress_pending_bytes == 0) {
                break;
            }
            if Instant::now() > deadline {
                return Err("the idle recompression did not finish in 15 minutes".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = secs(t0);
        let cpu = cpu0
            .zip(cpu_secs(pid))
            .map(|(a, b)| b - a)
            .unwrap_or(f64::NAN);
        let after = tree::du(&d.data);
        let idle0 = cpu_secs(pid);
        tokio::time::sleep(run.idle_cpu).await;
        let idle = idle0
            .zip(cpu_secs(pid))
            .map(|(a, b)| b - a)
            .unwrap_or(f64::NAN);
        res.note(format!(
            "Idle recompression of the cold save: store {:.1} → {:.1} MiB in {took:.1} s (from 1 s after the save), {cpu:.1} CPU-s; then {idle:.3} CPU-s over {} idle s.",
            fast as f64 / 1048576.0,
            after as f64 / 1048576.0,
            run.idle_cpu.as_secs()
        ));
        println!(
            "figures: recompression fast_bytes={fast} after_bytes={after} secs={took:.2} cpu_secs={cpu:.2} idle_cpu_secs={idle:.3}"
        );
        Ok(after as f64)
    };
    let sample = sample.await;
    if sample.is_err() {
        res.note(format!("chkptd log tail: {}", tail(&d.log())));
    }
    res.add(Step::StoreRecompressed, Tool::Ours, sample);
}
