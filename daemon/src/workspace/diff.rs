//! Differences between two trees, found by walking both and skipping equal subtrees.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::store::{Entry, Id, Kind, Store, Tree};
use crate::workspace::display_rel;
use crate::workspace::rules::join;

/// How a path differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Only in the newer tree.
    Added,
    /// In both, with other content or mode.
    Modified,
    /// Only in the older tree.
    Deleted,
    /// In both, as different kinds (a file became a directory, …).
    TypeChanged,
}

/// One side of a difference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    /// What it is.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Length (entries for directories).
    pub size: u64,
    /// Content or tree id.
    pub id: Id,
}

impl From<&Entry> for Side {
    fn from(e: &Entry) -> Side {
        Side {
            kind: e.kind,
            mode: e.mode,
            size: e.size,
            id: e.id,
        }
    }
}

/// A path that differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffEntry {
    /// Relative path.
    pub path: Vec<u8>,
    /// How.
    pub change: Change,
    /// In the older tree.
    pub before: Option<Side>,
    /// In the newer tree.
    pub after: Option<Side>,
}

/// Counts of changed files and symlinks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Added.
    pub added: u64,
    /// Modified or changed kind.
    pub modified: u64,
    /// Deleted.
    pub deleted: u64,
}

/// The entries of two directories' trees, without the parts both hold: a part with the same id
/// holds the same entries on both sides (tree format rules 5 and 6), so leaving it out of both
/// changes no difference, and a large directory's unchanged parts are not even read.
fn load_pair(store: &Store, a: Option<Id>, b: Option<Id>) -> Result<(Tree, Tree)> {
    let node = |id: Option<Id>| id.map_or_else(|| Ok(Tree::default()), |id| store.tree_node(&id));
    let (na, nb) = (node(a)?, node(b)?);
    let part_ids = |t: &Tree| -> HashSet<Id> {
        if t.is_split() {
            t.entries.iter().map(|e| e.id).collect()
        } else {
            HashSet::new()
        }
    };
    let (pa, pb) = (part_ids(&na), part_ids(&nb));
    let join = |id: Option<Id>, t: Tree, other: &HashSet<Id>| match id {
        Some(id) if t.is_split() => store.join_parts(&id, &t, &|p| !other.contains(p)),
        _ => Ok(t),
    };
    Ok((join(a, na, &pb)?, join(b, nb, &pa)?))
}

/// What a [`Differ`] says of directories themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirChanges {
    /// Nothing: only what changed inside them (what people want to see).
    Skip,
    /// Directories added, deleted or re-moded too (what a restore must make, remove or chmod).
    Report,
}

/// Walks two trees.
#[derive(Debug)]
pub struct Differ<'a> {
    store: &'a Store,
    dirs: DirChanges,
    out: Vec<DiffEntry>,
}

impl<'a> Differ<'a> {
    /// A differ over `store`.
    pub fn new(store: &'a Store, dirs: DirChanges) -> Differ<'a> {
        Differ {
            store,
            dirs,
            out: Vec::new(),
        }
    }

    /// The differences found so far.
    pub fn finish(self) -> Vec<DiffEntry> {
        self.out
    }

    /// Differences between the trees `a` and `b` (either may be absent), paths under `prefix`.
    pub fn trees(&mut self, prefix: &[u8], a: Option<Id>, b: Option<Id>) -> Result<()> {
        if a == b {
            return Ok(());
        }
        let (ta, tb) = load_pair(self.store, a, b)?;
        let (mut i, mut j) = (0, 0);
        while i < ta.entries.len() || j < tb.entries.len() {
            let ea = ta.entries.get(i);
            let eb = tb.entries.get(j);
            match (ea, eb) {
                (Some(x), Some(y)) if x.name == y.name => {
                    self.entries(&join(prefix, &x.name), Some(x), Some(y))?;
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x.name < y.name => {
                    self.entries(&join(prefix, &x.name), Some(x), None)?;
                    i += 1;
                }
                (Some(x), None) => {
                    self.entries(&join(prefix, &x.name), Some(x), None)?;
                    i += 1;
                }
                (_, Some(y)) => {
                    self.entries(&join(prefix, &y.name), None, Some(y))?;
                    j += 1;
                }
                (None, None) => break,
            }
        }
        Ok(())
    }

    /// Differences between two entries at `path`.
    pub fn entries(&mut self, path: &[u8], a: Option<&Entry>, b: Option<&Entry>) -> Result<()> {
        let dir = |e: Option<&Entry>| e.filter(|e| e.kind == Kind::Dir).map(|e| e.id);
        match (a, b) {
            (None, None) => {}
            (Some(x), Some(y)) if x.kind == y.kind => {
                if x.id == y.id && x.mode == y.mode {
                    return Ok(());
                }
                if x.kind == Kind::Dir {
                    if self.dirs == DirChanges::Report && x.mode != y.mode {
                        self.push(path, Change::Modified, a, b);
                    }
                    self.trees(path, Some(x.id), Some(y.id))?;
                } else {
                    self.push(path, Change::Modified, a, b);
                }
            }
            (Some(_), Some(_)) => {
                // Deletions below an old directory come first, additions below a new one after.
                self.trees(path, dir(a), None)?;
                self.push(path, Change::TypeChanged, a, b);
                self.trees(path, None, dir(b))?;
            }
            (Some(x), None) => {
                if x.kind == Kind::Dir {
                    self.trees(path, Some(x.id), None)?;
                    if self.dirs == DirChanges::Report {
                        self.push(path, Change::Deleted, a, None);
                    }
                } else {
                    self.push(path, Change::Deleted, a, None);
                }
            }
            (None, Some(y)) => {
                if y.kind == Kind::Dir {
                    if self.dirs == DirChanges::Report {
                        self.push(path, Change::Added, None, b);
                    }
                    self.trees(path, None, Some(y.id))?;
                } else {
                    self.push(path, Change::Added, None, b);
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, path: &[u8], change: Change, a: Option<&Entry>, b: Option<&Entry>) {
        self.out.push(DiffEntry {
            path: path.to_vec(),
            change,
            before: a.map(Side::from),
            after: b.map(Side::from),
        });
    }
}

/// Differences between two trees, files and symlinks only.
pub fn diff(store: &Store, a: Option<Id>, b: Option<Id>) -> Result<Vec<DiffEntry>> {
    let mut d = Differ::new(store, DirChanges::Skip);
    d.trees(b"", a, b)?;
    Ok(d.finish())
}

/// Counts of what changed between two trees.
pub fn count(store: &Store, a: Option<Id>, b: Option<Id>) -> Result<Counts> {
    let mut c = Counts::default();
    for e in diff(store, a, b)? {
        match e.change {
            Change::Added => c.added += 1,
            Change::Deleted => c.deleted += 1,
            Change::Modified | Change::TypeChanged => c.modified += 1,
        }
    }
    Ok(c)
}

/// Checks a relative path given by a person or a client: components that are valid tree names.
pub fn validate_rel(path: &[u8]) -> Result<()> {
    if path.is_empty() || path.starts_with(b"/") {
        return Err(Error::InvalidArgument(format!(
            "{:?} is not a path inside the workspace",
            String::from_utf8_lossy(path)
        )));
    }
    for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        if !crate::store::tree::is_valid_name(c) {
            return Err(Error::InvalidArgument(format!(
                "{:?} is not a path inside the workspace (no `..`, `.` or NUL)",
                String::from_utf8_lossy(path)
            )));
        }
    }
    Ok(())
}

/// Normalises a relative path (drops empty components and a trailing `/`).
pub fn normalise(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(c);
    }
    out
}

/// Most entries of a snapshot [`nearest_path`] looks at: a hint must not cost a long walk.
const NEAREST_BUDGET: usize = 200_000;

/// The path of snapshot `root` nearest to `path`, which it does not hold (a typo, or the file
/// in another folder), for an error's "did you mean"; none when nothing is close or the tree
/// cannot be read.
pub fn nearest_path(store: &Store, root: Id, path: &[u8]) -> Option<String> {
    let mut all: Vec<Vec<u8>> = Vec::new();
    let mut stack: Vec<(Vec<u8>, Id)> = vec![(Vec::new(), root)];
    while let Some((prefix, id)) = stack.pop() {
        let tree = store.tree(&id).ok()?;
        for e in &tree.entries {
            if all.len() >= NEAREST_BUDGET {
                break;
            }
            let mut p = prefix.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&e.name);
            if e.kind == Kind::Dir {
                stack.push((p.clone(), e.id));
            }
            all.push(p);
        }
    }
    chkpt_proto::nearest::nearest(path, all.iter().map(Vec::as_slice)).map(display_rel)
}

/// The entry at `path` in the tree `root`.
pub fn lookup(store: &Store, root: Id, path: &[u8]) -> Result<Option<Entry>> {
    let mut tree = root;
    let comps: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    for (i, c) in comps.iter().enumerate() {
        let Some(e) = store.tree_entry(&tree, c)? else {
            return Ok(None);
        };
        if i + 1 == comps.len() {
            return Ok(Some(e));
        }
        if e.kind != Kind::Dir {
            return Ok(None);
        }
        tree = e.id;
    }
    Ok(None)
}
