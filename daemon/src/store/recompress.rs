//! Recompression at idle: a save compresses with LZ4's fast mode, which keeps it quick; once the
//! daemon is idle, the records it wrote are rewritten as LZ4 HC blocks, which take ~20 % less
//! room on source code and decode as fast. Off the save path, bounded and interruptible.
//!
//! # Rules
//! 1. A *candidate* is a committed record stored as one LZ4 block ([`FLAG_LZ4_BLOCK`]) without
//!    [`FLAG_HC`]. A pack whose candidates are at least half of its records' bytes is a
//!    *source* (a pack of tiny files, stored raw, with their trees is not: rewriting it all
//!    would gain a little on the trees and cost its index entries again); recompression
//!    empties sources one after another into an output pack of its own (kept across runs, a
//!    new one once it reaches the target size).
//! 2. Every committed record of a source moves: a candidate is decoded, checked against its id
//!    and encoded again with LZ4 HC; it keeps the new block when that is smaller, else its old
//!    bytes; either way it is marked [`FLAG_HC`]. Other records are copied as they are. A
//!    record that does not match its id is copied as it is (verify names it).
//! 3. Records move in slices of about [`SLICE_BYTES`] raw bytes, each as garbage collection's
//!    repack moves a pack: the output is fsynced, its blob index entries and length committed
//!    durably, and only then does the index in memory point at it. A source with nothing left
//!    is removed from the catalog (durably) before its file is deleted; its map stays for a
//!    while, for readers that located an object in it just before it moved (nothing is punched
//!    out of a source for the same reason: such a reader would read zeros; and `verify`, whose
//!    list of objects is a copy, reads one that moved where it is now). Until its map goes, a
//!    deleted source still takes its disk space: the caller starts a run only with a pack's
//!    worth of room above the free-space floor and stops it, between slices, when the room
//!    left is less than two slices. A crash at any point leaves every object
//!    readable where the durable catalog says it is; an output written past its committed
//!    length is cut off at the next open, as any pack's is.
//! 4. A slice holds the store's shared lock, as a save does: collection waits for it, saves run
//!    beside it. Between slices the caller may stop it (a save began); a later run goes on from
//!    what is left, as records already marked [`FLAG_HC`] are no candidates.
//! 5. The packs still taking records when a run starts are closed first (the next save opens a
//!    new one), so a run reaches everything committed before it.
//! 6. A run that moved more than an eighth of the index's entries writes the blob index's
//!    catalog segments afresh at its end (as garbage collection does), under the exclusive
//!    lock, so the superseded entries do not stay in the catalog.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::compress::lz4_hc_block;
use super::pack::{self, FLAG_CHUNKED, FLAG_HC, FLAG_LZ4_BLOCK, Loc, PackWriter};
use super::read::loc_bytes;
use super::{IN_MEMORY_LIMIT, Id, Store};
use crate::error::{IoContext, Result};
use crate::sync::{lock, read, write};

/// Raw bytes a slice decodes and encodes again, about: with LZ4 HC at ~100 MB/s a slice is a
/// few tens of milliseconds, which is how long a save that starts may wait for it.
pub const SLICE_BYTES: u64 = 4 << 20;

/// The recompression's state in the store.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// See [`Store::recompress_pending`].
    pub pending: std::sync::atomic::AtomicU64,
    /// The output pack (rule 1), outside the writers' pool.
    pub out: std::sync::Mutex<Option<PackWriter>>,
}

/// What a run of [`Store::recompress`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecompressReport {
    /// Records moved (candidates and the others of their packs).
    pub records: u64,
    /// Candidates encoded again.
    pub recompressed: u64,
    /// Stored bytes of the moved records before and after.
    pub bytes_before: u64,
    /// See `bytes_before`.
    pub bytes_after: u64,
    /// Source packs emptied and deleted.
    pub packs_removed: u64,
    /// Whether every candidate was done (false: stopped between slices).
    pub done: bool,
}

/// Whether a committed record is one recompression would encode again.
pub(crate) fn is_candidate(loc: &Loc) -> bool {
    loc.flags & FLAG_LZ4_BLOCK != 0
        && loc.flags & (FLAG_HC | FLAG_CHUNKED) == 0
        && loc.raw_len <= IN_MEMORY_LIMIT
}

impl Store {
    /// Stored bytes of candidates (rule 1) not recompressed yet, as last counted: a run
    /// counts them afresh, and saves add theirs as they commit.
    pub fn recompress_pending(&self) -> u64 {
        self.recompress.pending.load(Ordering::Relaxed)
    }

    /// Stops appending to the recompression's output pack (garbage collection, which may
    /// delete it, calls this under the exclusive lock).
    pub(crate) fn close_recompress_output(&self) {
        *lock(&self.recompress.out) = None;
    }

    /// Lets go of the maps of packs recompression deleted more than a while ago (their disk
    /// space comes back); returns how long until the next one may go, if any is left.
    pub fn expire_retired(&self) -> Option<std::time::Duration> {
        self.packs.expire_retired()
    }

    /// Whether a batch is open (a save or a restore is writing): recompression steps aside.
    pub fn batches_open(&self) -> bool {
        self.open_batches.load(Ordering::SeqCst) > 0
    }

    /// Recompresses every candidate (see the module's rules), checking `stop` between slices.
    pub fn recompress(&self, stop: &dyn Fn() -> bool) -> Result<RecompressReport> {
        let mut report = RecompressReport::default();
        {
            // Rule 5: only while no batch is open; one that opens now goes first (waiting for
            // the lock would hold up every batch after it too).
            let Ok(_exclusive) = self.gc_lock.try_write() else {
                return Ok(report);
            };
            self.close_writers();
        }
        // Per pack: its candidates' bytes and all its records' (the index is read once, not
        // copied).
        let mut packs: HashMap<u32, (u64, u64)> = HashMap::new();
        let out_no = lock(&self.recompress.out).as_ref().map(|w| w.no);
        let mut entries = 0usize;
        self.index.for_each_committed(|_, loc| {
            entries += 1;
            if Some(loc.pack) == out_no {
                return;
            }
            let p = packs.entry(loc.pack).or_default();
            p.1 += loc.record_len();
            if is_candidate(&loc) {
                p.0 += loc.len;
            }
        });
        let sources: HashMap<u32, u64> = packs
            .into_iter()
            .filter(|(_, (fast, all))| *fast > 0 && fast * 2 >= *all)
            .map(|(no, (fast, _))| (no, fast))
            .collect();
        let mut left: u64 = sources.values().sum();
        if !sources.is_empty() {
            tracing::debug!(packs = sources.len(), bytes = left, "recompressing at idle");
        }
        self.recompress.pending.store(left, Ordering::Relaxed);
        let mut order: Vec<u32> = sources.keys().copied().collect();
        order.sort_unstable();
        for no in order {
            if stop() {
                return Ok(report);
            }
            match self.recompress_pack(no, stop, &mut report) {
                Ok(true) => {}
                Ok(false) => return Ok(report),
                Err(e) => {
                    // What the writer holds past its committed length may be half a record:
                    // the next run starts a pack of its own (this one is cut back at the next
                    // open, or collected as an orphan).
                    *lock(&self.recompress.out) = None;
                    return Err(e);
                }
            }
            left = left.saturating_sub(sources[&no]);
            // Zero only once the run is over (below): `status` says "done" when it is.
            self.recompress
                .pending
                .store(left.max(1), Ordering::Relaxed);
        }
        report.done = true;
        if report.records as usize > entries / 8 {
            let _exclusive = write(&self.gc_lock);
            self.cat.rewrite_blob_index(&self.index.all_committed())?;
            self.flush()?;
        }
        if report.records > 0 {
            tracing::info!(?report, "recompressed at idle");
        }
        self.release_memory();
        self.recompress.pending.store(0, Ordering::Relaxed);
        Ok(report)
    }

    /// Moves every record of pack `no` (rule 2), a slice at a time; deletes it once it is
    /// empty. Returns false early, leaving it partly moved, when `stop` says so.
    fn recompress_pack(
        &self,
        no: u32,
        stop: &dyn Fn() -> bool,
        report: &mut RecompressReport,
    ) -> Result<bool> {
        let mut entries: Vec<(Id, Loc)> = Vec::new();
        self.index.for_each_committed(|id, loc| {
            if loc.pack == no {
                entries.push((*id, loc));
            }
        });
        entries.sort_unstable_by_key(|(_, l)| l.offset);
        let mut at = 0;
        // A record that could not be read keeps its pack.
        let mut left_behind = false;
        let mut scratch = Vec::new();
        while at < entries.len() {
            if stop() {
                return Ok(false);
            }
            let _shared = read(&self.gc_lock);
            // Its catalog records must not meet a full disk (see `CATALOG_HEADROOM`).
            self.catalog_room()?;
            let mut moved = Vec::new();
            let mut raw = 0;
            let mut out_guard = lock(&self.recompress.out);
            if out_guard
                .as_ref()
                .is_none_or(|w| w.len >= pack::PACK_TARGET_SIZE)
            {
                *out_guard = Some(self.packs.create_outside_pool()?);
            }
            let Some(w) = out_guard.as_mut() else {
                return Ok(false);
            };
            while at < entries.len() && raw < SLICE_BYTES {
                let (id, loc) = entries[at];
                at += 1;
                // Collection may have dropped or moved it since the list was made.
                if self.index.committed(&id) != Some(loc) {
                    continue;
                }
                // A record that cannot be read stays where it is, and so does its pack
                // (verify names it); the rest moves.
                let map = match self.packs.map(loc.pack, loc.end()) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(object = %id, error = %e, "left where it is by recompression");
                        left_behind = true;
                        continue;
                    }
                };
                let Ok(stored) = loc_bytes(&map, &id, &loc) else {
                    tracing::warn!(object = %id, pack = no, "record header damaged: left where it is by recompression");
                    left_behind = true;
                    continue;
                };
                raw += loc.raw_len;
                report.records += 1;
                report.bytes_before += loc.len;
                let new = if is_candidate(&loc) {
                    report.recompressed += 1;
                    let better = lz4_flex::block::decompress(stored, loc.raw_len as usize)
                        .ok()
                        .filter(|d| Id::of(d) == id)
                        .and_then(|d| lz4_hc_block(&d, &mut scratch).filter(|&n| n < stored.len()));
                    match better {
                        Some(n) => w.append(id, loc.flags | FLAG_HC, loc.raw_len, &scratch[..n])?,
                        None => w.append(id, loc.flags | FLAG_HC, loc.raw_len, stored)?,
                    }
                } else {
                    w.append(id, loc.flags, loc.raw_len, stored)?
                };
                report.bytes_after += new.len;
                moved.push((id, new));
            }
            if moved.is_empty() {
                continue;
            }
            let path = self.packs.path(w.no);
            w.flush()?;
            w.file.sync_data().at(&path)?;
            self.cat.append_blob_segments(&moved)?;
            self.cat.set_pack_length(w.no, w.len)?;
            self.flush()?;
            drop(out_guard);
            self.index.commit(&moved);
        }
        if !left_behind {
            self.recompress_pack_done(no, report)?;
        }
        Ok(true)
    }

    /// Removes source `no`, every record of which has moved. (Each was visited: moved here,
    /// or moved or dropped by a collection. A closed pack takes no new records, so none is
    /// left unless it could not be read.)
    fn recompress_pack_done(&self, no: u32, report: &mut RecompressReport) -> Result<()> {
        let _shared = read(&self.gc_lock);
        let Some(len) = self
            .cat
            .pack_lengths()?
            .into_iter()
            .find_map(|(n, len)| (n == no).then_some(len))
        else {
            return Ok(());
        };
        // Out of the catalog first: a pack file without an entry is an orphan, collected later.
        self.cat.remove_pack(no)?;
        self.flush()?;
        self.packs.retire(no, len)?;
        report.packs_removed += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectKind;
    use crate::store::pack::FLAG_TREE;

    fn text(len: usize, seed: u64) -> Vec<u8> {
        chkpt_testkit::source_text(len, seed)
    }

    fn pack_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir.join("packs"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }

    fn stored_bytes(store: &Store) -> u64 {
        store.objects().iter().map(|(_, l)| l.len).sum()
    }

    /// Objects of every kind a source holds: compressible blobs, incompressible ones (stored
    /// raw), a tree; in two packs (two batches with the writers closed between).
    fn fill(store: &Store) -> Vec<(Id, Vec<u8>)> {
        let mut all = Vec::new();
        for round in 0..2u64 {
            let b = store.batch();
            for i in 0..40u64 {
                let data = text(20_000 + (i as usize * 731) % 9_000, round * 100 + i);
                all.push((b.put(&data, ObjectKind::Blob).unwrap().0, data));
            }
            let noise = chkpt_testkit::noise(50_000, round + 7);
            all.push((b.put(&noise, ObjectKind::Blob).unwrap().0, noise));
            let tree = text(3_000, round + 1000);
            all.push((b.put(&tree, ObjectKind::Tree).unwrap().0, tree));
            b.finish().unwrap();
            store.close_writers();
        }
        all
    }

    #[test]
    fn recompression_moves_every_record_keeps_every_byte_and_shrinks_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let all = fill(&store);
        let sources = pack_files(dir.path());
        assert_eq!(sources.len(), 2);
        let before = stored_bytes(&store);
        let pending = store.recompress_pending();
        assert!(pending > 0 && pending < before, "{pending} of {before}");

        let report = store.recompress(&|| false).unwrap();
        assert!(report.done, "{report:?}");
        assert_eq!(report.records, all.len() as u64);
        assert_eq!(
            report.recompressed,
            2 * 41,
            "the text blobs and trees: {report:?}"
        );
        assert_eq!(report.packs_removed, 2);
        assert_eq!(store.recompress_pending(), 0);
        let after = stored_bytes(&store);
        assert!(
            after < before - before / 20,
            "LZ4 HC must save more than 5 % here: {before} -> {after}"
        );
        let files = pack_files(dir.path());
        assert!(
            files.iter().all(|f| !sources.contains(f)),
            "the sources are gone: {files:?}"
        );
        for (id, data) in &all {
            let loc = store.locate(id).unwrap().unwrap();
            assert!(!sources.contains(&store.packs.path(loc.pack)));
            if loc.flags & FLAG_LZ4_BLOCK != 0 {
                assert_ne!(loc.flags & FLAG_HC, 0, "{loc:?}");
            }
            assert_eq!(&store.read_vec(id).unwrap(), data);
        }
        let tree = all.last().unwrap().0;
        assert_ne!(store.locate(&tree).unwrap().unwrap().flags & FLAG_TREE, 0);
        assert!(store.verify(None).unwrap().problems.is_empty());
        // Nothing is left for a second run; and what it wrote is durable.
        assert_eq!(store.recompress(&|| false).unwrap().records, 0);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        for (id, data) in &all {
            assert_eq!(&store.read_vec(id).unwrap(), data);
        }
        assert_eq!(stored_bytes(&store), after);
        assert!(store.verify(None).unwrap().problems.is_empty());
    }

    #[test]
    fn a_stopped_run_leaves_everything_readable_and_the_next_one_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut all = fill(&store);
        // Larger, so that a pack takes several slices.
        let b = store.batch();
        for i in 0..12u64 {
            let data = text(1 << 20, 500 + i);
            all.push((b.put(&data, ObjectKind::Blob).unwrap().0, data));
        }
        b.finish().unwrap();
        store.close_writers();
        let calls = std::sync::atomic::AtomicU32::new(0);
        // Asked before each pack and each slice: the two small packs take one slice each, so
        // this stops after the big pack's first slice.
        let report = store
            .recompress(&|| calls.fetch_add(1, Ordering::SeqCst) >= 6)
            .unwrap();
        assert!(!report.done && report.packs_removed == 2, "{report:?}");
        assert!(store.recompress_pending() > 0);
        for (id, data) in &all {
            assert_eq!(&store.read_vec(id).unwrap(), data);
        }
        // Reopened (as after a crash between slices), then finished.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let report = store.recompress(&|| false).unwrap();
        assert!(report.done && report.packs_removed == 1, "{report:?}");
        assert_eq!(
            report.records,
            12 - 4,
            "the rest of the big pack: {report:?}"
        );
        for (id, data) in &all {
            assert_eq!(&store.read_vec(id).unwrap(), data);
        }
        assert!(store.verify(None).unwrap().problems.is_empty());
    }

    #[test]
    fn a_reader_that_located_an_object_before_it_moved_still_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let all = fill(&store);
        let (id, data) = &all[3];
        let old = store.locate(id).unwrap().unwrap();
        store.recompress(&|| false).unwrap();
        assert_ne!(store.locate(id).unwrap().unwrap(), old);
        assert!(!store.packs.path(old.pack).exists());
        let mut out = Vec::new();
        store.read_loc_into(id, &old, &mut out).unwrap();
        assert_eq!(&out, data);
    }

    #[test]
    fn a_pack_mostly_of_tiny_raw_files_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let b = store.batch();
        for i in 0..2_000u64 {
            b.put(&chkpt_testkit::noise(40, i), ObjectKind::Blob)
                .unwrap();
        }
        let tree = text(20_000, 1);
        let (tree_id, _) = b.put(&tree, ObjectKind::Tree).unwrap();
        b.finish().unwrap();
        let before = pack_files(dir.path());
        let report = store.recompress(&|| false).unwrap();
        assert!(report.done && report.records == 0, "{report:?}");
        assert_eq!(pack_files(dir.path()), before);
        assert_eq!(store.recompress_pending(), 0);
        assert_eq!(store.read_vec(&tree_id).unwrap(), tree);
    }

    #[test]
    fn a_collection_that_deletes_the_output_pack_leaves_the_next_run_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fill(&store);
        assert!(store.recompress(&|| false).unwrap().records > 0);
        // No snapshot names them: the collection drops them all, and the output pack with them.
        let gc = store.gc().unwrap();
        assert!(gc.packs_removed >= 1, "{gc:?}");
        let again = fill(&store);
        assert!(store.recompress(&|| false).unwrap().records > 0);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        for (id, data) in &again {
            assert_eq!(&store.read_vec(id).unwrap(), data);
        }
        assert!(store.verify(None).unwrap().problems.is_empty());
    }
}
