//! The blob index: where every object is. Committed entries (durable: their packs are fsynced
//! and a flushed catalog holds them, format rule 1 of [`catalog`](super::catalog)) and pending
//! ones (written by a batch still open, or recorded in the catalog by one but not yet flushed),
//! as one type, so the rules between them live in one place.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use super::Id;
use super::pack::Loc;
use crate::sync::{lock, read, write};

/// A [`Loc`] as its 29 encoded bytes: a map entry of 45 bytes instead of 56 (a `Loc` is
/// padded to 40), for one entry per object in the store.
#[derive(Debug, Clone, Copy)]
struct Packed([u8; Loc::ENCODED]);

impl Packed {
    fn loc(&self) -> Loc {
        // The bytes are `Loc::encode`'s: they always decode.
        Loc::decode(&self.0).unwrap_or(Loc {
            pack: 0,
            offset: 0,
            len: 0,
            raw_len: 0,
            flags: 0,
        })
    }
}

/// Where objects are, committed and pending.
#[derive(Debug, Default)]
pub(crate) struct BlobIndex {
    committed: RwLock<HashMap<Id, Packed>>,
    /// Where each pending object is, and which batch wrote it.
    pending: Mutex<HashMap<Id, (Loc, u64)>>,
}

impl BlobIndex {
    /// An index of these committed objects.
    pub fn new(committed: HashMap<Id, Loc>) -> BlobIndex {
        BlobIndex {
            committed: RwLock::new(pack(committed)),
            pending: Mutex::default(),
        }
    }

    /// Where a committed object is.
    pub fn committed(&self, id: &Id) -> Option<Loc> {
        read(&self.committed).get(id).map(Packed::loc)
    }

    /// Where an object is, committed or pending.
    pub fn locate(&self, id: &Id) -> Option<Loc> {
        if let Some((loc, _)) = lock(&self.pending).get(id) {
            return Some(*loc);
        }
        self.committed(id)
    }

    /// Where an object written by a batch still open is, and that batch.
    pub fn pending(&self, id: &Id) -> Option<(Loc, u64)> {
        lock(&self.pending).get(id).copied()
    }

    /// Every committed object and where it is.
    pub fn all_committed(&self) -> Vec<(Id, Loc)> {
        let index = read(&self.committed);
        index.iter().map(|(id, loc)| (*id, loc.loc())).collect()
    }

    /// Calls `f` on every committed object and where it is, without copying the index (the
    /// index stays locked for reading meanwhile: `f` must not write to it).
    pub fn for_each_committed(&self, mut f: impl FnMut(&Id, Loc)) {
        for (id, loc) in read(&self.committed).iter() {
            f(id, loc.loc());
        }
    }

    /// The open batch `batch` wrote `id` at `loc`: other batches may adopt it.
    pub fn add_pending(&self, id: Id, loc: Loc, batch: u64) {
        lock(&self.pending).insert(id, (loc, batch));
    }

    /// These pending objects will never be committed (their batch failed or was dropped): no
    /// batch may count on them any more. An entry another batch rewrote since stays.
    pub fn forget_pending(&self, entries: &[(Id, Loc)]) {
        let mut pending = lock(&self.pending);
        for (id, loc) in entries {
            if pending.get(id).is_some_and(|(l, _)| l == loc) {
                pending.remove(id);
            }
        }
    }

    /// These objects are durable now: committed, and no longer pending.
    pub fn commit(&self, entries: &[(Id, Loc)]) {
        write(&self.committed).extend(entries.iter().map(|(id, loc)| (*id, Packed(loc.encode()))));
        self.forget_pending(entries);
        let mut pending = lock(&self.pending);
        // A cold save grew it to one entry per object; the idle daemon need not keep that (nor
        // most of it while a few stay pending).
        if pending.capacity() > 4096 && pending.len() < pending.capacity() / 8 {
            let keep = pending.len() * 2;
            pending.shrink_to(keep);
        }
    }

    /// Replaces every committed entry (garbage collection kept these).
    pub fn replace_committed(&self, entries: Vec<(Id, Loc)>) {
        *write(&self.committed) = entries
            .into_iter()
            .map(|(id, loc)| (id, Packed(loc.encode())))
            .collect();
    }
}

fn pack(map: HashMap<Id, Loc>) -> HashMap<Id, Packed> {
    let mut out = HashMap::with_capacity(map.len());
    out.extend(map.into_iter().map(|(id, loc)| (id, Packed(loc.encode()))));
    out
}
