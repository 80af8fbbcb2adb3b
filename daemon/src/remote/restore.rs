//! Reading a remote without a local store: its snapshots, and a restore of one into a new or
//! empty folder.
//!
//! A restore reads every index (where each object is), then walks the snapshot's trees a
//! level at a time, fetching the trees of a level in parallel, and writes files as their
//! objects arrive, `PARALLEL` at once; a chunked file is written chunk by chunk, so nothing is
//! held whole in memory but one object per file in flight. Every object is checked against
//! its id before it is written; folders get their modes last, deepest first.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};

use super::RemoteError;
use super::backend::Connection;
use super::crypto::Key;
use super::format::{self, IndexEntry, KIND_BLOB, KIND_CHUNKS, KIND_TREE};
use super::upload::parse_snapshot_name;
use crate::store::catalog::SnapshotRecord;
use crate::store::{ChunkList, Id, Kind, Piece, Tree};

/// Objects fetched at once.
const PARALLEL: usize = 16;
/// Chunks of one large file fetched at once.
const CHUNKS_AHEAD: usize = 8;

/// A snapshot on a remote.
#[derive(Debug, Clone)]
pub struct RemoteSnap {
    /// The local record it was made from.
    pub record: SnapshotRecord,
    /// Its workspace's path.
    pub workspace: Vec<u8>,
}

/// What a restore wrote.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Regular files.
    pub files: u64,
    /// Folders (the top one included).
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Bytes fetched from the remote.
    pub fetched: u64,
    /// Milliseconds it took.
    pub elapsed_ms: u64,
}

/// Every snapshot on the remote, newest first.
pub async fn snapshots(conn: &Connection, key: &Key) -> Result<Vec<RemoteSnap>, RemoteError> {
    let names = conn.list("snapshots").await?;
    let mut out: Vec<RemoteSnap> = futures::stream::iter(names)
        .filter(|(n, _)| std::future::ready(parse_snapshot_name(n).is_some()))
        .map(|(name, _)| async move { snapshot(conn, key, &name).await })
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;
    out.sort_by_key(|s| std::cmp::Reverse((s.record.created_us, s.record.id)));
    Ok(out)
}

/// The snapshot object called `name` (under `snapshots/`).
pub async fn snapshot(conn: &Connection, key: &Key, name: &str) -> Result<RemoteSnap, RemoteError> {
    let bytes = conn
        .get(&format!("snapshots/{name}"))
        .await?
        .ok_or_else(|| conn.damaged(format!("snapshot {name} vanished")))?;
    let object = format::open_snapshot(key, &bytes).map_err(|e| conn.damaged(e))?;
    let record: SnapshotRecord = crate::store::records::decode(&object.record)
        .map_err(|e| conn.damaged(format!("snapshot {name}: {e}")))?;
    Ok(RemoteSnap {
        record,
        workspace: object.workspace,
    })
}

/// The snapshot `selector` names among `all` (newest first): `latest`, `latest~N`, or an id
/// or a unique prefix of one; of workspace `workspace` when given.
pub fn select<'a>(
    conn: &Connection,
    all: &'a [RemoteSnap],
    selector: &str,
    workspace: Option<&[u8]>,
) -> Result<&'a RemoteSnap, RemoteError> {
    let none = |message: String| RemoteError::NoSnapshot {
        name: conn.name().to_owned(),
        message,
    };
    let of_ws: Vec<&RemoteSnap> = all
        .iter()
        .filter(|s| workspace.is_none_or(|w| s.workspace == w))
        .collect();
    if of_ws.is_empty() {
        return Err(none(match workspace {
            Some(w) => format!(
                "it has no snapshot of {}: `chkptctl remote snapshots {}` lists them",
                String::from_utf8_lossy(w),
                conn.name()
            ),
            None => "it has no snapshots yet".to_owned(),
        }));
    }
    let back = if selector == "latest" {
        Some(0)
    } else {
        selector
            .strip_prefix("latest~")
            .and_then(|n| n.parse::<usize>().ok())
    };
    if let Some(back) = back {
        let mut spaces: Vec<&[u8]> = of_ws.iter().map(|s| s.workspace.as_slice()).collect();
        spaces.sort();
        spaces.dedup();
        if spaces.len() > 1 {
            return Err(none(format!(
                "it holds snapshots of {} workspaces ({}): say which with --workspace PATH",
                spaces.len(),
                spaces
                    .iter()
                    .map(|w| String::from_utf8_lossy(w).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        return of_ws.get(back).copied().ok_or_else(|| {
            none(format!(
                "it has only {} snapshots, not {}",
                of_ws.len(),
                back + 1
            ))
        });
    }
    let want = selector.to_ascii_lowercase();
    if want.is_empty() || !want.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(none(format!(
            "{selector:?} is not a snapshot here: use an id, a prefix of one, `latest` or `latest~N`"
        )));
    }
    let found: Vec<&RemoteSnap> = of_ws
        .into_iter()
        .filter(|s| s.record.hex_id().starts_with(&want))
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(none(format!(
            "no snapshot {selector}: `chkptctl remote snapshots {}` lists them",
            conn.name()
        ))),
        many => Err(none(format!(
            "{selector} names {} snapshots: give more digits",
            many.len()
        ))),
    }
}

/// Where each object is: its pack and entry.
pub type Locations = HashMap<Id, (Arc<str>, IndexEntry)>;

/// Reads every index of the remote.
pub async fn locations(conn: &Connection, key: &Key) -> Result<Locations, RemoteError> {
    let names = conn.list("index").await?;
    let names = names.into_iter().map(|(name, _)| name).collect();
    let indexes = format::fetch_indexes(conn, key, names, PARALLEL).await?;
    Ok(locations_of(&indexes))
}

/// Where each object of `indexes` is.
pub fn locations_of(indexes: &[(String, format::PackIndex)]) -> Locations {
    let mut out = HashMap::new();
    for (name, index) in indexes {
        let name: Arc<str> = name.as_str().into();
        for e in &index.entries {
            out.insert(e.id, (name.clone(), *e));
        }
    }
    out
}

/// Reads objects from a remote's packs, checked against their ids.
#[derive(Debug)]
pub struct Fetcher<'a> {
    conn: &'a Connection,
    key: &'a Key,
    locs: &'a Locations,
    fetched: AtomicU64,
}

impl<'a> Fetcher<'a> {
    /// A reader of the objects `locs` places.
    pub fn new(conn: &'a Connection, key: &'a Key, locs: &'a Locations) -> Fetcher<'a> {
        Fetcher {
            conn,
            key,
            locs,
            fetched: AtomicU64::new(0),
        }
    }

    /// A damaged-remote error.
    pub fn damaged(&self, message: String) -> RemoteError {
        self.conn.damaged(message)
    }

    /// The kind an index gives object `id`.
    pub fn kind(&self, id: &Id) -> Result<u8, RemoteError> {
        Ok(self.entry(id)?.1.kind)
    }

    fn entry(&self, id: &Id) -> Result<&(Arc<str>, IndexEntry), RemoteError> {
        self.locs.get(id).ok_or_else(|| {
            self.conn
                .damaged(format!("object {id} is not on the remote"))
        })
    }

    /// Object `id`, which must be of `kind`.
    pub async fn object(&self, id: &Id, kind: u8) -> Result<Vec<u8>, RemoteError> {
        let (pack, e) = self.entry(id)?;
        if e.kind != kind {
            return Err(self
                .conn
                .damaged(format!("object {id} is of the wrong kind")));
        }
        let sealed = self
            .conn
            .get_range(
                &format::pack_path(pack),
                e.offset..e.offset + u64::from(e.len),
            )
            .await?;
        self.fetched
            .fetch_add(sealed.len() as u64, Ordering::Relaxed);
        format::open_object(self.key, e, &sealed).map_err(|m| self.conn.damaged(m))
    }

    /// A directory's entries (a split one's parts joined).
    async fn tree(&self, id: &Id) -> Result<Tree, RemoteError> {
        let bytes = self.object(id, KIND_TREE).await?;
        let tree =
            Tree::decode(&bytes).map_err(|e| self.conn.damaged(format!("tree {id}: {e}")))?;
        if !tree.is_split() {
            return Ok(tree);
        }
        let mut entries = Vec::new();
        for part in &tree.entries {
            let bytes = self.object(&part.id, KIND_TREE).await?;
            let p = Tree::decode(&bytes)
                .map_err(|e| self.conn.damaged(format!("tree {}: {e}", part.id)))?;
            if p.is_split() {
                return Err(self
                    .conn
                    .damaged(format!("tree {} is a split part", part.id)));
            }
            entries.extend(p.entries);
        }
        Ok(Tree { entries })
    }

    async fn file(&self, path: PathBuf, id: Id, mode: u32) -> Result<u64, RemoteError> {
        let (_, e) = self.entry(&id)?;
        let open = |path: &Path| {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| local(path, e))
        };
        let written = if e.kind == KIND_CHUNKS {
            let list = ChunkList::decode(&self.object(&id, KIND_CHUNKS).await?)
                .map_err(|m| self.conn.damaged(format!("chunk list {id}: {m}")))?;
            let file = open(&path)?;
            // Chunks in file order, `CHUNKS_AHEAD` fetched at once: a large file streams.
            let mut at = 0u64;
            let mut data_pieces = Vec::new();
            for piece in &list.pieces {
                if let Piece::Data { id: chunk, len } = *piece {
                    data_pieces.push((at, chunk, len));
                }
                at += piece.len();
            }
            let mut chunks = futures::stream::iter(data_pieces)
                .map(|(offset, chunk, len)| async move {
                    let data = self.object(&chunk, KIND_BLOB).await?;
                    if data.len() as u64 != len {
                        return Err(self
                            .conn
                            .damaged(format!("chunk {chunk} has the wrong length")));
                    }
                    Ok::<_, RemoteError>((offset, data))
                })
                .buffered(CHUNKS_AHEAD);
            while let Some(next) = chunks.next().await {
                let (offset, data) = next?;
                file.write_all_at(&data, offset)
                    .map_err(|e| local(&path, e))?;
            }
            // Holes at the end are set by the length.
            file.set_len(at).map_err(|e| local(&path, e))?;
            file.sync_all().map_err(|e| local(&path, e))?;
            at
        } else {
            let data = self.object(&id, KIND_BLOB).await?;
            let p = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut f = open(&p)?;
                f.write_all(&data).map_err(|e| local(&p, e))?;
                Ok::<_, RemoteError>(data.len() as u64)
            })
            .await
            .map_err(|e| RemoteError::Config(format!("restore: {e}")))??
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| local(&path, e))?;
        Ok(written)
    }
}

fn local(path: &Path, e: std::io::Error) -> RemoteError {
    RemoteError::Local(crate::Error::io(path, e))
}

/// One file or symlink to write.
struct Job {
    path: PathBuf,
    kind: Kind,
    id: Id,
    mode: u32,
}

/// Restores `snap` into `to`: a new or empty folder.
pub async fn restore(
    conn: &Connection,
    key: &Key,
    snap: &RemoteSnap,
    to: &Path,
) -> Result<Summary, RemoteError> {
    let started = Instant::now();
    match fs::read_dir(to) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(RemoteError::Config(format!(
                    "{} is not empty: restore into a new or empty folder",
                    to.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(to).map_err(|e| local(to, e))?;
        }
        Err(e) => return Err(local(to, e)),
    }
    let locs = locations(conn, key).await?;
    let f = Fetcher::new(conn, key, &locs);
    let mut summary = Summary {
        dirs: 1,
        ..Summary::default()
    };
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    let mut level: Vec<(PathBuf, Id)> = vec![(to.to_path_buf(), snap.record.root)];
    while !level.is_empty() {
        let trees: Vec<(PathBuf, Tree)> = futures::stream::iter(level)
            .map(|(dir, id)| {
                let f = &f;
                async move { Ok::<_, RemoteError>((dir, f.tree(&id).await?)) }
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        level = Vec::new();
        for (dir, tree) in trees {
            for e in tree.entries {
                let path = dir.join(OsStr::from_bytes(&e.name));
                match e.kind {
                    Kind::Dir => {
                        fs::create_dir(&path).map_err(|err| local(&path, err))?;
                        summary.dirs += 1;
                        dir_modes.push((path.clone(), e.mode));
                        level.push((path, e.id));
                    }
                    Kind::File | Kind::Symlink => jobs.push(Job {
                        path,
                        kind: e.kind,
                        id: e.id,
                        mode: e.mode,
                    }),
                }
            }
        }
    }
    let written: Vec<(Kind, u64)> = futures::stream::iter(jobs)
        .map(|job| {
            let f = &f;
            async move {
                match job.kind {
                    Kind::Symlink => {
                        let target = f.object(&job.id, KIND_BLOB).await?;
                        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &job.path)
                            .map_err(|e| local(&job.path, e))?;
                        Ok::<_, RemoteError>((Kind::Symlink, 0))
                    }
                    _ => Ok((Kind::File, f.file(job.path, job.id, job.mode).await?)),
                }
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;
    for (kind, bytes) in written {
        match kind {
            Kind::Symlink => summary.symlinks += 1,
            _ => {
                summary.files += 1;
                summary.bytes += bytes;
            }
        }
    }
    // Deepest first: a folder made read-only must not stop the ones inside it.
    dir_modes.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, mode) in dir_modes {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| local(&path, e))?;
    }
    summary.fetched = f.fetched.load(Ordering::Relaxed);
    summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(summary)
}
