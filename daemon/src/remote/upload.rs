//! The background uploader of one remote.
//!
//! A pass reads the remote's indexes and snapshot list (once per connection: after a failure
//! they are read again), then uploads every local snapshot the remote lacks, oldest first:
//! the objects its trees name that no index names yet, in packs sealed once and never
//! rewritten (file data in some, trees and chunk lists in others), then the snapshot's record.
//! A blocking thread walks the snapshot and fills packs; at most `concurrency` packs are in
//! flight (the channel between them holds no more), so memory stays at about
//! `concurrency + 3` packs whatever the snapshot's size. Indexes are written in pack order,
//! each after its pack: a pack cut off by a lost connection, or by a restart, is sent again
//! (it was in flight); nothing indexed ever is.
//!
//! Saves never wait for it: it reads the store as any reader does, on the blocking pool, and
//! takes no lock a save takes. Passes start at once after a snapshot, when asked (`remote
//! sync`) and every minute; after a failure, after a backoff that doubles from 1 s to 30 s.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::backend::Connection;
use super::config::{Registry, RemoteConfig, Retention, State};
use super::crypto::{self, Key};
use super::format::{
    self, KIND_BLOB, KIND_CHUNKS, KIND_TREE, PackBuilder, RemoteConfigObject, SnapshotObject,
};
use super::restore::RemoteSnap;
use super::{Failure, RemoteError, now_ms};
use crate::engine::{Engine, EngineEvent};
use crate::store::catalog::SnapshotRecord;
use crate::store::{Id, Kind, Store, Tree};
use crate::sync::{lock, read, write};

/// What an uploader did and knows, for `status`.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// The remote's indexes and snapshots were read on the current connection.
    pub connected: bool,
    /// A pass is running.
    pub busy: bool,
    /// The last pass's failure; empty after one that succeeded.
    pub last_error: String,
    /// When it failed.
    pub last_error_ms: i64,
    /// When a pass last succeeded.
    pub last_success_ms: i64,
    /// Passes that ended, well or not.
    pub passes: u64,
    /// Sent since the daemon started.
    pub uploaded_bytes: u64,
    /// Objects sent since the daemon started.
    pub uploaded_objects: u64,
    /// Packs sent since the daemon started.
    pub uploaded_packs: u64,
    /// Snapshot records the remote's retention deleted since the daemon started.
    pub pruned_snapshots: u64,
    /// Packs (with their indexes) collected since the daemon started, and their bytes.
    pub deleted_packs: u64,
    /// See `deleted_packs`.
    pub deleted_bytes: u64,
    /// When retention last deleted something.
    pub last_prune_ms: i64,
    /// Unneeded bytes inside packs kept for the needed objects they hold (last collection).
    pub dead_bytes: u64,
    /// Why the last collection kept unneeded objects; empty when it did not.
    pub prune_note: String,
}

/// State shared between an uploader and whoever asks about it.
#[derive(Debug, Default)]
pub struct Shared {
    /// See [`Progress`].
    pub progress: Mutex<Progress>,
    /// Ids of this data directory's snapshots on the remote.
    pub replicated: Mutex<BTreeSet<u64>>,
    /// Ids the remote's retention dropped that are still local: not sent again.
    pub dropped: Mutex<BTreeSet<u64>>,
    /// Objects may be left for a collection to delete (see [`super::prune`], rule 2).
    pub collect_pending: Mutex<bool>,
    /// The remote's retention.
    pub retention: Mutex<Retention>,
    /// This data directory's records on the remote, read once per connection.
    pub ours: Mutex<BTreeMap<u64, RemoteSnap>>,
    /// Snapshot objects on the remote, of any data directory.
    pub remote_snapshots: Mutex<u64>,
    /// Objects some index on the remote names.
    known: RwLock<HashSet<Id>>,
    /// Indexes read or written.
    indexes: Mutex<HashSet<String>>,
    /// Starts a pass now.
    pub kick: Notify,
}

impl Shared {
    /// A state that starts from what was last recorded.
    pub fn new(state: State, retention: Retention) -> Shared {
        Shared {
            replicated: Mutex::new(state.replicated),
            dropped: Mutex::new(state.dropped),
            collect_pending: Mutex::new(state.collect_pending),
            retention: Mutex::new(retention),
            ..Shared::default()
        }
    }

    /// What is recorded between runs.
    pub fn state(&self) -> State {
        State {
            replicated: lock(&self.replicated).clone(),
            dropped: lock(&self.dropped).clone(),
            collect_pending: *lock(&self.collect_pending),
        }
    }

    /// Replaces what is known of the remote's objects with `indexes` (after a collection).
    pub fn set_indexes(&self, indexes: &[(String, format::PackIndex)]) {
        let mut known = write(&self.known);
        let mut names = lock(&self.indexes);
        known.clear();
        names.clear();
        for (name, index) in indexes {
            known.extend(index.entries.iter().map(|e| e.id));
            names.insert(name.clone());
        }
    }

    /// Objects known to be on the remote.
    pub fn known_objects(&self) -> usize {
        read(&self.known).len()
    }

    fn is_known(&self, id: &Id) -> bool {
        read(&self.known).contains(id)
    }
}

/// The name of this data directory's snapshot `id` on a remote: its origin (random per data
/// directory) keeps two machines' ids apart under one prefix.
pub fn snapshot_name(origin: &str, id: u64) -> String {
    format!("{origin}-{id:016x}")
}

/// Parses a snapshot object's name: its origin and id.
pub fn parse_snapshot_name(name: &str) -> Option<(&str, u64)> {
    let (origin, id) = name.split_once('-')?;
    Some((origin, u64::from_str_radix(id, 16).ok()?))
}

/// Opens a remote: reads its configuration object and checks the key against it.
pub async fn open(conn: &Connection, key: &Key) -> Result<RemoteConfigObject, RemoteError> {
    // A list first: a missing bucket reads as a missing object, but lists as what it is.
    conn.list("snapshots").await?;
    let Some(bytes) = conn.get("config").await? else {
        return Err(conn.fail(
            Failure::Damaged,
            "it has no `config` object: it was never set up, or was emptied (`chkptctl remote \
             remove` it and add it again)"
                .to_owned(),
        ));
    };
    let cfg: RemoteConfigObject = serde_json::from_slice(&bytes)
        .map_err(|e| conn.damaged(format!("its `config` object does not decode ({e})")))?;
    if cfg.chkpt_remote != format::FORMAT {
        return Err(conn.fail(
            Failure::Other,
            format!(
                "it is of format {}, this chkptd reads format {}: upgrade chkptd",
                cfg.chkpt_remote,
                format::FORMAT
            ),
        ));
    }
    if !cfg.opens_with(key) {
        return Err(wrong_key(conn));
    }
    Ok(cfg)
}

/// The error of a key that does not open a remote.
pub fn wrong_key(conn: &Connection) -> RemoteError {
    conn.fail(
        Failure::WrongKey,
        "the key does not open this remote: it was set up with another key or passphrase \
         (nothing was read or written)"
            .to_owned(),
    )
}

/// Spreads sends over time so they stay under a rate.
#[derive(Debug)]
struct RateLimit {
    bytes_per_sec: u64,
    next: Mutex<Instant>,
}

impl RateLimit {
    async fn take(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let wait = {
            let mut next = lock(&self.next);
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            start - now
        };
        tokio::time::sleep(wait).await;
    }
}

/// One remote's uploader.
#[derive(Debug)]
pub struct Uploader {
    cfg: RemoteConfig,
    engine: Arc<Engine>,
    registry: Registry,
    origin: String,
    shared: Arc<Shared>,
    conn: Option<(Connection, Key)>,
    opened: bool,
    limit: Arc<RateLimit>,
}

impl Uploader {
    /// Starts the uploader of `cfg`; it runs until `stop` turns true.
    pub fn spawn(
        cfg: RemoteConfig,
        engine: Arc<Engine>,
        registry: Registry,
        origin: String,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) {
        let limit = Arc::new(RateLimit {
            bytes_per_sec: cfg.max_upload_bytes_per_sec,
            next: Mutex::new(Instant::now()),
        });
        let up = Uploader {
            cfg,
            engine,
            registry,
            origin,
            shared,
            conn: None,
            opened: false,
            limit,
        };
        tokio::spawn(up.run(stop));
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut events = self.engine.subscribe();
        let mut backoff = Duration::from_secs(1);
        loop {
            if *stop.borrow() {
                return;
            }
            lock(&self.shared.progress).busy = true;
            let result = self.pass().await;
            let failed = {
                let mut p = lock(&self.shared.progress);
                p.busy = false;
                p.passes += 1;
                match &result {
                    Ok(()) => {
                        p.last_error.clear();
                        p.last_success_ms = now_ms();
                        false
                    }
                    Err(e) => {
                        p.last_error = e.to_string();
                        p.last_error_ms = now_ms();
                        p.connected = false;
                        true
                    }
                }
            };
            if let Err(e) = &result {
                tracing::warn!(remote = %self.cfg.name, error = %e, retry_in = ?backoff, "replication pass failed");
                self.opened = false;
            }
            let wait = if failed {
                backoff
            } else {
                Duration::from_secs(60)
            };
            backoff = if failed {
                (backoff * 2).min(Duration::from_secs(30))
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = stop.changed() => return,
                () = self.shared.kick.notified() => {}
                () = tokio::time::sleep(wait) => {}
                // During a failure only the timer and `sync` start a pass: a snapshot would
                // skip the backoff.
                () = next_snapshot(&mut events), if !failed => {}
            }
        }
    }

    async fn pass(&mut self) -> Result<(), RemoteError> {
        if self.conn.is_none() {
            let key = Key::from_bytes(&crypto::read_key_file(&self.cfg.key_file)?);
            self.conn = Some((Connection::new(&self.cfg)?, key));
        }
        let Some((conn, key)) = self.conn.clone() else {
            return Ok(());
        };
        if !self.opened {
            open(&conn, &key).await?;
            self.load(&conn, &key).await?;
            self.opened = true;
            lock(&self.shared.progress).connected = true;
        }
        let engine = self.engine.clone();
        let all = tokio::task::spawn_blocking(move || engine.store.catalog().all_snapshots())
            .await
            .map_err(|e| RemoteError::Config(format!("catalog: {e}")))??;
        let mut pending: Vec<SnapshotRecord> = {
            let done = lock(&self.shared.replicated);
            let dropped = lock(&self.shared.dropped);
            all.iter()
                .filter(|s| !done.contains(&s.id.get()) && !dropped.contains(&s.id.get()))
                .cloned()
                .collect()
        };
        pending.sort_by_key(|s| (s.created_us, s.id));
        for s in pending {
            self.upload_snapshot(&conn, &key, s).await?;
        }
        let local: std::collections::HashMap<u64, SnapshotRecord> =
            all.into_iter().map(|s| (s.id.get(), s)).collect();
        super::prune::apply(&super::prune::Pass {
            conn: &conn,
            key: &key,
            origin: &self.origin,
            name: &self.cfg.name,
            engine: &self.engine,
            registry: &self.registry,
            shared: &self.shared,
            local: &local,
        })
        .await
    }

    /// Reads the remote's indexes (the new ones) and its snapshot list.
    async fn load(&self, conn: &Connection, key: &Key) -> Result<(), RemoteError> {
        let names: Vec<String> = conn
            .list("index")
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !lock(&self.shared.indexes).contains(n))
            .collect();
        let fetched = format::fetch_indexes(conn, key, names, 16).await?;
        {
            let mut known = write(&self.shared.known);
            let mut indexes = lock(&self.shared.indexes);
            for (name, index) in fetched {
                known.extend(index.entries.iter().map(|e| e.id));
                indexes.insert(name);
            }
        }
        let snaps = conn.list("snapshots").await?;
        *lock(&self.shared.remote_snapshots) = snaps.len() as u64;
        let ours: Vec<(String, u64)> = snaps
            .iter()
            .filter_map(|(n, _)| parse_snapshot_name(n).map(|(o, id)| (n, o, id)))
            .filter(|(_, origin, _)| *origin == self.origin)
            .map(|(n, _, id)| (n.clone(), id))
            .collect();
        let records: BTreeMap<u64, RemoteSnap> = futures::stream::iter(ours)
            .map(|(name, id)| async move {
                Ok::<_, RemoteError>((id, super::restore::snapshot(conn, key, &name).await?))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        *lock(&self.shared.replicated) = records.keys().copied().collect();
        *lock(&self.shared.ours) = records;
        self.registry
            .save_state(&self.cfg.name, &self.shared.state())?;
        Ok(())
    }

    async fn upload_snapshot(
        &self,
        conn: &Connection,
        key: &Key,
        s: SnapshotRecord,
    ) -> Result<(), RemoteError> {
        let started = Instant::now();
        let concurrency = self.cfg.concurrency.max(1) as usize;
        let (tx, rx) = mpsc::channel::<PackBuilder>(concurrency);
        let engine = self.engine.clone();
        let shared = self.shared.clone();
        let walk_key = key.clone();
        let root = s.root;
        let target = self.cfg.pack_bytes.max(64 << 10) as usize;
        let origin = self.origin.clone();
        let producer = tokio::task::spawn_blocking(move || {
            Packer {
                store: &engine.store,
                key: &walk_key,
                shared: &shared,
                seen: HashSet::new(),
                pack: PackBuilder::new(&origin)?,
                meta: PackBuilder::new(&origin)?,
                origin: &origin,
                target,
                tx,
            }
            .run(root)
        });
        let limit = self.limit.clone();
        let uploads = ReceiverStream::new(rx)
            .map(|pack| {
                let conn = conn.clone();
                let limit = limit.clone();
                async move {
                    let len = pack.bytes.len() as u64;
                    limit.take(len).await;
                    conn.put(&format::pack_path(&pack.name), pack.bytes).await?;
                    Ok::<_, RemoteError>((pack.name, pack.index, len))
                }
            })
            .buffered(concurrency);
        tokio::pin!(uploads);
        let (mut packs, mut bytes) = (0u64, 0u64);
        while let Some(done) = uploads.next().await {
            let (name, index, len) = done?;
            conn.put(&format::index_path(&name), format::seal_index(key, &index)?)
                .await?;
            let objects = index.entries.len() as u64;
            write(&self.shared.known).extend(index.entries.iter().map(|e| e.id));
            lock(&self.shared.indexes).insert(name);
            let mut p = lock(&self.shared.progress);
            p.uploaded_bytes += len;
            p.uploaded_objects += objects;
            p.uploaded_packs += 1;
            packs += 1;
            bytes += len;
        }
        match producer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // Retention or a delete took the snapshot while it was read: nothing to send.
                let engine = self.engine.clone();
                let id = s.id;
                let still =
                    tokio::task::spawn_blocking(move || engine.store.catalog().snapshot(id))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten();
                if still.is_none() {
                    tracing::info!(remote = %self.cfg.name, snapshot = %s.hex_id(), "snapshot deleted while it was uploaded; skipped");
                    return Ok(());
                }
                return Err(e);
            }
            Err(e) => return Err(RemoteError::Config(format!("the pack writer failed: {e}"))),
        }
        let engine = self.engine.clone();
        let ws = s.workspace;
        let workspace = tokio::task::spawn_blocking(move || engine.store.catalog().workspace(ws))
            .await
            .map_err(|e| RemoteError::Config(format!("catalog: {e}")))??
            .map(|w| w.path)
            .unwrap_or_default();
        let object = SnapshotObject {
            record: crate::store::records::encode(&s),
            workspace: workspace.clone(),
        };
        conn.put(
            &format!("snapshots/{}", snapshot_name(&self.origin, s.id.get())),
            format::seal_snapshot(key, &object)?,
        )
        .await?;
        lock(&self.shared.replicated).insert(s.id.get());
        *lock(&self.shared.remote_snapshots) += 1;
        let id = s.id.get();
        lock(&self.shared.ours).insert(
            id,
            RemoteSnap {
                record: s.clone(),
                workspace,
            },
        );
        self.registry
            .save_state(&self.cfg.name, &self.shared.state())?;
        tracing::info!(remote = %self.cfg.name, snapshot = %s.hex_id(), packs, bytes, elapsed = ?started.elapsed(), "snapshot replicated");
        Ok(())
    }
}

/// Waits for the next snapshot (or for events lost: one may have been a snapshot).
async fn next_snapshot(events: &mut tokio::sync::broadcast::Receiver<EngineEvent>) {
    loop {
        match events.recv().await {
            Ok(EngineEvent::SnapshotTaken(_))
            | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Walks a snapshot and fills packs with what the remote lacks, children before parents.
struct Packer<'a> {
    store: &'a Store,
    key: &'a Key,
    shared: &'a Shared,
    /// Queued by this walk (in a pack that may not be indexed yet).
    seen: HashSet<Id>,
    /// File data (blobs and chunks), in the order a restore writes them.
    pack: PackBuilder,
    /// Trees and chunk lists, in packs of their own: a restore reads them first, a level of
    /// the tree at a time, in a few requests instead of reading around the file data.
    meta: PackBuilder,
    origin: &'a str,
    target: usize,
    tx: mpsc::Sender<PackBuilder>,
}

impl Packer<'_> {
    fn run(mut self, root: Id) -> Result<(), RemoteError> {
        self.tree(root)?;
        for meta in [false, true] {
            if !self.builder(meta).is_empty() {
                self.send(meta)?;
            }
        }
        Ok(())
    }

    /// The pack an object goes to: trees and chunk lists (`meta`) apart from file data.
    fn builder(&mut self, meta: bool) -> &mut PackBuilder {
        if meta { &mut self.meta } else { &mut self.pack }
    }

    fn wanted(&mut self, id: Id) -> bool {
        !self.shared.is_known(&id) && self.seen.insert(id)
    }

    fn tree(&mut self, id: Id) -> Result<(), RemoteError> {
        if !self.wanted(id) {
            return Ok(());
        }
        let bytes = self.store.read_vec(&id)?;
        let tree =
            Tree::decode(&bytes).map_err(|e| crate::Error::Corrupt(format!("tree {id}: {e}")))?;
        for e in &tree.entries {
            match e.kind {
                // A split tree's parts are directories here too.
                Kind::Dir => self.tree(e.id)?,
                Kind::File | Kind::Symlink => self.blob(e.id)?,
            }
        }
        self.add(id, KIND_TREE, &bytes)
    }

    fn blob(&mut self, id: Id) -> Result<(), RemoteError> {
        if !self.wanted(id) {
            return Ok(());
        }
        if let Some(list) = self.store.chunk_list(&id)? {
            for chunk in list.chunk_ids() {
                if self.wanted(chunk) {
                    let data = self.store.read_vec(&chunk)?;
                    self.add(chunk, KIND_BLOB, &data)?;
                }
            }
            return self.add(id, KIND_CHUNKS, &list.encode());
        }
        let data = self.store.read_vec(&id)?;
        self.add(id, KIND_BLOB, &data)
    }

    fn add(&mut self, id: Id, kind: u8, data: &[u8]) -> Result<(), RemoteError> {
        let meta = kind != KIND_BLOB;
        let key = self.key;
        let pack = self.builder(meta);
        pack.add(key, id, kind, data)?;
        if pack.bytes.len() >= self.target {
            self.send(meta)?;
        }
        Ok(())
    }

    fn send(&mut self, meta: bool) -> Result<(), RemoteError> {
        let fresh = PackBuilder::new(self.origin)?;
        let full = std::mem::replace(self.builder(meta), fresh);
        // The receiver is gone when an upload failed: the pass ends, and so does this walk.
        self.tx
            .blocking_send(full)
            .map_err(|_| RemoteError::Config("the upload stopped".into()))
    }
}
