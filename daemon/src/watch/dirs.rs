//! Which folders hold a kernel watch (Linux, where inotify watches one folder at a time).
//!
//! # Rules
//! 1. Every folder a snapshot includes holds one non-recursive watch.
//! 2. No folder inside an excluded one does (ignored, a dependency or build folder, `.git`,
//!    the data directory): a build writing thousands of files under `target/` costs nothing.
//! 3. An excluded folder recognised by an evidence file (`CACHEDIR.TAG`, `pyvenv.cfg`) holds
//!    one watch itself, so the evidence going away is seen; so does the workspace's own `.git`
//!    (git awareness and event barriers live there). Nothing below them does.
//! 4. A folder that appears (created, or renamed into place) is watched with everything below
//!    it that rule 1 includes, each folder before it is listed (so nothing made meanwhile is
//!    missed); one that goes (deleted, renamed away) loses its watches. When
//!    the rules themselves change (an ignore or evidence file), the whole set is worked out
//!    again and brought in line.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use notify::{PathOp, RecommendedWatcher, RecursiveMode, WatchPathConfig, Watcher};

use super::notifier::{WatchFailure, is_out_of_watches};
use crate::workspace::rules::{self, Exclusion, PathKind, Rules, join};

/// The watches of one workspace, by relative path.
#[derive(Debug, Default)]
pub struct Dirs {
    watched: BTreeSet<Vec<u8>>,
}

/// Whether `a` is `b` or inside it.
fn within(a: &[u8], b: &[u8]) -> bool {
    b.is_empty() || a == b || (a.starts_with(b) && a.get(b.len()) == Some(&b'/'))
}

/// What a folder's listing says of one of its subfolders.
fn wants(rules: &Rules, dir: &[u8], rel: &[u8]) -> Want {
    match rules.check_last(rel, PathKind::Dir) {
        None => Want::Tree,
        Some(Exclusion::Dependency("CACHEDIR.TAG" | "pyvenv.cfg")) => Want::Itself,
        Some(Exclusion::Git) if dir.is_empty() => Want::Itself,
        Some(_) => Want::Nothing,
    }
}

/// Adds the root, and its `.git` when rule 3 watches it, to `set`.
fn with_root(rules: &Rules, root: &Path, set: &mut BTreeSet<Vec<u8>>) {
    set.insert(Vec::new());
    if wants(rules, b"", b".git") == Want::Itself && root.join(".git").is_dir() {
        set.insert(b".git".to_vec());
    }
}

/// What [`Dirs::watch_tree`] placed.
#[derive(Debug, Default)]
pub struct Placed {
    /// Every folder under the start that holds a watch now.
    pub all: BTreeSet<Vec<u8>>,
    /// Those that got one just now (they may hold files made before their watch).
    pub added: Vec<Vec<u8>>,
}

/// Watches sent to the watcher's thread at once (see [`Dirs::add`]).
const WATCH_BATCH: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A watch, and the same question for each of its subfolders (rule 1).
    Tree,
    /// A watch on the folder alone (rule 3).
    Itself,
    /// None (rule 2).
    Nothing,
}

impl Dirs {
    /// How many watches are held.
    pub fn len(&self) -> usize {
        self.watched.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// Whether `rel` holds a watch.
    pub fn contains(&self, rel: &[u8]) -> bool {
        self.watched.contains(rel)
    }

    /// Watches `dirs` (those not watched yet).
    pub fn add(
        &mut self,
        watcher: &mut RecommendedWatcher,
        root: &Path,
        dirs: BTreeSet<Vec<u8>>,
    ) -> Result<(), WatchFailure> {
        let new: Vec<Vec<u8>> = dirs
            .into_iter()
            .filter(|d| !self.watched.contains(d))
            .collect();
        // In batches: a folder gone before its watch fails its batch, and the rest of that
        // batch is sent again, so a deleted tree costs at most a batch per folder gone.
        for batch in new.chunks(WATCH_BATCH) {
            self.add_batch(watcher, root, batch.to_vec())?;
        }
        Ok(())
    }

    fn add_batch(
        &mut self,
        watcher: &mut RecommendedWatcher,
        root: &Path,
        new: Vec<Vec<u8>>,
    ) -> Result<(), WatchFailure> {
        if new.is_empty() {
            return Ok(());
        }
        let config =
            WatchPathConfig::new(RecursiveMode::NonRecursive).with_dereference_symlinks(false);
        let ops = new
            .iter()
            .map(|d| PathOp::Watch(rules::abs(root, d), config.clone()))
            .collect();
        let res = watcher.update_paths(ops);
        let failed = match &res {
            Ok(()) => 0,
            Err(e) => e.remaining.len() + usize::from(e.origin.is_some()),
        };
        // What was applied before a failure holds a watch.
        let applied = new.len() - failed;
        self.watched.extend(new.iter().take(applied).cloned());
        match res {
            Ok(()) => Ok(()),
            Err(e) if is_out_of_watches(&e.source) => Err(WatchFailure::OutOfWatches),
            Err(e) => {
                // A folder gone before its watch was placed is not a failure: the walk of its
                // parent's change sees it gone. Watch the rest.
                let rest: Vec<Vec<u8>> = new.into_iter().skip(applied + 1).collect();
                tracing::debug!(error = %e.source, "a folder vanished before its watch was placed");
                self.add_batch(watcher, root, rest)
            }
        }
    }

    /// Drops the watches of `rel` and everything below it.
    pub fn remove_tree(&mut self, watcher: &mut RecommendedWatcher, root: &Path, rel: &[u8]) {
        let gone: Vec<Vec<u8>> = if rel.is_empty() {
            self.watched.iter().cloned().collect()
        } else {
            // In byte order, what lies below `rel` sorts between `rel/` and `rel0`.
            let lo = [rel, b"/"].concat();
            let hi = [rel, b"0"].concat();
            self.watched
                .get(rel)
                .into_iter()
                .chain(self.watched.range(lo..hi))
                .cloned()
                .collect()
        };
        self.remove(watcher, root, gone);
    }

    fn remove(&mut self, watcher: &mut RecommendedWatcher, root: &Path, gone: Vec<Vec<u8>>) {
        for d in gone {
            self.watched.remove(&d);
            // The kernel may have dropped it already (the folder was deleted): that is fine.
            let _ = watcher.unwatch(&rules::abs(root, &d));
        }
    }

    /// Watches `start` (which the rules include) and every folder below it that the rules
    /// want watched, folder by folder from the top: each folder is watched before it is
    /// listed, so a subfolder made at any moment is either in the listing or reported by the
    /// watch.
    pub fn watch_tree(
        &mut self,
        watcher: &mut RecommendedWatcher,
        root: &Path,
        rules: &Rules,
        start: &[u8],
    ) -> Result<Placed, WatchFailure> {
        let mut all = BTreeSet::new();
        let mut added = Vec::new();
        let mut level = vec![(start.to_vec(), Want::Tree)];
        while !level.is_empty() {
            // One batch of watches per level, then the listings.
            let new: BTreeSet<Vec<u8>> = level
                .iter()
                .map(|(d, _)| d.clone())
                .filter(|d| !self.watched.contains(d))
                .collect();
            self.add(watcher, root, new.clone())?;
            added.extend(new.into_iter().filter(|d| self.watched.contains(d)));
            let mut next = Vec::new();
            for (dir, want) in level {
                if !self.watched.contains(&dir) {
                    // Gone before it could be watched.
                    continue;
                }
                all.insert(dir.clone());
                if want != Want::Tree {
                    continue;
                }
                let Ok(entries) = fs::read_dir(rules::abs(root, &dir)) else {
                    continue;
                };
                for e in entries.flatten() {
                    // The kind from the directory entry: no stat, and a link is never followed.
                    if !e.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    let rel = join(&dir, e.file_name().as_bytes());
                    match wants(rules, &dir, &rel) {
                        Want::Nothing => {}
                        w => next.push((rel, w)),
                    }
                }
            }
            level = next;
        }
        Ok(Placed { all, added })
    }

    /// Watches the folders a loaded warm index names (rule 1 as of the last save), and the
    /// root's `.git` (rule 3), without listing any folder: one `inotify_add_watch` each, so a
    /// restart is watched long before a walk of the tree could be. What the index does not know
    /// (folders made while chkptd was not running, evidence folders) is found by the walk that
    /// follows; [`Dirs::align`] then watches it.
    pub fn watch_known(
        &mut self,
        watcher: &mut RecommendedWatcher,
        root: &Path,
        rules: &Rules,
        mut known: BTreeSet<Vec<u8>>,
    ) -> Result<(), WatchFailure> {
        with_root(rules, root, &mut known);
        // No `lstat` of each first (that was 20,000 path lookups at a restart of a monorepo):
        // a folder gone since (a tree deleted while chkptd was down) fails only the rest of its
        // batch, which is sent again without it. One replaced by a file or link holds a watch
        // on that (links are not followed) until the walk's [`Dirs::align`] drops it.
        self.add(watcher, root, known)
    }

    /// After the walk that follows [`Dirs::watch_known`]: watches what `want` names (every
    /// folder of the index now, and the excluded folders rule 3 watches by themselves) and is
    /// not watched yet, and drops the watches of folders `want` does not name that are gone
    /// or that the rules now leave out (a folder made since the walk keeps the watch the
    /// intake gave it). Returns the folders that got a watch: they were listed by the walk
    /// before they had one.
    pub fn align(
        &mut self,
        watcher: &mut RecommendedWatcher,
        root: &Path,
        rules: &Rules,
        mut want: BTreeSet<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>, WatchFailure> {
        with_root(rules, root, &mut want);
        let extra: Vec<Vec<u8>> = self
            .watched
            .iter()
            .filter(|d| !want.contains(*d))
            .filter(|d| {
                let is_dir = fs::symlink_metadata(rules::abs(root, d)).is_ok_and(|m| m.is_dir());
                !is_dir || (!d.is_empty() && rules.check_path(d, PathKind::Dir).is_some())
            })
            .cloned()
            .collect();
        self.remove(watcher, root, extra);
        let new: BTreeSet<Vec<u8>> = want
            .into_iter()
            .filter(|d| !self.watched.contains(d))
            .collect();
        self.add(watcher, root, new.clone())?;
        Ok(new
            .into_iter()
            .filter(|d| self.watched.contains(d))
            .collect())
    }

    /// Whether rule 3 watches the excluded folder `rel` by itself.
    pub fn watched_alone(rules: &Rules, rel: &[u8]) -> bool {
        wants(rules, rules::split_last(rel).0, rel) == Want::Itself
    }

    /// Brings the watches under `start` in line with what the rules want now (rule 4):
    /// watches what they want, drops the rest. Returns the folders that got a watch.
    pub fn reconcile(
        &mut self,
        watcher: &mut RecommendedWatcher,
        root: &Path,
        rules: &Rules,
        start: &[u8],
    ) -> Result<Vec<Vec<u8>>, WatchFailure> {
        let Placed { all: want, added } = self.watch_tree(watcher, root, rules, start)?;
        let extra: Vec<Vec<u8>> = self
            .watched
            .iter()
            .filter(|d| within(d, start) && !want.contains(*d))
            .cloned()
            .collect();
        self.remove(watcher, root, extra);
        Ok(added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_included_folders_and_evidence_roots_are_watched() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "src/a",
            "target/debug/deps",
            "node_modules/x/y",
            "build/out",
            ".git/objects/aa",
            "venv/lib",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(
            root.join("target/CACHEDIR.TAG"),
            b"Signature: 8a477f597d28d172789f06886806bc55\n",
        )
        .unwrap();
        fs::write(root.join("venv/pyvenv.cfg"), b"home = /usr\n").unwrap();
        fs::write(root.join(".gitignore"), b"build/\n").unwrap();
        let rules = Rules::new(root, &root.join("no-store"), Default::default());
        let mut watcher = RecommendedWatcher::new(|_| {}, notify::Config::default()).unwrap();
        let mut dirs = Dirs::default();
        let Placed { all, added } = dirs.watch_tree(&mut watcher, root, &rules, b"").unwrap();
        let names = |set: &BTreeSet<Vec<u8>>| -> Vec<String> {
            set.iter()
                .map(|d| String::from_utf8(d.clone()).unwrap())
                .collect()
        };
        assert_eq!(names(&all), ["", ".git", "src", "src/a", "target", "venv"]);
        assert_eq!(added.len(), 6);
        assert_eq!(dirs.len(), 6);
        // The evidence goes: target is walked, and watched below.
        fs::remove_file(root.join("target/CACHEDIR.TAG")).unwrap();
        rules.invalidate_all();
        let added = dirs.reconcile(&mut watcher, root, &rules, b"").unwrap();
        assert_eq!(added.len(), 2, "target/debug and target/debug/deps");
        assert_eq!(dirs.len(), 8);
        // A folder that goes takes its watches with it.
        dirs.remove_tree(&mut watcher, root, b"target");
        assert_eq!(dirs.len(), 5);
    }

    #[test]
    fn known_folders_are_watched_without_a_listing_and_aligned_after_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "src/a",
            "new/b",
            ".git/objects",
            "target/debug",
            "gone-later",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(
            root.join("target/CACHEDIR.TAG"),
            b"Signature: 8a477f597d28d172789f06886806bc55\n",
        )
        .unwrap();
        let rules = Rules::new(root, &root.join("no-store"), Default::default());
        let mut watcher = RecommendedWatcher::new(|_| {}, notify::Config::default()).unwrap();
        let mut dirs = Dirs::default();
        let set = |names: &[&str]| -> BTreeSet<Vec<u8>> {
            names.iter().map(|n| n.as_bytes().to_vec()).collect()
        };
        // What an index knew: `new` is not in it, `vanished` is gone since.
        let known = set(&["src", "src/a", "vanished", "gone-later"]);
        dirs.watch_known(&mut watcher, root, &rules, known).unwrap();
        let names = |d: &Dirs| -> Vec<String> {
            d.watched
                .iter()
                .map(|d| String::from_utf8(d.clone()).unwrap())
                .collect()
        };
        assert_eq!(names(&dirs), ["", ".git", "gone-later", "src", "src/a"]);
        // The walk found `new` and `new/b`, and `target` left out by its evidence; a folder
        // went meanwhile.
        fs::remove_dir(root.join("gone-later")).unwrap();
        let want = set(&["src", "src/a", "new", "new/b", "target"]);
        let added = dirs.align(&mut watcher, root, &rules, want).unwrap();
        assert_eq!(
            added,
            [b"new".to_vec(), b"new/b".to_vec(), b"target".to_vec()]
        );
        assert_eq!(
            names(&dirs),
            ["", ".git", "new", "new/b", "src", "src/a", "target"]
        );
        assert!(Dirs::watched_alone(&rules, b"target"));
        assert!(!Dirs::watched_alone(&rules, b"src"));
    }

    #[test]
    fn a_folder_gone_or_replaced_before_its_watch_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // More than a batch, with folders gone (and one replaced by a file) on both sides of
        // a batch's end and at its very end.
        let all: Vec<String> = (0..3 * WATCH_BATCH).map(|i| format!("d{i:04}")).collect();
        let gone = |i: usize| i % 7 == 3 || i == WATCH_BATCH - 1 || i == WATCH_BATCH;
        for (i, d) in all.iter().enumerate() {
            if i == 11 {
                fs::write(root.join(d), b"a file now").unwrap();
            } else if !gone(i) {
                fs::create_dir(root.join(d)).unwrap();
            }
        }
        let rules = Rules::new(root, &root.join("no-store"), Default::default());
        let mut watcher = RecommendedWatcher::new(|_| {}, notify::Config::default()).unwrap();
        let mut dirs = Dirs::default();
        let known: BTreeSet<Vec<u8>> = all.iter().map(|d| d.as_bytes().to_vec()).collect();
        dirs.watch_known(&mut watcher, root, &rules, known).unwrap();
        for (i, d) in all.iter().enumerate() {
            assert_eq!(dirs.contains(d.as_bytes()), !gone(i), "{d}");
        }
        assert!(dirs.contains(b""));
        // The walk did not find the file as a folder: its watch goes.
        let want: BTreeSet<Vec<u8>> = all
            .iter()
            .enumerate()
            .filter(|&(i, _)| !gone(i) && i != 11)
            .map(|(_, d)| d.as_bytes().to_vec())
            .collect();
        let added = dirs
            .align(&mut watcher, root, &rules, want.clone())
            .unwrap();
        assert!(added.is_empty());
        assert!(!dirs.contains(b"d0011"));
        assert_eq!(dirs.len(), want.len() + 1);
    }

    #[test]
    fn within_means_itself_or_below() {
        assert!(within(b"a/b", b"a"));
        assert!(within(b"a", b"a"));
        assert!(!within(b"ab", b"a"));
        assert!(within(b"x", b""));
    }
}
