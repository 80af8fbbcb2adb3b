//! What a workspace's snapshots leave out, and why.
//!
//! Every exclusion is one the user can see and change:
//! 1. `.git` (a directory, or the file of a worktree or submodule): version control's own data,
//!    unless the workspace includes it (`include_git`). Then everything in it is saved but
//!    git's lock files (`*.lock`: a half-written index or ref, which git would refuse to run
//!    beside), and rules 3 and 4 do not apply inside it.
//! 2. The chkpt data directory, when it lies inside the workspace, and chkpt's own short-lived
//!    `.chkpt-*.tmp` files (restore staging, event barriers).
//! 3. Paths matched by `.gitignore`, `.ignore` or `.chkptignore` files inside the workspace (in
//!    rising precedence), whether or not the folder is a git repository. Files above the
//!    workspace root and global git excludes are not read.
//! 4. Dependency and build folders, recognised by evidence rather than by name alone: a
//!    `CACHEDIR.TAG` with the standard signature (Cargo's `target/` has one), a `pyvenv.cfg`
//!    (virtualenvs), and the unmistakable `node_modules`, `__pycache__`, `.tox` and `.gradle`.
//!    A folder merely called `target` or `build` is kept. The workspace option
//!    `include_dependency_dirs` turns this rule off; the folders it excludes are listed in the
//!    workspace's status.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::sync::{read, write};
use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// The ignore files read in each directory, lowest precedence first.
pub const IGNORE_FILES: [&str; 3] = [".gitignore", ".ignore", ".chkptignore"];
/// Files whose presence makes a directory a dependency or build folder.
pub const EVIDENCE_FILES: [&str; 2] = ["CACHEDIR.TAG", "pyvenv.cfg"];
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";
const DEPENDENCY_NAMES: [&str; 4] = ["node_modules", "__pycache__", ".tox", ".gradle"];

/// Why a path is left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exclusion {
    /// `.git`.
    Git,
    /// chkpt's own data directory.
    Store,
    /// A pattern in an ignore file.
    Ignored,
    /// A dependency or build folder; the text names the evidence.
    Dependency(&'static str),
    /// A git lock file inside an included `.git`.
    GitLock,
    /// chkpt's own short-lived files (`.chkpt-*.tmp`: restore staging, event barriers).
    Own,
}

/// Whether a file name is one of chkpt's own short-lived files in a workspace.
pub fn is_own_temp(name: &[u8]) -> bool {
    name.starts_with(b".chkpt-") && name.ends_with(b".tmp")
}

impl Exclusion {
    /// Words for status output.
    pub fn describe(&self) -> String {
        match self {
            Exclusion::Git => "git metadata; watch with --include-git to keep it".to_owned(),
            Exclusion::GitLock => "git lock file (a git command is writing)".to_owned(),
            Exclusion::Store => "chkpt data directory".to_owned(),
            Exclusion::Own => "chkpt's own temporary file".to_owned(),
            Exclusion::Ignored => "ignore file pattern".to_owned(),
            Exclusion::Dependency(why) => {
                format!("dependency/build folder ({why}); watch with --include-deps to keep it")
            }
        }
    }
}

#[derive(Debug)]
struct DirRules {
    ignore: Option<Gitignore>,
    dependency: Option<&'static str>,
}

pub use crate::store::records::Include;

/// The exclusion rules of one workspace, with per-directory caches.
#[derive(Debug)]
pub struct Rules {
    root: PathBuf,
    store_rel: Option<Vec<u8>>,
    include: Include,
    dirs: RwLock<HashMap<Vec<u8>, Arc<DirRules>>>,
    /// What most folders have (no ignore file, no evidence): one shared copy instead of an
    /// allocation per folder (~130 bytes each, for every folder of the tree, for as long as
    /// it is watched).
    plain: Arc<DirRules>,
}

/// Joins a relative path (bytes, `/`-separated) onto `root`.
pub fn abs(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// The relative path of `name` in the folder `dir` (empty for the workspace's root).
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        p.extend_from_slice(dir);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The parent of a relative path (empty for top-level entries) and its last component.
pub fn split_last(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

impl Rules {
    /// Rules for the workspace at `root` (canonical), with the store at `store_dir`.
    pub fn new(root: &Path, store_dir: &Path, include: Include) -> Rules {
        let store_rel = store_dir
            .strip_prefix(root)
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
            .map(|r| r.as_os_str().as_bytes().to_vec());
        Rules {
            root: root.to_path_buf(),
            store_rel,
            include,
            dirs: RwLock::new(HashMap::new()),
            plain: Arc::new(DirRules {
                ignore: None,
                dependency: None,
            }),
        }
    }

    /// Forgets what was read of `dir` (its ignore files or evidence changed).
    pub fn invalidate(&self, dir: &[u8]) {
        write(&self.dirs).remove(dir);
    }

    /// Forgets everything read.
    pub fn invalidate_all(&self) {
        write(&self.dirs).clear();
    }

    /// Whether a change to `rel` changes the rules themselves.
    pub fn is_rule_file(rel: &[u8]) -> bool {
        let (_, name) = split_last(rel);
        IGNORE_FILES
            .iter()
            .chain(EVIDENCE_FILES.iter())
            .any(|f| f.as_bytes() == name)
    }

    fn dir_rules(&self, dir: &[u8]) -> Arc<DirRules> {
        if let Some(r) = read(&self.dirs).get(dir) {
            return r.clone();
        }
        let path = abs(&self.root, dir);
        let mut builder = GitignoreBuilder::new(&path);
        let mut any = false;
        for name in IGNORE_FILES {
            let file = path.join(name);
            if file.is_file() {
                any = true;
                if let Some(e) = builder.add(&file) {
                    tracing::warn!(file = %file.display(), error = %e, "part of an ignore file could not be read");
                }
            }
        }
        let ignore = if any {
            builder
                .build()
                .map_err(|e| tracing::warn!(dir = %path.display(), error = %e, "ignore files not usable"))
                .ok()
        } else {
            None
        };
        let dependency = dependency_evidence(&path, split_last(dir).1);
        let rules = if ignore.is_none() && dependency.is_none() {
            self.plain.clone()
        } else {
            Arc::new(DirRules { ignore, dependency })
        };
        write(&self.dirs).insert(dir.to_vec(), rules.clone());
        rules
    }

    /// Whether `rel` is left out, given that its parent directories are not. Reads the ignore
    /// files of its ancestors (cached) and, for a directory, looks for dependency evidence.
    pub fn check_last(&self, rel: &[u8], kind: PathKind) -> Option<Exclusion> {
        let is_dir = kind == PathKind::Dir;
        let (mut parent, name) = split_last(rel);
        if is_own_temp(name) {
            return Some(Exclusion::Own);
        }
        if self.store_rel.as_deref() == Some(rel) {
            return Some(Exclusion::Store);
        }
        if name == b".git" && !self.include.git {
            return Some(Exclusion::Git);
        }
        if self.include.git && in_git_dir(rel) {
            // git's own data: ignore files and evidence mean nothing here.
            return (name.ends_with(b".lock") && !is_dir).then_some(Exclusion::GitLock);
        }
        // The deepest ignore file with an opinion decides.
        loop {
            let rules = self.dir_rules(parent);
            if let Some(gi) = &rules.ignore {
                let below = &rel[if parent.is_empty() {
                    0
                } else {
                    parent.len() + 1
                }..];
                match gi.matched(Path::new(OsStr::from_bytes(below)), is_dir) {
                    Match::Ignore(_) => return Some(Exclusion::Ignored),
                    Match::Whitelist(_) => break,
                    Match::None => {}
                }
            }
            if parent.is_empty() {
                break;
            }
            parent = split_last(parent).0;
        }
        if is_dir
            && !self.include.dependency_dirs
            && let Some(why) = self.dir_rules(rel).dependency
        {
            return Some(Exclusion::Dependency(why));
        }
        None
    }

    /// Whether `rel` or any of its ancestors is left out.
    pub fn check_path(&self, rel: &[u8], kind: PathKind) -> Option<Exclusion> {
        for (i, &b) in rel.iter().enumerate() {
            if b == b'/'
                && let Some(why) = self.check_last(&rel[..i], PathKind::Dir)
            {
                return Some(why);
            }
        }
        self.check_last(rel, kind)
    }
}

/// What the path [`Rules::check_path`] is asked about is: ignore patterns ending in `/` and
/// dependency evidence concern directories only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// A directory.
    Dir,
    /// Anything else (a file, a symlink, …).
    NotDir,
}

impl PathKind {
    /// [`PathKind::Dir`] when `is_dir`.
    pub fn dir_if(is_dir: bool) -> PathKind {
        if is_dir {
            PathKind::Dir
        } else {
            PathKind::NotDir
        }
    }
}

/// Whether `rel` is a `.git` folder or lies inside one.
pub fn in_git_dir(rel: &[u8]) -> bool {
    rel.split(|&b| b == b'/').any(|c| c == b".git")
}

fn dependency_evidence(dir: &Path, name: &[u8]) -> Option<&'static str> {
    if let Some(n) = DEPENDENCY_NAMES.iter().find(|n| n.as_bytes() == name) {
        return Some(n);
    }
    let mut sig = [0u8; CACHEDIR_SIGNATURE.len()];
    if fs::File::open(dir.join("CACHEDIR.TAG"))
        .and_then(|mut f| f.read_exact(&mut sig))
        .is_ok()
        && sig == CACHEDIR_SIGNATURE
    {
        return Some("CACHEDIR.TAG");
    }
    if dir.join("pyvenv.cfg").is_file() {
        return Some("pyvenv.cfg");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_outside_git_negation_and_dependency_evidence() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join(".gitignore"), "*.log\nbuild/\n!keep.log\n").unwrap();
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("sub/.chkptignore"), "secret\n").unwrap();
        fs::create_dir_all(root.join("target/debug")).unwrap();
        fs::write(root.join("target/CACHEDIR.TAG"), CACHEDIR_SIGNATURE).unwrap();
        fs::create_dir_all(root.join("drivers/target")).unwrap();
        fs::create_dir_all(root.join("env")).unwrap();
        fs::write(root.join("env/pyvenv.cfg"), "home = /usr").unwrap();
        let rules = Rules::new(root, Path::new("/nonexistent"), Include::default());
        assert_eq!(
            rules.check_path(b"a.log", PathKind::NotDir),
            Some(Exclusion::Ignored)
        );
        assert_eq!(rules.check_path(b"keep.log", PathKind::NotDir), None);
        assert_eq!(
            rules.check_path(b"build/x.c", PathKind::NotDir),
            Some(Exclusion::Ignored)
        );
        assert_eq!(
            rules.check_path(b"sub/secret", PathKind::NotDir),
            Some(Exclusion::Ignored)
        );
        assert_eq!(rules.check_path(b"secret", PathKind::NotDir), None);
        assert_eq!(
            rules.check_path(b"target/debug/x", PathKind::NotDir),
            Some(Exclusion::Dependency("CACHEDIR.TAG"))
        );
        assert_eq!(
            rules.check_path(b"drivers/target", PathKind::Dir),
            None,
            "a source folder called target is kept"
        );
        assert_eq!(
            rules.check_path(b"env", PathKind::Dir),
            Some(Exclusion::Dependency("pyvenv.cfg"))
        );
        assert_eq!(
            rules.check_path(b"web/node_modules/x.js", PathKind::NotDir),
            Some(Exclusion::Dependency("node_modules"))
        );
        assert_eq!(
            rules.check_path(b".git/config", PathKind::NotDir),
            Some(Exclusion::Git)
        );
        let opted_in = Rules::new(
            root,
            Path::new("/nonexistent"),
            Include {
                dependency_dirs: true,
                git: false,
            },
        );
        assert_eq!(
            opted_in.check_path(b"target/debug/x", PathKind::NotDir),
            None
        );
    }
}
