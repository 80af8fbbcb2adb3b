//! The `.git` section: what saving a real repository's `.git` costs (issue 23). The repository
//! is a fresh clone of this project's own (the checkout the benchmark runs from): a cold save
//! with `--include-git` beside one without, then the growth of the store for one commit.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use chkpt_proto::v1 as pb;

use crate::util::{Daemon, save};

fn git(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.invalid")
        .output()
        .map_err(|e| format!("git: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// A cold save of `repo` with or without its `.git`: (seconds, store bytes after).
async fn cold(repo: &Path, include_git: bool) -> Result<(f64, u64, Daemon), String> {
    let d = Daemon::start(&[]);
    let mut c = d.client().await;
    let t = Instant::now();
    c.watch(pb::WatchRequest {
        path: repo.display().to_string(),
        idle_ms: 3_600_000,
        max_delay_ms: 7_200_000,
        include_git,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("watch: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    Ok((secs, dir_bytes(&d.data), d))
}

/// Runs the section; returns its table (markdown).
pub async fn section(scratch: &Path) -> String {
    let mut out = String::from(
        "### Saving a real repository's `.git` (issue 23)\n\n| step | figure |\n|---|---|\n",
    );
    let origin = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = scratch.join("repo-clone");
    let rows = async {
        git(
            scratch,
            &[
                "clone",
                "-q",
                "--no-local",
                origin.to_str().unwrap_or("."),
                "repo-clone",
            ],
        )?;
        let git_bytes = dir_bytes(&repo.join(".git"));
        let (plain_s, plain_b, plain) = cold(&repo, false).await?;
        drop(plain);
        let (git_s, git_b, d) = cold(&repo, true).await?;
        let mut c = d.client().await;
        // One commit: a changed file, committed (new loose objects, a new ref, a reflog line).
        std::fs::write(repo.join("README.md"), b"changed for the benchmark\n")
            .map_err(|e| e.to_string())?;
        git(&repo, &["commit", "-q", "-am", "bench"])?;
        let before = dir_bytes(&d.data);
        let t = Instant::now();
        let s = save(&mut c, &repo, "after a commit").await;
        let commit_ms = t.elapsed().as_secs_f64() * 1000.0;
        let growth = dir_bytes(&d.data).saturating_sub(before);
        Ok::<_, String>(vec![
            (
                "the clone's `.git`".to_owned(),
                format!("{:.1} MiB", git_bytes as f64 / 1048576.0),
            ),
            (
                "cold save without `.git` (time, store)".to_owned(),
                format!("{plain_s:.2} s, {:.1} MiB", plain_b as f64 / 1048576.0),
            ),
            (
                "cold save with `--include-git` (time, store)".to_owned(),
                format!("{git_s:.2} s, {:.1} MiB", git_b as f64 / 1048576.0),
            ),
            (
                "save after one commit (time, store growth, paths changed)".to_owned(),
                format!(
                    "{commit_ms:.0} ms, {:.1} KiB, +{} ~{} -{}",
                    growth as f64 / 1024.0,
                    s.added,
                    s.modified,
                    s.deleted
                ),
            ),
        ])
    }
    .await;
    match rows {
        Ok(rows) => {
            for (step, fig) in rows {
                out.push_str(&format!("| {step} | {fig} |\n"));
            }
        }
        Err(e) => out.push_str(&format!("| not measured | **{e}** |\n")),
    }
    out
}
