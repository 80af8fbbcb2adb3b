//! The daemon's shared state and every operation the API offers, synchronous: the service
//! calls these through `spawn_blocking`.
//!
//! # Layout
//! - [`registry`]: the watched workspaces ([`WsHandle`]) and how a request finds its own.
//! - `lifecycle`: watching, re-watching after a restart, unwatching, shutdown.
//! - [`save`]: the event barrier and taking snapshots.
//! - [`selector`]: the snapshot-selector grammar (`latest~2`, `@10m`, id prefixes, …).
//! - `query`: lists and reading a file in a snapshot.
//! - [`history`]: diffs with patches, a snapshot against the one before it, a path's log.
//! - `mutate`: restore, delete, pin, prune, retention, the tripwire.
//! - [`autosave`]: the per-workspace worker that debounces and takes auto snapshots.
//! - [`maintenance`]: the store-wide worker that applies retention and collects garbage.
//! - [`space`]: the data directory's budget and the free-space floor.
//! - [`costs`]: which files' new versions added the most to the store.
//! - `worker`: the engine's end of an autosave thread (its notices, waiting for it).

pub mod autosave;
pub mod costs;
pub mod history;
mod lifecycle;
pub mod maintenance;
mod mutate;
mod query;
pub mod registry;
pub mod save;
pub mod selector;
pub mod space;
mod worker;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

pub use self::mutate::{IfPinned, PruneMode};
pub use self::query::{DirEntry, ListQuery, SnapshotPage};
pub use self::registry::{WatchState, WsHandle};
pub use self::save::{ManualSave, SaveRequest, Walk};
use crate::store::Store;

use crate::store::WorkspaceId;
use crate::store::catalog::{SnapshotRecord, TripwireRecord};
use crate::workspace::WatchOptions;
use crate::workspace::restore::RestoreSummary;

/// What the daemon tells `Events` subscribers.
#[derive(Debug, Clone)]
pub enum EngineEvent {
    /// A snapshot was recorded.
    SnapshotTaken(SnapshotRecord),
    /// A restore finished.
    RestoreDone(WorkspaceId, RestoreSummary),
    /// A workspace was stat-walked because events may have been lost.
    Rescan(WorkspaceId, String),
    /// Something the user should know.
    Warning(WorkspaceId, String),
    /// A mass change fired the tripwire.
    Tripwire(WorkspaceId, TripwireRecord),
}

/// The daemon's state.
#[derive(Debug)]
pub struct Engine {
    /// The store.
    pub store: Store,
    registry: registry::Registry,
    /// Held through `watch`: two calls for one folder must not both open its workspace.
    watch_lock: Mutex<()>,
    events: broadcast::Sender<EngineEvent>,
    maintenance: maintenance::Maintenance,
    /// When the daemon started.
    pub started: Instant,
    /// Defaults for new workspaces.
    pub defaults: WatchOptions,
    /// Seconds between stat-walks in polling mode.
    pub poll_interval: Duration,
    /// The socket served.
    pub socket: PathBuf,
    /// When the mass-change tripwire fires.
    pub tripwire: autosave::tripwire::Thresholds,
    /// The data directory's budget and the free-space floor (see [`space`]).
    limits: Mutex<space::Limits>,
    /// See [`Engine::set_recompress_after`] (none until the daemon sets it: the command line's
    /// default is 30 s).
    recompress_after: Mutex<Option<Duration>>,
}

impl Engine {
    /// An engine over an open store.
    pub fn new(
        store: Store,
        defaults: WatchOptions,
        poll_interval: Duration,
        socket: PathBuf,
    ) -> Arc<Engine> {
        let (events, _) = broadcast::channel(1024);
        Arc::new_cyclic(|me| Engine {
            store,
            registry: registry::Registry::default(),
            watch_lock: Mutex::new(()),
            events,
            maintenance: maintenance::Maintenance::start(me.clone()),
            started: Instant::now(),
            defaults,
            poll_interval,
            socket,
            tripwire: autosave::tripwire::Thresholds::default(),
            limits: Mutex::new(space::Limits::default()),
            recompress_after: Mutex::new(None),
        })
    }

    /// Subscribes to events.
    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.events.subscribe()
    }

    /// Sends an event to subscribers (none listening is fine).
    pub fn emit(&self, e: EngineEvent) {
        let _ = self.events.send(e);
    }

    /// The store-wide maintenance worker.
    pub fn maintenance(&self) -> &maintenance::Maintenance {
        &self.maintenance
    }
}
