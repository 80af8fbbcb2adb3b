//! Batches: groups of writes that become durable and visible together (the packer layer,
//! between the pack files and the blob index).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLockReadGuard};

use rayon::prelude::*;

use super::compress::with_compressed;
use super::pack::{FLAG_LZ4_BLOCK, FLAG_TREE, Loc};
use super::tree::PartRef;
use super::{Id, Store, Tree};
use crate::error::Result;
use crate::sync::{lock, read};

thread_local! {
    /// Bytes this thread's writes added to packs (see [`added_by_this_thread`]).
    static ADDED_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Bytes the writes of this thread have added to packs so far, any batch: the difference over
/// a file's read is what storing it cost (a file is read by one thread).
pub fn added_by_this_thread() -> u64 {
    ADDED_HERE.with(|a| a.get())
}

/// A group of writes that becomes visible together. Usable from many threads at once.
#[derive(Debug)]
pub struct Batch<'s> {
    store: &'s Store,
    _guard: RwLockReadGuard<'s, ()>,
    /// Tells this batch's pending objects from other batches'.
    id: u64,
    /// The catalog's generation when the batch began: a reopen since may have lost its records.
    generation: u64,
    new: Mutex<Vec<(Id, Loc)>>,
    /// Objects recorded in the catalog, committed in memory once a flush made them durable.
    recorded: Mutex<Vec<(Id, Loc)>>,
    new_bytes: AtomicU64,
    /// Also counts the stored bytes here, as they are written (a workspace's progress).
    stored_into: Option<&'s AtomicU64>,
}

/// What an object is to the store (a tree is flagged so in its pack record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// File content, a link's target, a chunk list.
    Blob,
    /// A tree (or a part of a split one).
    Tree,
}

/// Batch ids.
static BATCHES: AtomicU64 = AtomicU64::new(0);

impl Batch<'_> {
    /// The store.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Stores `data` as an object of `kind`, unless already present. Returns its id and
    /// whether it was new.
    pub fn put(&self, data: &[u8], kind: ObjectKind) -> Result<(Id, bool)> {
        let id = Id::of(data);
        Ok((id, self.put_known(id, data, kind)?))
    }

    /// [`Batch::put`] of `data` whose id the caller computed already; returns whether it was
    /// new.
    pub fn put_known(&self, id: Id, data: &[u8], kind: ObjectKind) -> Result<bool> {
        debug_assert_eq!(id, Id::of(data));
        if self.adopt(&id)? {
            return Ok(false);
        }
        let res = with_compressed(data, |compressed| {
            let flags = if kind == ObjectKind::Tree {
                FLAG_TREE
            } else {
                0
            } | if compressed.is_some() {
                FLAG_LZ4_BLOCK
            } else {
                0
            };
            let mut w = self.store.packs.take_writer()?;
            w.append(id, flags, data.len() as u64, compressed.unwrap_or(data))
        });
        self.record(id, res?);
        Ok(true)
    }

    /// Stores a directory's tree: whole, or as parts and the split tree naming them when it is
    /// large (tree format rule 5). Those parts that did not change encode to bytes the store
    /// holds, so only the changed ones are written.
    pub fn put_tree(&self, tree: Tree) -> Result<Id> {
        let Some(cuts) = super::tree::parts(&tree.entries) else {
            return Ok(self.put(&tree.encode(), ObjectKind::Tree)?.0);
        };
        // Split off from the end: the entries move into their parts, none is copied.
        let mut entries = tree.entries;
        let mut parts: Vec<Tree> = Vec::with_capacity(cuts.len());
        for cut in cuts.iter().rev() {
            parts.push(Tree {
                entries: entries.split_off(cut.start),
            });
        }
        parts.reverse();
        let ids = parts
            .par_iter()
            .map(|p| self.put_part(p))
            .collect::<Result<Vec<Id>>>()?;
        let named: Vec<PartRef> = ids
            .into_iter()
            .zip(&parts)
            .map(|(id, p)| PartRef {
                id,
                first: p.entries[0].name.clone(),
                len: p.entries.len(),
            })
            .collect();
        self.put_split(&named)
    }

    /// Stores one part of a split directory (tree format rule 5): a tree never split itself.
    pub fn put_part(&self, part: &Tree) -> Result<Id> {
        Ok(self.put(&part.encode(), ObjectKind::Tree)?.0)
    }

    /// Stores the split tree naming `parts` (tree format rule 5).
    pub fn put_split(&self, parts: &[PartRef]) -> Result<Id> {
        Ok(self
            .put(&Tree::split_of(parts).encode(), ObjectKind::Tree)?
            .0)
    }

    /// Whether `id` is already stored; one written by another open batch is adopted, so this
    /// batch's commit makes it durable too.
    pub(crate) fn adopt(&self, id: &Id) -> Result<bool> {
        if let Some((loc, batch)) = self.store.index.pending(id) {
            // This batch's own objects are in its lists already.
            if batch != self.id {
                lock(&self.new).push((*id, loc));
            }
            return Ok(true);
        }
        Ok(self.store.index.committed(id).is_some())
    }

    pub(super) fn record(&self, id: Id, loc: Loc) {
        ADDED_HERE.with(|a| a.set(a.get() + loc.record_len()));
        self.store
            .counters
            .pack_bytes_written
            .fetch_add(loc.record_len(), Ordering::Relaxed);
        self.store
            .counters
            .objects_written
            .fetch_add(1, Ordering::Relaxed);
        self.new_bytes
            .fetch_add(loc.record_len(), Ordering::Relaxed);
        if let Some(sink) = self.stored_into {
            sink.fetch_add(loc.record_len(), Ordering::Relaxed);
        }
        self.store.index.add_pending(id, loc, self.id);
        lock(&self.new).push((id, loc));
    }

    /// Objects this batch wrote or adopted so far, and their stored bytes.
    pub fn written(&self) -> (u64, u64) {
        (
            lock(&self.new).len() as u64,
            self.new_bytes.load(Ordering::Relaxed),
        )
    }

    /// Makes the objects written so far durable and records them in the catalog: fsyncs their
    /// packs, then writes their blob index entries and the packs' committed lengths. Catalog
    /// records that refer to them may be written after this returns; [`Batch::finish`]
    /// flushes, and only then are they committed in the blob index in memory (a catalog
    /// reopened after a failed write loses what was not flushed: nothing may count on them).
    pub fn commit_objects(&self) -> Result<()> {
        // Every catalog record of a batch is written after a commit: none may meet a full disk.
        self.store.catalog_room()?;
        let mut new = std::mem::take(&mut *lock(&self.new));
        if new.is_empty() {
            return Ok(());
        }
        // An object adopted many times (identical files) is indexed once.
        new.sort_unstable_by_key(|(id, _)| *id);
        new.dedup_by_key(|(id, _)| *id);
        let mut ends: HashMap<u32, u64> = HashMap::new();
        for (_, loc) in &new {
            let e = ends.entry(loc.pack).or_default();
            *e = (*e).max(loc.end());
        }
        let t = std::time::Instant::now();
        let durable = self
            .store
            .packs
            .sync(&ends)
            .and_then(|()| self.store.cat.append_blob_segments(&new))
            .and_then(|()| self.store.cat.raise_pack_lengths(&ends));
        if let Err(e) = durable {
            // Not committed: no other batch may count on these objects any more.
            self.store.index.forget_pending(&new);
            return Err(e);
        }
        tracing::debug!(
            objects = new.len(),
            ms = t.elapsed().as_millis() as u64,
            "objects recorded"
        );
        lock(&self.recorded).extend(new);
        Ok(())
    }

    /// Commits what is left and flushes the catalog: everything written in the batch is durable.
    pub fn finish(self) -> Result<()> {
        self.commit_objects()?;
        let t = std::time::Instant::now();
        self.store.flush()?;
        if self.store.cat.generation() != self.generation {
            // The catalog was reopened while this batch was open: what it recorded before may
            // be gone, and the flush above cannot vouch for it.
            return Err(self.store.cat.lost());
        }
        let recorded = std::mem::take(&mut *lock(&self.recorded));
        self.store.index.commit(&recorded);
        let fast: u64 = recorded
            .iter()
            .filter(|(_, l)| super::recompress::is_candidate(l))
            .map(|(_, l)| l.len)
            .sum();
        self.store
            .recompress
            .pending
            .fetch_add(fast, Ordering::Relaxed);
        tracing::debug!(
            objects = recorded.len(),
            flush_ms = t.elapsed().as_millis() as u64,
            "catalog flushed, objects committed"
        );
        Ok(())
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.store.open_batches.fetch_sub(1, Ordering::SeqCst);
        // Objects never committed stop being offered to other batches; their bytes are dead
        // (or, when the catalog recorded them, kept by a later flush, and found at the next
        // start).
        for list in [&self.new, &self.recorded] {
            let entries = std::mem::take(&mut *lock(list));
            self.store.index.forget_pending(&entries);
        }
    }
}

impl Store {
    /// Starts a batch of writes. While any batch is open, garbage collection waits.
    pub fn batch(&self) -> Batch<'_> {
        self.open_batches.fetch_add(1, Ordering::SeqCst);
        let guard = read(&self.gc_lock);
        Batch {
            store: self,
            _guard: guard,
            id: BATCHES.fetch_add(1, Ordering::Relaxed),
            generation: self.cat.generation(),
            new: Mutex::new(Vec::new()),
            recorded: Mutex::new(Vec::new()),
            new_bytes: AtomicU64::new(0),
            stored_into: None,
        }
    }

    /// [`Store::batch`], also adding the bytes it stores to `sink` as it writes them, so
    /// a long save's progress can be read while it runs.
    pub fn batch_counting<'a>(&'a self, sink: &'a AtomicU64) -> Batch<'a> {
        let mut batch = self.batch();
        batch.stored_into = Some(sink);
        batch
    }
}
