//! What chkpt needs to know about a git repository: whether an operation is half done (so an
//! auto snapshot waits for it), and the branch and commit to record on each snapshot. Read from
//! the files under `.git`, without running git.

use std::fs;
use std::path::{Path, PathBuf};

/// The git directory of the repository containing `root` (a `.git` directory, or the one a
/// `.git` file of a worktree or submodule points to).
pub fn find_git_dir(root: &Path) -> Option<PathBuf> {
    for dir in root.ancestors() {
        let dot = dir.join(".git");
        match fs::symlink_metadata(&dot) {
            Ok(m) if m.is_dir() => return Some(dot),
            Ok(m) if m.is_file() => {
                let text = fs::read_to_string(&dot).ok()?;
                let target = text.strip_prefix("gitdir:")?.trim();
                return Some(dir.join(target));
            }
            _ => {}
        }
    }
    None
}

/// A git operation in progress, if any: an index being written, a rebase, merge, cherry-pick
/// or revert stopped half way.
pub fn busy(git_dir: &Path) -> Option<&'static str> {
    const MARKERS: [(&str, &str); 6] = [
        ("index.lock", "git is writing its index"),
        ("rebase-merge", "a rebase is in progress"),
        ("rebase-apply", "a rebase is in progress"),
        ("MERGE_HEAD", "a merge is in progress"),
        ("CHERRY_PICK_HEAD", "a cherry-pick is in progress"),
        ("REVERT_HEAD", "a revert is in progress"),
    ];
    MARKERS
        .iter()
        .find(|(f, _)| git_dir.join(f).exists())
        .map(|(_, why)| *why)
}

/// The branch checked out (empty when HEAD is detached) and the HEAD commit (empty before the
/// first commit).
pub fn head(git_dir: &Path) -> (String, String) {
    let Ok(head) = fs::read_to_string(git_dir.join("HEAD")) else {
        return (String::new(), String::new());
    };
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref:").map(str::trim) else {
        return (String::new(), head.to_owned());
    };
    let branch = reference
        .strip_prefix("refs/heads/")
        .unwrap_or(reference)
        .to_owned();
    // Worktrees keep shared refs in the common directory.
    let common = fs::read_to_string(git_dir.join("commondir"))
        .map(|c| git_dir.join(c.trim()))
        .unwrap_or_else(|_| git_dir.to_path_buf());
    for dir in [git_dir, common.as_path()] {
        if let Ok(c) = fs::read_to_string(dir.join(reference)) {
            return (branch, c.trim().to_owned());
        }
        if let Ok(packed) = fs::read_to_string(dir.join("packed-refs")) {
            for line in packed.lines() {
                if let Some((sha, name)) = line.split_once(' ')
                    && name == reference
                {
                    return (branch, sha.to_owned());
                }
            }
        }
    }
    (branch, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_busy_and_worktree_files() {
        let dir = tempfile::tempdir().unwrap();
        let git = dir.path().join(".git");
        fs::create_dir_all(git.join("refs/heads")).unwrap();
        fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        assert_eq!(head(&git), ("main".into(), String::new()));
        fs::write(
            git.join("packed-refs"),
            "# pack-refs\nabc123 refs/heads/main\n",
        )
        .unwrap();
        assert_eq!(head(&git), ("main".into(), "abc123".into()));
        fs::write(git.join("refs/heads/main"), "def456\n").unwrap();
        assert_eq!(head(&git).1, "def456");
        fs::write(git.join("HEAD"), "0123abcd\n").unwrap();
        assert_eq!(head(&git), (String::new(), "0123abcd".into()));
        assert_eq!(busy(&git), None);
        fs::write(git.join("index.lock"), "").unwrap();
        assert_eq!(busy(&git), Some("git is writing its index"));
        let sub = dir.path().join("sub/deeper");
        fs::create_dir_all(&sub).unwrap();
        assert_eq!(find_git_dir(&sub), Some(git.clone()));
        fs::write(sub.join(".git"), "gitdir: ../../.git/worktrees/x\n").unwrap();
        assert_eq!(find_git_dir(&sub), Some(sub.join("../../.git/worktrees/x")));
    }
}

/// What a burst of deletions and rewrites cost, measured against git.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loss {
    /// Every version it replaced is the one git's HEAD commit holds: nothing git does not
    /// have (a clean branch switch, a pull, a rebase of committed work).
    None,
    /// Versions git does not have were lost: `uncommitted` tracked files with changes, and
    /// `untracked` files git never had.
    Work {
        /// Tracked files whose uncommitted changes were replaced.
        uncommitted: usize,
        /// Files git never had, deleted.
        untracked: usize,
    },
    /// Git could not tell (no repository, no HEAD, git not found, …).
    Unknown(String),
}

impl Loss {
    /// The status line's words for it.
    pub fn describe(&self) -> String {
        match self {
            Loss::None => "git has every version it replaced".into(),
            Loss::Work {
                uncommitted,
                untracked,
            } => {
                let mut parts = Vec::new();
                if *uncommitted > 0 {
                    parts.push(format!(
                        "{uncommitted} files with uncommitted changes (it looks like `git reset --hard`, `git checkout -- .` or a `git stash`)"
                    ));
                }
                if *untracked > 0 {
                    parts.push(format!(
                        "{untracked} files git never had (it looks like `git clean` or an `rm`)"
                    ));
                }
                format!("work git does not have was lost: {}", parts.join("; "))
            }
            Loss::Unknown(why) => format!("not compared with git: {why}"),
        }
    }
}

/// The blob id git gives `content`.
pub fn blob_id(content: &[u8]) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    h.digest().to_string()
}

/// The blob ids HEAD commit `head` of the repository at `root` holds for `paths` (relative to
/// `root`, which may lie anywhere in the repository): path → blob id, for the paths it has.
pub fn blobs_at(
    root: &Path,
    head: &str,
    paths: &[Vec<u8>],
) -> Result<std::collections::HashMap<Vec<u8>, String>, String> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = std::collections::HashMap::new();
    for chunk in paths.chunks(500) {
        let mut cmd = std::process::Command::new("git");
        cmd.arg("-C").arg(root).args(["ls-tree", "-z", head, "--"]);
        for p in chunk {
            cmd.arg(std::ffi::OsStr::from_bytes(p));
        }
        let run = cmd
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run git: {e}"))?;
        if !run.status.success() {
            return Err(format!(
                "git ls-tree failed: {}",
                String::from_utf8_lossy(&run.stderr).trim()
            ));
        }
        // "<mode> <type> <id>\t<path>\0" per entry.
        for rec in run.stdout.split(|&b| b == 0).filter(|r| !r.is_empty()) {
            let Some(tab) = rec.iter().position(|&b| b == b'\t') else {
                continue;
            };
            let fields: Vec<&[u8]> = rec[..tab].split(|&b| b == b' ').collect();
            if let [_, b"blob", id] = fields.as_slice() {
                out.insert(
                    rec[tab + 1..].to_vec(),
                    String::from_utf8_lossy(id).into_owned(),
                );
            }
        }
    }
    Ok(out)
}
