//! Walking the tree, or looking at the dirty paths only, to find what a refresh must settle.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use super::read::{open_nofollow_in_dir, read_object};
use super::{Look, Walked, known, previous};
use crate::error::{Error, Result};
use crate::store::{Batch, Kind};
use crate::sync::lock;
use crate::workspace::Workspace;
use crate::workspace::index::Node;
use crate::workspace::rules::join;
use crate::workspace::rules::{self, PathKind, Rules, abs};
use crate::workspace::scan::{self, Found, Looked, ScanResult, Stat};

impl Workspace {
    /// Walks `start` (empty for the whole tree) and reads, in the walking threads, every file or
    /// symlink the index does not hold in its current version. With `placed`, each entry also
    /// says whether it was looked at before the watcher's kernel watch was in place.
    fn walk(
        &self,
        batch: &Batch<'_>,
        start: &[u8],
        placed: Option<&OnceLock<Instant>>,
    ) -> Result<ScanResult<(Walked, bool)>> {
        let index = &self.index;
        let counters = &self.counters;
        let root = self.root.as_path();
        // Each inode with several links is read once, by the thread that claims it first.
        let claimed: Mutex<HashSet<(u64, u64)>> = Mutex::default();
        // Directories visited before the watch was in place. ignore lists a directory just
        // before visiting it, after its parent's visit: a directory's listing may predate the
        // watch when its parent's visit did, whatever its own visit's time.
        let early_dirs: Mutex<HashSet<Vec<u8>>> = Mutex::default();
        if placed.is_some_and(|p| p.get().is_none()) {
            lock(&early_dirs).insert(start.to_vec());
        }
        let failure: Mutex<Option<Error>> = Mutex::default();
        let failed = AtomicBool::new(false);
        let read = |rel: &[u8], path: &Path, st: &Stat, opened: Option<File>| {
            if st.kind == Kind::Dir {
                return Walked::Nothing;
            }
            counters.files_walked.fetch_add(1, Ordering::Relaxed);
            let Some(had) = known(index, rel, st) else {
                return Walked::Nothing;
            };
            if failed.load(Ordering::Relaxed) {
                return Walked::Abandoned;
            }
            if st.kind == Kind::File && st.nlink > 1 && !lock(&claimed).insert((st.dev, st.ino)) {
                return Walked::Link;
            }
            match read_object(batch, counters, path, st, opened, previous(index, rel)) {
                Ok(outcome) => Walked::Read(outcome, had),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    lock(&failure).get_or_insert(e);
                    Walked::Abandoned
                }
            }
        };
        let visit = |f: &Found<'_>| -> io::Result<Option<(Stat, (Walked, bool))>> {
            let stat_at = Instant::now();
            let early = placed.is_some_and(|p| p.get().is_none_or(|&at| at > stat_at));
            let listed_early = |st: &Stat| {
                if st.kind != Kind::Dir || placed.is_none() {
                    return early;
                }
                let mut dirs = lock(&early_dirs);
                if early {
                    dirs.insert(f.rel.to_vec());
                }
                early || dirs.contains(rules::split_last(f.rel).0)
            };
            // A regular file the index has never seen is opened at once: its `fstat` is the
            // walk's look at it and the read's first one (a cold save never `lstat`s a file).
            if f.file_type.is_some_and(|t| t.is_file()) && index.get(f.rel).is_none() {
                match open_nofollow_in_dir(f.path) {
                    Ok(file) => {
                        let Some(st) = Stat::from_meta(&file.metadata()?) else {
                            return Ok(None);
                        };
                        let opened = (st.kind == Kind::File).then_some(file);
                        let early = listed_early(&st);
                        return Ok(Some((st, (read(f.rel, f.path, &st, opened), early))));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                    // Replaced by a link, unreadable, …: look at it as at any other entry.
                    Err(_) => {}
                }
            }
            let Some(st) = f.lstat()? else {
                return Ok(None);
            };
            let early = listed_early(&st);
            Ok(Some((st, (read(f.rel, f.path, &st, None), early))))
        };
        let found = scan::scan_with(root, start, &self.rules, self.threads, &visit);
        if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        self.counters
            .paths_stated
            .fetch_add(found.entries.len() as u64, Ordering::Relaxed);
        Ok(found)
    }

    /// A stat-walk of the whole tree that reads what changed as it goes, and what the index
    /// holds that the walk no longer found; and what the walk looked at before the watcher's
    /// kernel watch was in place, to be looked at again.
    #[allow(clippy::type_complexity)]
    pub(super) fn full_looks(
        &mut self,
        batch: &Batch<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<(Vec<(Vec<u8>, Look)>, Vec<(Vec<u8>, Stat)>)> {
        self.counters.full_scans.fetch_add(1, Ordering::Relaxed);
        self.rules.invalidate_all();
        let walk_started = Instant::now();
        let placed = self.watching.clone().filter(|p| p.get().is_none());
        let root_early = placed.is_some();
        let walk = self.walk(batch, b"", placed.as_deref())?;
        tracing::debug!(
            workspace = %self.root.display(),
            entries = walk.entries.len(),
            walk_ms = walk_started.elapsed().as_millis() as u64,
            "full stat-walk (changed files read on the way)"
        );
        warnings.extend(walk.warnings);
        self.excluded = walk.excluded;
        self.excluded.sort_by(|a, b| a.0.cmp(&b.0));
        let mut gone = Vec::new();
        if !self.index.root().is_empty() {
            let seen: HashSet<&[u8]> = walk.entries.iter().map(|(p, _, _)| p.as_slice()).collect();
            self.index.walk(|p, _| {
                if !seen.contains(p) {
                    gone.push((p.to_vec(), Look::Gone));
                }
            });
        }
        let mut early = Vec::new();
        let mut out: Vec<(Vec<u8>, Look)> = Vec::with_capacity(walk.entries.len() + gone.len() + 1);
        for (p, s, (w, before)) in walk.entries {
            if before {
                early.push((p.clone(), s));
            }
            out.push((p, Look::Walked(s, w)));
        }
        out.extend(gone);
        if let Ok(Looked::Stat(st)) = Stat::lstat(&self.root) {
            if root_early {
                early.push((Vec::new(), st));
            }
            out.push((Vec::new(), Look::Stat(st)));
        }
        Ok((out, early))
    }

    /// What the dirty paths are now and, for directories that appeared, everything below them
    /// (read while they are walked).
    pub(super) fn dirty_looks(
        &mut self,
        batch: &Batch<'_>,
        paths: &[Vec<u8>],
        warnings: &mut Vec<String>,
    ) -> Result<Vec<(Vec<u8>, Look)>> {
        let mut out = Vec::new();
        let mut queue: BTreeSet<Vec<u8>> = paths.iter().cloned().collect();
        let mut done: HashSet<Vec<u8>> = HashSet::new();
        let mut real_dirs: HashSet<Vec<u8>> = HashSet::new();
        while let Some(rel) = queue.pop_first() {
            if !done.insert(rel.clone()) {
                continue;
            }
            if Rules::is_rule_file(&rel) {
                self.rules.invalidate(rules::split_last(&rel).0);
            }
            // A path through a symlink is not inside the saved tree (links are never followed):
            // look at the link itself instead.
            if let Some(link) = self.non_dir_ancestor(&rel, &mut real_dirs) {
                if !done.contains(&link) {
                    queue.insert(link);
                }
                continue;
            }
            let path = abs(&self.root, &rel);
            self.counters.paths_stated.fetch_add(1, Ordering::Relaxed);
            let stat = match Stat::lstat(&path) {
                Ok(Looked::Stat(st)) => st,
                Ok(Looked::Unsaved) => {
                    tracing::debug!(path = %path.display(), "not a file, link or directory: skipped");
                    out.push((rel, Look::Gone));
                    continue;
                }
                Ok(Looked::Gone) => {
                    out.push((rel, Look::Gone));
                    continue;
                }
                Err(e) => {
                    warnings.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            let is_dir = stat.kind == Kind::Dir;
            if !rel.is_empty()
                && self
                    .rules
                    .check_path(&rel, PathKind::dir_if(is_dir))
                    .is_some()
            {
                // Left out now; if the index had it, the rules changed under it.
                if self.index.get(&rel).is_some() {
                    out.push((rel, Look::Gone));
                }
                continue;
            }
            // Parents the index does not know yet (their own events may come later).
            let mut parent = rules::split_last(&rel).0;
            while !parent.is_empty() && !matches!(self.index.get(parent), Some(Node::Dir(_))) {
                if !done.contains(parent) {
                    queue.insert(parent.to_vec());
                }
                parent = rules::split_last(parent).0;
            }
            if is_dir {
                match self.index.get(&rel).filter(|_| !rel.is_empty()) {
                    Some(Node::Dir(d)) => {
                        // Known directory: reconcile its direct children.
                        let mut listed: HashSet<Vec<u8>> = HashSet::new();
                        match std::fs::read_dir(&path) {
                            Ok(rd) => {
                                for e in rd.flatten() {
                                    listed.insert(e.file_name().as_bytes().to_vec());
                                }
                            }
                            Err(e) => warnings.push(format!("{}: {e}", path.display())),
                        }
                        for name in d.names() {
                            if !listed.contains(name) {
                                out.push((join(&rel, name), Look::Gone));
                            }
                        }
                        for name in listed {
                            if !d.contains(&name) {
                                queue.insert(join(&rel, &name));
                            }
                        }
                    }
                    _ if rel.is_empty() => {
                        // The root itself: reconcile its direct children.
                        let known: Vec<Vec<u8>> =
                            self.index.root().names().map(<[u8]>::to_vec).collect();
                        if let Ok(rd) = std::fs::read_dir(&path) {
                            let listed: HashSet<Vec<u8>> = rd
                                .flatten()
                                .map(|e| e.file_name().as_bytes().to_vec())
                                .collect();
                            for name in &known {
                                if !listed.contains(name) {
                                    out.push((name.clone(), Look::Gone));
                                }
                            }
                            for name in listed {
                                if !known.contains(&name) {
                                    queue.insert(name);
                                }
                            }
                        }
                    }
                    _ => {
                        // A new directory (created, moved in, or replacing a file): walk it.
                        let sub = self.walk(batch, &rel, None)?;
                        self.new_dirs.push(rel.clone());
                        self.new_dirs.extend(
                            sub.entries
                                .iter()
                                .filter(|(_, s, _)| s.kind == Kind::Dir)
                                .map(|(p, _, _)| p.clone()),
                        );
                        warnings.extend(sub.warnings);
                        for (p, _, _) in &sub.entries {
                            done.insert(p.clone());
                        }
                        out.extend(
                            sub.entries
                                .into_iter()
                                .map(|(p, s, (w, _))| (p, Look::Walked(s, w))),
                        );
                    }
                }
            }
            out.push((rel, Look::Stat(stat)));
        }
        Ok(out)
    }

    /// The first ancestor of `rel` that is not a real directory (a symlink, a file), if any.
    /// `real_dirs` caches ancestors found to be directories during one refresh.
    fn non_dir_ancestor(&self, rel: &[u8], real_dirs: &mut HashSet<Vec<u8>>) -> Option<Vec<u8>> {
        let mut end = 0;
        while let Some(i) = rel[end..].iter().position(|&b| b == b'/') {
            end += i;
            let prefix = &rel[..end];
            end += 1;
            if real_dirs.contains(prefix) {
                continue;
            }
            let is_dir = match self.index.get(prefix) {
                Some(Node::Dir(_)) => true,
                Some(Node::Leaf(_)) => false,
                None => std::fs::symlink_metadata(abs(&self.root, prefix))
                    .map(|m| m.is_dir())
                    .unwrap_or(true),
            };
            if !is_dir {
                return Some(prefix.to_vec());
            }
            real_dirs.insert(prefix.to_vec());
        }
        None
    }
}
