//! The warm file index: what every saved path was when last read, as a directory tree whose
//! nodes cache their tree ids. A change invalidates only the cached ids on its path to the root,
//! so computing the root tree after a change re-encodes only those directories.

mod children;
mod encode;

use self::children::{Attrs, Body, Children, Leaf};
use super::rules::split_last;
use crate::store::catalog::{FileMeta, IndexChange};
use crate::store::tree::PartRef;
use crate::store::{Id, Kind};

/// Sibling directories whose trees are encoded in parallel from this many on (an incremental
/// save re-encodes a few, for which waking rayon's threads costs more than it saves).
const PARALLEL_TREES: usize = 16;

/// Entries for one directory from which [`Index::insert_many`] merges them in one pass instead
/// of inserting each (each insert into the sorted entries moves those after it).
const MERGE_RUN: usize = 16;

/// A directory in the index.
#[derive(Debug, Clone)]
pub struct DirNode {
    /// The directory's own metadata (mode matters).
    pub meta: FileMeta,
    /// Entries by name, in the byte order trees use.
    children: Children,
    /// The id of this directory's tree, if computed since the last change below it.
    pub tree: Option<Id>,
    /// A directory stored split (tree format rule 5): its parts as last stored, so that a
    /// change re-encodes only the part it falls in.
    parts: Option<Box<Parts>>,
    /// The names changed since this directory's tree was last encoded, so that encoding it
    /// again looks only at those children for subdirectories to encode first, not at all of
    /// them (a folder of 200,000 files with one changed). Empty with `scan_all` when there are
    /// too many to list or the directory is new.
    changed: Vec<Vec<u8>>,
    /// Every child may need encoding: look at all of them.
    scan_all: bool,
}

/// The parts of a split directory as last stored, in name order.
#[derive(Debug, Clone, Default)]
struct Parts {
    list: Vec<CachedPart>,
}

/// One stored part: a change to a name from `first` up to the next part's first name makes
/// it stale.
#[derive(Debug, Clone)]
struct CachedPart {
    part: PartRef,
    stale: bool,
}

impl DirNode {
    fn new(meta: FileMeta) -> DirNode {
        DirNode {
            meta,
            children: Children::default(),
            tree: None,
            parts: None,
            changed: Vec::new(),
            scan_all: true,
        }
    }

    /// Invalidates the cached tree id after a change to the entry `name` (or below it), and
    /// the part that holds `name`.
    fn touch(&mut self, name: &[u8]) {
        self.tree = None;
        if !self.scan_all {
            if self.changed.len() >= PARALLEL_TREES {
                // So many that the children are better looked at all (and in parallel).
                self.scan_all = true;
                self.changed = Vec::new();
            } else if self.changed.last().is_none_or(|n| n.as_slice() != name) {
                self.changed.push(name.to_vec());
            }
        }
        if let Some(parts) = self.parts.as_mut() {
            let at = parts
                .list
                .partition_point(|p| p.part.first.as_slice() <= name)
                .saturating_sub(1);
            if let Some(p) = parts.list.get_mut(at) {
                p.stale = true;
            }
        }
    }
}

impl DirNode {
    /// Whether the directory has no entries.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// How many entries it has.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Its entries' names, in name order.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.children.iter().map(|(n, _)| n)
    }

    /// Whether it has an entry `name`.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.children.find(name).is_ok()
    }
}

/// An index entry, as [`Index::get`] finds it.
#[derive(Debug, Clone, Copy)]
pub enum Node<'a> {
    /// A file or symlink.
    Leaf(FileMeta),
    /// A directory.
    Dir(&'a DirNode),
}

impl Node<'_> {
    /// The entry's metadata.
    pub fn meta(&self) -> FileMeta {
        match self {
            Node::Leaf(m) => *m,
            Node::Dir(d) => d.meta,
        }
    }
}

/// Default metadata for a directory first met as the parent of something.
pub fn dir_meta(mode: u32) -> FileMeta {
    FileMeta {
        kind: Kind::Dir,
        mode,
        size: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        ino: 0,
        dev: 0,
        id: Id::default(),
        racy: false,
    }
}

fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

/// A workspace's warm index, with a journal of changes not yet persisted.
#[derive(Debug, Clone)]
pub struct Index {
    root: DirNode,
    log: Log,
    attrs: Attrs,
}

/// What every change to the index updates besides the tree: the totals and the journal.
#[derive(Debug, Clone, Default)]
struct Log {
    files: u64,
    bytes: u64,
    /// Changes not yet persisted, in the order they were made.
    journal: Journal,
    /// Changes past this many are not recorded: the index will be persisted whole.
    journal_limit: Option<usize>,
    /// More changes were made than the limit allows.
    overflowed: bool,
}

impl Log {
    /// Records a change of `path` (unless the journal overflowed).
    fn record(&mut self, path: &[u8], meta: Option<FileMeta>) {
        if self.overflowed {
            return;
        }
        if self.journal_limit.is_some_and(|l| self.journal.len() >= l) {
            self.overflowed = true;
            self.journal = Vec::new();
            return;
        }
        self.journal.push(IndexChange {
            path: path.to_vec(),
            meta,
        });
    }
}

impl Default for Index {
    fn default() -> Self {
        Index {
            root: DirNode::new(dir_meta(0o755)),
            log: Log::default(),
            attrs: Attrs::default(),
        }
    }
}

impl Index {
    /// Builds an index from persisted entries (path order), without journaling them.
    pub fn load(entries: impl IntoIterator<Item = (Vec<u8>, FileMeta)>) -> Index {
        let mut index = Index::default();
        let mut rest = Vec::new();
        for (path, meta) in entries {
            if path.is_empty() {
                index.root.meta = meta;
            } else {
                rest.push((path, meta));
            }
        }
        // Nothing loaded is journaled.
        index.log.journal_limit = Some(0);
        index.insert_many(rest);
        index.log = Log {
            files: index.log.files,
            bytes: index.log.bytes,
            ..Log::default()
        };
        fn shrink(dir: &mut DirNode) {
            dir.children.shrink();
            for body in dir.children.bodies_mut() {
                if let Body::Dir(d) = body {
                    shrink(d);
                }
            }
        }
        shrink(&mut index.root);
        index
    }

    /// Files and symlinks in the index, and their total size.
    pub fn totals(&self) -> (u64, u64) {
        (self.log.files, self.log.bytes)
    }

    /// The node at `path` (none for an empty path: see [`Index::root`]).
    pub fn get(&self, path: &[u8]) -> Option<Node<'_>> {
        let mut dir = &self.root;
        let mut comps = components(path).peekable();
        comps.peek()?;
        while let Some(c) = comps.next() {
            let body = dir.children.body(dir.children.find(c).ok()?);
            if comps.peek().is_none() {
                return Some(match body {
                    Body::Leaf(l) => Node::Leaf(l.meta(&self.attrs)),
                    Body::Dir(d) => Node::Dir(d),
                });
            }
            match body {
                Body::Dir(d) => dir = d,
                Body::Leaf(_) => return None,
            }
        }
        None
    }

    /// The root directory.
    pub fn root(&self) -> &DirNode {
        &self.root
    }

    /// Inserts or replaces the entry at `path`. A directory keeps its children when its
    /// metadata changes.
    pub fn insert(&mut self, path: &[u8], meta: FileMeta) {
        if path.is_empty() {
            self.root.meta = meta;
            self.root.tree = None;
            self.log.record(b"", Some(meta));
            return;
        }
        let (parent, name) = split_last(path);
        let dir = dir_mut(&mut self.root, parent, &mut self.log);
        put(dir, path, name, meta, &mut self.log, &mut self.attrs);
    }

    /// Inserts or replaces many entries (none of them the root): like [`Index::insert`] for
    /// each, but the way to a parent directory is walked once for a run of its entries (in path
    /// order, a directory's entries come in few runs), and a long run of new names is merged
    /// into the directory's sorted entries in one pass (a walk finds them in no order).
    pub fn insert_many(&mut self, mut entries: Vec<(Vec<u8>, FileMeta)>) {
        entries.retain(|(p, _)| !p.is_empty());
        let mut i = 0;
        while i < entries.len() {
            let parent = split_last(&entries[i].0).0;
            let end = i + entries[i..]
                .iter()
                .position(|(p, _)| split_last(p).0 != parent)
                .unwrap_or(entries.len() - i);
            let dir = dir_mut(&mut self.root, parent, &mut self.log);
            let run = &mut entries[i..end];
            // In order, after every name there (a persisted index loads so): each goes at
            // the end.
            let appends = run
                .windows(2)
                .all(|w| split_last(&w[0].0).1 < split_last(&w[1].0).1)
                && dir.children.find(split_last(&run[0].0).1) == Err(dir.children.len());
            if run.len() < MERGE_RUN || appends {
                for (path, meta) in run.iter() {
                    put(
                        dir,
                        path,
                        split_last(path).1,
                        *meta,
                        &mut self.log,
                        &mut self.attrs,
                    );
                }
            } else {
                // Stable: a name given twice keeps its changes in order.
                run.sort_by(|a, b| split_last(&a.0).1.cmp(split_last(&b.0).1));
                put_run(dir, run, &mut self.log, &mut self.attrs);
            }
            i = end;
        }
    }

    /// Removes the entry at `path` and everything below it.
    pub fn remove(&mut self, path: &[u8]) {
        if self.get(path).is_none() {
            return;
        }
        let (parent, name) = split_last(path);
        let dir = dir_mut(&mut self.root, parent, &mut self.log);
        dir.touch(name);
        if let Ok(i) = dir.children.find(name) {
            let old = dir.children.remove_at(i);
            forget(path, &old, &mut self.log);
        }
    }

    /// Every path below `path` (inclusive), with its metadata.
    pub fn walk(&self, mut f: impl FnMut(&[u8], &FileMeta)) {
        fn rec(
            prefix: &mut Vec<u8>,
            dir: &DirNode,
            attrs: &Attrs,
            f: &mut dyn FnMut(&[u8], &FileMeta),
        ) {
            for (name, body) in dir.children.iter() {
                let len = prefix.len();
                if len > 0 {
                    prefix.push(b'/');
                }
                prefix.extend_from_slice(name);
                match body {
                    Body::Leaf(l) => f(prefix, &l.meta(attrs)),
                    Body::Dir(d) => {
                        f(prefix, &d.meta);
                        rec(prefix, d, attrs, f);
                    }
                }
                prefix.truncate(len);
            }
        }
        rec(&mut Vec::new(), &self.root, &self.attrs, &mut f);
    }

    /// Every entry, the root's first, as changes that rebuild the index from nothing.
    pub fn entries(&self) -> Vec<IndexChange> {
        let mut out = vec![IndexChange {
            path: Vec::new(),
            meta: Some(self.root.meta),
        }];
        self.walk(|path, meta| {
            out.push(IndexChange {
                path: path.to_vec(),
                meta: Some(*meta),
            })
        });
        out
    }

    /// Forgets cached tree ids of directories whose tree is no longer stored (garbage
    /// collection dropped it), and those of their parents. Directories whose tree is still
    /// there keep it: a tree's id names its content, so it is still right. Returns how many
    /// were forgotten.
    pub fn forget_missing_trees(&mut self, stored: &dyn Fn(&Id) -> bool) -> usize {
        fn rec(dir: &mut DirNode, stored: &dyn Fn(&Id) -> bool, forgotten: &mut usize) -> bool {
            let mut valid = true;
            for body in dir.children.bodies_mut() {
                if let Body::Dir(d) = body {
                    valid &= rec(d, stored, forgotten);
                }
            }
            let parts_stored = dir
                .parts
                .as_ref()
                .is_none_or(|p| p.list.iter().all(|c| stored(&c.part.id)));
            if !valid {
                dir.scan_all = true;
            }
            if !(valid && parts_stored) {
                // Parts name the subtrees: none is trusted once one below is gone.
                dir.parts = None;
            }
            match dir.tree {
                Some(id) if valid && parts_stored && stored(&id) => true,
                Some(_) => {
                    dir.tree = None;
                    *forgotten += 1;
                    false
                }
                None => false,
            }
        }
        let mut forgotten = 0;
        rec(&mut self.root, stored, &mut forgotten);
        forgotten
    }

    /// Takes `id` as the cached tree of the directory at `path` (the root for an empty path),
    /// as a persisted index recorded it: for a directory whose tree is stored whole (split ones
    /// keep none, their parts are not known). Returns whether it was taken. The caller checks
    /// the trees are still stored ([`Index::forget_missing_trees`]).
    pub fn set_cached_tree(&mut self, path: &[u8], id: Id) -> bool {
        let mut dir = &mut self.root;
        for c in components(path) {
            match dir.children.dir_mut(c) {
                Some(d) => dir = d,
                None => return false,
            }
        }
        if dir.children.len() > crate::store::tree::SPLIT_MIN {
            return false;
        }
        dir.tree = Some(id);
        dir.parts = None;
        dir.changed = Vec::new();
        dir.scan_all = false;
        true
    }

    /// How many directories have a cached tree id.
    pub fn cached_trees(&self) -> usize {
        fn rec(dir: &DirNode) -> usize {
            usize::from(dir.tree.is_some())
                + dir
                    .children
                    .iter()
                    .map(|(_, b)| match b {
                        Body::Dir(d) => rec(d),
                        Body::Leaf(_) => 0,
                    })
                    .sum::<usize>()
        }
        rec(&self.root)
    }

    /// Changes recorded since the journal was last taken (a path changed twice counts twice);
    /// `usize::MAX` when more were made than the journal's limit.
    pub fn journal_len(&self) -> usize {
        if self.log.overflowed {
            usize::MAX
        } else {
            self.log.journal.len()
        }
    }

    /// Stops recording changes past `limit` (see [`Index::journal_len`]): when a journal that
    /// long would be replaced by the whole index anyway, a large change need not copy every
    /// path into it.
    pub fn limit_journal(&mut self, limit: usize) {
        self.log.journal_limit = Some(limit);
    }

    /// Makes the next persist write the whole index as a new base, however few changes are
    /// recorded (the persisted index is not known to hold the rest).
    pub fn rewrite_on_persist(&mut self) {
        self.log.journal = Vec::new();
        self.log.overflowed = true;
    }

    /// Forgets the changes recorded (a new persisted base holds them all).
    pub fn clear_journal(&mut self) {
        self.log.journal = Vec::new();
        self.log.overflowed = false;
    }

    /// Takes the changes to persist: the last change of each path, in path order.
    pub fn take_journal(&mut self) -> Vec<IndexChange> {
        let mut journal = std::mem::take(&mut self.log.journal);
        // A stable sort keeps each path's changes in the order they were made; the last wins.
        journal.sort_by(|a, b| a.path.cmp(&b.path));
        let mut out: Vec<IndexChange> = Vec::with_capacity(journal.len());
        for change in journal {
            match out.last_mut() {
                Some(last) if last.path == change.path => *last = change,
                _ => out.push(change),
            }
        }
        out
    }
}

fn count(body: &Body) -> (u64, u64) {
    match body {
        Body::Leaf(l) => (1, l.size),
        Body::Dir(d) => d
            .children
            .iter()
            .map(|(_, b)| count(b))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)),
    }
}

fn collect_paths(path: &[u8], body: &Body, out: &mut Vec<Vec<u8>>) {
    out.push(path.to_vec());
    if let Body::Dir(d) = body {
        for (name, child) in d.children.iter() {
            let mut p = path.to_vec();
            p.push(b'/');
            p.extend_from_slice(name);
            collect_paths(&p, child, out);
        }
    }
}

fn forget(path: &[u8], body: &Body, log: &mut Log) {
    let (f, b) = count(body);
    log.files -= f;
    log.bytes -= b;
    let mut gone = Vec::new();
    collect_paths(path, body, &mut gone);
    for p in gone {
        log.record(&p, None);
    }
}

type Journal = Vec<IndexChange>;

fn new_dir(meta: FileMeta) -> Body {
    Body::Dir(Box::new(DirNode::new(meta)))
}

/// Puts `meta` as the entry `name` of `dir` (which is at the parent of `path`).
fn put(
    dir: &mut DirNode,
    path: &[u8],
    name: &[u8],
    meta: FileMeta,
    log: &mut Log,
    attrs: &mut Attrs,
) {
    dir.touch(name);
    match dir.children.find(name) {
        Ok(i) => {
            apply(Some(dir.children.body_mut(i)), path, meta, log, attrs);
        }
        Err(i) => {
            if let Some(body) = apply(None, path, meta, log, attrs) {
                dir.children.insert_at(i, name, body);
            }
        }
    }
}

/// [`put`] for each of `run` (entries of `dir`, sorted by name), the new names merged in at
/// the end in one pass.
fn put_run(dir: &mut DirNode, run: &[(Vec<u8>, FileMeta)], log: &mut Log, attrs: &mut Attrs) {
    let mut fresh: Vec<(&[u8], Body)> = Vec::new();
    for (path, meta) in run {
        let name = split_last(path).1;
        dir.touch(name);
        match fresh.last_mut().filter(|(n, _)| *n == name) {
            // The same new name again.
            Some((_, body)) => {
                apply(Some(body), path, *meta, log, attrs);
            }
            None => match dir.children.find(name) {
                Ok(i) => {
                    apply(Some(dir.children.body_mut(i)), path, *meta, log, attrs);
                }
                Err(_) => {
                    if let Some(body) = apply(None, path, *meta, log, attrs) {
                        fresh.push((name, body));
                    }
                }
            },
        }
    }
    dir.children.merge(fresh);
}

/// Makes `old` (`None`: no entry yet) the entry `meta` says `path` is, updating the totals
/// and the journal; returns the entry to insert when there was none.
fn apply(
    old: Option<&mut Body>,
    path: &[u8],
    meta: FileMeta,
    log: &mut Log,
    attrs: &mut Attrs,
) -> Option<Body> {
    let mut inserted = None;
    match (meta.kind, old) {
        (Kind::Dir, Some(Body::Dir(d))) => {
            d.meta = meta;
            d.tree = None;
        }
        (Kind::Dir, None) => inserted = Some(new_dir(meta)),
        (_, None) => {
            log.files += 1;
            log.bytes += meta.size;
            inserted = Some(Body::Leaf(Leaf::new(&meta, attrs)));
        }
        (_, Some(Body::Leaf(old))) if meta.kind != Kind::Dir => {
            log.bytes = log.bytes - old.size + meta.size;
            *old = Leaf::new(&meta, attrs);
        }
        (kind, Some(old)) => {
            // A file becomes a directory or the other way round: what was below a replaced
            // directory leaves the persisted index too.
            let new = if kind == Kind::Dir {
                new_dir(meta)
            } else {
                log.files += 1;
                log.bytes += meta.size;
                Body::Leaf(Leaf::new(&meta, attrs))
            };
            let old = std::mem::replace(old, new);
            let (of, ob) = count(&old);
            log.files -= of;
            log.bytes -= ob;
            let mut gone = Vec::new();
            collect_paths(path, &old, &mut gone);
            for p in gone.iter().filter(|p| p.as_slice() != path) {
                log.record(p, None);
            }
        }
    }
    log.record(path, Some(meta));
    inserted
}

/// The directory at `path` below `root`, created (with its parents) if missing or not a
/// directory, with every cached tree id on the way invalidated.
fn dir_mut<'a>(root: &'a mut DirNode, path: &[u8], log: &mut Log) -> &'a mut DirNode {
    let mut dir = root;
    dir.tree = None;
    let mut start = 0;
    while start < path.len() {
        let end = path[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(path.len(), |i| start + i);
        let c = &path[start..end];
        let prefix = &path[..end];
        start = end + 1;
        if c.is_empty() {
            continue;
        }
        dir.touch(c);
        match dir.children.find(c) {
            Ok(i) if matches!(dir.children.body(i), Body::Dir(_)) => {}
            Ok(i) => {
                let meta = dir_meta(0o755);
                let old = std::mem::replace(dir.children.body_mut(i), new_dir(meta));
                forget(prefix, &old, log);
                log.record(prefix, Some(meta));
            }
            Err(i) => {
                let meta = dir_meta(0o755);
                log.record(prefix, Some(meta));
                dir.children.insert_at(i, c, new_dir(meta));
            }
        }
        let Some(d) = dir.children.dir_mut(c) else {
            unreachable!("just ensured a directory")
        };
        dir = d;
        dir.tree = None;
    }
    dir
}

#[cfg(test)]
mod tests;
