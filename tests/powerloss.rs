//! Power-loss harness: chkptd's data directory (and, in the second mode, the workspace too) on
//! the lazy file system (`lazyfs/`), which keeps in memory what was not fsynced. At a random
//! moment of a save, an in-place restore, a `restore --to`, a delete (garbage collection,
//! repacking), a prune, a save that compacts the warm index or the idle recompression that
//! follows a save (it runs 20 ms after every operation here), chkptd is SIGKILLed and the
//! power cut: whatever was not durable is lost or torn (a seeded choice per page, per file
//! length and per directory). Then chkptd starts again and:
//! - the store opens and verifies clean;
//! - every snapshot whose Save was acknowledged before the cut restores byte-exact, and every
//!   acknowledged delete stays deleted;
//! - a restore acknowledged before the cut is on disk exactly; an interrupted one is finished
//!   or never began, never half; and no other operation changed the workspace;
//! - none of chkpt's temporary files is left in the workspace (nor in a `--to` target).
//!
//! The user's own edits are made durable (each file and its directory fsynced, as an editor
//! does): only what chkpt itself wrote is at stake.
//!
//! CI size: 10 cuts per mode. `CHKPT_FULL=1`: 120 per mode. `CHKPT_SEED=N` replays a run.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod util;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chkpt_lazyfs::{Cut, LazyMount};
use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use chkpt_testkit::Rng;
use tonic::transport::Channel;
use util::survival::{self, Came, Listing, difference, listing};
use util::{Daemon, litter, ready, restore_to};

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

/// The user's edits, durable as an editor makes them (file, then directory, fsynced).
struct User {
    durable: bool,
}

impl User {
    fn write(&self, path: &Path, data: &[u8]) {
        let mut f = File::create(path).unwrap();
        f.write_all(data).unwrap();
        if self.durable {
            f.sync_all().unwrap();
            sync_dir(path.parent().unwrap());
        }
    }

    fn remove(&self, path: &Path) {
        fs::remove_file(path).unwrap();
        if self.durable {
            sync_dir(path.parent().unwrap());
        }
    }

    fn mkdir(&self, path: &Path) {
        if !path.exists() {
            fs::create_dir(path).unwrap();
            if self.durable {
                sync_dir(path.parent().unwrap());
            }
        }
    }

    /// Edits a few files: rewrites, adds, deletes; sometimes a large one.
    fn mutate(&self, rng: &mut Rng, ws: &Path) {
        for _ in 0..(1 + rng.below(6)) {
            let d = ws.join(format!("d{}", rng.below(8)));
            self.mkdir(&d);
            let f = d.join(format!("f{}", rng.below(8)));
            match rng.below(6) {
                0 if f.exists() => self.remove(&f),
                1 => self.write(&f, &rng.bytes(300_000)),
                _ => {
                    let len = 1 + rng.below(20_000) as usize;
                    self.write(&f, &rng.bytes(len))
                }
            }
        }
    }

    /// Writes a few files of source-like text (which the idle recompression compresses again).
    fn write_text(&self, rng: &mut Rng, ws: &Path) {
        let d = ws.join("text");
        self.mkdir(&d);
        for _ in 0..(2 + rng.below(4)) {
            let len = 50_000 + rng.below(350_000) as usize;
            let f = d.join(format!("t{}.rs", rng.below(6)));
            self.write(&f, &chkpt_testkit::source_text(len, rng.next_u64()));
        }
    }

    /// Creates (or removes) 1,100 small files at once: the save that follows has more
    /// changes than the warm index's journal takes, and writes a new base.
    fn bulk(&self, ws: &Path, round: usize) {
        let dir = ws.join("bulk");
        if dir.exists() {
            for e in fs::read_dir(&dir).unwrap() {
                fs::remove_file(e.unwrap().path()).unwrap();
            }
            fs::remove_dir(&dir).unwrap();
            if self.durable {
                sync_dir(ws);
            }
            return;
        }
        self.mkdir(&dir);
        for i in 0..1100 {
            let mut f = File::create(dir.join(format!("b{i}"))).unwrap();
            f.write_all(format!("{round} {i}").as_bytes()).unwrap();
            if self.durable {
                f.sync_all().unwrap();
            }
        }
        if self.durable {
            sync_dir(&dir);
        }
    }
}

/// A lazy file system with chkptd's data directory on it (and the workspace, `on_fs`).
/// Fields drop in order: the daemon goes before the file system is unmounted.
struct Rig {
    d: Daemon,
    fs: LazyMount,
    ws: PathBuf,
    out: PathBuf,
    _ws_dir: Option<tempfile::TempDir>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(on_fs: bool) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let fs = LazyMount::mount(&dir.path().join("backing"), &dir.path().join("mnt")).unwrap();
        let (ws, ws_dir) = if on_fs {
            let ws = fs.path().join("ws");
            fs::create_dir(&ws).unwrap();
            (ws, None)
        } else {
            let d = tempfile::tempdir().unwrap();
            (d.path().canonicalize().unwrap(), Some(d))
        };
        let out = fs.path().join("out");
        fs::create_dir(&out).unwrap();
        // The test's own folders exist before chkpt does anything: durable.
        fs.sync_all();
        // Recompression 20 ms after the daemon goes idle: it runs after most operations, and
        // the "save, then recompression" rounds cut the power while it does.
        let d = Daemon::start_with_data(&fs.path().join("data"), &["--recompress-after", "0.02"]);
        Rig {
            d,
            fs,
            ws,
            out,
            _ws_dir: ws_dir,
            _dir: dir,
        }
    }

    /// SIGKILL, power cut, start again.
    async fn cut(&mut self, how: Cut) -> chkpt_lazyfs::CutReport {
        self.d.kill9();
        let report = self.fs.power_cut(how).unwrap();
        self.d.restart_after_stop();
        report
    }
}

async fn watch(c: &mut ChkptClient<Channel>, ws: &Path) -> String {
    util::watch_without_autosave(c, ws).await.id
}

/// Snapshots whose Save returned before the power cut are there after it, in a data directory
/// the daemon created (its folders' names and the catalog's file, with its new pages and
/// header, must all be durable by then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_saves_survive_a_power_cut() {
    let mut rig = Rig::new(false);
    let user = User { durable: false };
    let ws = rig.ws.clone();
    let mut rng = Rng::new(7);
    user.mutate(&mut rng, &ws);
    let mut c = rig.d.client().await;
    let mut acked = vec![(watch(&mut c, &ws).await, listing(&ws))];
    // Catalog values of many pages each (a warm-index base of 1,100 paths and more).
    user.bulk(&ws, 0);
    for round in 0..3 {
        user.mutate(&mut rng, &ws);
        acked.push((
            util::save(&mut c, &ws, &format!("s{round}")).await.id,
            listing(&ws),
        ));
    }
    rig.cut(Cut::LoseAll).await;
    let mut c = ready(&rig.d).await;
    util::assert_store_verifies(&mut c).await;
    for (id, expected) in &acked {
        let out = tempfile::tempdir().unwrap();
        restore_to(&mut c, &ws, id, out.path()).await;
        let got = listing(out.path());
        assert!(
            &got == expected,
            "acknowledged snapshot {id}: {:?}",
            difference(expected, &got)
        );
    }
}

/// An in-place restore that returned before the power cut is on disk after it: its files and
/// their directory entries were durable before it was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_restore_survives_a_power_cut() {
    let mut rig = Rig::new(true);
    let user = User { durable: true };
    let ws = rig.ws.clone();
    user.mkdir(&ws.join("src"));
    user.write(&ws.join("src/a"), b"version one of a");
    user.write(&ws.join("src/b"), &vec![b'b'; 50_000]);
    user.write(&ws.join("top"), b"top one");
    let mut c = rig.d.client().await;
    let first = watch(&mut c, &ws).await;
    let saved = listing(&ws);
    user.write(&ws.join("src/a"), b"version two of a, longer");
    user.remove(&ws.join("src/b"));
    user.write(&ws.join("src/new"), b"new");
    user.write(&ws.join("top"), b"top two");
    util::restore_in_place(&mut c, &ws, &first).await.unwrap();
    assert!(listing(&ws) == saved, "restored before the cut");
    rig.cut(Cut::LoseAll).await;
    let mut c = ready(&rig.d).await;
    let got = listing(&ws);
    assert!(
        got == saved,
        "an acknowledged restore was lost with the power: {:?}",
        difference(&saved, &got)
    );
    assert!(litter(&ws).is_empty(), "{:?}", litter(&ws));
    assert!(util::verify(&mut c).await.ok);
}

/// A restore that ended is not applied again after a power cut: its journal's removal was
/// durable before it was acknowledged (else the next start would restore the snapshot once
/// more, over the user's later edits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_restore_is_not_applied_again_after_a_power_cut() {
    let mut rig = Rig::new(true);
    let user = User { durable: true };
    let ws = rig.ws.clone();
    user.write(&ws.join("a"), b"one");
    let mut c = rig.d.client().await;
    let first = watch(&mut c, &ws).await;
    user.write(&ws.join("a"), b"two");
    util::restore_in_place(&mut c, &ws, &first).await.unwrap();
    // The user goes on working after the restore, and saves it.
    user.write(&ws.join("a"), b"three, after the restore");
    let edited = listing(&ws);
    rig.cut(Cut::LoseAll).await;
    ready(&rig.d).await;
    let got = listing(&ws);
    assert!(
        got == edited,
        "the workspace changed at the start after the power cut: {:?}",
        difference(&edited, &got)
    );
}

/// The same for `restore --to` into a new directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_restore_to_survives_a_power_cut() {
    let mut rig = Rig::new(true);
    let user = User { durable: true };
    let ws = rig.ws.clone();
    user.mkdir(&ws.join("src"));
    user.write(&ws.join("src/a"), b"a");
    user.write(&ws.join("b"), &vec![b'b'; 70_000]);
    let mut c = rig.d.client().await;
    let first = watch(&mut c, &ws).await;
    let saved = listing(&ws);
    let target = rig.out.join("copy");
    restore_to(&mut c, &ws, &first, &target).await;
    assert!(listing(&target) == saved);
    rig.cut(Cut::LoseAll).await;
    ready(&rig.d).await;
    let got = if target.exists() {
        util::listing(&target)
    } else {
        Listing::new()
    };
    assert!(
        got == saved,
        "an acknowledged restore --to was lost with the power: {:?}",
        difference(&saved, &got)
    );
}

#[derive(Default)]
struct Figures {
    cuts: BTreeMap<&'static str, u64>,
    checks: u64,
    failures: u64,
    restores_finished: u64,
    restores_not_begun: u64,
    to_left_staging: u64,
    pages_lost: u64,
    pages_kept: u64,
    dirs_reverted: u64,
    dirs_kept: u64,
    /// Cuts that came while a recompression was running (its start logged, not its end).
    cut_mid_recompression: u64,
}

async fn run_mode(on_fs: bool, cuts: usize, full: bool, rng: &mut Rng, fig: &mut Figures) {
    let mode = if on_fs {
        "workspace on the lazy fs"
    } else {
        "data on the lazy fs"
    };
    let mode_started = Instant::now();
    let mut rig = Rig::new(on_fs);
    let user = User { durable: on_fs };
    let ws = rig.ws.clone();
    user.mutate(rng, &ws);
    user.mutate(rng, &ws);
    let w = ws.display().to_string();
    let mut c = rig.d.client().await;
    let baseline = watch(&mut c, &ws).await;
    let mut acked: Vec<(String, Listing)> = vec![(baseline, listing(&ws))];
    let mut deleted: Vec<String> = Vec::new();

    for round in 0..cuts {
        // Index compactions write 1,100 files: in a CI-sized run, once, in the mode where the
        // workspace is not on the (slow) lazy file system.
        let op = match rng.below(10) {
            _ if !full && !on_fs && round == 1 => 5,
            _ if !full && round == 3 => 6,
            9 if full => 5,
            0..=2 | 9 => 0,
            3 | 4 => 1,
            5 => 2,
            6 => 3,
            8 => 6,
            _ => 4,
        };
        let target = rng.below(acked.len() as u64) as usize;
        let mut client = c.clone();
        let w2 = w.clone();
        let to_dir = rig.out.join(format!("r{round}"));
        let (name, task): (&'static str, survival::InFlight) = match op {
            0 | 5 => {
                if op == 5 {
                    user.bulk(&ws, round);
                } else {
                    user.mutate(rng, &ws);
                }
                (
                    if op == 5 {
                        "save (index compaction)"
                    } else {
                        "save"
                    },
                    survival::save_in_flight(client, w2, format!("round {round}")),
                )
            }
            1 => {
                user.mutate(rng, &ws); // unsaved edits the pre-restore checkpoint must keep
                let snap = acked[target].0.clone();
                let ws2 = ws.clone();
                (
                    "restore",
                    tokio::spawn(
                        async move { util::restore_in_place(&mut client, &ws2, &snap).await },
                    ),
                )
            }
            2 => {
                let snap = acked[target].0.clone();
                let req = pb::RestoreRequest {
                    workspace: w2,
                    snapshot: snap,
                    to: to_dir.display().to_string(),
                    ..Default::default()
                };
                (
                    "restore --to",
                    tokio::spawn(async move {
                        let mut s = client.restore(req).await?.into_inner();
                        while s.message().await?.is_some() {}
                        Ok(String::new())
                    }),
                )
            }
            6 => {
                user.write_text(rng, &ws);
                (
                    "save, then recompression",
                    survival::save_in_flight(client, w2, format!("round {round}")),
                )
            }
            3 if acked.len() > 2 => (
                "delete+gc",
                survival::delete_in_flight(client, w2, acked[target].0.clone()),
            ),
            _ => ("prune+gc", survival::prune_in_flight(client, w2)),
        };
        let round_started = Instant::now();
        let log_from = rig.d.log().len();
        let edited = listing(&ws);
        let expected = acked[target].1.clone();
        *fig.cuts.entry(name).or_default() += 1;
        // Mostly within the operation (they take 5–100 ms here), sometimes after it.
        let mut delay = match rng.below(4) {
            0 => rng.below(4),
            1 | 2 => rng.below(40),
            _ => rng.below(150),
        };
        if op == 6 {
            // The cut comes after the save's answer, while the recompression that follows it
            // runs (it starts 20 ms after, and takes tens of milliseconds here).
            while !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            delay = 15 + rng.below(80);
        }
        tokio::time::sleep(Duration::from_millis(delay)).await;
        rig.d.kill9();
        let outcome = task.await.unwrap();
        let log = rig.d.log();
        let since = log.get(log_from..).unwrap_or("");
        if since.matches("recompressing at idle").count()
            > since.matches("recompressed at idle").count()
        {
            fig.cut_mid_recompression += 1;
        }
        let report = rig.fs.power_cut(Cut::Torn(rng.next_u64())).unwrap();
        fig.pages_lost += report.pages_lost;
        fig.pages_kept += report.pages_kept;
        fig.dirs_reverted += report.dirs_reverted;
        fig.dirs_kept += report.dirs_kept;
        rig.d.restart_after_stop();
        c = ready(&rig.d).await;
        println!(
            "{mode}, round {round}: {name} (target {target}) {} after {delay} ms, back in {} ms; cut: {report:?}",
            if outcome.is_ok() {
                "acknowledged"
            } else {
                "interrupted"
            },
            round_started.elapsed().as_millis()
        );
        let mut fail = |what: String| {
            fig.failures += 1;
            println!("{mode}, round {round} ({name}): {what}");
        };

        match (name, &outcome) {
            ("save" | "save (index compaction)" | "save, then recompression", Ok(id)) => {
                acked.push((id.clone(), edited.clone()))
            }
            ("delete+gc", Ok(id)) => {
                acked.retain(|(a, _)| a != id);
                deleted.push(id.clone());
            }
            _ => {}
        }
        fig.checks += 1;
        let left = litter(&ws);
        if !left.is_empty() {
            fail(format!("chkpt's files left in the workspace: {left:?}"));
        }
        fig.checks += 1;
        if let Some(problems) = survival::store_problems(&mut c).await {
            fail(problems);
        }
        let listed: Vec<String> = util::snapshots(&mut c, &ws)
            .await
            .into_iter()
            .map(|s| s.id)
            .collect();
        fig.checks += 1;
        if let Some(back) = deleted.iter().find(|d| listed.contains(d)) {
            fail(format!("the acknowledged delete of {back} came back"));
        }
        // Pruned by policy (manual snapshots never are): no longer tracked.
        acked.retain(|(id, _)| listed.contains(id));
        // The workspace: restored exactly, or as the user left it.
        let now = listing(&ws);
        fig.checks += 1;
        let restoring = (name == "restore").then_some(&expected);
        match survival::workspace_after_cut(restoring, outcome.is_ok(), &edited, &now) {
            Ok(Came::RestoreFinished) => fig.restores_finished += 1,
            Ok(Came::RestoreNotBegun) => fig.restores_not_begun += 1,
            Ok(_) => {}
            Err(e) => fail(e),
        }
        if name == "restore --to" {
            fig.checks += 1;
            let got = if to_dir.exists() {
                util::listing(&to_dir)
            } else {
                Listing::new()
            };
            match &outcome {
                Ok(_) if got != expected => fail(format!(
                    "an acknowledged restore --to is not on disk: {:?}",
                    difference(&expected, &got)
                )),
                Err(_) if !got.is_empty() && got != expected => fig.to_left_staging += 1,
                _ => {}
            }
        }
        if acked.is_empty() {
            let id = util::save(&mut c, &ws, "re-seed").await.id;
            acked.push((id, listing(&ws)));
        }
        // Every acknowledged snapshot still restores byte-exact (the newest, and two others).
        let mut sample = vec![acked.len() - 1];
        sample.push(rng.below(acked.len() as u64) as usize);
        sample.push(rng.below(acked.len() as u64) as usize);
        sample.sort_unstable();
        sample.dedup();
        for i in sample {
            let (id, expected) = &acked[i];
            let out = tempfile::tempdir().unwrap();
            restore_to(&mut c, &ws, id, out.path()).await;
            fig.checks += 1;
            let got = listing(out.path());
            if &got != expected {
                fail(format!(
                    "acknowledged snapshot {id} does not restore exactly: {:?}",
                    difference(expected, &got)
                ));
            }
        }
    }
    println!("{mode}: {:.1} s", mode_started.elapsed().as_secs_f64());
    if fig.failures > 0 {
        println!("{mode}: chkptd's log:\n{}", rig.d.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_at_random_moments_lose_nothing_acknowledged() {
    let full = std::env::var_os("CHKPT_FULL").is_some();
    let per_mode = if full { 120 } else { 10 };
    let seed = chkpt_testkit::seed();
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut fig = Figures::default();
    run_mode(false, per_mode, full, &mut rng, &mut fig).await;
    run_mode(true, per_mode, full, &mut rng, &mut fig).await;
    let total: u64 = fig.cuts.values().sum();
    println!(
        "figures: power-loss harness seed={seed} cuts={total} per_op={:?} checks={} interrupted_restores_finished={} interrupted_restores_not_begun={} interrupted_restores_to_partial={} cuts_mid_recompression={} pages_lost={} pages_kept={} dirs_reverted={} dirs_kept={} failures={} secs={:.1}",
        fig.cuts,
        fig.checks,
        fig.restores_finished,
        fig.restores_not_begun,
        fig.to_left_staging,
        fig.cut_mid_recompression,
        fig.pages_lost,
        fig.pages_kept,
        fig.dirs_reverted,
        fig.dirs_kept,
        fig.failures,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        fig.failures, 0,
        "see the lines above; replay with CHKPT_SEED={seed}"
    );
}
