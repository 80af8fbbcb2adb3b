//! The remote section (issue 21): replication of the corpus to a local one-node Garage. The
//! cold snapshot's upload throughput (from `remote add` to everything replicated), the time
//! from an auto snapshot of a 5-file change to replicated (target ≤ 2 s), and a restore of the
//! cold snapshot from the remote on a fresh data directory beside a local restore of it, both
//! checked against the corpus. The smoke corpus in CI, the kernel tree with `--full`. Without
//! Garage (`.ci/run` builds it) the section is not measured, and the run fails.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::Run;
use crate::ours::ctl;
use crate::tree;
use crate::util::Daemon;
use crate::util::garage::{self, Garage, S3};

/// What the section measured.
#[derive(Debug)]
pub struct Section {
    /// Its table (markdown).
    pub table: String,
    /// A step failed.
    pub failed: bool,
    /// What could not be measured, for the list above the main table.
    pub missing: Option<String>,
}

const TARGET_MS: u128 = 2000;

/// Runs the section.
pub fn section(run: &Run, scratch: &Path) -> Section {
    let mut table = String::from(
        "### Replication to a local Garage (issue 21)\n\n| step | figure |\n|---|---|\n",
    );
    if garage::find_bin().is_none() {
        let why = format!(
            "Garage {} is not installed (`.ci/run` builds it): the remote section",
            garage::VERSION
        );
        table.push_str(&format!("| not measured | **{why}** |\n"));
        return Section {
            table,
            failed: false,
            missing: Some(why),
        };
    }
    let rows = measure(run, scratch);
    let failed = rows.is_err();
    match rows {
        Ok(rows) => {
            for (step, fig) in rows {
                table.push_str(&format!("| {step} | {fig} |\n"));
            }
        }
        Err(e) => table.push_str(&format!("| failed | **{e}** |\n")),
    }
    Section {
        table,
        failed,
        missing: None,
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// The ids of the corpus's snapshots.
fn ids(d: &Daemon, dir: &str) -> Result<Vec<String>, String> {
    let (list, _) = ctl(d, &["-w", dir, "list"])?;
    Ok(list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

fn measure(run: &Run, scratch: &Path) -> Result<Vec<(String, String)>, String> {
    let g = Garage::start();
    let d = Daemon::start(&[]);
    let dir = run.tree.display().to_string();
    let expected = tree::manifest(&run.tree);
    let (_, bytes) = tree::warm(&run.tree);
    ctl(&d, &["watch", &dir, "--idle", "300ms", "--max-delay", "2s"])?;
    let cold = ids(&d, &dir)?
        .first()
        .cloned()
        .ok_or("the cold snapshot is not listed")?;
    let secrets = scratch.join("remote-secrets");
    std::fs::create_dir_all(&secrets).map_err(|e| e.to_string())?;
    let creds = g.credentials(&secrets, None);
    let key = secrets.join("key");
    let args = crate::util::remote::add_args(&g, "bench", "bench", &creds, &key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let add = |d: &Daemon| ctl(d, &args);
    let t = Instant::now();
    add(&d)?;
    let (state, _) = ctl(&d, &["remote", "sync", "bench", "--timeout", "60m"])?;
    let upload = t.elapsed().as_secs_f64();
    let sent = state["uploaded_bytes"].as_u64().unwrap_or(0);

    // A 5-file change: from its auto snapshot appearing to everything replicated.
    let before = ids(&d, &dir)?;
    let saved = tree::read_files(&run.tree, &run.picks[..5]);
    tree::modify(&run.tree, &run.picks[..5], "remote");
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen = loop {
        if ids(&d, &dir)?.iter().any(|id| !before.contains(id)) {
            break Instant::now();
        }
        if Instant::now() > deadline {
            tree::put_back(&run.tree, &saved);
            return Err("no auto snapshot of the 5-file change in 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let replicated = loop {
        let (s, _) = ctl(&d, &["remote", "status", "bench"])?;
        let s = &s["remotes"][0];
        if s["pending_snapshots"] == 0 && s["busy"] == false {
            break seen.elapsed();
        }
        if Instant::now() > deadline {
            tree::put_back(&run.tree, &saved);
            return Err(format!(
                "the auto snapshot was not replicated in 120 s: {s}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    tree::put_back(&run.tree, &saved);

    // The cold snapshot, from the remote on a fresh data directory and from the local store.
    let fresh = Daemon::start(&[]);
    add(&fresh)?;
    let remote_to = scratch.join("remote-restore");
    let (_, remote_s) = ctl(
        &fresh,
        &[
            "remote",
            "restore",
            "bench",
            &cold,
            "--to",
            &remote_to.display().to_string(),
        ],
    )?;
    let skip = |p: &Path| run.skip_ours(p);
    let remote_check = tree::check(&expected, &tree::manifest(&remote_to), &skip);
    let local_to = scratch.join("local-restore");
    let (_, local_s) = ctl(
        &d,
        &[
            "-w",
            &dir,
            "restore",
            &cold,
            "--to",
            &local_to.display().to_string(),
        ],
    )?;
    let local_check = tree::check(&expected, &tree::manifest(&local_to), &skip);
    run.bury(&remote_to);
    run.bury(&local_to);
    for (what, check) in [("remote", remote_check), ("local", local_check)] {
        match check {
            Ok(0) => {}
            Ok(n) => return Err(format!("the {what} restore lost {n} executable bits")),
            Err(e) => return Err(format!("the {what} restore differs: {e}")),
        }
    }
    let ms = replicated.as_millis();
    Ok(vec![
        (
            "cold snapshot to replicated (files, sent encrypted, time)".into(),
            format!(
                "{:.1} MiB, {:.1} MiB sent in {upload:.2} s: **{:.1} MiB/s** of files, {:.1} MiB/s sent",
                mib(bytes),
                mib(sent),
                mib(bytes) / upload,
                mib(sent) / upload
            ),
        ),
        (
            "auto snapshot of a 5-file change to replicated (target ≤ 2 s)".into(),
            format!(
                "**{ms} ms** ({})",
                if ms <= TARGET_MS { "met" } else { "missed" }
            ),
        ),
        (
            "restore of the cold snapshot: from the remote on a fresh data dir / local".into(),
            format!(
                "{remote_s:.2} s / {local_s:.2} s ({:.1}×)",
                remote_s / local_s.max(1e-9)
            ),
        ),
    ])
}
