//! Walking a workspace: the `ignore` crate's parallel walker, filtered by [`Rules`].

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ignore::{WalkBuilder, WalkState};

use super::rules::{Exclusion, PathKind, Rules, abs};
use crate::store::Kind;
use crate::store::catalog::FileMeta;
use crate::sync::lock;

/// What `lstat` said of a path, for the kinds we save.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// File, symlink or directory.
    pub kind: Kind,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    /// Length.
    pub size: u64,
    /// ns since the epoch.
    pub mtime_ns: i64,
    /// ns since the epoch.
    pub ctime_ns: i64,
    /// Inode.
    pub ino: u64,
    /// Device.
    pub dev: u64,
    /// Hard links.
    pub nlink: u64,
}

impl Stat {
    /// From metadata; `None` for FIFOs, sockets and devices, which are not saved.
    pub fn from_meta(m: &Metadata) -> Option<Stat> {
        let ft = m.file_type();
        let kind = if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else {
            return None;
        };
        Some(Stat {
            kind,
            mode: m.mode() & 0o7777,
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
            dev: m.dev(),
            nlink: m.nlink(),
        })
    }

    /// `lstat`, saying whether the path is gone or of a kind that is not saved.
    pub fn lstat(path: &Path) -> io::Result<Looked> {
        match fs::symlink_metadata(path) {
            Ok(m) => Ok(Stat::from_meta(&m).map_or(Looked::Unsaved, Looked::Stat)),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(Looked::Gone)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the metadata still says the content is the one recorded in `meta`.
    pub fn matches(&self, meta: &FileMeta) -> bool {
        self.kind == meta.kind
            && self.mode == meta.mode
            && self.size == meta.size
            && self.mtime_ns == meta.mtime_ns
            && self.ctime_ns == meta.ctime_ns
            && self.ino == meta.ino
            && self.dev == meta.dev
    }

    /// The index entry for this stat and content id.
    pub fn to_meta(&self, id: crate::store::Id, racy: bool) -> FileMeta {
        FileMeta {
            kind: self.kind,
            mode: self.mode,
            size: self.size,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            ino: self.ino,
            dev: self.dev,
            id,
            racy,
        }
    }
}

/// What a walk found.
#[derive(Debug)]
pub struct ScanResult<T> {
    /// Every saved entry below the start (not the start itself), relative to the workspace root,
    /// with what the walk's visitor made of it.
    pub entries: Vec<(Vec<u8>, Stat, T)>,
    /// Dependency folders and ignore-file matches left out (topmost paths), with the reason.
    pub excluded: Vec<(Vec<u8>, Exclusion)>,
    /// Entries that could not be read (a directory without permission, …).
    pub warnings: Vec<String>,
}

/// Dependency folders left out by a walk, with the reason.
type Excluded = Vec<(Vec<u8>, Exclusion)>;

/// An entry a walk found, of which nothing but its directory listing was looked at yet.
#[derive(Debug)]
pub struct Found<'a> {
    /// Relative to the workspace root.
    pub rel: &'a [u8],
    /// Absolute.
    pub path: &'a Path,
    /// What the listing says it is, when it says.
    pub file_type: Option<fs::FileType>,
}

/// What an `lstat` of a path found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Looked {
    /// Nothing there.
    Gone,
    /// Something of a kind that is not saved (a FIFO, a socket, a device).
    Unsaved,
    /// A file, symlink or directory.
    Stat(Stat),
}

impl Found<'_> {
    /// `lstat`; `None` for a kind that is not saved.
    pub fn lstat(&self) -> io::Result<Option<Stat>> {
        Ok(Stat::from_meta(&fs::symlink_metadata(self.path)?))
    }
}

/// What [`scan_with`] calls on each entry: its metadata and what the visitor made of it, `None`
/// for a kind that is not saved; a `NotFound` error means the entry vanished.
pub type Visitor<'v, T> = dyn Fn(&Found<'_>) -> io::Result<Option<(Stat, T)>> + Sync + 'v;

/// Walks `start` (relative to `root`, empty for the whole workspace) in parallel, calling
/// `visit` on every entry below it that passes `rules`, in the thread that found it, so work
/// on an entry (reading a changed file) runs in parallel with the rest of the walk. The visitor
/// looks at the entry itself (usually [`Found::lstat`]).
pub fn scan_with<T: Send>(
    root: &Path,
    start: &[u8],
    rules: &Arc<Rules>,
    threads: usize,
    visit: &Visitor<'_, T>,
) -> ScanResult<T> {
    let root_len = root.as_os_str().len();
    // Borrowed, not copied: the filter sees every entry, and a copy each was an allocation.
    fn rel_in(p: &Path, root_len: usize) -> &[u8] {
        p.as_os_str()
            .as_bytes()
            .get(root_len + 1..)
            .unwrap_or_default()
    }
    let rel_of = move |p: &Path| -> Vec<u8> { rel_in(p, root_len).to_vec() };
    let excluded: Arc<Mutex<Excluded>> = Arc::default();
    let mut builder = WalkBuilder::new(abs(root, start));
    {
        let rules = rules.clone();
        let excluded = excluded.clone();
        builder
            .standard_filters(false)
            .hidden(false)
            .follow_links(false)
            .threads(threads)
            .filter_entry(move |e| {
                if e.depth() == 0 {
                    return true;
                }
                let is_dir = e.file_type().is_some_and(|t| t.is_dir());
                match rules.check_last(rel_in(e.path(), root_len), PathKind::dir_if(is_dir)) {
                    None => true,
                    Some(why) => {
                        // What the user's rules leave out is shown to them (the topmost path of
                        // each excluded subtree); git's and chkpt's own files are not news.
                        if matches!(why, Exclusion::Dependency(_) | Exclusion::Ignored) {
                            lock(&excluded).push((rel_of(e.path()), why));
                        }
                        false
                    }
                }
            });
    }
    let found: Mutex<Vec<(Vec<u8>, Stat, T)>> = Mutex::default();
    let warnings: Mutex<Vec<String>> = Mutex::default();
    builder.build_parallel().run(|| {
        let mut local = Buffer {
            buf: Vec::with_capacity(BUFFERED),
            into: &found,
        };
        let warnings = &warnings;
        Box::new(move |res| {
            match res {
                Ok(e) if e.depth() > 0 => {
                    let rel = rel_of(e.path());
                    let found = Found {
                        rel: &rel,
                        path: e.path(),
                        file_type: e.file_type(),
                    };
                    match visit(&found) {
                        Ok(Some((st, seen))) => local.buf.push((rel, st, seen)),
                        Ok(None) => tracing::debug!(path = %e.path().display(), "not a file, link or directory: skipped"),
                        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                        Err(err) => lock(warnings).push(format!("{}: {err}", e.path().display())),
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    let text = err.to_string();
                    if !text.contains("No such file") {
                        lock(warnings).push(text);
                    }
                }
            }
            if local.buf.len() >= BUFFERED {
                local.flush();
            }
            WalkState::Continue
        })
    });
    // Each thread's last partial buffer was flushed when its closure dropped, inside `run`.
    let entries = found.into_inner().unwrap_or_else(|p| p.into_inner());
    ScanResult {
        entries,
        excluded: std::mem::take(&mut *lock(&excluded)),
        warnings: warnings.into_inner().unwrap_or_else(|p| p.into_inner()),
    }
}

/// Entries a walker thread collects before moving them into the shared list.
const BUFFERED: usize = 1024;

/// A walker thread's batch of entries, moved into the shared list when full and when dropped.
struct Buffer<'a, T> {
    buf: Vec<(Vec<u8>, Stat, T)>,
    into: &'a Mutex<Vec<(Vec<u8>, Stat, T)>>,
}

impl<T> Buffer<'_, T> {
    fn flush(&mut self) {
        lock(self.into).append(&mut self.buf);
    }
}

impl<T> Drop for Buffer<'_, T> {
    fn drop(&mut self) {
        self.flush();
    }
}
