//! The content-addressed store: packs of blobs and trees, and the catalog that indexes them.
//!
//! # Layout
//! A data directory holds:
//! 1. `lock`: an exclusively locked file with the holder's pid; one daemon per data directory.
//! 2. `packs/`: pack files (see [`pack`] for their format).
//! 3. `catalog/`: the sled database with the trees `blob_segments` (id → [`Loc`], loaded into
//!    memory when the store opens), `packs` (pack number → committed length), `workspaces`,
//!    `ws_paths`, `snapshots`, `ws_snaps` and `index_segments` (see [`catalog`]).
//!
//! # Writing
//! Objects are written through a [`Batch`]: they are appended to packs at once, and become
//! visible in the blob index only when the batch commits, after the packs are fsynced. Catalog
//! records that refer to them are written after that, and the sled flush that ends the batch makes
//! everything durable. A crash at any moment therefore leaves a catalog that points only at fully
//! written data; the bytes of an interrupted batch are cut off when the store next opens.

pub mod catalog;
pub mod gc;
pub mod id;
pub mod pack;
pub mod tree;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, mpsc};

use memmap2::Mmap;

pub use self::id::{Hasher, Id};
pub use self::pack::Loc;
use self::pack::{FLAG_LZ4, FLAG_LZ4_BLOCK, FLAG_TREE, PACK_TARGET_SIZE, PackWriter};
pub use self::tree::{Entry, Kind, Tree};
use crate::error::{Error, IoContext, Result};

/// Blobs at most this large are compressed in memory; larger ones are streamed.
pub const IN_MEMORY_LIMIT: u64 = 8 << 20;
/// A pack being filled is fsynced in the background every this many bytes: fsync's cost grows
/// with what was written since the last one (the disk's cache is flushed too), and a large
/// save's final fsync then has little left.
const EARLY_SYNC_EVERY: u64 = 64 << 20;
/// sled's page cache: small, the daemon must stay lean while it watches large trees (the
/// catalog holds few, large records: see [`catalog`]).
const CATALOG_CACHE_BYTES: u64 = 8 << 20;

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
    packs_dir: PathBuf,
    db: sled::Db,
    pub(crate) cat: catalog::Catalog,
    writers: Mutex<Writers>,
    /// Signalled whenever a writer is returned (see [`Store::ensure_written`]).
    writer_returned: Condvar,
    open_packs: Mutex<HashMap<u32, Arc<File>>>,
    next_pack: AtomicU32,
    pending: Mutex<HashMap<Id, Loc>>,
    /// The committed blob index (catalog format rule 1).
    index: RwLock<HashMap<Id, Loc>>,
    maps: RwLock<HashMap<u32, Arc<Mmap>>>,
    /// Requests to the background fsync thread (see [`EARLY_SYNC_EVERY`]).
    early_sync: Mutex<mpsc::SyncSender<(u32, Arc<File>)>>,
    /// Packs whose background fsync failed, with the error. Linux reports a writeback error
    /// to one fsync only: the commit must learn of it here, not from its own fsync.
    sync_failures: Arc<Mutex<HashMap<u32, String>>>,
    gc_lock: RwLock<()>,
    gc_epoch: AtomicU64,
    /// Work counters.
    pub counters: StoreCounters,
    _lock: File,
}

/// A pack writer one thread is using; dropping it returns the writer to the store (marked
/// failed when the thread panicked while using it), so no one waits for it forever.
struct Taken<'s> {
    store: &'s Store,
    w: Option<PackWriter>,
}

impl std::ops::Deref for Taken<'_> {
    type Target = PackWriter;
    fn deref(&self) -> &PackWriter {
        self.w
            .as_ref()
            .expect("a taken writer is held until dropped")
    }
}

impl std::ops::DerefMut for Taken<'_> {
    fn deref_mut(&mut self) -> &mut PackWriter {
        self.w
            .as_mut()
            .expect("a taken writer is held until dropped")
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(mut w) = self.w.take() {
            if std::thread::panicking() {
                w.failed
                    .get_or_insert_with(|| "a thread panicked while appending to it".into());
            }
            self.store.return_writer(w);
        }
    }
}

/// The pack writers: idle ones, and the packs whose writer a thread is using.
#[derive(Debug, Default)]
struct Writers {
    pool: Vec<PackWriter>,
    out: HashSet<u32>,
}

pub(crate) fn lock_poisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// Opens (creating if needed) the data directory `dir`, taking its lock and cutting off
    /// whatever an interrupted save left past the committed end of each pack.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .at(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).at(&dir)?;
        let lock = take_lock(&dir)?;
        let packs_dir = dir.join("packs");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&packs_dir)
            .at(&packs_dir)?;
        // No background flush timer (it woke the idle daemon twice a second): every write path
        // flushes explicitly before it acknowledges.
        let config = sled::Config::new()
            .flush_every_ms(None)
            .path(dir.join("catalog"))
            .cache_capacity(CATALOG_CACHE_BYTES);
        // We hold the data directory's lock, so sled's own lock can only be held by a handle
        // of this process that is still shutting down its flusher: wait for it briefly.
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if attempts < 50 && e.to_string().contains("could not acquire lock") =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let cat = catalog::Catalog::open(&db)?;
        let (early_sync, requests) = mpsc::sync_channel::<(u32, Arc<File>)>(4);
        let sync_failures: Arc<Mutex<HashMap<u32, String>>> = Arc::default();
        let failures = sync_failures.clone();
        std::thread::Builder::new()
            .name("chkpt-sync".into())
            .spawn(move || {
                // Ends when the store (the sender) is dropped.
                for (no, file) in requests {
                    if let Err(e) = file.sync_data() {
                        tracing::warn!(pack = no, error = %e, "background pack fsync failed");
                        lock_poisoned(&failures).insert(no, e.to_string());
                    }
                }
            })
            .map_err(|e| Error::io(&dir, e))?;
        let store = Store {
            dir,
            packs_dir,
            db,
            cat,
            writers: Mutex::default(),
            writer_returned: Condvar::new(),
            open_packs: Mutex::new(HashMap::new()),
            next_pack: AtomicU32::new(0),
            pending: Mutex::new(HashMap::new()),
            index: RwLock::new(HashMap::new()),
            maps: RwLock::new(HashMap::new()),
            early_sync: Mutex::new(early_sync),
            sync_failures,
            gc_lock: RwLock::new(()),
            gc_epoch: AtomicU64::new(0),
            counters: StoreCounters::default(),
            _lock: lock,
        };
        store.recover_packs()?;
        let (index, ignored) = store.cat.load_blob_index()?;
        if ignored > 0 {
            // Entries of an interrupted commit go, before a reused pack number revives them.
            let entries: Vec<(Id, Loc)> = index.iter().map(|(id, loc)| (*id, *loc)).collect();
            store.cat.rewrite_blob_index(&entries)?;
            store.flush()?;
        }
        *store.index.write().unwrap_or_else(|p| p.into_inner()) = index;
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

    /// Cuts packs back to their committed length and picks the next pack number.
    fn recover_packs(&self) -> Result<()> {
        let mut max_no = 0u32;
        for (no, committed) in self.cat.pack_lengths()? {
            max_no = max_no.max(no);
            let path = pack::pack_path(&self.packs_dir, no);
            let Ok(meta) = fs::metadata(&path) else {
                tracing::warn!(pack = %path.display(), "a committed pack is missing; verify will name what it held");
                continue;
            };
            if meta.len() > committed {
                tracing::info!(pack = %path.display(), committed, found = meta.len(), "cutting off the remains of an interrupted save");
                let f = OpenOptions::new().write(true).open(&path).at(&path)?;
                f.set_len(committed).at(&path)?;
                f.sync_all().at(&path)?;
            }
        }
        for name in self.pack_files()? {
            max_no = max_no.max(name);
        }
        self.next_pack.store(max_no + 1, Ordering::SeqCst);
        Ok(())
    }

    /// Numbers of the pack files on disk.
    fn pack_files(&self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.packs_dir).at(&self.packs_dir)? {
            let entry = entry.at(&self.packs_dir)?;
            if let Some(no) = entry.file_name().to_str().and_then(pack::parse_pack_name) {
                out.push(no);
            }
        }
        Ok(out)
    }

    /// Starts a batch of writes. While any batch is open, garbage collection waits.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            _guard: self.gc_lock.read().unwrap_or_else(|p| p.into_inner()),
            new: Mutex::new(Vec::new()),
            new_bytes: AtomicU64::new(0),
        }
    }

    /// Changes each time garbage collection removed objects: cached tree ids from before must
    /// be re-checked.
    pub fn gc_epoch(&self) -> u64 {
        self.gc_epoch.load(Ordering::SeqCst)
    }

    /// Whether the object is stored (committed or written by a batch still open).
    pub fn contains(&self, id: &Id) -> Result<bool> {
        if lock_poisoned(&self.pending).contains_key(id) {
            return Ok(true);
        }
        Ok(self.committed(id).is_some())
    }

    /// Where a committed object is.
    pub(crate) fn committed(&self, id: &Id) -> Option<Loc> {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }

    /// Every committed object and where it is.
    pub fn objects(&self) -> Vec<(Id, Loc)> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        index.iter().map(|(id, loc)| (*id, *loc)).collect()
    }

    /// Where an object is.
    pub fn locate(&self, id: &Id) -> Result<Option<Loc>> {
        if let Some(loc) = lock_poisoned(&self.pending).get(id) {
            return Ok(Some(*loc));
        }
        Ok(self.committed(id))
    }

    fn map(&self, pack: u32, need: u64) -> Result<Arc<Mmap>> {
        if let Some(m) = self
            .maps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pack)
            && m.len() as u64 >= need
        {
            return Ok(m.clone());
        }
        // An object just written may still be in its writer's buffer; and the map must not
        // reach a record still being streamed, which may be cut off (the next record's bytes
        // would then be read from a stale page, or past the end of the file).
        let stable = self.ensure_written(pack, need)?;
        let path = pack::pack_path(&self.packs_dir, pack);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::Corrupt(format!("pack {} is missing", path.display()))
            } else {
                Error::io(&path, e)
            }
        })?;
        let len = file.metadata().at(&path)?.len().min(stable);
        if len < need {
            // Short because writing it out failed (a full disk): that is the error to give.
            if let Some(e) = self.failure_of(pack) {
                return Err(e);
            }
            return Err(Error::Corrupt(format!(
                "pack {} is shorter than its index says",
                path.display()
            )));
        }
        let len = usize::try_from(len)
            .map_err(|_| Error::Corrupt(format!("pack {} is too large to map", path.display())))?;
        // SAFETY: a map covers only bytes that stay: a pack shortens only to cut off a record
        // being streamed, past `stable`; `recover_packs` shortens packs before anything is
        // mapped, and repacking deletes whole files, which leaves existing maps valid.
        let map = Arc::new(unsafe { memmap2::MmapOptions::new().len(len).map(&file) }.at(&path)?);
        self.maps
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pack, map.clone());
        Ok(map)
    }

    /// Streams an object's content into `sink`, checking it against its id. Returns its length.
    /// A mismatch is [`Error::Corrupt`]; nothing is promised about what `sink` got by then.
    pub fn read_into(&self, id: &Id, sink: &mut dyn Write) -> Result<u64> {
        let loc = self
            .locate(id)?
            .ok_or_else(|| Error::Corrupt(format!("object {id} is not in the store")))?;
        self.read_loc_into(id, &loc, sink)
    }

    fn read_loc_into(&self, id: &Id, loc: &Loc, sink: &mut dyn Write) -> Result<u64> {
        let map = self.map(loc.pack, loc.end())?;
        let stored = loc_bytes(&map, id, loc)?;
        let mut hashing = HashingWriter {
            inner: sink,
            hasher: Hasher::default(),
        };
        let res = if loc.flags & FLAG_LZ4_BLOCK != 0 {
            if loc.raw_len > IN_MEMORY_LIMIT {
                return Err(Error::Corrupt(format!(
                    "object {id} in pack {} claims an impossible length",
                    loc.pack
                )));
            }
            match lz4_flex::block::decompress(stored, loc.raw_len as usize) {
                Ok(raw) => hashing.write_all(&raw),
                Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        } else if loc.flags & FLAG_LZ4 != 0 {
            io::copy(
                &mut lz4_flex::frame::FrameDecoder::new(stored),
                &mut hashing,
            )
            .map(|_| ())
        } else {
            hashing.write_all(stored)
        };
        match res {
            Ok(()) => {}
            Err(e)
                if e.kind() == io::ErrorKind::InvalidData
                    || e.kind() == io::ErrorKind::UnexpectedEof =>
            {
                return Err(Error::Corrupt(format!(
                    "object {id} does not decompress: {e}"
                )));
            }
            Err(e) => return Err(Error::io("(restore target)", e)),
        }
        let (got, len) = hashing.hasher.finish();
        if got != *id || len != loc.raw_len {
            return Err(Error::Corrupt(format!(
                "object {id} in pack {} does not match its id",
                loc.pack
            )));
        }
        Ok(len)
    }

    /// An object's content, checked. Only for objects known to be small (trees, link targets).
    pub fn read_vec(&self, id: &Id) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(id, &mut out)?;
        Ok(out)
    }

    /// Reads and decodes a tree.
    pub fn tree(&self, id: &Id) -> Result<Tree> {
        let bytes = self.read_vec(id)?;
        Tree::decode(&bytes).map_err(|e| Error::Corrupt(format!("tree {id}: {e}")))
    }

    /// Gives memory back after a heavy operation: unmaps the packs (their pages count as the
    /// daemon's resident memory while mapped; the next read maps them again) and returns
    /// freed heap to the system.
    pub fn release_memory(&self) {
        self.maps.write().unwrap_or_else(|p| p.into_inner()).clear();
        for w in &mut lock_poisoned(&self.writers).pool {
            w.shrink();
        }
        // glibc keeps freed memory in per-thread arenas; malloc_trim returns what is free in
        // every arena (after a cold save of the Linux tree: ~130 MiB resident, against ~155 MiB
        // with mimalloc and its own collection).
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory of the allocator.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Flushes the catalog to disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// A writer for this thread alone; it goes back when the [`Taken`] is dropped.
    fn take_writer(&self) -> Result<Taken<'_>> {
        let mut writers = lock_poisoned(&self.writers);
        if let Some(w) = writers.pool.pop() {
            writers.out.insert(w.no);
            return Ok(Taken {
                store: self,
                w: Some(w),
            });
        }
        let no = self.next_pack.fetch_add(1, Ordering::SeqCst);
        let w = PackWriter::create(&self.packs_dir, no)?;
        writers.out.insert(no);
        drop(writers);
        lock_poisoned(&self.open_packs).insert(no, w.file.clone());
        tracing::debug!(pack = no, "new pack");
        Ok(Taken {
            store: self,
            w: Some(w),
        })
    }

    fn return_writer(&self, mut w: PackWriter) {
        let full = w.len >= PACK_TARGET_SIZE;
        if full {
            // Retired: what it buffered goes to the file now (a failure marks it failed).
            let _ = w.flush();
        }
        if w.failed.is_none()
            && (w.written() - w.early_synced >= EARLY_SYNC_EVERY
                || (full && w.len > w.early_synced))
        {
            w.early_synced = w.written();
            // When the thread is busy, this request is dropped: the next one covers it.
            let _ = lock_poisoned(&self.early_sync).try_send((w.no, w.file.clone()));
        }
        let mut writers = lock_poisoned(&self.writers);
        writers.out.remove(&w.no);
        if let Some(e) = w.failed.take() {
            // Records it buffered are lost: no commit may count on this pack any more.
            lock_poisoned(&self.sync_failures).insert(w.no, e);
        } else if !full {
            writers.pool.push(w);
        }
        drop(writers);
        self.writer_returned.notify_all();
    }

    /// Makes sure pack `no` holds its first `end` bytes in the file, not only in its writer's
    /// buffer: writes the buffer out, waiting first for a thread using the writer to return it.
    /// Returns a length, at least `end`, up to which the file's bytes are records that stay:
    /// past it a thread may be streaming a record it can still cut off again.
    fn ensure_written(&self, no: u32, end: u64) -> Result<u64> {
        let mut writers = lock_poisoned(&self.writers);
        loop {
            if let Some(i) = writers.pool.iter().position(|w| w.no == no) {
                let w = &mut writers.pool[i];
                if w.written() >= end {
                    return Ok(w.written());
                }
                return match w.flush() {
                    Ok(()) => Ok(w.written()),
                    Err(e) => {
                        let w = writers.pool.swap_remove(i);
                        lock_poisoned(&self.sync_failures)
                            .insert(no, w.failed.unwrap_or_else(|| e.to_string()));
                        Err(e)
                    }
                };
            }
            if !writers.out.contains(&no) {
                // No writer (retired, or never opened by this process): all of it is written,
                // unless writing it failed (which the caller's `failure_of` reports).
                return Ok(u64::MAX);
            }
            writers = self
                .writer_returned
                .wait(writers)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Stops appending to the open packs: the next write starts a new pack. Only while no
    /// batch is open (what they buffered is not committed, and goes).
    pub fn close_writers(&self) {
        lock_poisoned(&self.writers).pool.clear();
    }

    /// The error that made pack `no` unusable, if any: what was written to it may never reach
    /// the disk, so its writer is retired too.
    fn failure_of(&self, no: u32) -> Option<Error> {
        // Cloned out first: the writers' lock is never taken while this one is held.
        let failed = lock_poisoned(&self.sync_failures).get(&no).cloned();
        let e = failed?;
        lock_poisoned(&self.writers).pool.retain(|w| w.no != no);
        Some(Error::io(
            pack::pack_path(&self.packs_dir, no),
            io::Error::other(e),
        ))
    }

    fn sync_packs(&self, ends: &HashMap<u32, u64>) -> Result<()> {
        for (&no, &end) in ends {
            let path = pack::pack_path(&self.packs_dir, no);
            if let Some(e) = self.failure_of(no) {
                return Err(e);
            }
            self.ensure_written(no, end)?;
            // Writing out a buffer (here or by the thread that had the writer) may have failed.
            if let Some(e) = self.failure_of(no) {
                return Err(e);
            }
            let file = lock_poisoned(&self.open_packs).get(&no).cloned();
            let synced = match file {
                Some(f) => f.sync_data(),
                None => File::open(&path).and_then(|f| f.sync_data()),
            };
            if let Err(e) = synced {
                // A second fsync would report success over the same lost writes.
                lock_poisoned(&self.sync_failures).insert(no, e.to_string());
                lock_poisoned(&self.writers).pool.retain(|w| w.no != no);
                return Err(Error::io(&path, e));
            }
        }
        Ok(())
    }
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

struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: Hasher,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An object's stored bytes in its mapped pack, once its record header says it is there.
pub(crate) fn loc_bytes<'m>(map: &'m [u8], id: &Id, loc: &Loc) -> Result<&'m [u8]> {
    let header = loc
        .offset
        .checked_sub(pack::RECORD_HEADER)
        .and_then(|h| map.get(h as usize..loc.offset as usize))
        .and_then(pack::parse_header);
    let stored = map.get(loc.offset as usize..loc.end() as usize);
    match (header, stored) {
        (Some((hid, _, len)), Some(stored)) if (hid, len) == (*id, loc.len) => Ok(stored),
        _ => Err(Error::Corrupt(format!(
            "record header of object {id} in pack {} is damaged",
            loc.pack
        ))),
    }
}

thread_local! {
    /// Each thread's LZ4 output buffer, reused from one object to the next.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Frees this thread's compression buffer. Threads of a walk end with it; a long-lived thread
/// (rayon's) calls this after a save, so a large file read once does not stay in memory.
pub fn release_thread_buffers() {
    SCRATCH.with(|s| *s.borrow_mut() = Vec::new());
}

/// `data` compressed as one LZ4 block into `out` (resized as needed); its length, or none when
/// compressing does not save at least 1/32.
pub fn lz4_block(data: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let need = lz4::block::compress_bound(data.len()).ok()?;
    if out.len() < need {
        out.resize(need, 0);
    }
    lz4::block::compress_to_buffer(data, None, false, &mut out[..need])
        .ok()
        .filter(|&n| n < data.len() - data.len() / 32)
}

/// Calls `f` with `data` as one LZ4 block, or with none when compressing does not pay (the
/// block must save at least 1/32) or `data` is larger than a block object may be
/// ([`IN_MEMORY_LIMIT`]: a tree of a directory with ~150,000 entries; stored raw).
fn with_compressed<T>(data: &[u8], f: impl FnOnce(Option<&[u8]>) -> T) -> T {
    if data.len() < 64 || data.len() as u64 > IN_MEMORY_LIMIT {
        return f(None);
    }
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        let n = lz4_block(data, &mut buf);
        f(n.map(|n| &buf[..n]))
    })
}

/// Copies `reader` to `out`, returning the id and length of what passed.
fn copy_hashing(reader: &mut dyn Read, out: &mut dyn Write) -> io::Result<(Id, u64)> {
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
}

/// What a streamed write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streamed {
    /// Stored (or already present) under the expected id.
    Stored {
        /// Whether the bytes were new to the store.
        new: bool,
    },
    /// The source yielded different bytes than expected (it changed while being read); nothing
    /// was kept.
    Changed,
}

/// A group of writes that becomes visible together. Usable from many threads at once.
#[derive(Debug)]
pub struct Batch<'s> {
    store: &'s Store,
    _guard: RwLockReadGuard<'s, ()>,
    new: Mutex<Vec<(Id, Loc)>>,
    new_bytes: AtomicU64,
}

impl Batch<'_> {
    /// The store.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Stores `data` as a blob (or a tree with `tree`), unless already present. Returns its id
    /// and whether it was new.
    pub fn put(&self, data: &[u8], tree: bool) -> Result<(Id, bool)> {
        let id = Id::of(data);
        if self.adopt(&id)? {
            return Ok((id, false));
        }
        let res = with_compressed(data, |compressed| {
            let flags = if tree { FLAG_TREE } else { 0 }
                | if compressed.is_some() {
                    FLAG_LZ4_BLOCK
                } else {
                    0
                };
            let mut w = self.store.take_writer()?;
            w.append(id, flags, data.len() as u64, compressed.unwrap_or(data))
        });
        self.record(id, res?);
        Ok((id, true))
    }

    /// Stores a tree.
    pub fn put_tree(&self, tree: &Tree) -> Result<Id> {
        Ok(self.put(&tree.encode(), true)?.0)
    }

    /// Stores `raw_len` bytes read from `reader` under `id` (known from an earlier pass), without
    /// holding them in memory. When the bytes read do not hash to `id`, nothing is kept.
    pub fn put_stream(
        &self,
        id: Id,
        raw_len: u64,
        reader: &mut dyn Read,
        compress: bool,
    ) -> Result<Streamed> {
        if self.adopt(&id)? {
            return Ok(Streamed::Stored { new: false });
        }
        let flags = if compress { FLAG_LZ4 } else { 0 };
        let mut w = self.store.take_writer()?;
        let res = w.append_with(flags, raw_len, |sink| {
            let got = if compress {
                let mut enc = lz4_flex::frame::FrameEncoder::new(sink);
                let got = copy_hashing(reader, &mut enc)?;
                enc.finish().map_err(io::Error::other)?;
                got
            } else {
                copy_hashing(reader, sink)?
            };
            Ok((got == (id, raw_len)).then_some(id))
        });
        drop(w);
        match res? {
            Some(loc) => {
                self.record(id, loc);
                Ok(Streamed::Stored { new: true })
            }
            None => Ok(Streamed::Changed),
        }
    }

    /// Whether `id` is already stored; one written by another open batch is adopted, so this
    /// batch's commit makes it durable too.
    fn adopt(&self, id: &Id) -> Result<bool> {
        if let Some(loc) = lock_poisoned(&self.store.pending).get(id).copied() {
            lock_poisoned(&self.new).push((*id, loc));
            return Ok(true);
        }
        Ok(self.store.committed(id).is_some())
    }

    fn record(&self, id: Id, loc: Loc) {
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
        lock_poisoned(&self.store.pending).insert(id, loc);
        lock_poisoned(&self.new).push((id, loc));
    }

    /// Objects this batch wrote or adopted so far, and their stored bytes.
    pub fn written(&self) -> (u64, u64) {
        (
            lock_poisoned(&self.new).len() as u64,
            self.new_bytes.load(Ordering::Relaxed),
        )
    }

    /// Makes the objects written so far durable and visible in the blob index: fsyncs their
    /// packs, then records them and the packs' committed lengths in the catalog. Catalog records
    /// that refer to them may be written after this returns; [`Batch::finish`] flushes.
    pub fn commit_objects(&self) -> Result<()> {
        let mut new = std::mem::take(&mut *lock_poisoned(&self.new));
        if new.is_empty() {
            return Ok(());
        }
        // An object adopted many times (identical files) is indexed once.
        new.sort_unstable_by_key(|(id, _)| id.0);
        new.dedup_by_key(|(id, _)| id.0);
        let mut ends: HashMap<u32, u64> = HashMap::new();
        for (_, loc) in &new {
            let e = ends.entry(loc.pack).or_default();
            *e = (*e).max(loc.end());
        }
        let t = std::time::Instant::now();
        let durable = self
            .store
            .sync_packs(&ends)
            .and_then(|()| self.store.cat.append_blob_segments(&new))
            .and_then(|()| self.store.cat.raise_pack_lengths(&ends));
        if let Err(e) = durable {
            // Not committed: no other batch may count on these objects any more.
            let mut pending = lock_poisoned(&self.store.pending);
            for (id, loc) in &new {
                if pending.get(id) == Some(loc) {
                    pending.remove(id);
                }
            }
            return Err(e);
        }
        tracing::debug!(
            objects = new.len(),
            ms = t.elapsed().as_millis() as u64,
            "objects committed"
        );
        {
            let mut index = self.store.index.write().unwrap_or_else(|p| p.into_inner());
            index.extend(new.iter().copied());
        }
        let mut pending = lock_poisoned(&self.store.pending);
        for (id, loc) in &new {
            if pending.get(id) == Some(loc) {
                pending.remove(id);
            }
        }
        // A cold save grew it to one entry per object; the idle daemon need not keep that.
        if pending.is_empty() && pending.capacity() > 4096 {
            *pending = HashMap::new();
        }
        Ok(())
    }

    /// Commits what is left and flushes the catalog: everything written in the batch is durable.
    pub fn finish(self) -> Result<()> {
        self.commit_objects()?;
        let t = std::time::Instant::now();
        self.store.flush()?;
        tracing::debug!(flush_ms = t.elapsed().as_millis() as u64, "catalog flushed");
        Ok(())
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        // Objects never committed stop being offered to other batches; their bytes are dead.
        let new = std::mem::take(&mut *lock_poisoned(&self.new));
        let mut pending = lock_poisoned(&self.store.pending);
        for (id, loc) in new {
            if pending.get(&id) == Some(&loc) {
                pending.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn put_read_dedup_and_incompressible_does_not_grow() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let text = b"hello world ".repeat(1000);
        let noise = random(100_000, 7);
        let b = store.batch();
        let (a, new_a) = b.put(&text, false).unwrap();
        let (again, new_again) = b.put(&text, false).unwrap();
        let (n, _) = b.put(&noise, false).unwrap();
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
            let ids: Vec<Id> = objects.iter().map(|o| b.put(o, false).unwrap().0).collect();
            let pack = store.locate(&ids[0]).unwrap().unwrap().pack;
            let on_disk = fs::metadata(pack::pack_path(&store.packs_dir, pack))
                .unwrap()
                .len();
            assert!(
                on_disk < 50 * 3000,
                "small records are gathered in memory before they are written"
            );
            // Reading one before the commit writes the buffer out first.
            assert_eq!(store.read_vec(&ids[49]).unwrap(), objects[49]);
            let b2 = store.batch();
            let more = random(3000, 99);
            let (late, _) = b2.put(&more, false).unwrap();
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
    fn stream_detects_changed_source() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = random(3 << 20, 3);
        let (id, len) = Id::of_reader(&data[..]).unwrap();
        let b = store.batch();
        let other = random(3 << 20, 4);
        assert_eq!(
            b.put_stream(id, len, &mut &other[..], true).unwrap(),
            Streamed::Changed
        );
        assert_eq!(
            b.put_stream(id, len, &mut &data[..], false).unwrap(),
            Streamed::Stored { new: true }
        );
        b.finish().unwrap();
        assert_eq!(store.read_vec(&id).unwrap(), data);
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
                    false,
                )
                .unwrap()
                .0;
            b.finish().unwrap();
            let b = store.batch();
            b.put(b"lost", false).unwrap();
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
            b.put(b"kept", false).unwrap();
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
        let (id, new) = b.put(&data, true).unwrap();
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
        let (first, _) = b.put(&random(10_000, 1), false).unwrap();
        let pack = b.store.locate(&first).unwrap().unwrap().pack;
        lock_poisoned(&store.sync_failures).insert(pack, "Input/output error".into());
        assert!(matches!(b.finish(), Err(Error::Io { .. })));
        assert!(!store.contains(&first).unwrap());
        let b = store.batch();
        let (again, _) = b.put(&random(10_000, 1), false).unwrap();
        assert_ne!(store.locate(&again).unwrap().unwrap().pack, pack);
        b.finish().unwrap();
        assert_eq!(store.read_vec(&again).unwrap(), random(10_000, 1));
    }

    #[test]
    fn a_lost_write_buffer_fails_every_commit_that_counts_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.batch();
        let (x, _) = a.put(&random(5_000, 3), false).unwrap();
        let b = store.batch();
        let (adopted, new) = b.put(&random(5_000, 3), false).unwrap();
        assert!(
            adopted == x && !new,
            "the second batch adopts the first one's object"
        );
        // The buffer holding x is lost, as when writing it out fails (a full disk).
        let mut w = store.take_writer().unwrap();
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
        c.put(&random(5_000, 3), false).unwrap();
        c.finish().unwrap();
        assert_eq!(store.read_vec(&x).unwrap(), random(5_000, 3));
    }

    /// A store written with one sled entry per object and per path opens with everything in
    /// place (catalog format rule 7).
    #[test]
    fn a_per_entry_catalog_is_moved_into_segments() {
        let dir = tempfile::tempdir().unwrap();
        let data = random(100_000, 9);
        let id = {
            let store = Store::open(dir.path()).unwrap();
            let b = store.batch();
            let (id, _) = b.put(&data, false).unwrap();
            b.finish().unwrap();
            let old = store.db.open_tree("blobs").unwrap();
            for (id, loc) in store.objects() {
                old.insert(id.0, &loc.encode()).unwrap();
            }
            store.db.drop_tree("blob_segments").unwrap();
            let meta = catalog::FileMeta {
                kind: Kind::File,
                mode: 0o644,
                size: data.len() as u64,
                mtime_ns: 1,
                ctime_ns: 2,
                ino: 3,
                dev: 4,
                id,
                racy: false,
            };
            let mut key = 7u64.to_be_bytes().to_vec();
            key.extend_from_slice(b"src/a.bin");
            let mut value = vec![catalog::RECORD_VERSION];
            value.extend_from_slice(&bitcode::encode(&meta));
            store
                .db
                .open_tree("files")
                .unwrap()
                .insert(key, value)
                .unwrap();
            store.flush().unwrap();
            id
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.read_vec(&id).unwrap(), data);
        let (entries, _) = store.cat.load_index(7).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].0.as_slice(), entries[0].1.id),
            (&b"src/a.bin"[..], id)
        );
        let names = store.db.tree_names();
        assert!(
            !names
                .iter()
                .any(|n| n.as_ref() == b"blobs" || n.as_ref() == b"files")
        );
        drop(store);
        // Once moved, a second open finds the same.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.read_vec(&id).unwrap(), data);
        assert_eq!(store.cat.load_index(7).unwrap().0.len(), 1);
    }
}
