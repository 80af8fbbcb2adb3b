//! chkpt's engine and daemon: automatic, restorable checkpoints of code workspaces.
//!
//! # Layout
//! Lower layers never import higher ones (store ← workspace ← watch ← engine ← service ←
//! server).
//! - [`store`]: the content-addressed store, synchronous. `writers` (the pack files),
//!   `batch` (writes that become durable together), `blob_index` (where each object is),
//!   `read` and `compress`; the formats in `pack`, `tree`, `catalog` and `records`
//!   (persisted records and their codec); `gc` (collection and verify).
//! - [`workspace`]: one folder: `scan` (the parallel stat-walk), `rules` (what is left out),
//!   `index` (the warm file index), `refresh` (bringing it up to date), `restore`, `diff`,
//!   `git` (branch, HEAD, whether git is busy).
//! - [`retention`]: which snapshots a policy keeps, and why.
//! - [`patch`]: a file's patch in git's format (`unified`: imara-diff's line diff grouped into
//!   hunks; `git`: headers, modes, quoted names).
//! - [`watch`]: the event source: kernel watches turned into dirty paths, rescans and event
//!   barriers; it knows nothing of saving.
//! - [`engine`]: the daemon's state and every operation: `registry` (watched workspaces),
//!   `lifecycle` (watch, unwatch, shutdown), `save`, `selector` (the snapshot grammar),
//!   `query` (list, read, a directory of a snapshot), `history` (diffs with patches, `show -p`,
//!   a path's log with patches), `mutate` (restore, delete, pin, prune, tripwire),
//!   `autosave` (the per-workspace worker: debounce, tripwire, git wait) and `maintenance`
//!   (the store-wide worker: retention and garbage collection).
//! - [`service`]: the gRPC handlers (`convert`: wire types and the one error mapping;
//!   `stream`: the Events and file streams).
//! - [`server`]: start-up, serving and shutdown; [`systemd`]: socket activation and readiness
//!   under systemd; [`config`]: the daemon's command line.
//! - [`error`]: the engine's error type.

pub mod config;
pub mod engine;
pub mod error;
pub mod patch;
pub mod retention;
pub mod server;
pub mod service;
pub mod store;
pub mod systemd;
pub mod watch;
pub mod workspace;

pub use error::{Error, Result};
