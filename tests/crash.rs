//! Crash harness: SIGKILL `chkptd` at random moments during saves, restores, deletes (GC and
//! repack) and prunes, restart it, and check that the store verifies clean, that every
//! acknowledged snapshot restores byte-exact, and that an interrupted restore was finished.
//!
//! CI size: 20 kills. `CHKPT_FULL=1`: 200 kills. `CHKPT_SEED=N` replays a run.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use chkpt_testkit::Rng;
use tonic::transport::Channel;
use util::survival::{self, Came, Listing, listing};
use util::{Daemon, litter, ready, restore_to};

/// Writes a few KiB into a large file (made 3 MiB the first time), at its end, past its end
/// (a hole) or anywhere in it.
fn edit_chunked(rng: &mut Rng, path: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    if !path.exists() {
        fs::write(path, rng.bytes(3 << 20)).unwrap();
        return;
    }
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let at = match rng.below(3) {
        0 => len,
        1 if len < 64 << 20 => len + rng.below(4 << 20),
        _ => rng.below(len),
    };
    f.seek(SeekFrom::Start(at)).unwrap();
    let n = 1 + rng.below(16_384) as usize;
    f.write_all(&rng.bytes(n)).unwrap();
}

/// Edits a few files: rewrites, adds, deletes; sometimes a large one.
fn mutate(rng: &mut Rng, ws: &Path) {
    for _ in 0..(1 + rng.below(8)) {
        let d = ws.join(format!("d{}", rng.below(12)));
        fs::create_dir_all(&d).unwrap();
        let f = d.join(format!("f{}", rng.below(10)));
        match rng.below(6) {
            0 if f.exists() => fs::remove_file(&f).unwrap(),
            1 => fs::write(&f, rng.bytes(1 << 20)).unwrap(),
            // A large file saved as chunks, edited in place, grown or given a hole: saves that
            // share most of their chunks with the versions before.
            5 => edit_chunked(rng, &ws.join("big.db")),
            // Source-like text, which the idle recompression compresses again.
            4 => {
                let len = 1 + rng.below(300_000) as usize;
                fs::write(&f, chkpt_testkit::source_text(len, rng.next_u64())).unwrap()
            }
            _ => {
                let len = 1 + rng.below(20_000) as usize;
                fs::write(&f, rng.bytes(len)).unwrap()
            }
        }
    }
}

/// Failures so far; each is printed as it is found, so one run shows them all.
struct Failures(u64);

impl Failures {
    fn add(&mut self, line: String) {
        self.0 += 1;
        println!("{line}");
    }
}

/// A snapshot the daemon acknowledged, and the folder it holds.
struct Acked {
    id: String,
    tree: Listing,
    /// Saved on request: no retention rule may remove it (the baseline and pre-restore
    /// checkpoints are automatic, so a prune may).
    manual: bool,
}

/// What the Restore stream said at its end: the pre-restore checkpoint's id (empty when the
/// restore changed nothing).
async fn run_restore(
    mut client: ChkptClient<Channel>,
    req: pb::RestoreRequest,
) -> Result<String, tonic::Status> {
    let mut s = client.restore(req).await?.into_inner();
    let mut pre = None;
    while let Some(ev) = s.message().await? {
        if let Some(pb::restore_event::Event::Summary(sum)) = ev.event {
            pre = Some(sum.pre_restore_snapshot);
        }
    }
    pre.ok_or_else(|| tonic::Status::unknown("the restore stream ended without a summary"))
}

/// Restores `id` into a fresh folder; what differs from `expected`, if anything (at most 5).
async fn restore_differences(
    c: &mut ChkptClient<Channel>,
    ws: &Path,
    id: &str,
    expected: &Listing,
) -> Option<Vec<String>> {
    let out = tempfile::tempdir().unwrap();
    restore_to(c, ws, id, out.path()).await;
    let got = listing(out.path());
    if &got == expected {
        return None;
    }
    let show = |v: Option<&Option<Vec<u8>>>| match v {
        None => "nothing".to_owned(),
        Some(None) => "a folder".to_owned(),
        Some(Some(b)) => format!("{} bytes", b.len()),
    };
    Some(
        expected
            .iter()
            .filter(|(p, v)| got.get(*p) != Some(v))
            .map(|(p, v)| {
                format!(
                    "{}: expected {}, got {}",
                    p.display(),
                    show(Some(v)),
                    show(got.get(p))
                )
            })
            .chain(
                got.keys()
                    .filter(|p| !expected.contains_key(*p))
                    .map(|p| format!("{}: unexpected", p.display())),
            )
            .take(5)
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let full = std::env::var_os("CHKPT_FULL").is_some();
    let kills = if full { 200 } else { 20 };
    let seed = chkpt_testkit::seed();
    let mut rng = Rng::new(seed);
    let ws_dir = tempfile::tempdir().unwrap();
    let ws = ws_dir.path().canonicalize().unwrap();
    mutate(&mut rng, &ws);
    mutate(&mut rng, &ws);
    let w = ws.display().to_string();
    // Recompression 20 ms after the daemon goes idle: kills land in it too.
    let mut d = Daemon::start(&["--recompress-after", "0.02"]);
    let mut c = d.client().await;
    let baseline = util::watch_without_autosave(&mut c, &ws).await;
    let mut acked = vec![Acked {
        id: baseline.id,
        tree: listing(&ws),
        manual: false,
    }];
    let mut failures = Failures(0);
    let (mut checks, mut restores_checked, mut recovered_restores, mut checkpoints_checked) =
        (0u64, 0u64, 0u64, 0u64);
    let mut ops = BTreeMap::<&str, u64>::new();

    for round in 0..kills {
        let op = rng.below(4);
        let target = rng.below(acked.len() as u64) as usize; // never empty: re-seeded below
        let target_id = acked[target].id.clone();
        let listed_before: Vec<String> = util::snapshots(&mut c, Path::new(&w))
            .await
            .into_iter()
            .map(|s| s.id)
            .collect();
        // Saves and restores come after unsaved edits: the save must hold them, the
        // pre-restore checkpoint must keep them. The folder is read before the request goes.
        if matches!(op, 0 | 1) {
            mutate(&mut rng, &ws);
        }
        let edited = listing(&ws);
        let client = c.clone();
        let w2 = w.clone();
        let (name, task): (&str, survival::InFlight) = match op {
            0 => (
                "save",
                survival::save_in_flight(c.clone(), w2, format!("round {round}")),
            ),
            1 => {
                let req = pb::RestoreRequest {
                    workspace: w2,
                    snapshot: target_id.clone(),
                    ..Default::default()
                };
                ("restore", tokio::spawn(run_restore(client, req)))
            }
            2 if acked.len() > 2 => (
                "delete+gc",
                survival::delete_in_flight(c.clone(), w2, target_id.clone()),
            ),
            _ => ("prune+gc", survival::prune_in_flight(c.clone(), w2)),
        };
        let restore_expectation = (name == "restore").then(|| acked[target].tree.clone());
        *ops.entry(name).or_default() += 1;
        match name {
            "restore" | "delete+gc" => println!("round {round}: {name} {target_id}"),
            _ => println!("round {round}: {name}"),
        }
        tokio::time::sleep(Duration::from_millis(rng.below(150))).await;
        d.kill9();
        let outcome = task.await.unwrap();
        d.restart_after_stop();
        c = ready(&d).await;

        // A crash leaves none of chkpt's own files behind in the workspace.
        checks += 1;
        let left = litter(&ws);
        if !left.is_empty() {
            failures.add(format!(
                "round {round} ({name}): chkpt's files left in the workspace: {left:?}"
            ));
        }
        // The store opens and verifies clean.
        checks += 1;
        if let Some(problems) = survival::store_problems(&mut c).await {
            failures.add(format!("round {round} ({name}): {problems}"));
        }
        let listed = util::snapshots(&mut c, Path::new(&w)).await;
        let is_listed = |id: &str| listed.iter().any(|s| s.id == id);
        // Every acknowledged snapshot is still there, except the one a delete was asked to
        // remove and the automatic ones a prune may remove.
        checks += 1;
        acked.retain(|a| {
            if is_listed(&a.id) {
                return true;
            }
            let may_go = match name {
                "delete+gc" => a.id == target_id,
                "prune+gc" => !a.manual,
                _ => false,
            };
            if !may_go {
                failures.add(format!(
                    "round {round} ({name}): acknowledged snapshot {} is gone after the restart",
                    a.id
                ));
            }
            false
        });
        match (name, &outcome) {
            ("save", Ok(id)) => {
                // Acknowledged: it must be listed now, with what the folder held.
                checks += 1;
                if is_listed(id) {
                    acked.push(Acked {
                        id: id.clone(),
                        tree: edited.clone(),
                        manual: true,
                    });
                } else {
                    failures.add(format!(
                        "round {round}: the save of {id} was acknowledged and is not listed"
                    ));
                }
            }
            ("delete+gc", Ok(id)) => {
                checks += 1;
                if is_listed(id) {
                    failures.add(format!(
                        "round {round}: the delete of {id} was acknowledged and it is still listed"
                    ));
                }
            }
            _ => {}
        }
        // An interrupted restore is finished (or never began): no half state. Its pre-restore
        // checkpoint holds the edits the restore replaced.
        let now = listing(&ws);
        checks += 1;
        match survival::workspace_after_cut(
            restore_expectation.as_ref(),
            outcome.is_ok(),
            &edited,
            &now,
        ) {
            Ok(Came::RestoreFinished) => recovered_restores += 1,
            Ok(_) => {}
            Err(e) => failures.add(format!("round {round} ({name}): {e}")),
        }
        if let Some(expected) = restore_expectation {
            let finished = now == expected;
            let checkpoints: Vec<&pb::Snapshot> = listed
                .iter()
                .filter(|s| {
                    s.trigger() == pb::Trigger::PreRestore && !listed_before.contains(&s.id)
                })
                .collect();
            if let Ok(pre) = &outcome
                && !pre.is_empty()
                && !checkpoints.iter().any(|s| &s.id == pre)
            {
                failures.add(format!(
                    "round {round}: the restore acknowledged checkpoint {pre}, which is not listed"
                ));
            }
            checks += 1;
            if finished && edited != expected && checkpoints.is_empty() {
                failures.add(format!(
                    "round {round}: the restore replaced unsaved edits and left no pre-restore checkpoint"
                ));
            }
            for s in checkpoints {
                checks += 1;
                checkpoints_checked += 1;
                if let Some(diff) = restore_differences(&mut c, &ws, &s.id, &edited).await {
                    failures.add(format!(
                        "round {round}: the pre-restore checkpoint {} does not hold the edits it replaced: {diff:?}",
                        s.id
                    ));
                }
                acked.push(Acked {
                    id: s.id.clone(),
                    tree: edited.clone(),
                    manual: false,
                });
            }
        }
        if acked.is_empty() {
            let id = util::save(&mut c, &ws, "re-seed").await.id;
            acked.push(Acked {
                id,
                tree: listing(&ws),
                manual: true,
            });
        }
        // Every acknowledged snapshot still restores byte-exact.
        for a in &acked {
            checks += 1;
            restores_checked += 1;
            if let Some(diff) = restore_differences(&mut c, &ws, &a.id, &a.tree).await {
                failures.add(format!(
                    "round {round}: acknowledged snapshot {} does not restore exactly: {diff:?}",
                    a.id
                ));
            }
        }
    }
    println!(
        "figures: crash harness seed={seed} kills={kills} ops={ops:?} checks={checks} restores_checked={restores_checked} checkpoints_checked={checkpoints_checked} interrupted_restores_finished={recovered_restores} failures={}",
        failures.0
    );
    assert_eq!(
        failures.0,
        0,
        "see the lines above; replay with CHKPT_SEED={seed}\n{}",
        d.log()
    );
}
