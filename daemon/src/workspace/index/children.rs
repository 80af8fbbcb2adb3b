//! A directory's entries, packed: one 64-byte slot per entry in a vector sorted by name, the
//! names in one byte arena per directory, and a leaf's metadata without the fields most entries
//! share (device and mode are interned per index). A `BTreeMap<Vec<u8>, Node>` cost ~200 bytes
//! an entry (B-tree nodes a third empty, a heap name each, a padded 64-byte `FileMeta`).

use std::collections::HashMap;

use super::DirNode;
use crate::store::catalog::FileMeta;
use crate::store::{Id, Kind};

/// Bytes of removed names an arena may hold before it is rewritten, past half its size.
const ARENA_SLACK: usize = 4096;

/// The (device, mode) pairs of an index's files, each stored once: a workspace has a few.
#[derive(Debug, Clone, Default)]
pub(super) struct Attrs {
    list: Vec<(u64, u32)>,
    at: HashMap<(u64, u32), u32>,
}

impl Attrs {
    fn intern(&mut self, dev: u64, mode: u32) -> u32 {
        if let Some(&i) = self.at.get(&(dev, mode)) {
            return i;
        }
        // Fewer pairs than entries, and entries fit in memory: the count fits a u32.
        let i = u32::try_from(self.list.len()).unwrap_or(u32::MAX);
        self.list.push((dev, mode));
        self.at.insert((dev, mode), i);
        i
    }

    fn get(&self, i: u32) -> (u64, u32) {
        self.list.get(i as usize).copied().unwrap_or_default()
    }
}

/// File or symlink: a leaf is never a directory, and the values left over give [`Body`] its
/// tag without a byte of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeafKind {
    File,
    Symlink,
}

/// A file's or symlink's metadata, packed ([`FileMeta`] less its device and mode, which
/// [`Attrs`] holds).
#[derive(Debug, Clone, Copy)]
pub(super) struct Leaf {
    pub(super) size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    pub(super) id: Id,
    attr: u32,
    kind: LeafKind,
    racy: bool,
}

impl Leaf {
    pub(super) fn new(meta: &FileMeta, attrs: &mut Attrs) -> Leaf {
        Leaf {
            size: meta.size,
            mtime_ns: meta.mtime_ns,
            ctime_ns: meta.ctime_ns,
            ino: meta.ino,
            id: meta.id,
            attr: attrs.intern(meta.dev, meta.mode),
            kind: if meta.kind == Kind::Symlink {
                LeafKind::Symlink
            } else {
                LeafKind::File
            },
            racy: meta.racy,
        }
    }

    pub(super) fn meta(&self, attrs: &Attrs) -> FileMeta {
        let (dev, mode) = attrs.get(self.attr);
        FileMeta {
            kind: self.kind(),
            mode,
            size: self.size,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            ino: self.ino,
            dev,
            id: self.id,
            racy: self.racy,
        }
    }

    pub(super) fn kind(&self) -> Kind {
        match self.kind {
            LeafKind::File => Kind::File,
            LeafKind::Symlink => Kind::Symlink,
        }
    }

    pub(super) fn mode(&self, attrs: &Attrs) -> u32 {
        attrs.get(self.attr).1
    }
}

/// What an entry is.
#[derive(Debug, Clone)]
pub(super) enum Body {
    Leaf(Leaf),
    /// Boxed: directories are few, and a slot stays the size of a leaf.
    Dir(Box<DirNode>),
}

/// One entry: its name's place in the arena, and what it is.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    name_at: u32,
    name_len: u32,
    pub(super) body: Body,
}

/// A directory's entries in name order (the byte order trees use).
#[derive(Debug, Clone, Default)]
pub(super) struct Children {
    /// Every name, one after the other; removed names stay until the arena is rewritten.
    names: Vec<u8>,
    /// Sorted by name.
    slots: Vec<Slot>,
    /// Bytes of `names` no slot refers to.
    garbage: usize,
}

impl Children {
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The name of entry `i`.
    pub(super) fn name(&self, i: usize) -> &[u8] {
        let s = &self.slots[i];
        &self.names[s.name_at as usize..][..s.name_len as usize]
    }

    fn slot_name<'a>(names: &'a [u8], s: &Slot) -> &'a [u8] {
        &names[s.name_at as usize..][..s.name_len as usize]
    }

    /// Where `name` is (`Ok`), or where it would go (`Err`). Entries mostly come in name order
    /// (a persisted index loads sorted), so the end is looked at first.
    pub(super) fn find(&self, name: &[u8]) -> Result<usize, usize> {
        match self.slots.last() {
            None => return Err(0),
            Some(last) if Self::slot_name(&self.names, last) < name => {
                return Err(self.slots.len());
            }
            _ => {}
        }
        self.slots
            .binary_search_by(|s| Self::slot_name(&self.names, s).cmp(name))
    }

    /// The first entry whose name is not below `name`.
    pub(super) fn lower_bound(&self, name: &[u8]) -> usize {
        self.slots
            .partition_point(|s| Self::slot_name(&self.names, s) < name)
    }

    pub(super) fn body(&self, i: usize) -> &Body {
        &self.slots[i].body
    }

    pub(super) fn body_mut(&mut self, i: usize) -> &mut Body {
        &mut self.slots[i].body
    }

    /// The directory `name`, if it is one.
    pub(super) fn dir_mut(&mut self, name: &[u8]) -> Option<&mut DirNode> {
        let i = self.find(name).ok()?;
        match &mut self.slots[i].body {
            Body::Dir(d) => Some(d),
            Body::Leaf(_) => None,
        }
    }

    /// Entries in name order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8], &Body)> {
        self.slots
            .iter()
            .map(|s| (Self::slot_name(&self.names, s), &s.body))
    }

    /// Every entry's body, in name order.
    pub(super) fn bodies_mut(&mut self) -> impl Iterator<Item = &mut Body> {
        self.slots.iter_mut().map(|s| &mut s.body)
    }

    fn push_name(&mut self, name: &[u8]) -> (u32, u32) {
        if self.names.len() + name.len() > u32::MAX as usize {
            self.rewrite_arena();
        }
        // A directory's names would have to pass 4 GiB (16 million names of 255 bytes):
        // far past what the index could hold in memory anyway.
        let at = u32::try_from(self.names.len()).expect("a directory's names fit in 4 GiB");
        let len = u32::try_from(name.len()).expect("a name fits in 4 GiB");
        self.names.extend_from_slice(name);
        (at, len)
    }

    /// Inserts `name` at `i` (where [`Children::find`] said it goes).
    pub(super) fn insert_at(&mut self, i: usize, name: &[u8], body: Body) {
        let (name_at, name_len) = self.push_name(name);
        self.slots.insert(
            i,
            Slot {
                name_at,
                name_len,
                body,
            },
        );
    }

    /// Removes entry `i`, returning what it was.
    pub(super) fn remove_at(&mut self, i: usize) -> Body {
        let slot = self.slots.remove(i);
        self.garbage += slot.name_len as usize;
        if self.garbage > ARENA_SLACK && self.garbage > self.names.len() / 2 {
            self.rewrite_arena();
        }
        slot.body
    }

    /// Merges `fresh` (new names, sorted, none already here) into the entries, in one pass.
    pub(super) fn merge(&mut self, fresh: Vec<(&[u8], Body)>) {
        if fresh.is_empty() {
            return;
        }
        let old = std::mem::take(&mut self.slots);
        let mut slots = Vec::with_capacity(old.len() + fresh.len());
        let mut old = old.into_iter().peekable();
        for (name, body) in fresh {
            while let Some(s) = old.next_if(|s| Self::slot_name(&self.names, s) < name) {
                slots.push(s);
            }
            let (name_at, name_len) = self.push_name(name);
            slots.push(Slot {
                name_at,
                name_len,
                body,
            });
        }
        slots.extend(old);
        self.slots = slots;
    }

    /// Writes the arena again with only the names in use, in name order.
    fn rewrite_arena(&mut self) {
        let used: usize = self.slots.iter().map(|s| s.name_len as usize).sum();
        let mut names = Vec::with_capacity(used);
        for s in &mut self.slots {
            let at = names.len();
            names.extend_from_slice(Self::slot_name(&self.names, s));
            s.name_at = at as u32;
        }
        self.names = names;
        self.garbage = 0;
    }

    /// Gives back memory the vectors no longer need (they grow by doubling, and a directory
    /// has 25 entries on average): a directory encoded after its entries came keeps about what
    /// it holds. A big one keeps a little room, so that a few new names do not move it again.
    pub(super) fn shrink(&mut self) {
        if self.garbage > self.names.len() / 8 {
            self.rewrite_arena();
        }
        let len = self.slots.len();
        if self.slots.capacity() > len + len / 32 + 1 {
            self.slots.shrink_to(len + len / 64);
        }
        let bytes = self.names.len();
        if self.names.capacity() > bytes + bytes / 32 + 8 {
            self.names.shrink_to(bytes + bytes / 64);
        }
    }

    /// Whether the names are in order, none twice (for tests).
    #[cfg(test)]
    pub(super) fn sorted(&self) -> bool {
        self.slots
            .windows(2)
            .all(|w| Self::slot_name(&self.names, &w[0]) < Self::slot_name(&self.names, &w[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_a_leaf_s_size() {
        assert_eq!(size_of::<Slot>(), 64);
        assert_eq!(
            size_of::<Body>(),
            size_of::<Leaf>(),
            "the kind's spare values tag the body"
        );
    }
}
