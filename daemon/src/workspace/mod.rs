//! One workspace: scanning, the warm index, save, restore and diff.
//!
//! A [`Workspace`] owns the warm index of one folder. Every operation first brings the index up
//! to date with the disk ([`Workspace::refresh`]), either for a set of dirty paths (what the
//! watcher saw change: the cost grows with the change) or for the whole tree (a stat-walk that
//! re-reads only entries whose metadata changed).

pub mod chunking;
pub mod diff;
pub mod git;
pub mod index;
mod refresh;

pub use self::refresh::release_thread_buffers;
pub mod restore;
pub mod rules;
mod save;
pub mod scan;

pub use self::save::{SaveOptions, SaveOutcome};

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use self::index::Index;
use self::rules::{Exclusion, Rules};
use crate::error::{Error, Result};
use crate::store::catalog::{self, LoadedIndex, WorkspaceRecord};
use crate::store::{Batch, Id, Store};

/// A file read within this long of its last modification is re-read next time (a write in the
/// same timestamp tick would not change its metadata).
const RACY_WINDOW_NS: i64 = 1_000_000_000;
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
    /// Files and symlinks the stat-walks looked at, counted as they go (a baseline's
    /// progress).
    pub files_walked: AtomicU64,
    /// Bytes the saves added to the store (after compression), counted as they are written.
    pub bytes_stored: AtomicU64,
    /// Paths stat-ed.
    pub paths_stated: AtomicU64,
    /// Full stat-walks.
    pub full_scans: AtomicU64,
    /// Directory trees encoded (only those whose content changed, or whose cached id a
    /// garbage collection invalidated).
    pub trees_encoded: AtomicU64,
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
    /// Set once the watcher's kernel watch is in place (see [`Workspace::set_watching`]).
    watching: Option<Arc<OnceLock<Instant>>>,
    /// The index changed since it was last persisted: an operation that fails now may leave
    /// it naming objects that were never committed (see [`Workspace::recover_index`]).
    unpersisted: bool,
    /// The index could not be taken back from the catalog: the next refresh walks everything.
    must_walk: bool,
    /// Stored bytes each file's new versions added since the last snapshot recorded them.
    costs: std::collections::HashMap<Vec<u8>, u64>,
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

/// Builds the warm index from persisted entries, with the tree ids they record for
/// directories (format rule 5) cached where the store still holds them: a restart then
/// encodes only the trees of what changed.
fn load_index(store: &Store, mut entries: Vec<(Vec<u8>, catalog::FileMeta)>) -> Index {
    let mut trees = Vec::new();
    for (path, meta) in &mut entries {
        if meta.kind == crate::store::Kind::Dir && meta.id != Id::default() {
            trees.push((path.clone(), std::mem::take(&mut meta.id)));
        }
    }
    let mut index = Index::load(entries);
    if trees.is_empty() {
        return index;
    }
    let mut taken = 0;
    for (path, id) in trees {
        taken += usize::from(index.set_cached_tree(&path, id));
    }
    let forgotten = index.forget_missing_trees(&|id| store.contains(id).unwrap_or(false));
    tracing::debug!(taken, forgotten, "tree ids loaded with the warm index");
    index
}

/// `entries` of a new persisted base (from [`Index::entries`]), each directory's with the id
/// of its tree as cached now, or zero (format rule 5).
fn with_tree_ids(
    index: &Index,
    mut entries: Vec<catalog::IndexChange>,
) -> Vec<catalog::IndexChange> {
    for e in &mut entries {
        let Some(meta) = e
            .meta
            .as_mut()
            .filter(|m| m.kind == crate::store::Kind::Dir)
        else {
            continue;
        };
        let tree = if e.path.is_empty() {
            index.root().tree
        } else {
            match index.get(&e.path) {
                Some(index::Node::Dir(d)) => d.tree,
                _ => None,
            }
        };
        meta.id = tree.unwrap_or_default();
    }
    entries
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
        io::ErrorKind::NotFound => Error::NoSuchPath {
            path: path.to_path_buf(),
        },
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
    /// Save `.git` too.
    pub include_git: bool,
    /// Which automatic snapshots are kept.
    pub retention: crate::retention::Policy,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            idle_ms: 5_000,
            max_delay_ms: 60_000,
            include_dependency_dirs: false,
            include_git: false,
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
    let stored = store.cat.workspace_by_path(&bytes)?;
    let record = match stored.clone() {
        Some(mut r) => {
            r.idle_ms = opts.idle_ms;
            r.max_delay_ms = opts.max_delay_ms;
            r.include_dependency_dirs = opts.include_dependency_dirs;
            r.include_git = opts.include_git;
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
            include_git: opts.include_git,
            created_us: now_us(),
            watched: true,
            retention: opts.retention,
            tripwire: None,
        },
    };
    // A re-watch after a restart changes nothing: no write, no durable flush on its way.
    if stored.as_ref() != Some(&record) {
        store.cat.put_workspace(&record)?;
        store.flush()?;
    }
    Ok(record)
}

impl Workspace {
    /// Opens a workspace from its record, loading the persisted warm index.
    pub fn open(store: &Store, record: WorkspaceRecord) -> Result<Workspace> {
        let root = PathBuf::from(std::ffi::OsStr::from_bytes(&record.path));
        let rules = Arc::new(Rules::new(&root, store.dir(), record.include()));
        let LoadedIndex {
            entries,
            journal: persisted_journal,
        } = store.cat.load_index(record.id)?;
        let persisted_base = entries.len();
        let index = load_index(store, entries);
        let baseline = store.cat.latest(record.id)?.map(|s| s.root);
        let mut ws = Workspace {
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
            watching: None,
            unpersisted: false,
            must_walk: false,
            costs: Default::default(),
        };
        ws.limit_journal();
        Ok(ws)
    }

    /// Tells the workspace that a watcher is being started, and will set `placed` once its
    /// kernel watch is in place: until then a full refresh notes what it looked at, and checks
    /// it again once the watch is there (a change in between would reach neither).
    pub fn set_watching(&mut self, placed: Arc<OnceLock<Instant>>) {
        self.watching = Some(placed);
    }

    /// The workspace's record.
    pub fn record(&self) -> &WorkspaceRecord {
        &self.record
    }

    /// Replaces the record (options changed); exclusion rules are re-read.
    pub fn set_record(&mut self, store: &Store, record: WorkspaceRecord) {
        self.rules = Arc::new(Rules::new(&self.root, store.dir(), record.include()));
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

    /// Every folder the warm index holds, the root (`""`) among them: what a re-watch
    /// watches before it walks (see `watch::dirs::Dirs::watch_known`).
    pub fn index_dirs(&self) -> std::collections::BTreeSet<Vec<u8>> {
        let mut out = std::collections::BTreeSet::new();
        out.insert(Vec::new());
        self.index.walk(|p, m| {
            if m.kind == crate::store::Kind::Dir {
                out.insert(p.to_vec());
            }
        });
        out
    }

    /// The folders that hold a watch once a full walk is done: every folder of the index, and
    /// the excluded folders recognised by evidence that the walk left out (watched by
    /// themselves, so the evidence going away is seen).
    pub fn watch_wanted(&self) -> std::collections::BTreeSet<Vec<u8>> {
        let mut out = self.index_dirs();
        for (p, why) in &self.excluded {
            if matches!(why, Exclusion::Dependency(_))
                && crate::watch::dirs::Dirs::watched_alone(&self.rules, p)
                && std::fs::symlink_metadata(rules::abs(&self.root, p)).is_ok_and(|m| m.is_dir())
            {
                out.insert(p.clone());
            }
        }
        out
    }

    /// What to look at again in folders that got their watch only after a walk listed them:
    /// each folder, and what the index holds directly in it (a file changed between the
    /// listing and the watch sent no event). An evidence folder's evidence files are among
    /// them, so its rules are read again.
    pub fn recheck_paths(&self, dirs: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for d in dirs {
            out.push(d.clone());
            match self.index.get(d) {
                Some(index::Node::Dir(node)) => {
                    out.extend(node.names().map(|name| rules::join(d, name)));
                }
                _ if d.is_empty() => {
                    let root = self.index.root();
                    out.extend(root.names().map(<[u8]>::to_vec));
                }
                _ => {
                    for f in ["CACHEDIR.TAG", "pyvenv.cfg"] {
                        out.push(rules::join(d, f.as_bytes()));
                    }
                }
            }
        }
        out
    }

    /// Journal entries the persisted index may take on top of its base before it is rewritten.
    fn journal_budget(&self) -> usize {
        self.persisted_base / 4 + JOURNAL_SLACK
    }

    /// Tells the index how many changes are worth journaling: past them, a new base is written.
    fn limit_journal(&mut self) {
        let left = self.journal_budget().saturating_sub(self.persisted_journal);
        self.index.limit_journal(left + 1);
    }

    /// Persists the index journal (after the objects it names are committed). A journal grown
    /// past a quarter of the persisted base is folded into a new base.
    fn persist_index(&mut self, store: &Store) -> Result<()> {
        let pending = self.index.journal_len();
        if pending == 0 {
            return Ok(());
        }
        // Counted before merging repeated changes of a path: a new base a little early is
        // harmless, and a journal the base replaces need not be sorted.
        if self.persisted_journal.saturating_add(pending) > self.journal_budget() {
            let entries = with_tree_ids(&self.index, self.index.entries());
            store.cat.write_index_base(self.record.id, &entries)?;
            self.index.clear_journal();
            self.persisted_base = entries.len();
            self.persisted_journal = 0;
        } else {
            let journal = self.index.take_journal();
            store.cat.append_index(self.record.id, &journal)?;
            self.persisted_journal += journal.len();
        }
        self.limit_journal();
        self.unpersisted = false;
        Ok(())
    }

    /// After an operation failed: an index changed since it was last persisted may name
    /// objects whose batch never committed (a full disk while the last buffer was written
    /// out), and a later save that trusts it would record them. The persisted index is what
    /// the last operation that succeeded left, so it is taken back; the changes the failed
    /// operation looked at stay pending and are looked at again.
    fn recover_index(&mut self, store: &Store) {
        // What the failed operation stored may not be committed: its costs are not counted.
        self.costs.clear();
        if !self.unpersisted {
            return;
        }
        match store.cat.load_index(self.record.id) {
            Ok(LoadedIndex { entries, journal }) => {
                self.persisted_base = entries.len();
                self.persisted_journal = journal;
                self.index = load_index(store, entries);
                self.limit_journal();
            }
            Err(e) => {
                tracing::error!(workspace = %self.root.display(), error = %e, "could not reload the warm index; the next save walks the whole tree");
                // What is persisted is unknown: the walk's index replaces all of it.
                self.index = Index::default();
                self.index.rewrite_on_persist();
                self.must_walk = true;
            }
        }
        self.unpersisted = false;
    }

    /// After an operation panicked while it held the workspace: the index may be half
    /// updated (naming objects no batch committed) and the changes it had taken are lost. The
    /// persisted index is taken back and the next refresh walks the whole tree.
    pub fn recover_after_panic(&mut self, store: &Store) {
        self.unpersisted = true;
        self.recover_index(store);
        self.must_walk = true;
        self.new_dirs.clear();
    }

    /// The index's root tree, encoding what changed (counted).
    fn root_tree(&mut self, batch: &Batch<'_>) -> Result<Id> {
        let (root, encoded) = self.index.root_tree(batch)?;
        self.counters
            .trees_encoded
            .fetch_add(encoded, Ordering::Relaxed);
        Ok(root)
    }

    /// Takes the directories found new since the last call (to be listed again once the
    /// watcher surely watches them).
    pub fn take_new_dirs(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.new_dirs)
    }

    /// The working tree's root id with `changes` looked at, what it needs committed and the
    /// index persisted (a diff against the working tree).
    pub fn working_tree(&mut self, store: &Store, changes: &Changes) -> Result<Id> {
        self.recovering(store, |ws| ws.current_tree(store, changes))
    }

    /// The current tree after `changes` are looked at: its objects committed, the index
    /// persisted.
    fn current_tree(&mut self, store: &Store, changes: &Changes) -> Result<Id> {
        let counters = Arc::clone(&self.counters);
        let batch = store.batch_counting(&counters.bytes_stored);
        self.refresh(&batch, changes)?;
        let root = self.root_tree(&batch)?;
        batch.commit_objects()?;
        self.persist_index(store)?;
        batch.finish()?;
        Ok(root)
    }

    /// Runs an operation that changes the index; if it fails, the index is taken back (see
    /// [`Workspace::recover_index`]).
    fn recovering<T>(
        &mut self,
        store: &Store,
        op: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let res = op(self);
        if res.is_err() {
            self.recover_index(store);
        }
        res
    }
}

/// The metadata of `path` relative to the workspace, as a string for messages.
pub fn display_rel(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

/// Faults unit tests inject into a save.
#[cfg(test)]
pub(crate) mod test_hooks {
    use std::cell::Cell;

    thread_local! {
        static PANIC_AFTER_REFRESH: Cell<bool> = const { Cell::new(false) };
    }

    /// The next save on this thread panics once its refresh has updated the index.
    pub fn panic_after_next_refresh() {
        PANIC_AFTER_REFRESH.with(|p| p.set(true));
    }

    pub(super) fn maybe_panic_after_refresh() {
        if PANIC_AFTER_REFRESH.with(|p| p.replace(false)) {
            panic!("injected: a save panics after its refresh");
        }
    }
}
