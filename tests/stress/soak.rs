//! Capture fidelity soak: a replayable random edit script; every settled snapshot restores
//! to exactly the folder it was taken of.

use super::*;

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
            fs::write(root.join(&p), text(rng, 3000)).unwrap();
            format!("create {}", p.display())
        }
        // modify (overwrite or append)
        25..=44 => match rng.pick(&files) {
            Some(p) => {
                let data = text(rng, 3000);
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
                fs::write(root.join(&p).join("inner.txt"), text(rng, 500)).unwrap();
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
    let mut rng = Rng::new(seed);
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
        let burst = rng.index(25) + 1;
        let paced = rng.chance(30);
        history.clear();
        for _ in 0..burst {
            history.push(random_edit(&mut rng, &ws, &mut counter));
            edits += 1;
            if paced {
                tokio::time::sleep(Duration::from_millis(rng.below(60))).await;
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
