//! Bringing the warm index up to date with the disk, storing new content on the way.
//!
//! A full refresh is one parallel stat-walk whose threads also read what changed: reading the
//! tree's files runs alongside the walk instead of after it, which is most of a cold save. A
//! refresh of dirty paths stats only those (and walks only directories that appeared), then reads
//! what changed in parallel.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use rayon::prelude::*;

use super::chunking;
use super::index::Node;
use super::rules::join;
use super::rules::{self, Rules, abs};
use super::scan::{self, Found, Looked, ScanResult, Stat};
use super::{Changes, RACY_WINDOW_NS, Workspace, WorkspaceCounters, now_ns};
use crate::error::{Error, Result};
use crate::store::batch::added_by_this_thread;
use crate::store::catalog::FileMeta;
use crate::store::{Batch, CHUNK_THRESHOLD, Id, Kind};

/// Attempts at reading a file that keeps changing before its previous version is kept.
const READ_ATTEMPTS: usize = 4;

/// Looks sorted in parallel past this many (waking rayon's threads costs more for a few).
const PARALLEL_SORT: usize = 4096;
/// After reading a file larger than this, rayon's threads free their buffers.
const KEPT_BUFFER: u64 = 1 << 20;

/// The content id the index holds for `rel` (the version saved before), if any.
fn previous(index: &super::Index, rel: &[u8]) -> Option<Id> {
    match index.get(rel) {
        Some(Node::Leaf(m)) if m.kind == Kind::File => Some(m.id),
        _ => None,
    }
}

/// How one path's content was read.
enum ReadOutcome {
    /// Stored, and the bytes storing it added to the packs.
    Stored(FileMeta, u64),
    Gone,
    Skipped(String),
}

/// What a walk did with an entry, in the thread that found it.
enum Walked {
    /// Nothing to read: a directory, or a file or symlink whose metadata matches the index.
    Nothing,
    /// Read (and stored, if it still existed and could be read); whether the index had an
    /// entry for the path.
    Read(ReadOutcome, bool),
    /// A hard link to an inode another thread of the walk claimed to read.
    Link,
    /// Not read: the save had already failed.
    Abandoned,
}

/// How the looks a refresh settles come.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Each path once (a full walk): applied as they come.
    Unique,
    /// Possibly repeated: sorted, the first look at a path kept.
    Any,
}

/// What a refresh found at one path.
enum Look {
    /// Gone, or no longer saved.
    Gone,
    /// What `lstat` said; a file or symlink is still to be compared with the index and read.
    Stat(Stat),
    /// What a walk found and did.
    Walked(Stat, Walked),
}

/// What the index holds of a file or symlink: `None` when it holds this version (an entry read
/// too close to a write to be trusted, a racy one, is read again), else whether it has an
/// entry at all.
fn known(index: &super::Index, rel: &[u8], st: &Stat) -> Option<bool> {
    match index.get(rel) {
        Some(Node::Leaf(m)) if st.matches(m) && !m.racy => None,
        Some(Node::Leaf(_)) => Some(true),
        _ => Some(false),
    }
}

impl Workspace {
    /// Brings the index up to date with the disk for `changes`, storing new content in `batch`.
    /// Returns warnings about paths that could not be read.
    pub fn refresh(&mut self, batch: &Batch<'_>, changes: &Changes) -> Result<Vec<String>> {
        if !self.root.is_dir() {
            return Err(Error::WorkspaceGone {
                path: self.root.clone(),
            });
        }
        if batch.store().gc_epoch() != self.gc_epoch {
            // Only the trees garbage collection dropped must be encoded again; a workspace it
            // did not touch keeps every cached id.
            let store = batch.store();
            let forgotten = self
                .index
                .forget_missing_trees(&|id| store.contains(id).unwrap_or(false));
            tracing::debug!(workspace = %self.root.display(), forgotten, "tree ids checked after a collection");
            self.gc_epoch = store.gc_epoch();
        }
        let mut warnings = Vec::new();
        self.unpersisted = true;
        let full = Changes::Full;
        let changes = if self.must_walk { &full } else { changes };
        match changes {
            Changes::Full => {
                let walk_started_ns = now_ns();
                let (looks, early) = self.full_looks(batch, &mut warnings)?;
                // What the walk stored is made durable (fsync, blob index) while the index is
                // brought up to date: committing early only lets nothing wait.
                std::thread::scope(|s| {
                    let committing = s.spawn(|| batch.commit_objects());
                    let settled = self
                        .settle(batch, looks, Order::Unique, &mut warnings)
                        .and_then(|()| {
                            self.look_again(batch, early, walk_started_ns, &mut warnings)
                        });
                    let committed = committing
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p));
                    settled.and(committed)
                })?;
                self.must_walk = false;
                // A second walk (ignore rules changed under the first) warns of the same paths.
                let mut seen = HashSet::new();
                warnings.retain(|w| seen.insert(w.clone()));
            }
            Changes::Paths(paths) => {
                let looks = self.dirty_looks(batch, paths, &mut warnings)?;
                self.settle(batch, looks, Order::Any, &mut warnings)?;
            }
        }
        Ok(warnings)
    }

    /// Once the watcher's kernel watch is in place, looks again at what a full walk saw before
    /// it was: a directory or file whose metadata changed since (or changed too recently to
    /// tell) is refreshed as a dirty path. Nothing the walk saw early escapes both the walk and
    /// the watch.
    fn look_again(
        &mut self,
        batch: &Batch<'_>,
        early: Vec<(Vec<u8>, Stat)>,
        walk_started_ns: i64,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        let Some(placed) = self.watching.clone() else {
            return Ok(());
        };
        if early.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let early_n = early.len();
        placed.wait();
        let waited = started.elapsed();
        let root = &self.root;
        let recent = walk_started_ns - RACY_WINDOW_NS;
        let dirty: Vec<Vec<u8>> = early
            .into_par_iter()
            .filter(|(rel, seen)| match Stat::lstat(&abs(root, rel)) {
                Ok(Looked::Stat(now)) => {
                    (
                        now.kind,
                        now.mode,
                        now.size,
                        now.mtime_ns,
                        now.ctime_ns,
                        now.ino,
                    ) != (
                        seen.kind,
                        seen.mode,
                        seen.size,
                        seen.mtime_ns,
                        seen.ctime_ns,
                        seen.ino,
                    ) || now.mtime_ns >= recent
                        || now.ctime_ns >= recent
                }
                _ => true,
            })
            .map(|(rel, _)| rel)
            .collect();
        let changed = dirty.len();
        let mut rules_changed = dirty.iter().any(|p| Rules::is_rule_file(p));
        let looks = if rules_changed || dirty.is_empty() {
            Vec::new()
        } else {
            self.dirty_looks(batch, &dirty, warnings)?
        };
        // An ignore file created in a directory the walk had listed is found only now.
        rules_changed |= looks.iter().any(|(p, _)| Rules::is_rule_file(p));
        if rules_changed {
            // What is left out may have changed anywhere below: walk again (the watch is in
            // place now, so nothing needs looking at a third time).
            self.rules.invalidate_all();
            let (looks, _) = self.full_looks(batch, warnings)?;
            self.settle(batch, looks, Order::Unique, warnings)?;
        } else if !looks.is_empty() {
            self.settle(batch, looks, Order::Any, warnings)?;
        }
        tracing::debug!(
            workspace = %self.root.display(),
            waited_ms = waited.as_millis() as u64,
            early = early_n,
            changed,
            ms = started.elapsed().as_millis() as u64,
            "looked again at what the walk saw before the watch was in place"
        );
        Ok(())
    }

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
            early_dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(start.to_vec());
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
            if st.kind == Kind::File
                && st.nlink > 1
                && !claimed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((st.dev, st.ino))
            {
                return Walked::Link;
            }
            match read_object(batch, counters, path, st, opened, previous(index, rel)) {
                Ok(outcome) => Walked::Read(outcome, had),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    failure
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
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
                let mut dirs = early_dirs.lock().unwrap_or_else(|p| p.into_inner());
                if early {
                    dirs.insert(f.rel.to_vec());
                }
                early || dirs.contains(rules::split_last(f.rel).0)
            };
            // A regular file the index has never seen is opened at once: its `fstat` is the
            // walk's look at it and the read's first one (a cold save never `lstat`s a file).
            if f.file_type.is_some_and(|t| t.is_file()) && index.get(f.rel).is_none() {
                match open_nofollow(f.path) {
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
    fn full_looks(
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
        if !self.index.root().children.is_empty() {
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
    fn dirty_looks(
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
            if !rel.is_empty() && self.rules.check_path(&rel, is_dir).is_some() {
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
                        for name in d.children.keys() {
                            if !listed.contains(name) {
                                out.push((join(&rel, name), Look::Gone));
                            }
                        }
                        for name in listed {
                            if !d.children.contains_key(&name) {
                                queue.insert(join(&rel, &name));
                            }
                        }
                    }
                    _ if rel.is_empty() => {
                        // The root itself: reconcile its direct children.
                        let known: Vec<Vec<u8>> =
                            self.index.root().children.keys().cloned().collect();
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

    /// Applies what a refresh found to the index: removes what is gone, reads (in parallel)
    /// what changed and was not read during a walk, and records every new version.
    fn settle(
        &mut self,
        batch: &Batch<'_>,
        mut looks: Vec<(Vec<u8>, Look)>,
        order: Order,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        let started = Instant::now();
        if order == Order::Any {
            if looks.len() > PARALLEL_SORT {
                looks.par_sort_unstable_by(|a, b| a.0.cmp(&b.0));
            } else {
                looks.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            }
            looks.dedup_by(|a, b| a.0 == b.0);
        }
        // (path, stat, whether the index had an entry, what reading it gave)
        let mut read: Vec<(Vec<u8>, Stat, bool, ReadOutcome)> = Vec::new();
        let mut to_read: Vec<(Vec<u8>, Stat, bool)> = Vec::new();
        let mut links: Vec<(Vec<u8>, Stat)> = Vec::new();
        for (rel, look) in looks {
            let (st, walked) = match look {
                Look::Gone => {
                    self.index.remove(&rel);
                    continue;
                }
                Look::Stat(st) => (st, None),
                Look::Walked(st, w) => (st, Some(w)),
            };
            if st.kind == Kind::Dir {
                let unchanged = match (rel.is_empty(), self.index.get(&rel)) {
                    (true, _) => self.index.root().meta.mode == st.mode,
                    (false, Some(Node::Dir(d))) => d.meta.mode == st.mode,
                    _ => false,
                };
                if !unchanged {
                    self.index.insert(&rel, st.to_meta(Id::default(), false));
                }
                continue;
            }
            match walked {
                None => {
                    if let Some(had) = known(&self.index, &rel, &st) {
                        to_read.push((rel, st, had));
                    }
                }
                Some(Walked::Nothing) => {}
                Some(Walked::Read(outcome, had)) => read.push((rel, st, had, outcome)),
                Some(Walked::Link) => links.push((rel, st)),
                // Only after a failed read, whose error the walk returned instead.
                Some(Walked::Abandoned) => {}
            }
        }
        let walked = read.len();
        // Hard links among what is left to read: each inode once.
        let mut first_of: HashMap<(u64, u64), usize> = HashMap::new();
        let mut link_of: Vec<Option<usize>> = vec![None; to_read.len()];
        for (i, (_, st, _)) in to_read.iter().enumerate() {
            if st.kind == Kind::File && st.nlink > 1 {
                match first_of.get(&(st.dev, st.ino)) {
                    Some(&first) => link_of[i] = Some(first),
                    None => {
                        first_of.insert((st.dev, st.ino), i);
                    }
                }
            }
        }
        let root = &self.root;
        let counters = &self.counters;
        let index = &self.index;
        let outcomes: Vec<Result<Option<ReadOutcome>>> = to_read
            .par_iter()
            .enumerate()
            .map(|(i, (rel, st, _))| {
                if link_of[i].is_some() {
                    return Ok(None); // a link of an inode read at another path
                }
                let prev = previous(index, rel);
                read_object(batch, counters, &abs(root, rel), st, None, prev).map(Some)
            })
            .collect();
        if to_read.iter().any(|(_, st, _)| st.size > KEPT_BUFFER) {
            // rayon's threads outlive the save: they keep no large buffers.
            rayon::broadcast(|_| {
                release_thread_buffers();
                chunking::release_thread_buffers();
                crate::store::release_thread_buffers();
            });
        }
        let mut followers = Vec::new();
        for (i, ((rel, st, had), outcome)) in to_read.into_iter().zip(outcomes).enumerate() {
            match outcome? {
                Some(outcome) => read.push((rel, st, had, outcome)),
                None => followers.push((rel, st, had, link_of[i])),
            }
        }
        let mut stored: HashMap<(u64, u64), FileMeta> = read
            .iter()
            .filter_map(|(_, st, _, o)| match o {
                ReadOutcome::Stored(m, _) if st.kind == Kind::File && st.nlink > 1 => {
                    Some(((st.dev, st.ino), *m))
                }
                _ => None,
            })
            .collect();
        for (rel, st) in links {
            let had = matches!(self.index.get(&rel), Some(Node::Leaf(_)));
            followers.push((rel, st, had, None));
        }
        for (rel, st, had, _) in followers {
            // Another link of the same inode was read: share its content, keep this mode. When
            // that read found nothing (the other link was removed), read this one.
            let outcome = match stored.get(&(st.dev, st.ino)) {
                Some(m) => ReadOutcome::Stored(
                    FileMeta {
                        mode: st.mode,
                        ..*m
                    },
                    0,
                ),
                None => {
                    let prev = previous(&self.index, &rel);
                    let o = read_object(batch, counters, &abs(root, &rel), &st, None, prev)?;
                    if let ReadOutcome::Stored(m, _) = &o {
                        stored.insert((st.dev, st.ino), *m);
                    }
                    o
                }
            };
            read.push((rel, st, had, outcome));
        }
        let read_ms = started.elapsed().as_millis() as u64;
        let n = read.len();
        let mut stored_now = Vec::with_capacity(n);
        for (rel, _, had, outcome) in read {
            match outcome {
                ReadOutcome::Stored(meta, added) => {
                    if added > 0 {
                        *self.costs.entry(rel.clone()).or_default() += added;
                    }
                    stored_now.push((rel, meta));
                }
                ReadOutcome::Gone => self.index.remove(&rel),
                ReadOutcome::Skipped(why) => {
                    let kept = if had {
                        "; its previous version is kept"
                    } else {
                        "; not saved"
                    };
                    warnings.push(format!("{why}{kept}"));
                }
            }
        }
        self.index.insert_many(stored_now);
        tracing::debug!(
            read_during_walk = walked,
            read = n - walked,
            read_ms,
            total_ms = started.elapsed().as_millis() as u64,
            "index updated"
        );
        Ok(())
    }
}

/// Reads one file or symlink and stores its content, making sure what is stored is a state the
/// file really had: the metadata is checked before and after reading, and the read repeated
/// when it changed.
/// `opened` is the file already open, when `first` is its `fstat`.
fn read_object(
    batch: &Batch<'_>,
    counters: &WorkspaceCounters,
    path: &Path,
    first: &Stat,
    mut opened: Option<File>,
    previous: Option<Id>,
) -> Result<ReadOutcome> {
    let mut expected = *first;
    let added_before = added_by_this_thread();
    for _ in 0..READ_ATTEMPTS {
        let started = now_ns();
        let attempt = match (expected.kind, opened.take()) {
            (Kind::File, Some(file)) => read_open(batch, file, path, &expected, previous),
            (Kind::Symlink, _) => read_symlink(batch, path, &expected),
            _ => read_file(batch, path, &expected, previous),
        };
        match attempt {
            Ok(Some((st, id))) => {
                counters.files_hashed.fetch_add(1, Ordering::Relaxed);
                counters.bytes_hashed.fetch_add(st.size, Ordering::Relaxed);
                let racy = st.mtime_ns >= started - RACY_WINDOW_NS;
                let added = added_by_this_thread() - added_before;
                return Ok(ReadOutcome::Stored(st.to_meta(id, racy), added));
            }
            Ok(None) => match Stat::lstat(path) {
                // Changed while being read: try again with what it is now.
                Ok(Looked::Stat(st)) if st.kind != Kind::Dir => expected = st,
                Ok(_) => return Ok(ReadOutcome::Gone),
                Err(e) => return Ok(ReadOutcome::Skipped(format!("{}: {e}", path.display()))),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ReadOutcome::Gone),
            Err(e) => match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<StoreFailure>())
            {
                Some(_) => {
                    let inner = e
                        .into_inner()
                        .and_then(|b| b.downcast::<StoreFailure>().ok());
                    return Err(inner
                        .map(|b| b.0)
                        .unwrap_or(Error::Corrupt("store write failed".into())));
                }
                None => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read; skipped");
                    return Ok(ReadOutcome::Skipped(format!("{}: {e}", path.display())));
                }
            },
        }
    }
    Ok(ReadOutcome::Skipped(format!(
        "{}: kept changing while being read",
        path.display()
    )))
}

/// A store error carried through an `io::Error` so read failures and store failures stay apart.
#[derive(Debug)]
struct StoreFailure(Error);

impl std::fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StoreFailure {}

fn store_err(e: Error) -> io::Error {
    io::Error::other(StoreFailure(e))
}

fn read_symlink(batch: &Batch<'_>, path: &Path, expected: &Stat) -> io::Result<Option<(Stat, Id)>> {
    let target = std::fs::read_link(path)?;
    let after = std::fs::symlink_metadata(path)?;
    let Some(st) = Stat::from_meta(&after) else {
        return Ok(None);
    };
    if st.kind != Kind::Symlink || st.mtime_ns != expected.mtime_ns || st.ino != expected.ino {
        return Ok(None);
    }
    let (id, _) = batch
        .put(target.as_os_str().as_bytes(), false)
        .map_err(store_err)?;
    Ok(Some((
        Stat {
            size: target.as_os_str().len() as u64,
            ..st
        },
        id,
    )))
}

thread_local! {
    /// Each reading thread's buffer, reused from one file to the next (fresh memory for every
    /// large file cost a page fault per 4 KiB).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Frees this thread's read buffer (see [`crate::store::release_thread_buffers`]).
pub fn release_thread_buffers() {
    READ_BUF.with(|b| *b.borrow_mut() = Vec::new());
}

/// Whether two looks at a file saw the same version.
fn same_version(a: &Stat, b: &Stat) -> bool {
    a.size == b.size && a.mtime_ns == b.mtime_ns && a.ctime_ns == b.ctime_ns
}

/// Reads a file small enough for memory into `data` and stores it; none when it changed while
/// read.
fn read_small(
    batch: &Batch<'_>,
    file: &mut File,
    path: &Path,
    before: &Stat,
    data: &mut Vec<u8>,
) -> io::Result<Option<(Stat, Id)>> {
    read_expected(file, before.size as usize, data)?;
    let after =
        Stat::from_meta(&file.metadata()?).ok_or_else(|| io::Error::other("not a regular file"))?;
    if !same_version(before, &after) || data.len() as u64 != after.size {
        return Ok(None);
    }
    // Written within the racy window, a write during our read can leave the metadata as it was
    // (same tick): read once more; two reads that agree are a state the file had.
    if after.mtime_ns >= now_ns() - RACY_WINDOW_NS {
        let mut again = Vec::with_capacity(data.len() + 1);
        File::open(path)?.read_to_end(&mut again)?;
        if again != *data {
            return Ok(None);
        }
    }
    let (id, _) = batch.put(data, false).map_err(store_err)?;
    Ok(Some((after, id)))
}

/// Reads `file` into `data` until it ends, or holds one byte more than the `size` `fstat`
/// announced (a file that grew, or a file system whose sizes are wrong: the caller sees the
/// difference and does not store it).
fn read_expected(file: &mut File, size: usize, data: &mut Vec<u8>) -> io::Result<()> {
    data.reserve(size + 1);
    file.take(size as u64 + 1).read_to_end(data)?;
    Ok(())
}

fn read_file(
    batch: &Batch<'_>,
    path: &Path,
    expected: &Stat,
    previous: Option<Id>,
) -> io::Result<Option<(Stat, Id)>> {
    let file = open_nofollow(path)?;
    let before =
        Stat::from_meta(&file.metadata()?).ok_or_else(|| io::Error::other("not a regular file"))?;
    if before.kind != Kind::File || before.ino != expected.ino {
        return Ok(None);
    }
    read_open(batch, file, path, &before, previous)
}

/// Reads and stores the open regular file whose `fstat` is `before`; none when it changed
/// while read. `previous` is the content id of the version saved before, if any.
fn read_open(
    batch: &Batch<'_>,
    mut file: File,
    path: &Path,
    before: &Stat,
    previous: Option<Id>,
) -> io::Result<Option<(Stat, Id)>> {
    let before = *before;
    if before.size <= CHUNK_THRESHOLD {
        return READ_BUF.with(|buf| {
            let mut data = buf.borrow_mut();
            data.clear();
            read_small(batch, &mut file, path, &before, &mut data)
        });
    }
    read_large(batch, &file, path, &before, previous)
}

/// Stores a large file as chunks (see [`super::chunking`]), cut with the help of the version
/// saved before when it was chunked too; none when it changed while read.
fn read_large(
    batch: &Batch<'_>,
    file: &File,
    path: &Path,
    before: &Stat,
    previous: Option<Id>,
) -> io::Result<Option<(Stat, Id)>> {
    let store = batch.store();
    let previous = previous.and_then(|id| match store.chunk_list(&id) {
        Ok(list) => list,
        Err(e) => {
            // Costs this save the help of the old cuts, nothing else; verify names the damage.
            tracing::warn!(path = %path.display(), error = %e, "the previous version's chunk list is unreadable");
            None
        }
    });
    let Some((id, list)) =
        chunking::store_chunks(batch, file, before.size, previous.as_ref(), store_err)?
    else {
        return Ok(None);
    };
    let after =
        Stat::from_meta(&file.metadata()?).ok_or_else(|| io::Error::other("not a regular file"))?;
    if !same_version(before, &after) {
        return Ok(None);
    }
    // Written within the racy window, a write during the read can leave the metadata as it
    // was: a second read must give the same content.
    if after.mtime_ns >= now_ns() - RACY_WINDOW_NS
        && chunking::content_id(file, after.size)? != Some(id)
    {
        return Ok(None);
    }
    batch.put_chunked(id, &list).map_err(store_err)?;
    Ok(Some((after, id)))
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}
