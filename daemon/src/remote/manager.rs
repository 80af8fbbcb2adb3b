//! Every remote of the daemon: the registry, one uploader each, and the operations the
//! `Remotes` service offers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::RemoteError;
use super::backend::Connection;
use super::config::{
    DEFAULT_CONCURRENCY, DEFAULT_PACK_BYTES, KeySource, Location, Registry, RemoteConfig,
    Retention, check_name,
};
use super::crypto::{self, KdfParams, Key};
use super::format::{Kdf, RemoteConfigObject};
use super::restore::{self, RemoteSnap, Summary};
use super::upload::{self, Progress, Shared, Uploader};
use crate::engine::Engine;
use crate::sync::lock;

/// What `remote add` asks for.
#[derive(Debug, Clone, Default)]
pub struct AddRequest {
    /// See `AddRemoteRequest` in `remote.proto`.
    pub name: String,
    /// The URL.
    pub url: String,
    /// The S3 endpoint.
    pub endpoint: String,
    /// The S3 region.
    pub region: String,
    /// A credentials file.
    pub credentials_file: Option<PathBuf>,
    /// A key file.
    pub key_file: Option<PathBuf>,
    /// A passphrase.
    pub passphrase: Option<String>,
    /// Target pack size; 0: the default.
    pub pack_bytes: u64,
    /// Packs at once; 0: the default.
    pub concurrency: u32,
    /// Upload bandwidth limit.
    pub max_upload_bytes_per_sec: u64,
    /// Which snapshots the remote keeps.
    pub retention: Retention,
}

/// What `remote add` did.
#[derive(Debug, Clone)]
pub struct Added {
    /// The remote as registered.
    pub config: RemoteConfig,
    /// The prefix was new: its configuration object was written.
    pub initialized: bool,
    /// A new key was made.
    pub key_generated: bool,
}

/// A remote's state for `status`.
#[derive(Debug, Clone)]
pub struct StatusView {
    /// The remote.
    pub config: RemoteConfig,
    /// What its uploader did.
    pub progress: Progress,
    /// Local snapshots not on it.
    pub pending_snapshots: u64,
    /// What they added to the local store.
    pub pending_bytes: u64,
    /// When the oldest of them was taken (ms since the epoch); 0: none.
    pub oldest_pending_ms: i64,
    /// Snapshot objects on it.
    pub remote_snapshots: u64,
    /// Objects its indexes name.
    pub remote_objects: u64,
    /// Unneeded objects may be left for the next pass to collect.
    pub collect_pending: bool,
}

struct Worker {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

/// The registered remotes and the uploader of each, changed together.
#[derive(Default)]
struct Running {
    /// In the order they were registered.
    configs: Vec<RemoteConfig>,
    /// By remote name.
    workers: HashMap<String, Worker>,
}

/// The daemon's remotes.
pub struct Remotes {
    engine: Arc<Engine>,
    registry: Registry,
    origin: String,
    inner: Mutex<Running>,
}

impl std::fmt::Debug for Remotes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remotes")
            .field("origin", &self.origin)
            .finish()
    }
}

impl Remotes {
    /// Loads the registered remotes and starts their uploaders (inside a tokio runtime).
    pub fn start(engine: Arc<Engine>) -> Arc<Remotes> {
        let registry = Registry::new(engine.store.dir());
        let origin = match origin(&registry.own_dir()) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "remotes: cannot read or make this data directory's origin id");
                String::from("0000000000000000")
            }
        };
        let configs = registry.load().unwrap_or_else(|e| {
            tracing::error!(error = %e, "remotes: cannot read the registered remotes");
            Vec::new()
        });
        let remotes = Arc::new(Remotes {
            engine,
            registry,
            origin,
            inner: Mutex::default(),
        });
        for cfg in configs {
            remotes.launch(cfg);
        }
        remotes
    }

    fn launch(&self, cfg: RemoteConfig) {
        let shared = Arc::new(Shared::new(
            self.registry.load_state(&cfg.name),
            cfg.retention,
        ));
        let (stop, stopped) = watch::channel(false);
        Uploader::spawn(
            cfg.clone(),
            self.engine.clone(),
            self.registry.clone(),
            self.origin.clone(),
            shared.clone(),
            stopped,
        );
        let mut inner = lock(&self.inner);
        inner
            .workers
            .insert(cfg.name.clone(), Worker { shared, stop });
        inner.configs.push(cfg);
    }

    /// The registered remotes.
    pub fn list(&self) -> Vec<RemoteConfig> {
        lock(&self.inner).configs.clone()
    }

    fn config(&self, name: &str) -> Result<RemoteConfig, RemoteError> {
        lock(&self.inner)
            .configs
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .ok_or_else(|| RemoteError::NotFound(name.to_owned()))
    }

    /// Registers a remote (see `AddRemote`).
    pub async fn add(&self, req: AddRequest) -> Result<Added, RemoteError> {
        check_name(&req.name)?;
        Location::parse(&req.url)?;
        if lock(&self.inner).configs.iter().any(|c| c.name == req.name) {
            return Err(RemoteError::Exists(req.name));
        }
        for (what, path) in [
            ("--credentials", &req.credentials_file),
            ("--key-file", &req.key_file),
        ] {
            if let Some(p) = path
                && !p.is_absolute()
            {
                return Err(RemoteError::Config(format!(
                    "{what} {} must be an absolute path",
                    p.display()
                )));
            }
        }
        let passphrase = req.passphrase.filter(|p| !p.is_empty());
        if passphrase.is_some() && req.key_file.is_some() {
            return Err(RemoteError::Config(
                "give a key file or a passphrase, not both".into(),
            ));
        }
        let own_key = self.registry.own_dir().join(format!("{}.key", req.name));
        let (key_file, key_source) = match (&req.key_file, &passphrase) {
            (Some(k), _) => (k.clone(), KeySource::KeyFile),
            (None, Some(_)) => (own_key.clone(), KeySource::Passphrase),
            (None, None) => (own_key.clone(), KeySource::KeyFile),
        };
        let cfg = RemoteConfig {
            name: req.name.clone(),
            url: req.url.clone(),
            endpoint: req.endpoint.trim_end_matches('/').to_owned(),
            region: req.region.clone(),
            credentials_file: req.credentials_file.clone(),
            key_file,
            key_source,
            pack_bytes: if req.pack_bytes == 0 {
                DEFAULT_PACK_BYTES
            } else {
                req.pack_bytes.max(64 << 10)
            },
            concurrency: if req.concurrency == 0 {
                DEFAULT_CONCURRENCY
            } else {
                req.concurrency.min(64)
            },
            max_upload_bytes_per_sec: req.max_upload_bytes_per_sec,
            retention: req.retention,
        };
        let conn = Connection::new(&cfg)?;
        // Reachable, the credentials good, the bucket there: a list says all three.
        conn.list("snapshots").await?;
        let existing: Option<RemoteConfigObject> =
            match conn.get("config").await? {
                Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                    conn.damaged(format!("its `config` object does not decode ({e})"))
                })?),
                None => None,
            };
        // The key, and whether it must be written to a file before the remote is used.
        let mut key_to_write = None;
        let mut key_generated = false;
        let (key, initialized) = match (&existing, &passphrase) {
            (Some(obj), Some(pass)) => {
                let kdf = obj.kdf.as_ref().ok_or_else(|| {
                    RemoteError::Config(format!(
                        "remote {}: it was set up with a key file, not a passphrase: give \
                         --key-file",
                        cfg.name
                    ))
                })?;
                let salt = crypto::unhex(&kdf.salt)
                    .ok_or_else(|| conn.damaged("its salt does not decode".into()))?;
                let bytes = derive(pass, &salt, kdf.params).await?;
                key_to_write = Some(bytes);
                (Key::from_bytes(&bytes), None)
            }
            (Some(obj), None) => {
                if obj.kdf.is_some() && req.key_file.is_none() && !own_key.exists() {
                    return Err(RemoteError::Config(format!(
                        "remote {}: it was set up with a passphrase: set \
                         CHKPT_REMOTE_PASSPHRASE (or give --key-file with its key)",
                        cfg.name
                    )));
                }
                let bytes = if cfg.key_file.exists() {
                    crypto::read_key_file(&cfg.key_file)?
                } else if req.key_file.is_some() {
                    return Err(RemoteError::Config(format!(
                        "remote {}: it holds data already, and key file {} does not exist: give \
                         the key it was set up with",
                        cfg.name,
                        cfg.key_file.display()
                    )));
                } else {
                    return Err(RemoteError::Config(format!(
                        "remote {}: it holds data already: give --key-file with the key it was \
                         set up with (or set CHKPT_REMOTE_PASSPHRASE)",
                        cfg.name
                    )));
                };
                (Key::from_bytes(&bytes), None)
            }
            (None, Some(pass)) => {
                let salt: [u8; 16] = crypto::random_bytes()?;
                let params = KdfParams::default();
                let bytes = derive(pass, &salt, params).await?;
                key_to_write = Some(bytes);
                let key = Key::from_bytes(&bytes);
                let obj = RemoteConfigObject::new(
                    &key,
                    Some(Kdf {
                        algorithm: "argon2id".into(),
                        params,
                        salt: crypto::hex(&salt),
                    }),
                )?;
                (key, Some(obj))
            }
            (None, None) => {
                let bytes = if cfg.key_file.exists() {
                    crypto::read_key_file(&cfg.key_file)?
                } else {
                    let bytes: [u8; crypto::KEY_LEN] = crypto::random_bytes()?;
                    key_to_write = Some(bytes);
                    key_generated = true;
                    bytes
                };
                let key = Key::from_bytes(&bytes);
                let obj = RemoteConfigObject::new(&key, None)?;
                (key, Some(obj))
            }
        };
        if let Some(obj) = &existing
            && !obj.opens_with(&key)
        {
            return Err(upload::wrong_key(&conn));
        }
        if let Some(bytes) = key_to_write {
            write_key(&cfg.key_file, &bytes, cfg.key_source)?;
        }
        if let Some(obj) = &initialized {
            let body = serde_json::to_vec_pretty(obj)
                .map_err(|e| RemoteError::Config(format!("encode the config object: {e}")))?;
            conn.put("config", body).await?;
        }
        {
            let mut all = self.list();
            all.push(cfg.clone());
            self.registry.save(&all)?;
        }
        self.launch(cfg.clone());
        tracing::info!(remote = %cfg.name, url = %cfg.url, initialized = initialized.is_some(), "remote added");
        Ok(Added {
            config: cfg,
            initialized: initialized.is_some(),
            key_generated,
        })
    }

    /// Forgets a remote and stops its uploader (the remote's objects and the key stay).
    pub fn remove(&self, name: &str) -> Result<RemoteConfig, RemoteError> {
        let cfg = self.config(name)?;
        let rest: Vec<RemoteConfig> = self.list().into_iter().filter(|c| c.name != name).collect();
        self.registry.save(&rest)?;
        let mut inner = lock(&self.inner);
        inner.configs.retain(|c| c.name != name);
        if let Some(w) = inner.workers.remove(name) {
            let _ = w.stop.send(true);
        }
        self.registry.remove_state(name);
        Ok(cfg)
    }

    /// Sets which snapshots remote `name` keeps; its uploader applies it at once.
    pub fn set_retention(
        &self,
        name: &str,
        retention: Retention,
    ) -> Result<RemoteConfig, RemoteError> {
        let mut cfg = self.config(name)?;
        cfg.retention = retention;
        let all: Vec<RemoteConfig> = self
            .list()
            .into_iter()
            .map(|c| if c.name == name { cfg.clone() } else { c })
            .collect();
        self.registry.save(&all)?;
        let mut inner = lock(&self.inner);
        inner.configs = all;
        if let Some(w) = inner.workers.get(name) {
            *lock(&w.shared.retention) = retention;
            w.shared.kick.notify_one();
        }
        tracing::info!(
            remote = name,
            mode = retention.mode(),
            "remote retention set"
        );
        Ok(cfg)
    }

    /// The state of `name`, or of every remote.
    pub async fn status(&self, name: Option<&str>) -> Result<Vec<StatusView>, RemoteError> {
        let configs = match name {
            Some(n) => vec![self.config(n)?],
            None => self.list(),
        };
        let engine = self.engine.clone();
        let all = tokio::task::spawn_blocking(move || engine.store.catalog().all_snapshots())
            .await
            .map_err(|e| RemoteError::Config(format!("catalog: {e}")))??;
        let mut out = Vec::new();
        for config in configs {
            let Some(shared) = lock(&self.inner)
                .workers
                .get(&config.name)
                .map(|w| w.shared.clone())
            else {
                continue;
            };
            let progress = lock(&shared.progress).clone();
            let (mut n, mut bytes, mut oldest) = (0u64, 0u64, 0i64);
            {
                let done = lock(&shared.replicated);
                let dropped = lock(&shared.dropped);
                for s in all
                    .iter()
                    .filter(|s| !done.contains(&s.id.get()) && !dropped.contains(&s.id.get()))
                {
                    n += 1;
                    bytes += s.new_bytes;
                    let ms = i64::try_from(s.created_us / 1000).unwrap_or(i64::MAX);
                    if oldest == 0 || ms < oldest {
                        oldest = ms;
                    }
                }
            }
            out.push(StatusView {
                config,
                progress,
                pending_snapshots: n,
                pending_bytes: bytes,
                oldest_pending_ms: oldest,
                remote_snapshots: *lock(&shared.remote_snapshots),
                remote_objects: shared.known_objects() as u64,
                collect_pending: *lock(&shared.collect_pending),
            });
        }
        Ok(out)
    }

    /// Starts a pass of `name` now; with `wait`, waits (at most that long) for nothing to be
    /// pending, or for a pass to fail.
    pub async fn sync(&self, name: &str, wait: Duration) -> Result<Vec<StatusView>, RemoteError> {
        self.config(name)?;
        let Some(shared) = lock(&self.inner)
            .workers
            .get(name)
            .map(|w| w.shared.clone())
        else {
            return Err(RemoteError::NotFound(name.to_owned()));
        };
        let passes = lock(&shared.progress).passes;
        shared.kick.notify_one();
        let deadline = Instant::now() + wait;
        loop {
            let status = self.status(Some(name)).await?;
            let Some(s) = status.first() else {
                return Ok(status);
            };
            let p = &s.progress;
            let ended_since = p.passes > passes && !p.busy;
            if wait.is_zero()
                || (ended_since && (s.pending_snapshots == 0 || !p.last_error.is_empty()))
                || Instant::now() >= deadline
            {
                return Ok(status);
            }
            if ended_since && s.pending_snapshots > 0 {
                // Snapshots taken during that pass: one more.
                shared.kick.notify_one();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn open_parts(&self, name: &str) -> Result<(Connection, Key), RemoteError> {
        let cfg = self.config(name)?;
        let key = Key::from_bytes(&crypto::read_key_file(&cfg.key_file)?);
        Ok((Connection::new(&cfg)?, key))
    }

    /// The snapshots on `name`, newest first.
    pub async fn snapshots(&self, name: &str) -> Result<Vec<RemoteSnap>, RemoteError> {
        let (conn, key) = self.open_parts(name)?;
        upload::open(&conn, &key).await?;
        restore::snapshots(&conn, &key).await
    }

    /// Restores a snapshot of `name` into `to`.
    pub async fn restore(
        &self,
        name: &str,
        selector: &str,
        to: &Path,
        workspace: Option<&[u8]>,
    ) -> Result<(RemoteSnap, Summary), RemoteError> {
        if !to.is_absolute() {
            return Err(RemoteError::Config(format!(
                "--to {} must be an absolute path",
                to.display()
            )));
        }
        let (conn, key) = self.open_parts(name)?;
        upload::open(&conn, &key).await?;
        let all = restore::snapshots(&conn, &key).await?;
        let snap = restore::select(&conn, &all, selector, workspace)?.clone();
        let summary = restore::restore(&conn, &key, &snap, to).await?;
        tracing::info!(remote = name, snapshot = %snap.record.hex_id(), to = %to.display(), files = summary.files, bytes = summary.bytes, ms = summary.elapsed_ms, "restored from a remote");
        Ok((snap, summary))
    }
}

/// Argon2 off the async threads.
async fn derive(
    pass: &str,
    salt: &[u8],
    params: KdfParams,
) -> Result<[u8; crypto::KEY_LEN], RemoteError> {
    let (pass, salt) = (pass.to_owned(), salt.to_vec());
    tokio::task::spawn_blocking(move || Key::derive(&pass, &salt, params))
        .await
        .map_err(|e| RemoteError::Config(format!("argon2: {e}")))?
}

/// Writes a key made here (or derived from a passphrase) to its file. A derived key replaces
/// an older derived one; a key file is never replaced.
fn write_key(
    path: &Path,
    key: &[u8; crypto::KEY_LEN],
    source: KeySource,
) -> Result<(), RemoteError> {
    if path.exists() {
        if crypto::read_key_file(path).ok().as_ref() == Some(key) {
            return Ok(());
        }
        if source == KeySource::Passphrase {
            std::fs::remove_file(path)
                .map_err(|e| RemoteError::Config(format!("{}: {e}", path.display())))?;
        }
    }
    crypto::write_key_file(path, key)
}

/// This data directory's origin id (random, made once): names its snapshots on remotes.
fn origin(dir: &Path) -> Result<String, RemoteError> {
    let path = dir.join("origin");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let text = text.trim();
        if text.len() == 16 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(text.to_owned());
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| RemoteError::Config(format!("{}: {e}", dir.display())))?;
    let id = crypto::hex(&crypto::random_bytes::<8>()?);
    let tmp = dir.join("origin.tmp");
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| RemoteError::Config(format!("{}: {e}", path.display())))?;
    Ok(id)
}
