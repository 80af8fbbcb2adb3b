//! Replication of snapshots to object storage (S3 and S3-compatible servers through the
//! `object_store` crate, or a folder), encrypted on this machine, and restores from it on a
//! machine with no local store.
//!
//! # Layout on the remote (format version 1)
//! Under the URL's prefix:
//! 1. `config`: JSON, not encrypted: the format version, the argon2id parameters and salt
//!    when the key comes from a passphrase, and a known plaintext sealed with the key, so a
//!    wrong key is told apart from damage.
//! 2. `packs/NAME`: a pack, NAME the writing data directory's origin, `-` and 32 random hex
//!    digits: sealed objects one after another (see [`format`]). Written once, never
//!    rewritten; deleted (after its index) when no snapshot needs any object in it.
//! 3. `index/NAME`: the sealed index of pack NAME: each object's id, kind, offset and length.
//!    Written only after its pack, and only after the indexes of every pack before it: an
//!    object is on the remote once an index names it, and a tree an index names has every
//!    object below it indexed too.
//! 4. `snapshots/ID`: a sealed snapshot record (the local record and its workspace's path),
//!    written after every object it needs is indexed. Listing `snapshots/` lists the remote.
//!    Deleted by the remote's retention ([`prune`]) before anything it alone needed.
//!
//! The bucket's owner sees object names (random, and snapshot ids), sizes and times; ids of
//! contents, file names, sizes of files and records are all inside sealed objects.
//!
//! # Modules
//! - [`crypto`]: XChaCha20-Poly1305, keys from key files or argon2id.
//! - [`config`]: the registered remotes (`remotes.json` in the data directory; never
//!   credentials) and what each uploader last knew (`remotes/NAME.state`).
//! - [`backend`]: the object store of a remote, credentials, and what its failures mean.
//! - [`format`]: packs, indexes, snapshot records and the configuration object.
//! - [`upload`]: the background uploader of one remote.
//! - [`prune`]: the remote's retention, and collecting the objects no snapshot needs.
//! - [`restore`]: listing a remote's snapshots and restoring one into a folder.
//! - [`manager`]: every remote of the daemon; [`service`]: the `Remotes` gRPC service.

pub mod backend;
pub mod config;
pub mod crypto;
pub mod fetch;
pub mod format;
pub mod manager;
pub mod prune;
pub mod restore;
pub mod service;
pub mod upload;

pub use self::manager::Remotes;

/// How a remote operation failed, with a message that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Bad input or local configuration (a name, a URL, a key file, a credentials file).
    #[error("{0}")]
    Config(String),
    /// No remote of that name is registered.
    #[error("no remote named {0:?}: `chkptctl remote list` shows them")]
    NotFound(String),
    /// A remote of that name is registered already.
    #[error("a remote named {0:?} exists already: `chkptctl remote remove {0}` first")]
    Exists(String),
    /// The remote answered, or failed to, in a way `kind` says.
    #[error("remote {name}: {message}")]
    Remote {
        /// The remote's name.
        name: String,
        /// What went wrong.
        kind: Failure,
        /// One line for the user.
        message: String,
    },
    /// No snapshot on the remote matches.
    #[error("remote {name}: {message}")]
    NoSnapshot {
        /// The remote's name.
        name: String,
        /// One line for the user.
        message: String,
    },
    /// The local side failed (the store, the restore target).
    #[error(transparent)]
    Local(#[from] crate::Error),
}

/// The kinds of remote failure a client may act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server cannot be reached (down, wrong endpoint, network).
    Unreachable,
    /// The server refused the credentials.
    Denied,
    /// The bucket does not exist.
    NoBucket,
    /// The key does not open the remote.
    WrongKey,
    /// An object is missing, fails its check or cannot be decoded.
    Damaged,
    /// Anything else the server said.
    Other,
}

impl Failure {
    /// The machine-readable reason sent with the error (`google.rpc.ErrorInfo`).
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Unreachable => "REMOTE_UNREACHABLE",
            Failure::Denied => "REMOTE_DENIED",
            Failure::NoBucket => "REMOTE_NO_BUCKET",
            Failure::WrongKey => "REMOTE_WRONG_KEY",
            Failure::Damaged => "REMOTE_DAMAGED",
            Failure::Other => "REMOTE_FAILED",
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
