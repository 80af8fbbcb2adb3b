//! The engine's error type. Each variant says what went wrong with what, in the engine's terms;
//! the daemon maps them to gRPC status codes, with a machine-readable reason, in one place
//! (`service::convert::status`).

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
    /// The catalog database failed (not an I/O error: those are [`Error::Io`] or
    /// [`Error::DiskFull`] naming the catalog's file).
    #[error("catalog: {0}")]
    Catalog(String),
    /// Stored data is damaged: a blob whose bytes no longer match its id, an unreadable tree.
    #[error("store corruption: {0}; run `chkptctl verify` to see which snapshots are affected")]
    Corrupt(String),
    /// A path a request names does not exist on disk.
    #[error("{} does not exist", path.display())]
    NoSuchPath {
        /// The path.
        path: PathBuf,
    },
    /// The workspace's folder itself is gone.
    #[error("the workspace folder {} is gone; recreate it (chkpt resumes by itself) or `chkptctl unwatch` it", path.display())]
    WorkspaceGone {
        /// The folder.
        path: PathBuf,
    },
    /// A folder inside or above a watched workspace: its files would be saved twice.
    #[error("{} is {} the watched workspace {}, whose snapshots already hold {}; to watch {} instead, run `chkptctl unwatch {}` first (its snapshots are kept)", path.display(), if *inside { "inside" } else { "above" }, existing.display(), if *inside { "its files" } else { "part of it" }, path.display(), existing.display())]
    NestedWorkspace {
        /// The folder asked for.
        path: PathBuf,
        /// The watched workspace it overlaps.
        existing: PathBuf,
        /// Whether `path` is inside `existing` (else above it).
        inside: bool,
    },
    /// No workspace contains the path a request names.
    #[error("{path} is not inside a {}workspace; run `chkptctl watch` there first", if *.watched { "watched " } else { "" })]
    WorkspaceNotFound {
        /// The path.
        path: String,
        /// Whether only watched workspaces were looked at.
        watched: bool,
    },
    /// A selector that names no snapshot of the workspace.
    #[error("{detail}")]
    SnapshotNotFound {
        /// The selector as given.
        selector: String,
        /// What was looked for and not found, in words.
        detail: String,
    },
    /// A snapshot id (or unique prefix) of another workspace.
    #[error(
        "snapshot {selector} belongs to the workspace {workspace}, not to {asked}; pass `-w {workspace}`"
    )]
    SnapshotOfOtherWorkspace {
        /// The selector as given.
        selector: String,
        /// The workspace it belongs to.
        workspace: String,
        /// The workspace the request was about.
        asked: String,
    },
    /// An id prefix that more than one snapshot of the workspace starts with.
    #[error("{prefix} is ambiguous: {matches} snapshots start with it; type more digits")]
    AmbiguousPrefix {
        /// The prefix.
        prefix: String,
        /// How many snapshots start with it (counted up to a limit).
        matches: usize,
    },
    /// A snapshot selector that does not parse.
    #[error("{selector:?} is not a snapshot: {help}")]
    BadSelector {
        /// The selector as given.
        selector: String,
        /// What would have been accepted.
        help: String,
    },
    /// A path that leaves the workspace.
    #[error("{path} is outside the workspace {workspace}")]
    OutsideWorkspace {
        /// The path as given.
        path: String,
        /// The workspace's root.
        workspace: String,
    },
    /// A path the snapshot does not hold.
    #[error("{path} is not in snapshot {snapshot}{}", did_you_mean(nearest.as_deref()))]
    PathNotInSnapshot {
        /// The path, relative to the workspace.
        path: String,
        /// The snapshot's id.
        snapshot: String,
        /// The snapshot's path nearest to it, if one is close (a typo, a file elsewhere).
        nearest: Option<String>,
        /// The workspace's root (empty where it is filled in later), so a client can name
        /// the path the way its user would.
        workspace: String,
    },
    /// A request that can never succeed as given.
    #[error("{0}")]
    InvalidArgument(String),
    /// A request that cannot succeed in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with its path, recognising a full disk.
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        // EFBIG too: a file-size limit (RLIMIT_FSIZE, a per-file quota) is a full disk for us.
        // By kind as well: sled hands back a copy of its I/O error that keeps only the kind.
        if matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
        ) || matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge
        ) {
            Error::DiskFull { path }
        } else {
            Error::Io { path, source }
        }
    }

    /// Whether this is a file that vanished (or never was) at `path`.
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
            Error::NoSuchPath { .. } => true,
            _ => false,
        }
    }

    /// The machine-readable reason for clients (`google.rpc.ErrorInfo.reason`): stable, part
    /// of the API contract.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Io { .. } => "IO",
            Error::DiskFull { .. } => "DISK_FULL",
            Error::Locked { .. } => "DATA_DIR_LOCKED",
            Error::Catalog(_) => "CATALOG",
            Error::Corrupt(_) => "STORE_CORRUPT",
            Error::NoSuchPath { .. } => "NO_SUCH_PATH",
            Error::WorkspaceGone { .. } => "WORKSPACE_GONE",
            Error::NestedWorkspace { .. } => "NESTED_WORKSPACE",
            Error::WorkspaceNotFound { .. } => "WORKSPACE_NOT_FOUND",
            Error::SnapshotNotFound { .. } => "SNAPSHOT_NOT_FOUND",
            Error::SnapshotOfOtherWorkspace { .. } => "SNAPSHOT_OF_OTHER_WORKSPACE",
            Error::AmbiguousPrefix { .. } => "AMBIGUOUS_PREFIX",
            Error::BadSelector { .. } => "BAD_SELECTOR",
            Error::OutsideWorkspace { .. } => "OUTSIDE_WORKSPACE",
            Error::PathNotInSnapshot { .. } => "PATH_NOT_IN_SNAPSHOT",
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::FailedPrecondition(_) => "FAILED_PRECONDITION",
        }
    }

    /// What the error is about, as `google.rpc.ErrorInfo.metadata` (key → value).
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Path| p.display().to_string();
        match self {
            Error::Io { path: p, .. }
            | Error::DiskFull { path: p }
            | Error::NoSuchPath { path: p }
            | Error::WorkspaceGone { path: p } => {
                vec![("path", path(p))]
            }
            Error::Locked { path: p, pid } => vec![("path", path(p)), ("pid", pid.clone())],
            Error::NestedWorkspace {
                path: p, existing, ..
            } => {
                vec![("path", path(p)), ("workspace", path(existing))]
            }
            Error::WorkspaceNotFound { path, .. } => vec![("path", path.clone())],
            Error::SnapshotNotFound { selector, .. } | Error::BadSelector { selector, .. } => {
                vec![("selector", selector.clone())]
            }
            Error::SnapshotOfOtherWorkspace {
                selector,
                workspace,
                ..
            } => vec![
                ("selector", selector.clone()),
                ("workspace", workspace.clone()),
            ],
            Error::AmbiguousPrefix { prefix, matches } => {
                vec![("prefix", prefix.clone()), ("matches", matches.to_string())]
            }
            Error::OutsideWorkspace { path, workspace } => {
                vec![("path", path.clone()), ("workspace", workspace.clone())]
            }
            Error::PathNotInSnapshot {
                path,
                snapshot,
                nearest,
                workspace,
            } => {
                let mut m = vec![
                    ("path", path.clone()),
                    ("snapshot", snapshot.clone()),
                    ("workspace", workspace.clone()),
                ];
                if let Some(n) = nearest {
                    m.push(("nearest", n.clone()));
                }
                m
            }
            Error::Catalog(_)
            | Error::Corrupt(_)
            | Error::InvalidArgument(_)
            | Error::FailedPrecondition(_) => Vec::new(),
        }
    }
}

/// The end of a "not in snapshot" message: the nearest path, when there is one.
fn did_you_mean(nearest: Option<&str>) -> String {
    nearest.map_or_else(String::new, |n| format!("; did you mean {n}?"))
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

/// sled's errors, met only while an old catalog is read to be moved (see
/// `store::catalog::migrate`).
impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(source) => Error::io("catalog", source),
            sled::Error::Corruption { .. } => Error::Corrupt(format!("catalog: {e}")),
            other => Error::Catalog(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: sled returns a copy of the I/O error that failed it, built from the kind
    /// alone: a full disk under the catalog must still read as one.
    #[test]
    fn sleds_copy_of_a_full_disk_error_is_a_full_disk() {
        let original = sled::Error::Io(io::Error::from_raw_os_error(libc::ENOSPC));
        let copy = original.clone();
        assert!(matches!(Error::from(original), Error::DiskFull { .. }));
        assert!(matches!(Error::from(copy), Error::DiskFull { .. }));
    }
}
