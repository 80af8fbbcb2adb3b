//! Retention through the real daemon: the daemon-wide defaults reach new workspaces and are
//! applied after auto snapshots (also after a restart), a workspace's budget reaches `Prune`,
//! and `chkptctl prune --dry-run` shows each decision and what the prune would free, then
//! frees exactly that. The rules themselves are tested on synthetic histories in
//! `daemon/tests/retention.rs`.

#![allow(clippy::unwrap_used)]

mod util;

use std::fs;
use std::path::Path;
use std::process::Command;

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use chkpt_testkit::noise;
use serde_json::Value;
use tonic::transport::Channel;
use util::{Daemon, restore_to, snapshots, wait_for};

type Client = ChkptClient<Channel>;

/// Writes `data.bin` and waits for the auto snapshot that holds it (the newest, automatic,
/// and not the one before).
async fn auto_snapshot(c: &Client, ws: &Path, seed: u64) -> pb::Snapshot {
    let mut c0 = c.clone();
    let before = snapshots(&mut c0, ws).await.first().map(|s| s.id.clone());
    fs::write(ws.join("data.bin"), noise(100_000, seed)).unwrap();
    let ws = ws.to_path_buf();
    wait_for(60, "an auto snapshot", || {
        let mut c = c.clone();
        let ws = ws.clone();
        let before = before.clone();
        async move {
            let newest = snapshots(&mut c, &ws).await.into_iter().next()?;
            (Some(&newest.id) != before.as_ref()
                && newest.trigger() == pb::Trigger::Auto
                && newest.bytes == 100_000)
                .then_some(newest)
        }
    })
    .await
}

async fn watch(
    c: &mut Client,
    ws: &Path,
    retention: Option<pb::RetentionPolicy>,
) -> pb::WatchResponse {
    c.watch(pb::WatchRequest {
        path: ws.display().to_string(),
        idle_ms: 300,
        max_delay_ms: 5000,
        include_dependency_dirs: false,
        retention,
        include_git: false,
    })
    .await
    .unwrap()
    .into_inner()
}

fn ids(snaps: &[pb::Snapshot]) -> Vec<String> {
    snaps.iter().map(|s| s.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_wide_defaults_reach_new_workspaces_and_are_applied_after_auto_snapshots() {
    let mut d = Daemon::start(&["--keep-last", "2"]);
    let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ws = dir.path().canonicalize().unwrap();
    let mut c = d.client().await;
    let w = watch(&mut c, &ws, None).await;
    let only_keep_last_2 = pb::RetentionPolicy {
        keep_last: 2,
        ..Default::default()
    };
    assert_eq!(w.workspace.unwrap().retention, Some(only_keep_last_2));
    // A workspace's own policy wins over the default.
    let own = pb::RetentionPolicy {
        keep_daily: 5,
        ..Default::default()
    };
    let w = watch(&mut c, other.path(), Some(own)).await;
    assert_eq!(w.workspace.unwrap().retention, Some(own));

    // Retention runs after the first auto snapshot (baseline + 1: both kept), then at most
    // every ten minutes: the next two stay for now.
    for seed in 1..=3 {
        auto_snapshot(&c, &ws, seed).await;
    }
    assert_eq!(snapshots(&mut c, &ws).await.len(), 4);
    // A restarted daemon applies the default after its next auto snapshot.
    d.restart();
    let c = d.client().await;
    let newest = auto_snapshot(&c, &ws, 4).await;
    let kept = wait_for(60, "retention to keep the newest two", || {
        let mut c = c.clone();
        let ws = ws.clone();
        async move {
            let s = snapshots(&mut c, &ws).await;
            (s.len() == 2).then_some(s)
        }
    })
    .await;
    assert_eq!(kept[0].id, newest.id);
    let mut c = c.clone();
    let out = tempfile::tempdir().unwrap();
    restore_to(&mut c, &ws, &newest.id, out.path()).await;
    assert_eq!(
        fs::read(out.path().join("data.bin")).unwrap(),
        noise(100_000, 4)
    );
    util::assert_store_verifies(&mut c).await;
}

/// A workspace's budget, smaller than its manual and pinned snapshots: the first auto
/// snapshot's retention drops the baseline, and a `Prune` that names no rule applies the
/// workspace's policy, budget included: every automatic snapshot but the newest would go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_budget_reaches_retention_and_prune() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().canonicalize().unwrap();
    let w = ws.display().to_string();
    let mut c = d.client().await;
    let policy = pb::RetentionPolicy {
        keep_within_secs: 3600,
        max_store_bytes: 50_000,
        ..Default::default()
    };
    let baseline = watch(&mut c, &ws, Some(policy)).await.baseline.unwrap();
    let manual_save = |pin: bool, seed: u64| {
        let mut c = c.clone();
        let w = w.clone();
        let ws = ws.clone();
        async move {
            fs::write(ws.join("data.bin"), noise(100_000, seed)).unwrap();
            c.save(pb::SaveRequest {
                workspace: w,
                message: format!("seed {seed}"),
                pin,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap()
        }
    };
    let manual = manual_save(false, 10).await;
    let pinned = manual_save(true, 11).await;
    assert!(manual.new_bytes > 50_000 && pinned.new_bytes > 50_000);
    let a1 = auto_snapshot(&c, &ws, 1).await;
    let listed = wait_for(60, "the baseline to go", || {
        let mut c = c.clone();
        let ws = ws.clone();
        async move {
            let s = snapshots(&mut c, &ws).await;
            (s.len() == 3).then_some(s)
        }
    })
    .await;
    assert_eq!(
        ids(&listed),
        [a1.id.clone(), pinned.id.clone(), manual.id.clone()]
    );
    assert!(!ids(&listed).contains(&baseline.id));
    let a2 = auto_snapshot(&c, &ws, 2).await;
    let a3 = auto_snapshot(&c, &ws, 3).await;
    let pruned = c
        .prune(pb::PruneRequest {
            workspace: w.clone(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(String, bool, String)> = pruned
        .decisions
        .iter()
        .map(|d| {
            (
                d.snapshot.as_ref().unwrap().id.clone(),
                d.keep,
                d.reason.clone(),
            )
        })
        .collect();
    let over = "over the store budget of 50000 bytes".to_owned();
    assert_eq!(
        got,
        vec![
            (a3.id, true, "keep-within 3600s".to_owned()),
            (a2.id, false, over.clone()),
            (a1.id, false, over),
            (pinned.id, true, "pinned".to_owned()),
            (manual.id, true, "manual snapshot".to_owned()),
        ]
    );
    assert_eq!(pruned.removed, 0);
    assert_eq!(
        snapshots(&mut c, &ws).await.len(),
        5,
        "a dry run removes nothing"
    );
}

/// Runs `chkptctl --socket … -w <ws> args…`; stdout, and it must succeed.
fn chkptctl(d: &Daemon, ws: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_chkptctl"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("-w")
        .arg(ws)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chkptctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_dry_run_shows_each_decision_and_what_it_would_free_then_frees_that() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().canonicalize().unwrap();
    let mut c = d.client().await;
    let baseline = watch(&mut c, &ws, None).await.baseline.unwrap();
    let autos = [
        auto_snapshot(&c, &ws, 1).await,
        auto_snapshot(&c, &ws, 2).await,
        auto_snapshot(&c, &ws, 3).await,
    ];
    let manual = chkptctl(&d, &ws, &["save", "-m", "by hand", "--allow-empty"])
        .trim()
        .to_owned();
    let before = ids(&snapshots(&mut c, &ws).await);
    assert_eq!(before.len(), 5);

    let text = chkptctl(&d, &ws, &["prune", "--keep-last", "2", "--dry-run"]);
    let row = |id: &str| {
        text.lines()
            .find(|l| l.contains(&id[..8]))
            .unwrap_or_else(|| panic!("no row for {id}:\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(text.starts_with("ACTION"), "{text}");
    assert!(
        row(&manual).starts_with("keep") && row(&manual).ends_with("manual manual snapshot"),
        "{text}"
    );
    assert!(
        row(&autos[2].id).starts_with("keep") && row(&autos[2].id).ends_with("auto keep-last 2"),
        "{text}"
    );
    for id in [&autos[1].id, &autos[0].id, &baseline.id] {
        assert!(
            row(id).starts_with("remove") && row(id).ends_with("auto no rule keeps it"),
            "{text}"
        );
    }
    let json: Value = serde_json::from_str(&chkptctl(
        &d,
        &ws,
        &["--json", "prune", "--keep-last", "2", "--dry-run"],
    ))
    .unwrap();
    assert_eq!(json["dry_run"], true);
    assert_eq!(json["removed"], 0);
    let decided: Vec<(String, bool)> = json["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["snapshot"]["id"].as_str().unwrap().to_owned(),
                d["keep"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        decided,
        vec![
            (manual.clone(), true),
            (autos[2].id.clone(), true),
            (autos[1].id.clone(), false),
            (autos[0].id.clone(), false),
            (baseline.id.clone(), false),
        ]
    );
    let would_free = json["reclaimed_bytes"].as_u64().unwrap();
    // Two snapshots' own 100 kB of noise go with them (the baseline held no data), but for
    // the partly live block at either end of that run of dead records, which is freed in
    // place.
    assert!(would_free >= 200_000 - 8192, "{json}");
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with("would remove 3 snapshots, freeing ") && last.ends_with(" (dry run)"),
        "{text}"
    );
    assert!(!last.contains("freeing 0 B"), "{text}");
    assert_eq!(
        ids(&snapshots(&mut c, &ws).await),
        before,
        "a dry run removes nothing"
    );

    let json: Value =
        serde_json::from_str(&chkptctl(&d, &ws, &["--json", "prune", "--keep-last", "2"])).unwrap();
    assert_eq!(json["removed"], 3);
    assert_eq!(
        json["reclaimed_bytes"].as_u64().unwrap(),
        would_free,
        "{json}"
    );
    assert_eq!(
        ids(&snapshots(&mut c, &ws).await),
        [manual, autos[2].id.clone()]
    );
}
