//! The pack files on disk: a pool of writers appending to them, the background fsync of packs
//! being filled, the maps reads go through, and what failed. The store's lowest layer: it knows
//! nothing of which object is where (that is the [`BlobIndex`](super::blob_index::BlobIndex)).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, mpsc};

use memmap2::Mmap;

use super::catalog::Catalog;
use super::pack::{self, PACK_TARGET_SIZE, PackWriter};
use crate::error::{Error, IoContext, Result};
use crate::sync::{lock, read, write};

/// A pack being filled is fsynced in the background every this many bytes: fsync's cost grows
/// with what was written since the last one (the disk's cache is flushed too), and a large
/// save's final fsync then has little left.
const EARLY_SYNC_EVERY: u64 = 64 << 20;

/// The pack files of a data directory.
#[derive(Debug)]
pub(crate) struct Packs {
    dir: PathBuf,
    writers: Mutex<Writers>,
    /// Signalled whenever a writer is returned (see [`Packs::ensure_written`]).
    writer_returned: Condvar,
    open_packs: Mutex<HashMap<u32, Arc<File>>>,
    next_pack: AtomicU32,
    maps: RwLock<HashMap<u32, Arc<Mmap>>>,
    /// Requests to the background fsync thread (see [`EARLY_SYNC_EVERY`]).
    early_sync: Mutex<mpsc::SyncSender<(u32, Arc<File>)>>,
    /// Packs whose writing or fsync failed, with the error. Linux reports a writeback error
    /// to one fsync only: the commit must learn of it here, not from its own fsync.
    sync_failures: Arc<Mutex<HashMap<u32, String>>>,
    /// Packs deleted by the idle recompression, still mapped for a while: a reader that found
    /// an object in one just before the index moved it reads it from here (see
    /// [`Packs::retire`]).
    retired: Mutex<HashMap<u32, (std::time::Instant, Arc<Mmap>)>>,
}

/// How long a retired pack stays readable: far longer than a reader holds a location it took
/// from the index (one object's read), and short enough that its disk space comes back soon.
const RETIRED_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// The pack writers: idle ones, and the packs whose writer a thread is using.
#[derive(Debug, Default)]
struct Writers {
    pool: Vec<PackWriter>,
    out: HashSet<u32>,
}

/// A pack writer one thread is using; dropping it returns the writer to the pool (marked
/// failed when the thread panicked while using it), so no one waits for it forever.
pub(crate) struct Taken<'p> {
    packs: &'p Packs,
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
            self.packs.return_writer(w);
        }
    }
}

impl Packs {
    /// The packs in `dir` (created if needed), with the background fsync thread started.
    pub fn open(dir: PathBuf) -> Result<Packs> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .at(&dir)?;
        let (early_sync, requests) = mpsc::sync_channel::<(u32, Arc<File>)>(4);
        let sync_failures: Arc<Mutex<HashMap<u32, String>>> = Arc::default();
        let failures = sync_failures.clone();
        std::thread::Builder::new()
            .name("chkpt-sync".into())
            .spawn(move || {
                // Ends when the packs (the sender) are dropped.
                for (no, file) in requests {
                    if let Err(e) = file.sync_data() {
                        tracing::warn!(pack = no, error = %e, "background pack fsync failed");
                        lock(&failures).insert(no, e.to_string());
                    }
                }
            })
            .map_err(|e| Error::io(&dir, e))?;
        Ok(Packs {
            dir,
            writers: Mutex::default(),
            writer_returned: Condvar::new(),
            open_packs: Mutex::new(HashMap::new()),
            next_pack: AtomicU32::new(0),
            maps: RwLock::new(HashMap::new()),
            early_sync: Mutex::new(early_sync),
            sync_failures,
            retired: Mutex::default(),
        })
    }

    /// The folder of the packs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of pack `no`.
    pub fn path(&self, no: u32) -> PathBuf {
        pack::pack_path(&self.dir, no)
    }

    /// Cuts packs back to their committed length and picks the next pack number.
    pub fn recover(&self, cat: &Catalog) -> Result<()> {
        let mut max_no = 0u32;
        for (no, committed) in cat.pack_lengths()? {
            max_no = max_no.max(no);
            let path = self.path(no);
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
        for name in self.files()? {
            max_no = max_no.max(name);
        }
        self.next_pack.store(max_no + 1, Ordering::SeqCst);
        Ok(())
    }

    /// Numbers of the pack files on disk.
    pub fn files(&self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).at(&self.dir)? {
            let entry = entry.at(&self.dir)?;
            if let Some(no) = entry.file_name().to_str().and_then(pack::parse_pack_name) {
                out.push(no);
            }
        }
        Ok(out)
    }

    /// A new pack's writer, outside the pool (for repacking).
    pub fn create_outside_pool(&self) -> Result<PackWriter> {
        let no = self.next_pack.fetch_add(1, Ordering::SeqCst);
        PackWriter::create(&self.dir, no)
    }

    /// A writer for this thread alone; it goes back when the [`Taken`] is dropped.
    pub fn take_writer(&self) -> Result<Taken<'_>> {
        let mut writers = lock(&self.writers);
        if let Some(w) = writers.pool.pop() {
            writers.out.insert(w.no);
            return Ok(Taken {
                packs: self,
                w: Some(w),
            });
        }
        let no = self.next_pack.fetch_add(1, Ordering::SeqCst);
        let w = PackWriter::create(&self.dir, no)?;
        writers.out.insert(no);
        drop(writers);
        lock(&self.open_packs).insert(no, w.file.clone());
        tracing::debug!(pack = no, "new pack");
        Ok(Taken {
            packs: self,
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
            let _ = lock(&self.early_sync).try_send((w.no, w.file.clone()));
        }
        let mut writers = lock(&self.writers);
        writers.out.remove(&w.no);
        if let Some(e) = w.failed.take() {
            // Records it buffered are lost: no commit may count on this pack any more.
            lock(&self.sync_failures).insert(w.no, e);
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
        let mut writers = lock(&self.writers);
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
                        lock(&self.sync_failures)
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
        lock(&self.writers).pool.clear();
    }

    /// The error that made pack `no` unusable, if any: what was written to it may never reach
    /// the disk, so its writer is retired too.
    pub fn failure_of(&self, no: u32) -> Option<Error> {
        // Cloned out first: the writers' lock is never taken while this one is held.
        let failed = lock(&self.sync_failures).get(&no).cloned();
        let e = failed?;
        lock(&self.writers).pool.retain(|w| w.no != no);
        Some(Error::io(self.path(no), io::Error::other(e)))
    }

    /// Marks pack `no` as failed (for tests of what a failed background fsync does).
    #[cfg(test)]
    pub fn fail(&self, no: u32, error: &str) {
        lock(&self.sync_failures).insert(no, error.into());
    }

    /// Makes packs durable up to the given ends: writes out buffers, then fsyncs.
    pub fn sync(&self, ends: &HashMap<u32, u64>) -> Result<()> {
        for (&no, &end) in ends {
            let path = self.path(no);
            if let Some(e) = self.failure_of(no) {
                return Err(e);
            }
            self.ensure_written(no, end)?;
            // Writing out a buffer (here or by the thread that had the writer) may have failed.
            if let Some(e) = self.failure_of(no) {
                return Err(e);
            }
            let file = lock(&self.open_packs).get(&no).cloned();
            let synced = match file {
                Some(f) => f.sync_data(),
                None => File::open(&path).and_then(|f| f.sync_data()),
            };
            if let Err(e) = synced {
                // A second fsync would report success over the same lost writes.
                lock(&self.sync_failures).insert(no, e.to_string());
                lock(&self.writers).pool.retain(|w| w.no != no);
                return Err(Error::io(&path, e));
            }
        }
        Ok(())
    }

    /// A map of pack `no` covering at least its first `need` bytes.
    pub fn map(&self, no: u32, need: u64) -> Result<Arc<Mmap>> {
        if let Some(m) = read(&self.maps).get(&no)
            && m.len() as u64 >= need
        {
            return Ok(m.clone());
        }
        // An object just written may still be in its writer's buffer; and the map must not
        // reach a record still being streamed, which may be cut off (the next record's bytes
        // would then be read from a stale page, or past the end of the file).
        let stable = self.ensure_written(no, need)?;
        let path = self.path(no);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some((_, m)) = lock(&self.retired).get(&no)
                    && m.len() as u64 >= need
                {
                    return Ok(m.clone());
                }
                return Err(Error::Corrupt(format!(
                    "pack {} is missing",
                    path.display()
                )));
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let len = file.metadata().at(&path)?.len().min(stable);
        if len < need {
            // Short because writing it out failed (a full disk): that is the error to give.
            if let Some(e) = self.failure_of(no) {
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
        // being streamed, past `stable`; `recover` shortens packs before anything is mapped,
        // and repacking deletes whole files, which leaves existing maps valid.
        let map = Arc::new(unsafe { memmap2::MmapOptions::new().len(len).map(&file) }.at(&path)?);
        write(&self.maps).insert(no, map.clone());
        Ok(map)
    }

    /// Deletes pack `no`'s file as [`Packs::delete`] does, keeping its first `len` bytes
    /// mapped for [`RETIRED_FOR`]: the idle recompression moves objects while readers run,
    /// and one that located an object just before it moved maps the old pack after. (The
    /// disk space comes back once the map goes.) Retired packs past their time are let go.
    pub fn retire(&self, no: u32, len: u64) -> Result<u64> {
        self.expire_retired();
        let map = self.map(no, len)?;
        lock(&self.retired).insert(no, (std::time::Instant::now(), map));
        self.delete(no)
    }

    /// Lets go of the maps of packs retired longer than [`RETIRED_FOR`] ago; returns how long
    /// until the next one may go, if any is left.
    pub fn expire_retired(&self) -> Option<std::time::Duration> {
        let mut retired = lock(&self.retired);
        retired.retain(|_, (at, _)| at.elapsed() < RETIRED_FOR);
        retired
            .values()
            .map(|(at, _)| RETIRED_FOR.saturating_sub(at.elapsed()))
            .min()
    }

    /// Deletes pack `no`'s file (gone already is fine); returns the bytes it took on disk.
    pub fn delete(&self, no: u32) -> Result<u64> {
        let path = self.path(no);
        let size = fs::metadata(&path).map_or(0, |m| super::holes::allocated(&m));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
        write(&self.maps).remove(&no);
        lock(&self.open_packs).remove(&no);
        Ok(size)
    }

    /// Unmaps every pack (their pages count as the daemon's resident memory while mapped) and
    /// shrinks the idle writers' buffers.
    pub fn release_memory(&self) {
        write(&self.maps).clear();
        self.expire_retired();
        for w in &mut lock(&self.writers).pool {
            w.shrink();
        }
    }
}
