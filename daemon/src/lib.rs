//! chkpt's engine and daemon: automatic, restorable checkpoints of code workspaces.
//!
//! # Layout
//! Lower layers never import higher ones (store ← workspace ← watch ← engine ← service ←
//! server). One line a module:
//! - [`store`]: the content-addressed store, synchronous:
//!   - `id`: content ids, and the typed catalog ids `SnapshotId` and `WorkspaceId`;
//!   - `writers`: the pack files, their writers, background fsyncs and read maps;
//!   - `batch`: writes that become durable together;
//!   - `blob_index`: where each object is, committed or pending;
//!   - `read`: reading objects back, checked; `compress`: LZ4 where it pays;
//!   - `pack`, `tree`, `chunked`: the formats of packs, trees and big files' chunk lists;
//!   - `catalog`: the redb tables (`blobs`, `snapshots`, `warm_index`; `kv` the database,
//!     `migrate` the move from sled);
//!   - `records`: persisted records (workspaces, snapshots, policies) and their codec;
//!   - `gc`: garbage collection and verify.
//! - [`workspace`]: one folder:
//!   - `scan`: the parallel stat-walk; `rules`: what is left out; `git`: branch, HEAD, busy;
//!   - `index`: the warm file index (`encode`: the index as trees);
//!   - `refresh`: bringing the index up to date (`walk`: full and dirty looks; `read`: one file
//!     into the store); `chunking`: big files as chunks;
//!   - `save`: a snapshot of the folder; `diff`: comparing trees;
//!   - `restore`: the plan and the in-place restore (`apply`: stage and apply; `journal`: the
//!     restore journal; `durable`: fsyncs; `to`: into another folder).
//! - [`retention`]: which snapshots a policy keeps, and why.
//! - [`patch`]: a file's patch in git's format (`unified`: imara-diff's line diff grouped into
//!   hunks; `git`: headers, modes, quoted names).
//! - [`watch`]: the event source: kernel watches turned into dirty paths, rescans and event
//!   barriers (`source`, `intake`, `dirs`); it knows nothing of saving.
//! - [`engine`]: the daemon's state and every operation:
//!   - `registry`: watched workspaces; `lifecycle`: watch, unwatch, shutdown;
//!   - `save`: event barrier and snapshots; `selector`: the snapshot grammar;
//!   - `query`: list, read, a directory of a snapshot; `history`: diffs with patches, a
//!     path's log; `costs`: the files that cost the store most;
//!   - `mutate`: restore, delete, pin, prune, tripwire; `space`: the data directory's budget
//!     and free-space floor;
//!   - `autosave`: the per-workspace worker (debounce, tripwire, git wait);
//!   - `maintenance`: the store-wide worker (retention and garbage collection).
//! - [`service`]: the gRPC handlers (`convert`: wire types and the one error mapping;
//!   `stream`: the Events, Restore and ReadFile streams).
//! - [`remote`]: replication to object storage (S3-compatible servers, a folder), encrypted
//!   here, and restores from it without a local store; the `Remotes` service.
//! - [`server`]: start-up, serving and shutdown.
//! - [`systemd`]: socket activation and readiness under systemd.
//! - [`config`]: the daemon's command line.
//! - [`error`]: the engine's error type.
//! - [`sync`]: locks that outlive a panic of their holder.

pub mod config;
pub mod engine;
pub mod error;
pub mod patch;
pub mod remote;
pub mod retention;
pub mod server;
pub mod service;
pub mod store;
pub mod sync;
pub mod systemd;
pub mod watch;
pub mod workspace;

pub use error::{Error, Result};
