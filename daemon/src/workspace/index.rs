//! The warm file index: what every saved path was when last read, as a directory tree whose
//! nodes cache their tree ids. A change invalidates only the cached ids on its path to the root,
//! so computing the root tree after a change re-encodes only those directories.

use std::collections::BTreeMap;

use super::rules::split_last;
use crate::error::Result;
use crate::store::catalog::FileMeta;
use crate::store::{Batch, Entry, Id, Kind, Tree};

/// A directory in the index.
#[derive(Debug, Clone)]
pub struct DirNode {
    /// The directory's own metadata (mode matters).
    pub meta: FileMeta,
    /// Entries by name, in the byte order trees use.
    pub children: BTreeMap<Vec<u8>, Node>,
    /// The id of this directory's tree, if computed since the last change below it.
    pub tree: Option<Id>,
}

/// An index entry.
#[derive(Debug, Clone)]
pub enum Node {
    /// A file or symlink.
    Leaf(FileMeta),
    /// A directory (boxed: a leaf, by far the most common node, stays small).
    Dir(Box<DirNode>),
}

impl Node {
    /// The entry's metadata.
    pub fn meta(&self) -> &FileMeta {
        match self {
            Node::Leaf(m) => m,
            Node::Dir(d) => &d.meta,
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
    files: u64,
    bytes: u64,
    journal: BTreeMap<Vec<u8>, Option<FileMeta>>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            root: DirNode {
                meta: dir_meta(0o755),
                children: BTreeMap::new(),
                tree: None,
            },
            files: 0,
            bytes: 0,
            journal: BTreeMap::new(),
        }
    }
}

impl Index {
    /// Builds an index from persisted entries (path order), without journaling them.
    pub fn load(entries: impl IntoIterator<Item = (Vec<u8>, FileMeta)>) -> Index {
        let mut index = Index::default();
        for (path, meta) in entries {
            if path.is_empty() {
                index.root.meta = meta;
            } else {
                index.insert(&path, meta);
            }
        }
        index.journal.clear();
        index
    }

    /// Files and symlinks in the index, and their total size.
    pub fn totals(&self) -> (u64, u64) {
        (self.files, self.bytes)
    }

    /// The node at `path` (the root for an empty path).
    pub fn get(&self, path: &[u8]) -> Option<&Node> {
        let mut dir = &self.root;
        let mut comps = components(path).peekable();
        comps.peek()?;
        while let Some(c) = comps.next() {
            let node = dir.children.get(c)?;
            if comps.peek().is_none() {
                return Some(node);
            }
            match node {
                Node::Dir(d) => dir = d,
                Node::Leaf(_) => return None,
            }
        }
        None
    }

    /// The root directory.
    pub fn root(&self) -> &DirNode {
        &self.root
    }

    /// The directory at `path`, created (with its parents) if missing or not a directory,
    /// with every cached tree id on the way invalidated.
    fn dir_mut(&mut self, path: &[u8]) -> &mut DirNode {
        let mut prefix: Vec<u8> = Vec::new();
        let Index {
            root,
            files,
            bytes,
            journal,
        } = self;
        let mut dir = root;
        dir.tree = None;
        for c in components(path) {
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(c);
            let replace = !matches!(dir.children.get(c), Some(Node::Dir(_)));
            if replace {
                if let Some(old) = dir.children.remove(c) {
                    forget(&prefix, &old, files, bytes, journal);
                }
                let meta = dir_meta(0o755);
                journal.insert(prefix.clone(), Some(meta));
                dir.children.insert(
                    c.to_vec(),
                    Node::Dir(Box::new(DirNode {
                        meta,
                        children: BTreeMap::new(),
                        tree: None,
                    })),
                );
            }
            let Some(Node::Dir(d)) = dir.children.get_mut(c) else {
                unreachable!("just ensured a directory")
            };
            dir = d;
            dir.tree = None;
        }
        dir
    }

    /// Inserts or replaces the entry at `path`. A directory keeps its children when its
    /// metadata changes.
    pub fn insert(&mut self, path: &[u8], meta: FileMeta) {
        if path.is_empty() {
            self.root.meta = meta;
            self.root.tree = None;
            self.journal.insert(Vec::new(), Some(meta));
            return;
        }
        let (parent, name) = split_last(path);
        let Index { files, bytes, .. } = self;
        let (mut f, mut b) = (*files, *bytes);
        let dir = self.dir_mut(parent);
        let old = dir.children.remove(name);
        let node = match (meta.kind, old) {
            (Kind::Dir, Some(Node::Dir(mut d))) => {
                d.meta = meta;
                d.tree = None;
                Node::Dir(d)
            }
            (kind, old) => {
                if let Some(old) = &old {
                    let (of, ob) = count(old);
                    f -= of;
                    b -= ob;
                    if !matches!(old, Node::Leaf(_)) || kind == Kind::Dir {
                        // Children of a replaced directory leave the persisted index too.
                        let mut gone = Vec::new();
                        collect_paths(path, old, &mut gone);
                        for p in gone {
                            if p != path {
                                self.journal.insert(p, None);
                            }
                        }
                    }
                }
                if kind == Kind::Dir {
                    Node::Dir(Box::new(DirNode {
                        meta,
                        children: BTreeMap::new(),
                        tree: None,
                    }))
                } else {
                    f += 1;
                    b += meta.size;
                    Node::Leaf(meta)
                }
            }
        };
        let dir = self.dir_mut(parent);
        dir.children.insert(name.to_vec(), node);
        self.files = f;
        self.bytes = b;
        self.journal.insert(path.to_vec(), Some(meta));
    }

    /// Removes the entry at `path` and everything below it.
    pub fn remove(&mut self, path: &[u8]) {
        if self.get(path).is_none() {
            return;
        }
        let (parent, name) = split_last(path);
        let dir = self.dir_mut(parent);
        let Some(old) = dir.children.remove(name) else {
            return;
        };
        let Index {
            files,
            bytes,
            journal,
            ..
        } = self;
        forget(path, &old, files, bytes, journal);
    }

    /// Every path below `path` (inclusive), with its metadata.
    pub fn walk(&self, mut f: impl FnMut(&[u8], &FileMeta)) {
        fn rec(prefix: &mut Vec<u8>, dir: &DirNode, f: &mut dyn FnMut(&[u8], &FileMeta)) {
            for (name, node) in &dir.children {
                let len = prefix.len();
                if len > 0 {
                    prefix.push(b'/');
                }
                prefix.extend_from_slice(name);
                f(prefix, node.meta());
                if let Node::Dir(d) = node {
                    rec(prefix, d, f);
                }
                prefix.truncate(len);
            }
        }
        rec(&mut Vec::new(), &self.root, &mut f);
    }

    /// Every entry, the root's first, as changes that rebuild the index from nothing.
    pub fn entries(&self) -> Vec<(Vec<u8>, Option<FileMeta>)> {
        let mut out = vec![(Vec::new(), Some(self.root.meta))];
        self.walk(|path, meta| out.push((path.to_vec(), Some(*meta))));
        out
    }

    /// Drops every cached tree id (their objects may have been garbage collected).
    pub fn invalidate_trees(&mut self) {
        fn rec(dir: &mut DirNode) {
            dir.tree = None;
            for node in dir.children.values_mut() {
                if let Node::Dir(d) = node {
                    rec(d);
                }
            }
        }
        rec(&mut self.root);
    }

    /// The root tree's id, encoding and storing only directories whose cached id is gone.
    pub fn root_tree(&mut self, batch: &Batch<'_>) -> Result<Id> {
        fn rec(dir: &mut DirNode, batch: &Batch<'_>) -> Result<Id> {
            if let Some(id) = dir.tree {
                return Ok(id);
            }
            let mut entries = Vec::with_capacity(dir.children.len());
            for (name, node) in dir.children.iter_mut() {
                let entry = match node {
                    Node::Leaf(m) => Entry {
                        name: name.clone(),
                        kind: m.kind,
                        mode: m.mode,
                        size: m.size,
                        id: m.id,
                    },
                    Node::Dir(d) => {
                        let id = rec(d, batch)?;
                        Entry {
                            name: name.clone(),
                            kind: Kind::Dir,
                            mode: d.meta.mode,
                            size: d.children.len() as u64,
                            id,
                        }
                    }
                };
                entries.push(entry);
            }
            let id = batch.put_tree(&Tree { entries })?;
            dir.tree = Some(id);
            Ok(id)
        }
        rec(&mut self.root, batch)
    }

    /// Takes the changes to persist.
    pub fn take_journal(&mut self) -> Vec<(Vec<u8>, Option<FileMeta>)> {
        std::mem::take(&mut self.journal).into_iter().collect()
    }
}

fn count(node: &Node) -> (u64, u64) {
    match node {
        Node::Leaf(m) => (1, m.size),
        Node::Dir(d) => d
            .children
            .values()
            .map(count)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)),
    }
}

fn collect_paths(path: &[u8], node: &Node, out: &mut Vec<Vec<u8>>) {
    out.push(path.to_vec());
    if let Node::Dir(d) = node {
        for (name, child) in &d.children {
            let mut p = path.to_vec();
            p.push(b'/');
            p.extend_from_slice(name);
            collect_paths(&p, child, out);
        }
    }
}

fn forget(
    path: &[u8],
    node: &Node,
    files: &mut u64,
    bytes: &mut u64,
    journal: &mut BTreeMap<Vec<u8>, Option<FileMeta>>,
) {
    let (f, b) = count(node);
    *files -= f;
    *bytes -= b;
    let mut gone = Vec::new();
    collect_paths(path, node, &mut gone);
    for p in gone {
        journal.insert(p, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> FileMeta {
        FileMeta {
            kind: Kind::File,
            size,
            ..dir_meta(0o644)
        }
    }

    #[test]
    fn insert_remove_totals_and_journal() {
        let mut ix = Index::default();
        ix.insert(b"a/b/c", file(3));
        ix.insert(b"a/d", file(4));
        assert_eq!(ix.totals(), (2, 7));
        assert!(matches!(ix.get(b"a/b"), Some(Node::Dir(_))));
        ix.take_journal();
        ix.remove(b"a/b");
        assert_eq!(ix.totals(), (1, 4));
        let j = ix.take_journal();
        assert!(j.contains(&(b"a/b/c".to_vec(), None)) && j.contains(&(b"a/b".to_vec(), None)));
        // A file replaced by a directory, and back.
        ix.insert(b"a/d", dir_meta(0o755));
        ix.insert(b"a/d/e", file(5));
        assert_eq!(ix.totals(), (1, 5));
        ix.insert(b"a/d", file(1));
        assert_eq!(ix.totals(), (1, 1));
        assert!(ix.take_journal().contains(&(b"a/d/e".to_vec(), None)));
    }
}
