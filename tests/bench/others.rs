//! The peer (`chkpt` 0.3.0, a one-shot CLI) and the baselines (`tar | lz4`, `git`), measured on
//! the same tree in the same run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::Run;
use crate::report::{Results, Sample, Step, Tool};
use crate::tree;

/// Folders the peer never saves (chkpt-core 0.3.0 `ALWAYS_EXCLUDED` and `DEPENDENCY_DIRS`).
const PEER_EXCLUDED: &[&str] = &[
    ".git",
    ".chkpt",
    "target",
    "node_modules",
    ".venv",
    "venv",
    "__pypackages__",
    ".tox",
    ".nox",
    ".gradle",
    ".m2",
];

/// Whether the peer leaves `rel` out of its snapshots.
pub fn peer_skips(rel: &Path) -> bool {
    rel.components()
        .any(|c| PEER_EXCLUDED.iter().any(|x| c.as_os_str() == *x))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn secs(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

/// Runs a command; its stdout, or what went wrong.
fn run_cmd(cmd: &mut Command) -> Result<String, String> {
    let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// Whether a tool is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The installed peer.
#[derive(Debug)]
pub struct Peer {
    bin: PathBuf,
}

impl Peer {
    /// The peer under `<target>/bench-peer`, installed there first when `install` is set.
    pub fn find(target: &Path, install: bool) -> Option<Peer> {
        let root = target.join("bench-peer");
        let bin = root.join("bin/chkpt");
        if !bin.exists() && install {
            eprintln!(
                "bench: installing the peer, chkpt-cli 0.3.0, into {}",
                root.display()
            );
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let st = Command::new(cargo)
                .args([
                    "install",
                    "chkpt-cli",
                    "--version",
                    "0.3.0",
                    "--locked",
                    "--root",
                ])
                .arg(&root)
                .status();
            if !st.is_ok_and(|s| s.success()) {
                eprintln!("bench: cargo install chkpt-cli failed; measuring without the peer");
            }
        }
        bin.exists().then_some(Peer { bin })
    }

    /// `chkpt <args>` in `cwd` with its store under `home`.
    pub fn run(&self, home: &Path, cwd: &Path, args: &[&str]) -> Result<String, String> {
        run_cmd(
            Command::new(&self.bin)
                .args(args)
                .current_dir(cwd)
                .env("CHKPT_HOME", home),
        )
    }
}

/// Step 1 for the peer: warms the tree and times a save into the empty store under `home`.
fn peer_cold(peer: &Peer, t: &Path, home: &Path) -> Result<(String, f64), String> {
    tree::warm(t);
    let t0 = Instant::now();
    let out = peer.run(home, t, &["save", "-m", "cold"]);
    let dt = secs(t0);
    Ok((out?, dt))
}

/// One more cold-save sample of the peer, into a fresh store.
pub fn peer_cold_sample(peer: &Peer, run: &Run, res: &mut Results) {
    let home = tempfile::tempdir().unwrap();
    let sample = peer_cold(peer, &run.tree, home.path()).map(|(_, dt)| dt);
    res.add(Step::ColdSave, Tool::Peer, sample);
}

/// One repetition of steps 1–5 for the peer, with an empty store.
pub fn peer_rep(peer: &Peer, run: &Run, res: &mut Results, rep: usize) {
    let home = tempfile::tempdir().unwrap();
    if let Err((step, e)) = peer_steps(peer, run, res, home.path(), rep) {
        res.add(step, Tool::Peer, Err(e));
    }
}

fn peer_steps(
    peer: &Peer,
    run: &Run,
    res: &mut Results,
    home: &Path,
    rep: usize,
) -> Result<(), (Step, String)> {
    let t = run.tree.as_path();
    let tag = format!("peer, repetition {rep}");
    let at = |step: Step| move |e: String| (step, e);

    // 1. Cold save into an empty store.
    let (out, dt) = peer_cold(peer, t, home).map_err(at(Step::ColdSave))?;
    res.add(Step::ColdSave, Tool::Peer, Ok(dt));
    if rep == 0 {
        let files = out.lines().find_map(|l| l.trim().strip_prefix("Files: "));
        let files = files.and_then(|f| f.split(',').next()).unwrap_or("?");
        res.note(format!("The peer's first checkpoint holds {files} files."));
    }
    let store0 = tree::du(home);
    res.add(Step::StoreSize, Tool::Peer, Ok(store0 as f64));
    res.add(Step::StoreRecompressed, Tool::Peer, Ok(store0 as f64));

    // 2. Incremental save after appending to 5 files.
    tree::warm(t);
    tree::append_line(t, &run.picks[..5], &tag);
    let t0 = Instant::now();
    let r = peer.run(home, t, &["save", "-m", "incremental"]);
    res.add(Step::IncrSave, Tool::Peer, r.map(|_| secs(t0)));
    let growth = tree::du(home).saturating_sub(store0);
    res.add(Step::StoreGrowth, Tool::Peer, Ok(growth as f64));

    // 3. In-place restore of the latest checkpoint after 5 modified, 5 deleted.
    let expected = tree::manifest(t);
    let originals = tree::read_files(t, &run.picks[5..15]);
    tree::modify(t, &run.picks[5..10], &tag);
    tree::delete(t, &run.picks[10..15]);
    let t0 = Instant::now();
    let r = peer.run(home, t, &["restore", "latest"]);
    let dt = secs(t0);
    let checked = r.and_then(|_| tree::check(&expected, &tree::manifest(t), &|_| false));
    if checked.is_err() {
        tree::put_back(t, &originals);
    }
    res.add(Step::RestoreSmall, Tool::Peer, checked.map(|_| dt));

    // 4. Full restore into an empty directory: the peer restores only into its workspace, so
    // the tree is moved aside and the workspace path left empty.
    let mut aside = t.as_os_str().to_owned();
    aside.push(".aside");
    let aside = PathBuf::from(aside);
    fs::rename(t, &aside)
        .map_err(err)
        .map_err(at(Step::RestoreFull))?;
    fs::create_dir(t).unwrap();
    tree::warm(&aside);
    let t0 = Instant::now();
    let r = peer.run(home, t, &["restore", "latest"]);
    let dt = secs(t0);
    let synced = tree::sync_secs();
    let checked = r.and_then(|_| tree::check(&expected, &tree::manifest(t), &peer_skips));
    if let Ok(n @ 1..) = checked {
        res.note(format!(
            "The peer's full restore lost the executable bit of {n} files."
        ));
    }
    res.add(
        Step::RestoreDurable,
        Tool::Peer,
        checked.clone().map(|_| dt + synced),
    );
    res.add(Step::RestoreFull, Tool::Peer, checked.map(|_| dt));
    run.bury(t);
    fs::rename(&aside, t).unwrap();
    Ok(())
}

/// One repetition of the baselines that are installed: cold save, and restores where simple.
pub fn baselines_rep(run: &Run, res: &mut Results) {
    let t = run.tree.as_path();
    let scratch = tempfile::tempdir().unwrap();
    let sh = |script: &str, args: &[&Path]| {
        run_cmd(
            Command::new("bash")
                .args(["-c", &format!("set -o pipefail; {script}"), "bash"])
                .args(args),
        )
    };
    if have("tar") && have("lz4") {
        tree::warm(t);
        let t0 = Instant::now();
        let r = sh(r#"tar -cf - -C "$1" . | lz4 -1 > /dev/null"#, &[t]);
        res.add(Step::ColdSave, Tool::Tar, r.map(|_| secs(t0)));
        let archive = scratch.path().join("tree.tar.lz4");
        let r = sh(r#"tar -cf - -C "$1" . | lz4 -1 -q > "$2""#, &[t, &archive]);
        res.add(
            Step::StoreSize,
            Tool::Tar,
            r.map(|_| tree::du(&archive) as f64),
        );
        let expected = tree::manifest(t);
        let out = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let r = sh(
            r#"lz4 -dc -q "$1" | tar -xf - -C "$2""#,
            &[&archive, out.path()],
        );
        let dt = secs(t0);
        let synced = tree::sync_secs();
        let checked =
            r.and_then(|_| tree::check(&expected, &tree::manifest(out.path()), &|_| false));
        res.add(
            Step::RestoreDurable,
            Tool::Tar,
            checked.clone().map(|_| dt + synced),
        );
        res.add(Step::RestoreFull, Tool::Tar, checked.map(|_| dt));
        run.bury(&out.keep());
    }
    if have("git") {
        let r = git_steps(run, res, scratch.path());
        if let Err((step, e)) = r {
            res.add(step, Tool::Git, Err(e));
        }
    }
    // git's repository holds a loose object per file.
    run.bury(&scratch.keep());
}

fn git_steps(run: &Run, res: &mut Results, scratch: &Path) -> Result<(), (Step, String)> {
    let t = run.tree.as_path();
    let repo = scratch.join("repo.git");
    let git = |work_tree: &Path, args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.args(["-c", "user.name=bench", "-c", "user.email=bench@invalid"])
            .arg("--git-dir")
            .arg(&repo)
            .arg("--work-tree")
            .arg(work_tree)
            .args(args)
            .current_dir(work_tree);
        cmd
    };
    run_cmd(&mut git(t, &["init", "-q"])).map_err(|e| (Step::ColdSave, e))?;
    tree::warm(t);
    let t0 = Instant::now();
    run_cmd(&mut git(t, &["add", "-A", "-f"]))
        .and_then(|_| run_cmd(&mut git(t, &["commit", "-q", "-m", "bench"])))
        .map_err(|e| (Step::ColdSave, e))?;
    res.add(Step::ColdSave, Tool::Git, Ok(secs(t0)));
    res.add(Step::StoreSize, Tool::Git, Ok(tree::du(&repo) as f64));

    let expected = tree::manifest(t);
    let originals = tree::read_files(t, &run.picks[5..15]);
    tree::modify(t, &run.picks[5..10], "git");
    tree::delete(t, &run.picks[10..15]);
    let t0 = Instant::now();
    let r = run_cmd(&mut git(t, &["reset", "-q", "--hard"]));
    let dt = secs(t0);
    let checked = r.and_then(|_| tree::check(&expected, &tree::manifest(t), &|_| false));
    if checked.is_err() {
        tree::put_back(t, &originals);
    }
    res.add(Step::RestoreSmall, Tool::Git, checked.map(|_| dt));

    let out = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let r = run_cmd(
        git(out.path(), &["checkout", "-q", "-f", "HEAD", "--", "."])
            .env("GIT_INDEX_FILE", scratch.join("restore.index")),
    );
    let dt = secs(t0);
    let synced = tree::sync_secs();
    let checked = r.and_then(|_| tree::check(&expected, &tree::manifest(out.path()), &|_| false));
    res.add(
        Step::RestoreDurable,
        Tool::Git,
        checked.clone().map(|_| dt + synced),
    );
    res.add(Step::RestoreFull, Tool::Git, checked.map(|_| dt));
    run.bury(&out.keep());
    Ok(())
}

/// The peer's store for step 7: a small workspace with `n` checkpoints (plus the first).
#[derive(Debug)]
pub struct PeerLister {
    home: tempfile::TempDir,
    ws: tempfile::TempDir,
    n: usize,
}

pub fn peer_lister(peer: &Peer, n: usize) -> Result<PeerLister, String> {
    let home = tempfile::tempdir().map_err(err)?;
    let ws = tempfile::tempdir().map_err(err)?;
    for i in 0..20 {
        fs::write(ws.path().join(format!("f{i}.txt")), format!("file {i}\n")).map_err(err)?;
    }
    peer.run(home.path(), ws.path(), &["save"])?;
    for i in 0..n {
        tree::append_line(ws.path(), &[format!("f{}.txt", i % 20).into()], "touch");
        peer.run(home.path(), ws.path(), &["save"])?;
    }
    Ok(PeerLister { home, ws, n })
}

/// Times one `chkpt list -n <n>`.
pub fn time_list(peer: &Peer, l: &PeerLister) -> Sample {
    let n = l.n.to_string();
    let t0 = Instant::now();
    let out = peer.run(l.home.path(), l.ws.path(), &["list", "-n", &n]);
    let dt = secs(t0);
    let want = format!("{n} checkpoint(s)");
    if out?.lines().any(|line| line.trim() == want) {
        Ok(dt)
    } else {
        Err(format!("chkpt list did not print {want:?}"))
    }
}
