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
    committed: RwLock<Committed>,
    /// Where each pending object is, and which batch wrote it.
    pending: Mutex<HashMap<Id, (Loc, u64)>>,
}

/// One committed object: 45 bytes, unpadded.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: Id,
    loc: Packed,
}

/// Committed entries sorted by id, with the few committed since they were last sorted. A hash
/// map of every object cost 46 bytes per bucket at a load of 50–87 % (its buckets double): at
/// 520,000 objects it had 1,048,576 buckets, 48 MiB, where the sorted entries take 22 MiB.
#[derive(Debug, Default)]
struct Committed {
    /// By id, each id once.
    sorted: Vec<Entry>,
    /// Where in `sorted` the ids whose first bytes (as a big-endian number) have each value of
    /// their top `shift`-complement bits start: ids are uniform (xxh3), so a lookup searches a
    /// few entries instead of the whole array. `starts[b]..starts[b + 1]` is bucket `b`.
    starts: Vec<u32>,
    /// Bits of an id's first eight bytes left out of its bucket number (`starts` is empty
    /// when there is one bucket).
    shift: u32,
    /// Committed since `sorted` was last rebuilt: merged into it once there are enough of
    /// them that rebuilding costs little per entry.
    recent: HashMap<Id, Packed>,
}

/// Ids a committed batch may add to `recent` before they are merged (a save of a few files
/// commits a handful; a cold save is merged at once).
const RECENT_MIN: usize = 4096;

fn key(id: &Id) -> u64 {
    let b = id.as_bytes();
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl Committed {
    fn get(&self, id: &Id) -> Option<Packed> {
        if let Some(p) = self.recent.get(id) {
            return Some(*p);
        }
        self.find(id).ok().map(|i| self.sorted[i].loc)
    }

    /// Where `id` is in `sorted`, or where it would go.
    fn find(&self, id: &Id) -> Result<usize, usize> {
        let (lo, hi) = if self.starts.len() < 2 {
            (0, self.sorted.len())
        } else {
            let b = (key(id) >> self.shift) as usize;
            (self.starts[b] as usize, self.starts[b + 1] as usize)
        };
        match self.sorted[lo..hi].binary_search_by(|e| e.id.cmp(id)) {
            Ok(i) => Ok(lo + i),
            Err(i) => Err(lo + i),
        }
    }

    fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    fn iter(&self) -> impl Iterator<Item = (Id, Packed)> + '_ {
        // No id is in both.
        self.sorted
            .iter()
            .map(|e| (e.id, e.loc))
            .chain(self.recent.iter().map(|(id, p)| (*id, *p)))
    }

    /// Adds (or moves) these entries; a later entry for an id wins.
    fn extend(&mut self, entries: &[(Id, Loc)]) {
        // A cold save's commit goes to the array at once, without a map of it on the way.
        let many = entries.len() > RECENT_MIN;
        let mut fresh = Vec::new();
        for (id, loc) in entries {
            let loc = Packed(loc.encode());
            match self.find(id) {
                // Moved (garbage collection rewrote it): in place.
                Ok(i) => {
                    self.sorted[i].loc = loc;
                    self.recent.remove(id);
                }
                Err(_) if many => {
                    self.recent.remove(id);
                    fresh.push(Entry { id: *id, loc });
                }
                Err(_) => {
                    self.recent.insert(*id, loc);
                }
            }
        }
        if many || self.recent.len() > RECENT_MIN.max(self.sorted.len() / 32) {
            self.merge(fresh);
        }
    }

    /// Moves `recent` and then `extra` (none of whose ids is in `sorted`) into `sorted`,
    /// merging from the back in place (no second copy of the array), and rebuilds `starts`.
    fn merge(&mut self, extra: Vec<Entry>) {
        let mut fresh: Vec<Entry> = Vec::with_capacity(self.recent.len() + extra.len());
        fresh.extend(self.recent.drain().map(|(id, loc)| Entry { id, loc }));
        self.recent.shrink_to_fit();
        fresh.extend(extra);
        // Stable: of two entries for one id, the later is kept.
        fresh.sort_by_key(|e| e.id);
        fresh.dedup_by(|later, kept| {
            let same = later.id == kept.id;
            if same {
                kept.loc = later.loc;
            }
            same
        });
        let Some(&first) = fresh.first() else {
            return;
        };
        if self.sorted.is_empty() {
            self.sorted = fresh;
        } else {
            let old = self.sorted.len();
            self.sorted.resize(old + fresh.len(), first);
            let (mut i, mut j, mut k) = (old, fresh.len(), self.sorted.len());
            while j > 0 {
                k -= 1;
                if i > 0 && self.sorted[i - 1].id > fresh[j - 1].id {
                    i -= 1;
                    self.sorted[k] = self.sorted[i];
                } else {
                    j -= 1;
                    self.sorted[k] = fresh[j];
                }
            }
        }
        self.index_buckets();
    }

    /// Rebuilds `starts`: about four entries a bucket (none for a few entries).
    fn index_buckets(&mut self) {
        self.sorted.shrink_to_fit();
        let n = self.sorted.len();
        let bits = (n / 4).max(1).ilog2().min(24);
        if bits == 0 {
            self.starts = Vec::new();
            return;
        }
        self.shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut at = 0usize;
        for b in 0..buckets {
            while at < n && ((key(&self.sorted[at].id) >> self.shift) as usize) < b {
                at += 1;
            }
            // Fewer entries than u32::MAX: the store's objects fit in memory as 45 bytes each.
            starts.push(u32::try_from(at).unwrap_or(u32::MAX));
        }
        starts.push(u32::try_from(n).unwrap_or(u32::MAX));
        self.starts = starts;
    }

    /// Holds exactly these entries.
    fn replace(&mut self, entries: Vec<Entry>) {
        *self = Committed::default();
        self.merge(entries);
    }
}

impl BlobIndex {
    /// An index of these committed objects.
    pub fn new(committed: HashMap<Id, Loc>) -> BlobIndex {
        let mut c = Committed::default();
        c.replace(
            committed
                .into_iter()
                .map(|(id, loc)| Entry {
                    id,
                    loc: Packed(loc.encode()),
                })
                .collect(),
        );
        BlobIndex {
            committed: RwLock::new(c),
            pending: Mutex::default(),
        }
    }

    /// Where a committed object is.
    pub fn committed(&self, id: &Id) -> Option<Loc> {
        read(&self.committed).get(id).map(|p| p.loc())
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
        let mut out = Vec::with_capacity(index.len());
        out.extend(index.iter().map(|(id, p)| (id, p.loc())));
        out
    }

    /// Calls `f` on every committed object and where it is, without copying the index (the
    /// index stays locked for reading meanwhile: `f` must not write to it).
    pub fn for_each_committed(&self, mut f: impl FnMut(&Id, Loc)) {
        for (id, loc) in read(&self.committed).iter() {
            f(&id, loc.loc());
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
        write(&self.committed).extend(entries);
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
        write(&self.committed).replace(
            entries
                .into_iter()
                .map(|(id, loc)| Entry {
                    id,
                    loc: Packed(loc.encode()),
                })
                .collect(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chkpt_testkit::Rng;

    fn loc(n: u64) -> Loc {
        Loc {
            pack: (n % 7) as u32,
            offset: n,
            len: n % 1000,
            raw_len: n % 3000,
            flags: (n % 2) as u8,
        }
    }

    fn id(n: u64) -> Id {
        Id::of(&n.to_le_bytes())
    }

    /// Every way entries come (a load, small and large commits, moves of committed objects, a
    /// collection's replacement) against a map of what each id's latest location is.
    #[test]
    fn committed_entries_are_found_as_a_map_would_find_them() {
        let mut rng = Rng::new(0xb10b);
        let index = BlobIndex::new((0..50).map(|n| (id(n), loc(n))).collect());
        let mut model: HashMap<Id, Loc> = (0..50).map(|n| (id(n), loc(n))).collect();
        let mut next = 50u64;
        for round in 0..120u64 {
            let mut batch = Vec::new();
            let size = match rng.below(10) {
                0 => 5000 + rng.below(3000),
                1..=3 => rng.below(400),
                _ => rng.below(20),
            };
            for k in 0..size {
                // Some new ids, some already committed (moved), now and then one twice.
                let n = if rng.below(4) == 0 && next > 0 {
                    rng.below(next)
                } else {
                    next += 1;
                    next - 1
                };
                // Each entry its own location: of an id twice in a batch, the later counts.
                batch.push((id(n), loc(n + round * 1_000_003 + k * 7_919)));
            }
            if rng.below(50) == 0 {
                let kept: Vec<(Id, Loc)> = model
                    .iter()
                    .filter(|_| rng.below(3) > 0)
                    .map(|(i, l)| (*i, *l))
                    .collect();
                index.replace_committed(kept.clone());
                model = kept.into_iter().collect();
            } else {
                index.commit(&batch);
                model.extend(batch.iter().copied());
            }
            let look: Vec<u64> = if round % 25 == 0 {
                (0..next + 10).collect()
            } else {
                (0..300).map(|_| rng.below(next + 10)).collect()
            };
            for n in look {
                let want = model.get(&id(n)).copied();
                assert_eq!(index.committed(&id(n)), want, "id {n} after round {round}");
            }
        }
        let mut all = index.all_committed();
        all.sort_by_key(|e| e.0);
        let mut want: Vec<(Id, Loc)> = model.into_iter().collect();
        want.sort_by_key(|e| e.0);
        assert_eq!(all, want);
    }
}
