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
