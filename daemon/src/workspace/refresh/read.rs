//! Reading one file or symlink into the store, checked to be a state the file really had.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::{READ_ATTEMPTS, ReadOutcome};
use crate::error::{Error, Result};
use crate::store::batch::added_by_this_thread;
use crate::store::{Batch, CHUNK_THRESHOLD, Id, Kind, ObjectKind};
use crate::workspace::chunking;
use crate::workspace::scan::{Looked, Stat};
use crate::workspace::{RACY_WINDOW_NS, WorkspaceCounters, now_ns};

/// Reads one file or symlink and stores its content, making sure what is stored is a state the
/// file really had: the metadata is checked before and after reading, and the read repeated
/// when it changed.
/// `opened` is the file already open, when `first` is its `fstat`.
pub(super) fn read_object(
    batch: &Batch<'_>,
    counters: &WorkspaceCounters,
    path: &Path,
    first: &Stat,
    mut opened: Option<File>,
    previous: Option<Id>,
) -> Result<ReadOutcome> {
    let mut expected = *first;
    let added_before = added_by_this_thread();
    for _ in 0..READ_ATTEMPTS {
        let started = now_ns();
        let attempt = match (expected.kind, opened.take()) {
            (Kind::File, Some(file)) => read_open(batch, file, path, &expected, previous),
            (Kind::Symlink, _) => read_symlink(batch, path, &expected),
            _ => read_file(batch, path, &expected, previous),
        };
        match attempt {
            Ok(Some((st, id))) => {
                counters.files_hashed.fetch_add(1, Ordering::Relaxed);
                counters.bytes_hashed.fetch_add(st.size, Ordering::Relaxed);
                let racy = st.mtime_ns >= started - RACY_WINDOW_NS;
                let added = added_by_this_thread() - added_before;
                return Ok(ReadOutcome::Stored(st.to_meta(id, racy), added));
            }
            Ok(None) => match Stat::lstat(path) {
                // Changed while being read: try again with what it is now.
                Ok(Looked::Stat(st)) if st.kind != Kind::Dir => expected = st,
                Ok(_) => return Ok(ReadOutcome::Gone),
                Err(e) => return Ok(ReadOutcome::Skipped(format!("{}: {e}", path.display()))),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ReadOutcome::Gone),
            Err(e) => match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<StoreFailure>())
            {
                Some(_) => {
                    let inner = e
                        .into_inner()
                        .and_then(|b| b.downcast::<StoreFailure>().ok());
                    return Err(inner
                        .map(|b| b.0)
                        .unwrap_or(Error::Corrupt("store write failed".into())));
                }
                None => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read; skipped");
                    return Ok(ReadOutcome::Skipped(format!("{}: {e}", path.display())));
                }
            },
        }
    }
    Ok(ReadOutcome::Skipped(format!(
        "{}: kept changing while being read",
        path.display()
    )))
}

/// A store error carried through an `io::Error` so read failures and store failures stay apart.
#[derive(Debug)]
struct StoreFailure(Error);

impl std::fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StoreFailure {}

fn store_err(e: Error) -> io::Error {
    io::Error::other(StoreFailure(e))
}

fn read_symlink(batch: &Batch<'_>, path: &Path, expected: &Stat) -> io::Result<Option<(Stat, Id)>> {
    let target = std::fs::read_link(path)?;
    let after = std::fs::symlink_metadata(path)?;
    let Some(st) = Stat::from_meta(&after) else {
        return Ok(None);
    };
    if st.kind != Kind::Symlink || st.mtime_ns != expected.mtime_ns || st.ino != expected.ino {
        return Ok(None);
    }
    let (id, _) = batch
        .put(target.as_os_str().as_bytes(), ObjectKind::Blob)
        .map_err(store_err)?;
    Ok(Some((
        Stat {
            size: target.as_os_str().len() as u64,
            ..st
        },
        id,
    )))
}

thread_local! {
    /// Each reading thread's buffer, reused from one file to the next (fresh memory for every
    /// large file cost a page fault per 4 KiB).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Frees this thread's read buffer (see [`crate::store::release_thread_buffers`]).
pub fn release_thread_buffers() {
    READ_BUF.with(|b| *b.borrow_mut() = Vec::new());
}

/// Whether two looks at a file saw the same version.
fn same_version(a: &Stat, b: &Stat) -> bool {
    a.size == b.size && a.mtime_ns == b.mtime_ns && a.ctime_ns == b.ctime_ns
}

/// Reads a file small enough for memory into `data` and stores it; none when it changed while
/// read.
fn read_small(
    batch: &Batch<'_>,
    file: &mut File,
    path: &Path,
    before: &Stat,
    data: &mut Vec<u8>,
) -> io::Result<Option<(Stat, Id)>> {
    read_expected(file, before.size as usize, data)?;
    let after =
        Stat::from_meta(&file.metadata()?).ok_or_else(|| io::Error::other("not a regular file"))?;
    if !same_version(before, &after) || data.len() as u64 != after.size {
        return Ok(None);
    }
    // Written within the racy window, a write during our read can leave the metadata as it was
    // (same tick): read once more; two reads that agree are a state the file had.
    if after.mtime_ns >= now_ns() - RACY_WINDOW_NS {
        let mut again = Vec::with_capacity(data.len() + 1);
        File::open(path)?.read_to_end(&mut again)?;
        if again != *data {
            return Ok(None);
        }
    }
    let (id, _) = batch.put(data, ObjectKind::Blob).map_err(store_err)?;
    Ok(Some((after, id)))
}

/// Reads `file` into `data` until it ends, or holds one byte more than the `size` `fstat`
/// announced (a file that grew, or a file system whose sizes are wrong: the caller sees the
/// difference and does not store it).
fn read_expected(file: &mut File, size: usize, data: &mut Vec<u8>) -> io::Result<()> {
    data.reserve(size + 1);
    file.take(size as u64 + 1).read_to_end(data)?;
    Ok(())
}

fn read_file(
    batch: &Batch<'_>,
    path: &Path,
    expected: &Stat,
    previous: Option<Id>,
) -> io::Result<Option<(Stat, Id)>> {
    let file = open_nofollow(path)?;
    let before =
        Stat::from_meta(&file.metadata()?).ok_or_else(|| io::Error::other("not a regular file"))?;
    if before.kind != Kind::File || before.ino != expected.ino {
        return Ok(None);
    }
    read_open(batch, file, path, &before, previous)
}

/// Reads and stores the open regular file whose `fstat` is `before`; none when it changed
/// while read. `previous` is the content id of the version saved before, if any.
fn read_open(
    batch: &Batch<'_>,
    mut file: File,
    path: &Path,
    before: &Stat,
    previous: Option<Id>,
) -> io::Result<Option<(Stat, Id)>> {
    let before = *before;
    if before.size <= CHUNK_THRESHOLD {
        return READ_BUF.with(|buf| {
            let mut data = buf.borrow_mut();
            data.clear();
            read_small(batch, &mut file, path, &before, &mut data)
        });
    }
    read_large(batch, &file, path, &before, previous)
}

/// Stores a large file as chunks (see [`super::chunking`]), cut with the help of the version
/// saved before when it was chunked too; none when it changed while read.
fn read_large(
    batch: &Batch<'_>,
    file: &File,
    path: &Path,
    before: &Stat,
    previous: Option<Id>,
) -> io::Result<Option<(Stat, Id)>> {
    let store = batch.store();
    let previous = previous.and_then(|id| match store.chunk_list(&id) {
        Ok(list) => list,
        Err(e) => {
            // Costs this save the help of the old cuts, nothing else; verify names the damage.
            tracing::warn!(path = %path.display(), error = %e, "the previous version's chunk list is unreadable");
            None
        }
    });
    let Some((id, list)) =
        chunking::store_chunks(batch, file, before.size, previous.as_ref(), store_err)?
    else {
        return Ok(None);
    };
    let after =
        Stat::from_meta(&file.metadata()?).ok_or_else(|| io::Error::other("not a regular file"))?;
    if !same_version(before, &after) {
        return Ok(None);
    }
    // Written within the racy window, a write during the read can leave the metadata as it
    // was: a second read must give the same content.
    if after.mtime_ns >= now_ns() - RACY_WINDOW_NS
        && chunking::content_id(file, after.size)? != Some(id)
    {
        return Ok(None);
    }
    batch.put_chunked(id, &list).map_err(store_err)?;
    Ok(Some((after, id)))
}

/// Folders a walking thread opened last, newest first: enough for the folders above the
/// one being listed (the walker goes depth first), few enough to search by comparing paths.
const CACHED_DIRS: usize = 8;

thread_local! {
    /// Each walking thread's last folders, as `O_PATH` descriptors: a file is opened relative
    /// to its folder (`openat`) instead of by its whole path, a lookup of every folder above
    /// it, which was the largest part of a cold save's system time. The walker's threads end
    /// with the walk, and these descriptors with them.
    static DIRS: std::cell::RefCell<Vec<(std::path::PathBuf, std::os::fd::OwnedFd)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// [`open_nofollow`], relative to the file's folder when this thread opened that folder
/// recently. The folder is opened by its path once, as every file was before: which folder a
/// path names is decided the same way, and a change to it after that is the watch's to report.
pub(super) fn open_nofollow_in_dir(path: &Path) -> io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return open_nofollow(path);
    };
    let Ok(name) = std::ffi::CString::new(name.as_bytes()) else {
        return open_nofollow(path);
    };
    DIRS.with(|dirs| {
        let mut dirs = dirs.borrow_mut();
        let at = match dirs.iter().position(|(d, _)| d == dir) {
            Some(i) => i,
            None => {
                let Ok(c_dir) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
                    return open_nofollow(path);
                };
                // SAFETY: a valid C string; the descriptor returned is ours alone.
                let fd = unsafe {
                    libc::open(
                        c_dir.as_ptr(),
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    )
                };
                if fd < 0 {
                    return open_nofollow(path);
                }
                // SAFETY: `fd` was just opened and is owned by nothing else.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                dirs.truncate(CACHED_DIRS - 1);
                dirs.insert(0, (dir.to_path_buf(), fd));
                0
            }
        };
        loop {
            // SAFETY: a valid C string and an open directory descriptor.
            let fd = unsafe {
                libc::openat(
                    dirs[at].1.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: as above.
                return Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    })
}

pub(super) fn open_nofollow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}
