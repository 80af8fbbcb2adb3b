//! One workspace: scanning, the warm index, save, restore and diff.
//!
//! A [`Workspace`] owns the warm index of one folder. Every operation first brings the index up
//! to date with the disk ([`Workspace::refresh`]), either for a set of dirty paths (what the
//! watcher saw change: the cost grows with the change) or for the whole tree (a stat-walk that
//! re-reads only entries whose metadata changed).

pub mod diff;
pub mod git;
pub mod index;
pub mod restore;
pub mod rules;
pub mod scan;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use self::index::{Index, Node};
use self::rules::{Exclusion, Rules, abs};
use self::scan::Stat;
use crate::error::{Error, Result};
use crate::store::catalog::{FileMeta, SnapshotRecord, Trigger, WorkspaceRecord};
use crate::store::{Batch, IN_MEMORY_LIMIT, Id, Kind, Store, Streamed};

/// A file read within this long of its last modification is re-read next time (a write in the
/// same timestamp tick would not change its metadata).
const RACY_WINDOW_NS: i64 = 1_000_000_000;
/// Attempts at reading a file that keeps changing before its previous version is kept.
const READ_ATTEMPTS: usize = 4;
/// Journal entries persisted beyond a quarter of the base before the base is rewritten.
const JOURNAL_SLACK: usize = 1024;

/// What changed since the index was last brought up to date.
#[derive(Debug, Clone)]
pub enum Changes {
    /// Unknown: stat-walk the whole tree.
    Full,
    /// Only these paths (relative, `/`-separated) may have changed.
    Paths(Vec<Vec<u8>>),
}

/// Counters of work done, for `Status`, tests and benchmarks.
#[derive(Debug, Default)]
pub struct WorkspaceCounters {
    /// Files read and hashed.
    pub files_hashed: AtomicU64,
    /// Bytes read and hashed.
    pub bytes_hashed: AtomicU64,
    /// Paths stat-ed.
    pub paths_stated: AtomicU64,
    /// Full stat-walks.
    pub full_scans: AtomicU64,
}

/// The options of a save.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Why it is taken.
    pub trigger: Trigger,
    /// A message.
    pub message: String,
    /// Pin it.
    pub pin: bool,
    /// What may have changed.
    pub changes: Changes,
    /// Changes before it may have been seen only by a rescan.
    pub rescan: bool,
}

impl SaveOptions {
    /// A save of the given trigger after the given changes.
    pub fn new(trigger: Trigger, changes: Changes) -> SaveOptions {
        SaveOptions {
            trigger,
            message: String::new(),
            pin: false,
            changes,
            rescan: false,
        }
    }
}

/// What a save did.
#[derive(Debug, Clone)]
pub struct SaveOutcome {
    /// The new snapshot, or the latest one when nothing changed.
    pub snapshot: SnapshotRecord,
    /// Whether a new snapshot was recorded.
    pub created: bool,
}

/// A watched folder and its warm index.
#[derive(Debug)]
pub struct Workspace {
    record: WorkspaceRecord,
    root: PathBuf,
    rules: Arc<Rules>,
    index: Index,
    gc_epoch: u64,
    /// The tree the folder had after the last snapshot or restore: an auto save that finds the
    /// same tree records nothing.
    baseline: Option<Id>,
    /// Dependency folders left out by the last full scan.
    excluded: Vec<(Vec<u8>, Exclusion)>,
    /// Work counters.
    pub counters: Arc<WorkspaceCounters>,
    threads: usize,
    /// Directories the last refreshes found new: their contents may have been created before
    /// the kernel watched them, so the daemon lists them once more after the save.
    new_dirs: Vec<Vec<u8>>,
    /// Entries in the persisted warm index's base, and journal entries persisted on top.
    persisted_base: usize,
    persisted_journal: usize,
}

/// µs since the epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

static LAST_CREATED: AtomicU64 = AtomicU64::new(0);

/// A creation time unique and increasing within this process.
fn unique_now_us() -> u64 {
    let now = now_us();
    let mut last = LAST_CREATED.load(Ordering::SeqCst);
    loop {
        let next = now.max(last + 1);
        match LAST_CREATED.compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// Canonicalises a workspace path, refusing what cannot be one.
pub fn canonical_root(path: &Path) -> Result<PathBuf> {
    if !path.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "{} is not an absolute path",
            path.display()
        )));
    }
    let root = path.canonicalize().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::NotFound(format!("{} does not exist", path.display())),
        _ if matches!(
            e.raw_os_error(),
            Some(libc::ENAMETOOLONG | libc::ENOTDIR | libc::ELOOP | libc::EINVAL)
        ) =>
        {
            Error::InvalidArgument(format!(
                "{} is not a usable folder path: {e}",
                path.display()
            ))
        }
        _ => Error::io(path, e),
    })?;
    if !root.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    Ok(root)
}

/// Options a workspace is watched with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// Quiet period before an auto snapshot, ms.
    pub idle_ms: u64,
    /// Longest wait after the first unsaved change, ms.
    pub max_delay_ms: u64,
    /// Save dependency and build folders too.
    pub include_dependency_dirs: bool,
    /// Which automatic snapshots are kept.
    pub retention: crate::retention::Policy,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            idle_ms: 5_000,
            max_delay_ms: 60_000,
            include_dependency_dirs: false,
            retention: crate::retention::Policy::default(),
        }
    }
}

/// Registers (or re-registers, with new options) the folder at `path` as a workspace.
pub fn register(store: &Store, path: &Path, opts: WatchOptions) -> Result<WorkspaceRecord> {
    let root = canonical_root(path)?;
    if store.dir().starts_with(&root) && store.dir() == root {
        return Err(Error::InvalidArgument(format!(
            "{} is chkpt's own data directory",
            root.display()
        )));
    }
    if root.starts_with(store.dir()) {
        return Err(Error::InvalidArgument(format!(
            "{} is inside chkpt's data directory",
            root.display()
        )));
    }
    let bytes = root.as_os_str().as_bytes().to_vec();
    let record = match store.cat.workspace_by_path(&bytes)? {
        Some(mut r) => {
            r.idle_ms = opts.idle_ms;
            r.max_delay_ms = opts.max_delay_ms;
            r.include_dependency_dirs = opts.include_dependency_dirs;
            r.retention = opts.retention;
            r.watched = true;
            r
        }
        None => WorkspaceRecord {
            id: store.cat.new_id()?,
            path: bytes,
            idle_ms: opts.idle_ms,
            max_delay_ms: opts.max_delay_ms,
            include_dependency_dirs: opts.include_dependency_dirs,
            created_us: now_us(),
            watched: true,
            retention: opts.retention,
            tripwire: None,
        },
    };
    store.cat.put_workspace(&record)?;
    store.flush()?;
    Ok(record)
}

/// How one path's content was read.
enum ReadOutcome {
    Stored(FileMeta),
    Gone,
    Skipped(String),
}

impl Workspace {
    /// Opens a workspace from its record, loading the persisted warm index.
    pub fn open(store: &Store, record: WorkspaceRecord) -> Result<Workspace> {
        let root = PathBuf::from(std::ffi::OsStr::from_bytes(&record.path));
        let rules = Arc::new(Rules::new(
            &root,
            store.dir(),
            record.include_dependency_dirs,
        ));
        let (entries, persisted_journal) = store.cat.load_index(record.id)?;
        let persisted_base = entries.len();
        let index = Index::load(entries);
        let baseline = store.cat.latest(record.id)?.map(|s| s.root);
        Ok(Workspace {
            record,
            root,
            rules,
            index,
            gc_epoch: store.gc_epoch(),
            baseline,
            excluded: Vec::new(),
            counters: Arc::default(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            new_dirs: Vec::new(),
            persisted_base,
            persisted_journal,
        })
    }

    /// The workspace's record.
    pub fn record(&self) -> &WorkspaceRecord {
        &self.record
    }

    /// Replaces the record (options changed); exclusion rules are re-read.
    pub fn set_record(&mut self, store: &Store, record: WorkspaceRecord) {
        self.rules = Arc::new(Rules::new(
            &self.root,
            store.dir(),
            record.include_dependency_dirs,
        ));
        self.record = record;
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The exclusion rules.
    pub fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }

    /// Dependency folders the last full scan left out.
    pub fn excluded(&self) -> &[(Vec<u8>, Exclusion)] {
        &self.excluded
    }

    /// Files and bytes in the index.
    pub fn totals(&self) -> (u64, u64) {
        self.index.totals()
    }

    /// The warm index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Brings the index up to date with the disk for `changes`, storing new content in `batch`.
    /// Returns warnings about paths that could not be read.
    pub fn refresh(&mut self, batch: &Batch<'_>, changes: &Changes) -> Result<Vec<String>> {
        if !self.root.is_dir() {
            return Err(Error::FailedPrecondition(format!(
                "the workspace folder {} is gone; recreate it or unwatch it",
                self.root.display()
            )));
        }
        if batch.store().gc_epoch() != self.gc_epoch {
            self.index.invalidate_trees();
            self.gc_epoch = batch.store().gc_epoch();
        }
        let mut warnings = Vec::new();
        let stats = match changes {
            Changes::Full => self.full_stats(&mut warnings),
            Changes::Paths(paths) => self.dirty_stats(paths, &mut warnings),
        };
        self.apply(batch, stats, &mut warnings)?;
        Ok(warnings)
    }

    /// A stat-walk of the whole tree, as a list of every path and what it is now.
    fn full_stats(&mut self, warnings: &mut Vec<String>) -> Vec<(Vec<u8>, Option<Stat>)> {
        self.counters.full_scans.fetch_add(1, Ordering::Relaxed);
        self.rules.invalidate_all();
        let walk_started = std::time::Instant::now();
        let scan = scan::scan(&self.root, b"", &self.rules, self.threads);
        tracing::debug!(
            workspace = %self.root.display(),
            entries = scan.entries.len(),
            walk_ms = walk_started.elapsed().as_millis() as u64,
            "full stat-walk"
        );
        self.counters
            .paths_stated
            .fetch_add(scan.entries.len() as u64, Ordering::Relaxed);
        warnings.extend(scan.warnings);
        self.excluded = scan.excluded;
        self.excluded.sort_by(|a, b| a.0.cmp(&b.0));
        let seen: HashSet<&[u8]> = scan.entries.iter().map(|(p, _)| p.as_slice()).collect();
        let mut gone = Vec::new();
        self.index.walk(|p, _| {
            if !seen.contains(p) {
                gone.push((p.to_vec(), None));
            }
        });
        drop(seen);
        let mut out: Vec<(Vec<u8>, Option<Stat>)> = scan
            .entries
            .into_iter()
            .map(|(p, s)| (p, Some(s)))
            .collect();
        out.extend(gone);
        if let Ok(Some(Some(st))) = Stat::lstat(&self.root) {
            out.push((Vec::new(), Some(st)));
        }
        out
    }

    /// Stats of the dirty paths and, for directories that appeared, everything below them.
    fn dirty_stats(
        &mut self,
        paths: &[Vec<u8>],
        warnings: &mut Vec<String>,
    ) -> Vec<(Vec<u8>, Option<Stat>)> {
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
                Ok(Some(Some(st))) => st,
                Ok(Some(None)) => {
                    tracing::debug!(path = %path.display(), "not a file, link or directory: skipped");
                    out.push((rel, None));
                    continue;
                }
                Ok(None) => {
                    out.push((rel, None));
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
                    out.push((rel, None));
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
                                out.push((join(&rel, name), None));
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
                                    out.push((name.clone(), None));
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
                        let sub = scan::scan(&self.root, &rel, &self.rules, self.threads);
                        self.new_dirs.push(rel.clone());
                        self.new_dirs.extend(
                            sub.entries
                                .iter()
                                .filter(|(_, s)| s.kind == Kind::Dir)
                                .map(|(p, _)| p.clone()),
                        );
                        self.counters
                            .paths_stated
                            .fetch_add(sub.entries.len() as u64, Ordering::Relaxed);
                        warnings.extend(sub.warnings);
                        for (p, _) in &sub.entries {
                            done.insert(p.clone());
                        }
                        out.extend(sub.entries.into_iter().map(|(p, s)| (p, Some(s))));
                    }
                }
            }
            out.push((rel, Some(stat)));
        }
        out
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

    /// Applies stats to the index: reads what changed (in parallel), removes what is gone.
    fn apply(
        &mut self,
        batch: &Batch<'_>,
        mut stats: Vec<(Vec<u8>, Option<Stat>)>,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        stats.sort_by(|a, b| a.0.cmp(&b.0));
        stats.dedup_by(|a, b| a.0 == b.0);
        let mut to_read: Vec<(Vec<u8>, Stat, Option<FileMeta>)> = Vec::new();
        for (rel, stat) in stats {
            match stat {
                None => self.index.remove(&rel),
                Some(st) if st.kind == Kind::Dir => {
                    let unchanged = match (rel.is_empty(), self.index.get(&rel)) {
                        (true, _) => self.index.root().meta.mode == st.mode,
                        (false, Some(Node::Dir(d))) => d.meta.mode == st.mode,
                        _ => false,
                    };
                    if !unchanged {
                        self.index.insert(&rel, st.to_meta(Id::default(), false));
                    }
                }
                Some(st) => {
                    let old = match self.index.get(&rel) {
                        Some(Node::Leaf(m)) => Some(*m),
                        _ => None,
                    };
                    if old.is_some_and(|m| st.matches(&m) && !m.racy) {
                        continue;
                    }
                    to_read.push((rel, st, old));
                }
            }
        }
        if to_read.is_empty() {
            return Ok(());
        }
        // Hard links: read each inode once.
        let mut by_inode: HashMap<(u64, u64), usize> = HashMap::new();
        let mut link_of: Vec<Option<usize>> = vec![None; to_read.len()];
        for (i, (_, st, _)) in to_read.iter().enumerate() {
            if st.kind == Kind::File && st.nlink > 1 {
                match by_inode.get(&(st.dev, st.ino)) {
                    Some(&first) => link_of[i] = Some(first),
                    None => {
                        by_inode.insert((st.dev, st.ino), i);
                    }
                }
            }
        }
        let root = &self.root;
        let counters = &self.counters;
        let results: Vec<Result<ReadOutcome>> = to_read
            .par_iter()
            .enumerate()
            .map(|(i, (rel, st, _))| {
                if link_of[i].is_some() {
                    return Ok(ReadOutcome::Gone); // filled in from the first link below
                }
                read_object(batch, counters, &abs(root, rel), st)
            })
            .collect();
        let mut outcomes = Vec::with_capacity(results.len());
        for r in results {
            outcomes.push(r?);
        }
        for i in 0..to_read.len() {
            let (rel, st, old) = &to_read[i];
            let outcome = match link_of[i] {
                Some(first) => match &outcomes[first] {
                    ReadOutcome::Stored(m) => ReadOutcome::Stored(FileMeta {
                        mode: st.mode,
                        ..*m
                    }),
                    ReadOutcome::Gone => ReadOutcome::Gone,
                    ReadOutcome::Skipped(w) => ReadOutcome::Skipped(w.clone()),
                },
                None => std::mem::replace(&mut outcomes[i], ReadOutcome::Gone),
            };
            match outcome {
                ReadOutcome::Stored(meta) => self.index.insert(rel, meta),
                ReadOutcome::Gone => self.index.remove(rel),
                ReadOutcome::Skipped(why) => {
                    let kept = if old.is_some() {
                        "; its previous version is kept"
                    } else {
                        "; not saved"
                    };
                    warnings.push(format!("{why}{kept}"));
                }
            }
        }
        Ok(())
    }

    /// Persists the index journal (after the objects it names are committed). A journal grown
    /// past a quarter of the persisted base is folded into a new base.
    fn persist_index(&mut self, store: &Store) -> Result<()> {
        let journal = self.index.take_journal();
        if journal.is_empty() {
            return Ok(());
        }
        if self.persisted_journal + journal.len() > self.persisted_base / 4 + JOURNAL_SLACK {
            let entries = self.index.entries();
            store.cat.write_index_base(self.record.id, &entries)?;
            self.persisted_base = entries.len();
            self.persisted_journal = 0;
        } else {
            store.cat.append_index(self.record.id, &journal)?;
            self.persisted_journal += journal.len();
        }
        Ok(())
    }

    /// Takes the directories found new since the last call (to be listed again once the
    /// watcher surely watches them).
    pub fn take_new_dirs(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.new_dirs)
    }

    /// Persists index changes made by [`Workspace::refresh`] (after the batch's objects are
    /// committed).
    pub fn persist(&mut self, store: &Store) -> Result<()> {
        self.persist_index(store)
    }

    /// The current tree (after [`Workspace::refresh`]).
    pub fn root_tree(&mut self, batch: &Batch<'_>) -> Result<Id> {
        self.index.root_tree(batch)
    }

    /// Takes a snapshot. An auto save that finds the tree unchanged since the last snapshot or
    /// restore records nothing and returns the latest snapshot.
    pub fn save(&mut self, store: &Store, opts: &SaveOptions) -> Result<SaveOutcome> {
        let started = std::time::Instant::now();
        let batch = store.batch();
        let warnings = self.refresh(&batch, &opts.changes)?;
        let refreshed = started.elapsed();
        let root = self.index.root_tree(&batch)?;
        let latest = store.cat.latest(self.record.id)?;
        tracing::debug!(
            workspace = %self.root.display(),
            refresh_ms = refreshed.as_millis() as u64,
            trees_ms = (started.elapsed() - refreshed).as_millis() as u64,
            "save: index up to date"
        );
        if opts.trigger == Trigger::Auto
            && let Some(latest) = &latest
            && (self.baseline == Some(root) || latest.root == root)
        {
            batch.commit_objects()?;
            self.persist_index(store)?;
            batch.finish()?;
            self.baseline = Some(root);
            return Ok(SaveOutcome {
                snapshot: latest.clone(),
                created: false,
            });
        }
        let before_commit = started.elapsed();
        let snapshot =
            self.record_snapshot(store, &batch, root, latest.as_ref(), opts, warnings)?;
        batch.finish()?;
        tracing::debug!(
            workspace = %self.root.display(),
            commit_ms = (started.elapsed() - before_commit).as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "save: committed"
        );
        Ok(SaveOutcome {
            snapshot,
            created: true,
        })
    }

    /// Records a snapshot of `root` (the index's current tree): commits the batch's objects,
    /// writes the record and the index journal. The caller finishes the batch.
    fn record_snapshot(
        &mut self,
        store: &Store,
        batch: &Batch<'_>,
        root: Id,
        latest: Option<&SnapshotRecord>,
        opts: &SaveOptions,
        mut warnings: Vec<String>,
    ) -> Result<SnapshotRecord> {
        let (git_branch, git_head) = match git::find_git_dir(&self.root) {
            Some(dir) => git::head(&dir),
            None => (String::new(), String::new()),
        };
        let t = std::time::Instant::now();
        let counts = diff::count(store, latest.map(|l| l.root), Some(root))?;
        let (new_blobs, new_bytes) = batch.written();
        let (files, bytes) = self.index.totals();
        let created_us = unique_now_us();
        warnings.truncate(100);
        let snapshot = SnapshotRecord {
            id: snapshot_id(self.record.id, created_us, &root),
            workspace: self.record.id,
            created_us,
            root,
            parent: latest.map(|l| l.id),
            trigger: opts.trigger,
            message: opts.message.clone(),
            pinned: opts.pin,
            files,
            bytes,
            new_blobs,
            new_bytes,
            added: counts.added,
            modified: counts.modified,
            deleted: counts.deleted,
            rescan: opts.rescan,
            warnings,
            git_branch,
            git_head,
        };
        let count_ms = t.elapsed().as_millis() as u64;
        batch.commit_objects()?;
        store.cat.put_snapshot(&snapshot)?;
        let t = std::time::Instant::now();
        self.persist_index(store)?;
        tracing::debug!(
            count_ms,
            persist_ms = t.elapsed().as_millis() as u64,
            "snapshot recorded"
        );
        self.baseline = Some(root);
        tracing::info!(
            workspace = %self.root.display(),
            snapshot = %snapshot.hex_id(),
            trigger = snapshot.trigger.as_str(),
            added = snapshot.added,
            modified = snapshot.modified,
            deleted = snapshot.deleted,
            new_bytes,
            "snapshot taken"
        );
        Ok(snapshot)
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

fn snapshot_id(ws: u64, created_us: u64, root: &Id) -> u64 {
    let mut seed = Vec::with_capacity(40);
    seed.extend_from_slice(&ws.to_le_bytes());
    seed.extend_from_slice(&created_us.to_le_bytes());
    seed.extend_from_slice(&root.0);
    seed.extend_from_slice(&now_ns().to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&seed)
}

/// Reads one file or symlink and stores its content, making sure what is stored is a state the
/// file really had: the metadata is checked before and after reading, and the read repeated
/// when it changed.
fn read_object(
    batch: &Batch<'_>,
    counters: &WorkspaceCounters,
    path: &Path,
    first: &Stat,
) -> Result<ReadOutcome> {
    let mut expected = *first;
    for _ in 0..READ_ATTEMPTS {
        let started = now_ns();
        let attempt = match expected.kind {
            Kind::Symlink => read_symlink(batch, path, &expected),
            _ => read_file(batch, path, &expected),
        };
        match attempt {
            Ok(Some((st, id))) => {
                counters.files_hashed.fetch_add(1, Ordering::Relaxed);
                counters.bytes_hashed.fetch_add(st.size, Ordering::Relaxed);
                let racy = st.mtime_ns >= started - RACY_WINDOW_NS;
                return Ok(ReadOutcome::Stored(st.to_meta(id, racy)));
            }
            Ok(None) => match Stat::lstat(path) {
                // Changed while being read: try again with what it is now.
                Ok(Some(Some(st))) if st.kind != Kind::Dir => expected = st,
                Ok(Some(_)) | Ok(None) => return Ok(ReadOutcome::Gone),
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
    /// Each reading thread's buffer, reused from one file to the next.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A thread keeps at most this much read buffer between files.
const READ_BUF_KEPT: usize = 1 << 20;

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
    data.reserve(before.size as usize + 1);
    file.read_to_end(data)?;
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

fn read_file(batch: &Batch<'_>, path: &Path, expected: &Stat) -> io::Result<Option<(Stat, Id)>> {
    let mut file = open_nofollow(path)?;
    let before =
        Stat::from_meta(&file.metadata()?).ok_or_else(|| io::Error::other("not a regular file"))?;
    if before.kind != Kind::File || before.ino != expected.ino {
        return Ok(None);
    }
    if before.size <= IN_MEMORY_LIMIT {
        return READ_BUF.with(|buf| {
            let mut data = buf.borrow_mut();
            data.clear();
            let res = read_small(batch, &mut file, path, &before, &mut data);
            if data.capacity() > READ_BUF_KEPT {
                *data = Vec::new();
            }
            res
        });
    }
    // Large: hash in a first pass; store in a second only if the content is new.
    let (id, len) = Id::of_reader(&mut file)?;
    let after =
        Stat::from_meta(&file.metadata()?).ok_or_else(|| io::Error::other("not a regular file"))?;
    if !same_version(&before, &after) || len != after.size {
        return Ok(None);
    }
    if batch.store().contains(&id).map_err(store_err)? {
        // Adopt through a zero-cost put path: the store already has it.
        return Ok(Some((after, id)));
    }
    let compress = worth_compressing(&mut file)?;
    let mut file = open_nofollow(path)?;
    match batch
        .put_stream(id, len, &mut file, compress)
        .map_err(store_err)?
    {
        Streamed::Stored { .. } => {
            let last = Stat::from_meta(&file.metadata()?)
                .ok_or_else(|| io::Error::other("not a regular file"))?;
            if same_version(&after, &last) {
                Ok(Some((last, id)))
            } else {
                Ok(None)
            }
        }
        Streamed::Changed => Ok(None),
    }
}

/// Compresses a 1 MiB sample from the start of a large file to decide whether LZ4 pays.
fn worth_compressing(file: &mut File) -> io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))?;
    let mut sample = vec![0u8; 1 << 20];
    let mut n = 0;
    while n < sample.len() {
        match file.read(&mut sample[n..])? {
            0 => break,
            k => n += k,
        }
    }
    sample.truncate(n);
    let compressed = lz4_flex::block::compress(&sample);
    Ok(compressed.len() < n - n / 10)
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// The metadata of `path` relative to the workspace, as a string for messages.
pub fn display_rel(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}
