//! The content-addressed store: packs of blobs and trees, and the catalog that indexes them.
//!
//! # Layout
//! A data directory holds:
//! 1. `lock`: an exclusively locked file with the holder's pid; one daemon per data directory.
//! 2. `packs/`: pack files (see [`pack`] for their format).
//! 3. `catalog.redb`: the redb database with the tables `blob_segments` (id → [`Loc`], loaded
//!    into memory when the store opens), `packs` (pack number → committed length),
//!    `workspaces`, `ws_paths`, `snapshots`, `ws_snaps`, `index_segments` and `meta` (see
//!    [`catalog`]). A store of an earlier version has a sled database in `catalog/` instead,
//!    copied into `catalog.redb` at the first open and then kept as `catalog.sled-migrated/`.
//!
//! # Layers
//! - `writers`: the pack files (the backend): writers, background fsyncs, maps.
//! - [`batch`]: groups of writes that become durable together (the packer).
//! - `blob_index`: where each object is, committed or pending (the index).
//! - [`read`] and [`compress`]: objects back out, and LZ4 in.
//! - [`pack`], [`tree`], [`chunked`], [`catalog`]: the on-disk formats (chunked files: lists of
//!   content-defined chunks); [`gc`]: collection and verify; [`holes`]: sparse files' data
//!   regions, and dead records punched out of packs in place.
//!
//! # Writing
//! Objects are written through a [`Batch`]: they are appended to packs at once, and become
//! visible in the blob index only when the batch commits, after the packs are fsynced. Catalog
//! records that refer to them are written after that, and the catalog flush that ends the batch
//! (redb's durable commit) makes everything durable. A crash at any moment therefore leaves a catalog that points only at fully
//! written data; the bytes of an interrupted batch are cut off when the store next opens.

pub mod batch;
pub(crate) mod blob_index;
pub mod catalog;
pub mod chunked;
pub mod compress;
pub mod gc;
pub mod holes;
pub mod id;
pub mod pack;
pub mod read;
pub mod recompress;
pub mod records;
pub mod tree;
pub(crate) mod writers;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub use self::batch::{Batch, ObjectKind};
use self::blob_index::BlobIndex;
pub use self::chunked::{CHUNK_THRESHOLD, ChunkList, Piece};
pub use self::compress::{lz4_block, release_thread_buffers};
pub use self::id::{Hasher, Id, SnapshotId, WorkspaceId};
pub use self::pack::Loc;
pub use self::tree::{Entry, Kind, Tree};
use self::writers::Packs;
use crate::error::{Error, IoContext, Result};

/// Blobs at most this large are compressed in memory; larger ones are streamed.
pub const IN_MEMORY_LIMIT: u64 = 8 << 20;
/// The catalog's page cache (redb's default is 1 GiB): small, the daemon must stay lean while
/// it watches large trees, and the catalog holds few, large records (see [`catalog`]). redb
/// keeps every page it reads or commits until the cache is full, so after a cold save or a
/// restart's index load the whole budget stayed resident (8 MiB of ~50 at 100,000 files);
/// the kernel's page cache serves a miss in microseconds, and what is read again and again
/// (a snapshot's records, the tables' roots) fits in 1 MiB.
const CATALOG_CACHE_BYTES: usize = 1 << 20;

/// Free space the disk must have before the catalog is written to. After an I/O error redb
/// refuses every later call until the file is reopened, and a reopen loses the writes of every
/// operation since the last flush (they fail: see `catalog`'s `kv`). So a write that might not
/// fit fails first, as a full disk, with the catalog untouched. A batch's records are a few
/// segments of at most ~370 KiB each, written as new pages (redb reuses freed pages only after
/// a durable commit): 2 MiB covers a save of ordinary size; a larger one that still meets the
/// full disk fails by the reopen, and the next write works.
const CATALOG_HEADROOM: u64 = 2 << 20;

/// Counters of work done, for tests, benchmarks and `Status`.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Bytes appended to packs (headers included).
    pub pack_bytes_written: AtomicU64,
    /// Objects appended to packs.
    pub objects_written: AtomicU64,
}

/// An open data directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    pub(crate) cat: catalog::Catalog,
    pub(crate) packs: Packs,
    pub(crate) index: BlobIndex,
    gc_lock: RwLock<()>,
    /// Whether the packs' file system punches holes (see [`holes`]), asked at the first
    /// collection.
    punch_supported: std::sync::OnceLock<bool>,
    gc_epoch: AtomicU64,
    /// Batches open now (see [`Store::batches_open`]).
    open_batches: std::sync::atomic::AtomicUsize,
    /// The idle recompression's counter and output pack.
    recompress: recompress::State,
    /// Work counters.
    pub counters: StoreCounters,
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) the data directory `dir`, taking its lock and cutting off
    /// whatever an interrupted save left past the committed end of each pack.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        // Folders this creates, whose names must be made durable (see `sync_new_dirs`).
        let created: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && fs::symlink_metadata(a).is_err())
            .map(Path::to_path_buf)
            .collect();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .at(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).at(&dir)?;
        let lock = take_lock(&dir)?;
        let cat = catalog::Catalog::open(&dir, CATALOG_CACHE_BYTES)?;
        let packs = Packs::open(dir.join("packs"))?;
        sync_new_dirs(&dir, &created)?;
        packs.recover(&cat)?;
        let (committed, ignored) = cat.load_blob_index()?;
        let store = Store {
            dir,
            cat,
            packs,
            index: BlobIndex::new(committed),
            gc_lock: RwLock::new(()),
            punch_supported: std::sync::OnceLock::new(),
            gc_epoch: AtomicU64::new(0),
            open_batches: Default::default(),
            recompress: Default::default(),
            counters: StoreCounters::default(),
            _lock: lock,
        };
        if ignored > 0 {
            // Entries of an interrupted commit go, before a reused pack number revives them.
            store.cat.rewrite_blob_index(&store.index.all_committed())?;
            store.flush()?;
        }
        Ok(store)
    }
    /// The catalog.
    pub fn catalog(&self) -> &catalog::Catalog {
        &self.cat
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Changes each time garbage collection removed objects: cached tree ids from before must
    /// be re-checked.
    pub fn gc_epoch(&self) -> u64 {
        self.gc_epoch.load(Ordering::SeqCst)
    }

    /// Whether the object is stored (committed or written by a batch still open).
    pub fn contains(&self, id: &Id) -> Result<bool> {
        Ok(self.index.locate(id).is_some())
    }

    /// Every committed object and where it is.
    pub fn objects(&self) -> Vec<(Id, Loc)> {
        self.index.all_committed()
    }

    /// Where an object is.
    pub fn locate(&self, id: &Id) -> Result<Option<Loc>> {
        Ok(self.index.locate(id))
    }

    /// Stops appending to the open packs: the next write starts a new pack. Only while no
    /// batch is open (what they buffered is not committed, and goes).
    pub fn close_writers(&self) {
        self.packs.close_writers();
    }
    /// Flushes the catalog to disk, durably: one durable redb commit. Fails when a catalog
    /// write of this thread since its last flush may have been lost (see
    /// [`catalog::Catalog::flush`]).
    pub fn flush(&self) -> Result<()> {
        self.catalog_room()?;
        self.cat.flush()
    }

    /// Fails as a full disk when the catalog may not have room to write (see
    /// [`CATALOG_HEADROOM`]).
    pub(crate) fn catalog_room(&self) -> Result<()> {
        let path = self.dir.join(catalog::FILE);
        let c = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes())
            .map_err(|e| Error::io(&path, std::io::Error::other(e)))?;
        // SAFETY: a NUL-terminated path and a zeroed out-parameter of the right type.
        let free = unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(c.as_ptr(), &mut st) != 0 {
                return Err(Error::io(&path, std::io::Error::last_os_error()));
            }
            st.f_bavail as u64 * st.f_frsize as u64
        };
        if free < CATALOG_HEADROOM {
            tracing::warn!(
                free,
                "too little free space for the catalog to write safely"
            );
            return Err(Error::io(
                &path,
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        Ok(())
    }
}

/// A new directory's name survives a power loss only once its parent is fsynced, and a new
/// file's only once its directory is: without this, a power cut after the first acknowledged
/// save of a new data directory could take the whole store with it (packs' directory fsyncs
/// cannot help while `packs/` itself, or the data directory, is not durably named).
fn sync_new_dirs(dir: &Path, created: &[PathBuf]) -> Result<()> {
    let packs = dir.join("packs");
    File::open(&packs).and_then(|f| f.sync_all()).at(&packs)?;
    // The catalog's file is named here too.
    File::open(dir).and_then(|f| f.sync_all()).at(dir)?;
    // The folders above it that this open created (the first start, `~/.local/share/chkpt`).
    for c in created {
        if let Some(parent) = c.parent().filter(|p| !p.as_os_str().is_empty())
            && let Err(e) = File::open(parent).and_then(|f| f.sync_all())
        {
            tracing::warn!(dir = %parent.display(), error = %e, "could not fsync the folder above the data directory");
        }
    }
    Ok(())
}

fn take_lock(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .at(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(Error::Locked {
                path: dir.to_path_buf(),
                pid: pid.trim().to_owned(),
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    file.set_len(0).at(&path)?;
    file.write_all(std::process::id().to_string().as_bytes())
        .at(&path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<u8> {
        chkpt_testkit::noise(len, seed)
    }

    #[test]
    fn put_read_dedup_and_incompressible_does_not_grow() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let text = b"hello world ".repeat(1000);
        let noise = random(100_000, 7);
        let b = store.batch();
        let (a, new_a) = b.put(&text, ObjectKind::Blob).unwrap();
        let (again, new_again) = b.put(&text, ObjectKind::Blob).unwrap();
        let (n, _) = b.put(&noise, ObjectKind::Blob).unwrap();
        b.finish().unwrap();
        assert!(new_a && !new_again && a == again);
        assert_eq!(store.read_vec(&a).unwrap(), text);
        assert_eq!(store.read_vec(&n).unwrap(), noise);
        let loc = store.locate(&n).unwrap().unwrap();
        assert_eq!(loc.len, noise.len() as u64, "random data is stored raw");
        assert!(store.locate(&a).unwrap().unwrap().len < 1000);
    }

    #[test]
    fn objects_still_in_a_write_buffer_are_readable_and_a_commit_writes_them_out() {
        let dir = tempfile::tempdir().unwrap();
        let ids = {
            let store = Store::open(dir.path()).unwrap();
            let b = store.batch();
            let objects: Vec<Vec<u8>> = (0..50u64).map(|i| random(3000, i + 1)).collect();
            let ids: Vec<Id> = objects
                .iter()
                .map(|o| b.put(o, ObjectKind::Blob).unwrap().0)
                .collect();
            let pack = store.locate(&ids[0]).unwrap().unwrap().pack;
            let on_disk = fs::metadata(store.packs.path(pack)).unwrap().len();
            assert!(
                on_disk < 50 * 3000,
                "small records are gathered in memory before they are written"
            );
            // Reading one before the commit writes the buffer out first.
            assert_eq!(store.read_vec(&ids[49]).unwrap(), objects[49]);
            let b2 = store.batch();
            let more = random(3000, 99);
            let (late, _) = b2.put(&more, ObjectKind::Blob).unwrap();
            b.finish().unwrap();
            b2.finish().unwrap();
            assert_eq!(store.read_vec(&late).unwrap(), more);
            ids
        };
        // What the commits acknowledged is in the pack files.
        let store = Store::open(dir.path()).unwrap();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(store.read_vec(id).unwrap(), random(3000, i as u64 + 1));
        }
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _store = Store::open(dir.path()).unwrap();
        match Store::open(dir.path()) {
            Err(Error::Locked { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[test]
    fn uncommitted_bytes_are_cut_off_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let store = Store::open(dir.path()).unwrap();
            let b = store.batch();
            id = b
                .put(
                    b"kept kept kept kept kept kept kept kept kept kept kept kept kept",
                    ObjectKind::Blob,
                )
                .unwrap()
                .0;
            b.finish().unwrap();
            let b = store.batch();
            b.put(b"lost", ObjectKind::Blob).unwrap();
            std::mem::forget(b); // as if the process died before the commit
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.contains(&id).unwrap());
        assert!(!store.contains(&Id::of(b"lost")).unwrap());
        let (no, committed) = store.cat.pack_lengths().unwrap()[0];
        assert_eq!(
            fs::metadata(pack::pack_path(&dir.path().join("packs"), no))
                .unwrap()
                .len(),
            committed
        );
    }

    /// A crash after the blob index segment was written but before the pack's committed length
    /// was raised: the entries past that length are ignored.
    #[test]
    fn index_entries_past_a_committed_length_are_ignored_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let lost = Id::of(b"lost");
        {
            let store = Store::open(dir.path()).unwrap();
            let b = store.batch();
            b.put(b"kept", ObjectKind::Blob).unwrap();
            b.finish().unwrap();
            let (no, committed) = store.cat.pack_lengths().unwrap()[0];
            let past = Loc {
                pack: no,
                offset: committed + pack::RECORD_HEADER,
                len: 4,
                raw_len: 4,
                flags: 0,
            };
            store.cat.append_blob_segments(&[(lost, past)]).unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.contains(&Id::of(b"kept")).unwrap());
        assert!(!store.contains(&lost).unwrap());
        assert_eq!(store.objects().len(), 1);
        // They are dropped from the catalog too: a reused pack number cannot revive them.
        assert_eq!(store.cat.load_blob_index().unwrap().1, 0);
    }

    /// Larger than a block object may be (a tree of a huge directory): stored and read back.
    #[test]
    fn an_object_past_the_in_memory_limit_round_trips_through_put() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..IN_MEMORY_LIMIT + 4096)
            .map(|i| (i % 251) as u8)
            .collect();
        let b = store.batch();
        let (id, new) = b.put(&data, ObjectKind::Tree).unwrap();
        assert!(new);
        b.finish().unwrap();
        assert_eq!(store.read_vec(&id).unwrap(), data);
    }

    /// Linux reports a writeback error to one fsync only: when the background fsync got it,
    /// the commit fails and the pack takes no more objects.
    #[test]
    fn a_failed_background_fsync_fails_the_commit_and_retires_the_pack() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let b = store.batch();
        let (first, _) = b.put(&random(10_000, 1), ObjectKind::Blob).unwrap();
        let pack = b.store().locate(&first).unwrap().unwrap().pack;
        store.packs.fail(pack, "Input/output error");
        assert!(matches!(b.finish(), Err(Error::Io { .. })));
        assert!(!store.contains(&first).unwrap());
        let b = store.batch();
        let (again, _) = b.put(&random(10_000, 1), ObjectKind::Blob).unwrap();
        assert_ne!(store.locate(&again).unwrap().unwrap().pack, pack);
        b.finish().unwrap();
        assert_eq!(store.read_vec(&again).unwrap(), random(10_000, 1));
    }

    #[test]
    fn a_lost_write_buffer_fails_every_commit_that_counts_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.batch();
        let (x, _) = a.put(&random(5_000, 3), ObjectKind::Blob).unwrap();
        let b = store.batch();
        let (adopted, new) = b.put(&random(5_000, 3), ObjectKind::Blob).unwrap();
        assert!(
            adopted == x && !new,
            "the second batch adopts the first one's object"
        );
        // The buffer holding x is lost, as when writing it out fails (a full disk).
        let mut w = store.packs.take_writer().unwrap();
        w.failed = Some("No space left on device".into());
        drop(w);
        // Reading it names the cause, not a damaged pack.
        let read = store.read_vec(&x);
        assert!(
            matches!(&read, Err(e @ Error::Io { .. }) if e.to_string().contains("No space left")),
            "{read:?}"
        );
        assert!(matches!(a.finish(), Err(Error::Io { .. })));
        assert!(matches!(b.finish(), Err(Error::Io { .. })));
        assert!(!store.contains(&x).unwrap());
        // The next save writes it again, into a new pack.
        let c = store.batch();
        c.put(&random(5_000, 3), ObjectKind::Blob).unwrap();
        c.finish().unwrap();
        assert_eq!(store.read_vec(&x).unwrap(), random(5_000, 3));
    }

    /// Tree format rule 5: a directory of 50,000 entries is stored as parts, reads back whole,
    /// and one changed entry writes its part and the split tree, nothing else.
    #[test]
    fn a_large_directory_is_stored_in_parts_and_one_change_writes_one_part() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut tree = Tree {
            entries: (0..50_000u32)
                .map(|i| Entry {
                    name: format!("f{i:06}").into_bytes(),
                    kind: Kind::File,
                    mode: 0o644,
                    size: 1,
                    id: Id::of(&i.to_le_bytes()),
                })
                .collect(),
        };
        let b = store.batch();
        let id = b.put_tree(tree.clone()).unwrap();
        let (objects, _) = b.written();
        b.finish().unwrap();
        assert!(objects > 20, "{objects} objects");
        assert!(store.tree_node(&id).unwrap().is_split());
        assert_eq!(store.tree(&id).unwrap(), tree);
        for (name, want) in [
            (&b"f012345"[..], Some(&tree.entries[12_345])),
            (b"f000000", Some(&tree.entries[0])),
            (b"f049999", Some(&tree.entries[49_999])),
            (b"f0123450", None),
            (b"a", None),
            (b"g", None),
        ] {
            assert_eq!(store.tree_entry(&id, name).unwrap().as_ref(), want);
        }
        tree.entries[30_000].id = Id::of(b"changed");
        let b = store.batch();
        let id2 = b.put_tree(tree.clone()).unwrap();
        let (objects, bytes) = b.written();
        b.finish().unwrap();
        assert_eq!(objects, 2, "the changed part and the split tree");
        assert!(bytes < 64 << 10, "{bytes} bytes");
        assert_eq!(store.tree(&id2).unwrap(), tree);
        let d = crate::workspace::diff::diff(&store, Some(id), Some(id2)).unwrap();
        let paths: Vec<&[u8]> = d.iter().map(|e| e.path.as_slice()).collect();
        assert_eq!(paths, [&b"f030000"[..]]);
    }
}
