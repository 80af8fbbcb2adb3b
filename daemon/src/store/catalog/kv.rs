//! The catalog's database file: redb transactions, with the rules that make them safe for
//! chkpt.
//!
//! - Every write is its own transaction committed with [`Durability::None`] (no fsync):
//!   visible at once, durable at the next [`Kv::flush`], whose commit is
//!   [`Durability::Immediate`] (redb's docs: a non-durable commit "will not be persisted to
//!   disk unless followed by a commit with `Durability::Immediate`"; an immediate commit is
//!   "persistent as soon as commit returns"). A save's few catalog writes thus cost one fsync.
//! - After an I/O error (a full disk) redb refuses every later call ("previous I/O error:
//!   close and re-open the database"). So the file is reopened at once: the daemon keeps
//!   working once space is back. A reopen loses the writes since the last flush, so each
//!   reopen starts a new *generation*, and an operation whose writes may have been lost must
//!   not be acknowledged: a flush fails when this thread wrote in an earlier generation, and a
//!   batch fails when it began in one (see `Batch::finish`).

use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use redb::{Database, Durability, ReadTransaction, ReadableDatabase, WriteTransaction};

use crate::error::{Error, Result};
use crate::sync::{lock, read, write};

thread_local! {
    /// The generation of this thread's first write since its last flush.
    static UNFLUSHED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The open database file, reopened after an I/O error.
#[derive(Debug)]
pub(super) struct Kv {
    path: PathBuf,
    cache_bytes: usize,
    /// None between an I/O error and a reopen that worked.
    db: RwLock<Option<Database>>,
    generation: AtomicU64,
    /// Writes committed, and how many of them the last flush made durable.
    written: AtomicU64,
    durable: AtomicU64,
    reopening: Mutex<()>,
}

impl Kv {
    /// Opens (creating) the file.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Kv> {
        let db = open_db(path, cache_bytes)?;
        Ok(Kv {
            path: path.to_path_buf(),
            cache_bytes,
            db: RwLock::new(Some(db)),
            generation: AtomicU64::new(0),
            written: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            reopening: Mutex::new(()),
        })
    }

    /// Changes at each reopen: writes made before it may be lost.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Runs `f` in a read transaction.
    pub fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T>) -> Result<T> {
        let res = self.with_db(|db| {
            let txn = db.begin_read()?;
            f(&txn)
        });
        self.after(res)
    }

    /// Runs `f` in a write transaction committed without an fsync (durable at the next flush).
    pub fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T>) -> Result<T> {
        let res = self.with_db(|db| {
            let generation = self.generation();
            UNFLUSHED.with(|u| {
                if u.get().is_none() {
                    u.set(Some(generation));
                }
            });
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::None)?;
            let out = f(&txn)?;
            txn.commit()?;
            self.written.fetch_add(1, Ordering::SeqCst);
            Ok(out)
        });
        self.after(res)
    }

    /// Makes every write committed so far durable (one immediate commit: redb's fsync).
    /// Fails when a write this thread made since its last flush may have been lost to a
    /// reopen.
    pub fn flush(&self) -> Result<()> {
        let first = UNFLUSHED.with(Cell::take);
        let res = self.with_db(|db| {
            let written = self.written.load(Ordering::SeqCst);
            if self.durable.load(Ordering::SeqCst) < written {
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                txn.commit()?;
                self.durable.fetch_max(written, Ordering::SeqCst);
            }
            Ok(self.generation())
        });
        let generation = self.after(res)?;
        match first {
            Some(g) if g != generation => Err(self.lost()),
            _ => Ok(()),
        }
    }

    /// The error of an operation whose earlier writes a reopen may have lost.
    pub fn lost(&self) -> Error {
        Error::io(
            &self.path,
            io::Error::other(
                "the catalog was reopened after a failed write, and this operation's earlier records may be lost; nothing was saved: retry",
            ),
        )
    }

    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        {
            let guard = read(&self.db);
            if let Some(db) = guard.as_ref() {
                return f(db);
            }
        }
        self.reopen()?;
        let guard = read(&self.db);
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(self.lost()),
        }
    }

    /// Names the file in a catalog I/O error, and reopens the file after one: redb answers
    /// every call after it with "previous I/O error".
    fn after<T>(&self, res: Result<T>) -> Result<T> {
        let res = res.map_err(|e| match e {
            Error::Io { path, source } if path == Path::new(super::FILE) => {
                Error::io(&self.path, source)
            }
            Error::DiskFull { path } if path == Path::new(super::FILE) => Error::DiskFull {
                path: self.path.clone(),
            },
            other => other,
        });
        if let Err(Error::Io { path, .. } | Error::DiskFull { path }) = &res
            && *path == self.path
            && let Err(e) = self.reopen()
        {
            tracing::error!(error = %e, "could not reopen the catalog; the next call tries again");
        }
        res
    }

    fn reopen(&self) -> Result<()> {
        let _one = lock(&self.reopening);
        let mut guard = write(&self.db);
        if let Some(db) = guard.as_ref() {
            // Another thread reopened it already, or nothing is wrong with it.
            match db.begin_write() {
                Ok(txn) => {
                    txn.abort()?;
                    return Ok(());
                }
                Err(e) => tracing::warn!(error = %e, "the catalog failed a write; reopening it"),
            }
        }
        // Dropped before the file is opened again (redb locks it), and its unflushed writes
        // are gone with it.
        *guard = None;
        self.generation.fetch_add(1, Ordering::SeqCst);
        let db = open_db(&self.path, self.cache_bytes)?;
        self.written.store(0, Ordering::SeqCst);
        self.durable.store(0, Ordering::SeqCst);
        *guard = Some(db);
        tracing::info!("catalog reopened");
        Ok(())
    }
}

pub(super) fn open_db(path: &Path, cache_bytes: usize) -> Result<Database> {
    let db = Database::builder().set_cache_size(cache_bytes).create(path);
    db.map_err(|e| match Error::from(redb::Error::from(e)) {
        Error::Io { source, .. } => Error::io(path, source),
        Error::DiskFull { .. } => Error::DiskFull {
            path: path.to_path_buf(),
        },
        other => other,
    })
}
/// The catalog's errors, naming its file by its name in the data directory (the catalog puts
/// the whole path in).
impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        let file = super::FILE;
        match e {
            redb::Error::Io(source) => Error::io(file, source),
            // The file met an I/O error earlier, and is being reopened.
            redb::Error::PreviousIo => Error::io(file, io::Error::other(e.to_string())),
            redb::Error::Corrupted(m) => Error::Corrupt(format!("catalog: {m}")),
            other => Error::Catalog(other.to_string()),
        }
    }
}

macro_rules! from_redb {
    ($($t:ident),*) => {$(
        impl From<redb::$t> for Error {
            fn from(e: redb::$t) -> Self {
                Error::from(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    StorageError,
    TableError,
    TransactionError,
    CommitError,
    DatabaseError,
    SetDurabilityError
);
