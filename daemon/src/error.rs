//! The engine's error type. Each variant carries the path or object it is about; the daemon maps
//! them to gRPC status codes in one place (`service::status`).

use std::io;
use std::path::{Path, PathBuf};

/// A failure of the store or a workspace operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The disk holding `path` is full: nothing was committed; free space and retry.
    #[error("no space left on the disk holding {}: nothing was saved; free some space and retry", path.display())]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// Another process holds the data directory.
    #[error("another chkptd already uses the data directory {} (pid {pid}); stop it or pass another --data-dir", path.display())]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// The pid written by the holder, if readable.
        pid: String,
    },
    /// The catalog database failed.
    #[error("catalog: {0}")]
    Catalog(sled::Error),
    /// Stored data is damaged: a blob whose bytes no longer match its id, an unreadable tree.
    #[error("store corruption: {0}; run `chkptctl verify` to see which snapshots are affected")]
    Corrupt(String),
    /// A workspace, snapshot or path that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A request that can never succeed as given.
    #[error("{0}")]
    InvalidArgument(String),
    /// A request that cannot succeed in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The operation was cancelled because the daemon is shutting down.
    #[error("the daemon is shutting down; retry once it is back")]
    ShuttingDown,
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with its path, recognising a full disk.
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        // EFBIG too: a file-size limit (RLIMIT_FSIZE, a per-file quota) is a full disk for us.
        if matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
        ) {
            Error::DiskFull { path }
        } else {
            Error::Io { path, source }
        }
    }
}

/// Adds a path to `io::Result`s.
pub trait IoContext<T> {
    /// Attaches `path` to the error.
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(source) => Error::io("catalog", source),
            sled::Error::Corruption { .. } => Error::Corrupt(format!("catalog: {e}")),
            other => Error::Catalog(other),
        }
    }
}
