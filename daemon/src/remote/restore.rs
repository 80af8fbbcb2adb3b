//! Reading a remote without a local store: its snapshots, and a restore of one into a new or
//! empty folder.
//!
//! A restore reads every index (where each object is), then walks the snapshot's trees a
//! level at a time, and writes the files. A level's trees, and the files held in one object,
//! are read in runs of neighbouring objects, a request each (`fetch::plan`), several at once;
//! a chunked file is written chunk by chunk, so no file is ever held whole in memory. Every
//! object is checked against its id before it is written; folders get their modes last,
//! deepest first, and the restore is durable before it answers (as a local one is).

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};

use super::RemoteError;
use super::backend::Connection;
use super::crypto::Key;
use super::fetch::{self, Fetcher};
use super::format::{self, IndexEntry, KIND_BLOB, KIND_CHUNKS, KIND_TREE};
use super::upload::parse_snapshot_name;
use crate::store::catalog::SnapshotRecord;
use crate::store::{ChunkList, Id, Kind, Piece, Tree};
use crate::workspace::restore::{self, durable};

/// Requests at once, for objects read one by one (indexes, snapshot records, chunk lists).
const PARALLEL: usize = 16;
/// Chunked files written at once, and runs of each one's chunks read at once: with runs of up
/// to `fetch::RUN_BYTES`, at most 64 MiB in flight.
const CHUNKED_FILES: usize = 4;
const CHUNK_RUNS_AHEAD: usize = 2;

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

/// Runs `work` (file system calls, decryption) on the blocking pool, off the async threads.
async fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> Result<R, RemoteError> + Send + 'static,
) -> Result<R, RemoteError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RemoteError::Config(format!("restore: {e}")))?
}

fn local(path: &Path, e: std::io::Error) -> RemoteError {
    RemoteError::Local(crate::Error::io(path, e))
}

/// One file or symlink to write.
#[derive(Debug)]
struct Job {
    path: PathBuf,
    kind: Kind,
    mode: u32,
}

/// What writing the members of one run, or one chunked file, wrote.
#[derive(Debug, Default)]
struct Wrote {
    files: u64,
    symlinks: u64,
    bytes: u64,
}

/// Restores `snap` into `to`: a new or empty folder. What it wrote is durable when it returns.
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
    let locs = fetch::locations(conn, key, PARALLEL).await?;
    let located = started.elapsed();
    let f = Fetcher::new(conn, key, &locs);
    // Everything is written in a private folder inside `to`, whose entries are moved out at
    // the end: a restore that fails (a damaged object, a full disk) leaves `to` as it was.
    let staging = restore::tmp_name(&to.join("restore"));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| local(&staging, e))?;
    let mut summary = Summary {
        dirs: 1,
        ..Summary::default()
    };
    let filled = fill(conn, &f, &staging, snap.record.root, &mut summary).await;
    let finished = match filled {
        Ok(done) => {
            let (from, into) = (staging.clone(), to.to_path_buf());
            blocking(move || {
                restore::move_children(&from, &into)
                    .and_then(|()| fs::remove_dir(&from).map_err(|e| crate::Error::io(&from, e)))
                    .map_err(RemoteError::Local)
            })
            .await
            .map(|()| done)
        }
        Err(e) => Err(e),
    };
    let (dir_modes, whole) = match finished {
        Ok(done) => done,
        Err(e) => {
            let gone = staging.clone();
            let removed =
                blocking(move || fs::remove_dir_all(&gone).map_err(|err| local(&gone, err))).await;
            if let Err(err) = removed {
                tracing::warn!(path = %staging.display(), error = %err, "could not remove a failed remote restore's files");
            }
            return Err(e);
        }
    };
    let written = started.elapsed();
    // The folders' modes on their final paths (a folder made read-only could not have been
    // moved), then everything made durable.
    let dir_modes: Vec<(PathBuf, u32)> = dir_modes
        .into_iter()
        .filter_map(|(p, mode)| Some((to.join(p.strip_prefix(&staging).ok()?), mode)))
        .collect();
    let to_owned = to.to_path_buf();
    blocking(move || finish(&to_owned, dir_modes, whole)).await?;
    summary.fetched = f.fetched();
    summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::debug!(
        to = %to.display(),
        files = summary.files,
        fetched = summary.fetched,
        indexes_ms = located.as_millis() as u64,
        write_ms = written.as_millis() as u64,
        sync_ms = (started.elapsed() - written).as_millis() as u64,
        whole_fs_sync = whole,
        "restored from a remote"
    );
    Ok(summary)
}

/// Writes the tree `root` into `dir`, counting what it wrote into `summary`. Returns the
/// folders with their modes (not yet set) and whether one `syncfs` is to make it durable.
async fn fill(
    conn: &Connection,
    f: &Fetcher<'_>,
    dir: &Path,
    root: Id,
    summary: &mut Summary,
) -> Result<(Vec<(PathBuf, u32)>, bool), RemoteError> {
    let t = Instant::now();
    let (dir_modes, single, chunked) = walk(f, dir, root, summary).await?;
    tracing::debug!(
        ms = t.elapsed().as_millis() as u64,
        dirs = dir_modes.len(),
        fetched = f.fetched(),
        "remote restore: the trees read and the folders made"
    );
    // Many files on a local file system: one `syncfs` at the end; else an fsync of each.
    let whole = durable::whole_fs_sync(dir, single.len() + chunked.len());
    // Files and symlinks held in one object: read a run at a time, opened and written on the
    // blocking pool.
    let wrote: Vec<Wrote> = futures::stream::iter(fetch::plan(single, fetch::GAP))
        .map(|run| async move {
            let fetched = f.run(&run).await?;
            let key = f.key().clone();
            let conn = conn.clone();
            blocking(move || write_run(&conn, &key, &fetched, run, whole)).await
        })
        .buffer_unordered(RUNS_AHEAD)
        .try_collect()
        .await?;
    // Chunked files stream chunk by chunk.
    let wrote_chunked: Vec<Wrote> = futures::stream::iter(chunked)
        .map(|(id, job)| chunked_file(f, id, job, whole))
        .buffer_unordered(CHUNKED_FILES)
        .try_collect()
        .await?;
    for w in wrote.iter().chain(&wrote_chunked) {
        summary.files += w.files;
        summary.symlinks += w.symlinks;
        summary.bytes += w.bytes;
    }
    Ok((dir_modes, whole))
}

/// Runs of one-object files fetched at once (each up to `fetch::RUN_BYTES`).
const RUNS_AHEAD: usize = 6;

/// Folders with their modes, files held in one object (by pack location), chunked files.
type Walked = (
    Vec<(PathBuf, u32)>,
    Vec<(Arc<str>, IndexEntry, Job)>,
    Vec<(Id, Job)>,
);

/// Walks the snapshot's trees a level at a time, each level's trees read in runs, making the
/// folders as it goes.
async fn walk(
    f: &Fetcher<'_>,
    to: &Path,
    root: Id,
    summary: &mut Summary,
) -> Result<Walked, RemoteError> {
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut single = Vec::new();
    let mut chunked = Vec::new();
    let mut level: Vec<(PathBuf, Id)> = vec![(to.to_path_buf(), root)];
    while !level.is_empty() {
        let trees = trees(f, level).await?;
        level = Vec::new();
        let made = dir_modes.len();
        for (dir, tree) in trees {
            for e in tree.entries {
                let path = dir.join(OsStr::from_bytes(&e.name));
                match e.kind {
                    Kind::Dir => {
                        summary.dirs += 1;
                        dir_modes.push((path.clone(), e.mode));
                        level.push((path, e.id));
                    }
                    Kind::File | Kind::Symlink => {
                        let job = Job {
                            path,
                            kind: e.kind,
                            mode: e.mode,
                        };
                        let (pack, entry) = f.entry(&e.id, None)?;
                        match entry.kind {
                            KIND_CHUNKS if e.kind == Kind::File => chunked.push((e.id, job)),
                            KIND_BLOB => single.push((pack.clone(), *entry, job)),
                            _ => {
                                return Err(
                                    f.damaged(format!("object {} is of the wrong kind", e.id))
                                );
                            }
                        }
                    }
                }
            }
        }
        // This level's folders, before the next level's trees name what goes in them.
        let new: Vec<PathBuf> = dir_modes[made..].iter().map(|(p, _)| p.clone()).collect();
        blocking(move || {
            new.iter()
                .try_for_each(|p| fs::create_dir(p).map_err(|err| local(p, err)))
        })
        .await?;
    }
    Ok((dir_modes, single, chunked))
}

/// The trees of one level, read in runs; a split tree's parts are read next and joined.
async fn trees<T: Send + 'static>(
    f: &Fetcher<'_>,
    level: Vec<(T, Id)>,
) -> Result<Vec<(T, Tree)>, RemoteError> {
    let decoded = objects(f, level, KIND_TREE, |id, bytes| {
        Tree::decode(&bytes).map_err(|e| format!("tree {id}: {e}"))
    })
    .await?;
    let mut whole = Vec::with_capacity(decoded.len());
    let mut split = Vec::new();
    for (i, (t, tree)) in decoded.into_iter().enumerate() {
        if tree.is_split() {
            split.push((i, t, tree));
        } else {
            whole.push((t, tree));
        }
    }
    if split.is_empty() {
        return Ok(whole);
    }
    let parts: Vec<((usize, usize), Id)> = split
        .iter()
        .enumerate()
        .flat_map(|(s, (_, _, tree))| {
            tree.entries
                .iter()
                .enumerate()
                .map(move |(p, e)| ((s, p), e.id))
        })
        .collect();
    let mut parts = objects(f, parts, KIND_TREE, |id, bytes| {
        let p = Tree::decode(&bytes).map_err(|e| format!("tree {id}: {e}"))?;
        if p.is_split() {
            return Err(format!("tree {id} is a split part"));
        }
        Ok(p)
    })
    .await?;
    parts.sort_by_key(|(at, _)| *at);
    let mut joined: Vec<Tree> = split
        .iter()
        .map(|_| Tree {
            entries: Vec::new(),
        })
        .collect();
    for ((s, _), p) in parts {
        joined[s].entries.extend(p.entries);
    }
    whole.extend(
        split
            .into_iter()
            .zip(joined)
            .map(|((_, t, _), tree)| (t, tree)),
    );
    Ok(whole)
}

/// The objects `wanted` names (all of `kind`), read in runs and each turned into what `decode`
/// makes of it; in no particular order.
async fn objects<T: Send + 'static, D: Send + 'static>(
    f: &Fetcher<'_>,
    wanted: Vec<(T, Id)>,
    kind: u8,
    decode: impl Fn(&Id, Vec<u8>) -> Result<D, String> + Copy + Send + 'static,
) -> Result<Vec<(T, D)>, RemoteError> {
    let mut located = Vec::with_capacity(wanted.len());
    for (t, id) in wanted {
        let (pack, e) = f.entry(&id, Some(kind))?;
        located.push((pack.clone(), *e, t));
    }
    let per_run: Vec<Vec<(T, D)>> = futures::stream::iter(fetch::plan(located, fetch::TREE_GAP))
        .map(|run| async move {
            let fetched = f.run(&run).await?;
            let (key, conn) = (f.key().clone(), f.connection().clone());
            blocking(move || {
                run.members
                    .into_iter()
                    .map(|(e, t)| {
                        let data = fetched.open(&key, &e).map_err(|m| conn.damaged(m))?;
                        Ok((t, decode(&e.id, data).map_err(|m| conn.damaged(m))?))
                    })
                    .collect::<Result<Vec<_>, RemoteError>>()
            })
            .await
        })
        .buffer_unordered(RUNS_AHEAD)
        .try_collect()
        .await?;
    Ok(per_run.into_iter().flatten().collect())
}

/// Opens and writes every member of a fetched run (on the blocking pool), on all cores: opening
/// (decrypting, decompressing, checking) and creating files cost CPU, and a run may hold
/// thousands of small files.
fn write_run(
    conn: &Connection,
    key: &Key,
    fetched: &fetch::Fetched,
    run: fetch::Run<Job>,
    whole: bool,
) -> Result<Wrote, RemoteError> {
    use rayon::prelude::*;
    run.members
        .into_par_iter()
        .map(|(e, job)| {
            let data = fetched.open(key, &e).map_err(|m| conn.damaged(m))?;
            if job.kind == Kind::Symlink {
                std::os::unix::fs::symlink(OsStr::from_bytes(&data), &job.path)
                    .map_err(|e| local(&job.path, e))?;
                return Ok(Wrote {
                    symlinks: 1,
                    ..Wrote::default()
                });
            }
            let mut file = create(&job.path)?;
            file.write_all(&data).map_err(|e| local(&job.path, e))?;
            settle(&file, &job, whole)?;
            Ok(Wrote {
                files: 1,
                symlinks: 0,
                bytes: data.len() as u64,
            })
        })
        .try_reduce(Wrote::default, |a, b| {
            Ok(Wrote {
                files: a.files + b.files,
                symlinks: a.symlinks + b.symlinks,
                bytes: a.bytes + b.bytes,
            })
        })
}

/// Gives a written file its mode, and starts its writeback (for the `syncfs` at the end) or
/// fsyncs it.
fn settle(file: &fs::File, job: &Job, whole: bool) -> Result<(), RemoteError> {
    file.set_permissions(fs::Permissions::from_mode(job.mode & 0o7777))
        .map_err(|e| local(&job.path, e))?;
    if whole {
        durable::start_writeback(file);
        Ok(())
    } else {
        file.sync_all().map_err(|e| local(&job.path, e))
    }
}

fn create(path: &Path) -> Result<fs::File, RemoteError> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| local(path, e))
}

/// A chunked file, its chunks read in runs as the file's other objects are (a chunk repeated,
/// as a run of zeros often is, is read once per run), `CHUNK_RUNS_AHEAD` runs at once: a large
/// file streams.
async fn chunked_file(
    f: &Fetcher<'_>,
    id: Id,
    job: Job,
    whole: bool,
) -> Result<Wrote, RemoteError> {
    let list = ChunkList::decode(&f.object(&id, KIND_CHUNKS).await?)
        .map_err(|m| f.damaged(format!("chunk list {id}: {m}")))?;
    let mut at = 0u64;
    let mut located = Vec::new();
    for piece in &list.pieces {
        if let Piece::Data { id: chunk, len } = *piece {
            let (pack, e) = f.entry(&chunk, Some(KIND_BLOB))?;
            located.push((pack.clone(), *e, (at, len)));
        }
        at += piece.len();
    }
    let job = Arc::new(job);
    let file = {
        let job = job.clone();
        Arc::new(blocking(move || create(&job.path)).await?)
    };
    let mut runs = futures::stream::iter(fetch::plan(located, fetch::GAP))
        .map(|run| async move {
            let fetched = f.run(&run).await?;
            Ok::<_, RemoteError>((fetched, run))
        })
        .buffer_unordered(CHUNK_RUNS_AHEAD);
    while let Some(next) = runs.next().await {
        let (fetched, run) = next?;
        let (key, conn) = (f.key().clone(), f.connection().clone());
        let (file, job) = (file.clone(), job.clone());
        // Opening and writing a run's chunks (up to `fetch::RUN_BYTES`) off the async threads.
        blocking(move || {
            for (e, (offset, len)) in run.members {
                let data = fetched.open(&key, &e).map_err(|m| conn.damaged(m))?;
                if data.len() as u64 != len {
                    return Err(conn.damaged(format!("chunk {} has the wrong length", e.id)));
                }
                file.write_all_at(&data, offset)
                    .map_err(|e| local(&job.path, e))?;
            }
            Ok(())
        })
        .await?;
    }
    // Holes at the end are set by the length.
    blocking(move || {
        file.set_len(at).map_err(|e| local(&job.path, e))?;
        settle(&file, &job, whole)
    })
    .await?;
    Ok(Wrote {
        files: 1,
        symlinks: 0,
        bytes: at,
    })
}

/// Sets the folders' modes (deepest first: a folder made read-only must not stop the ones
/// inside it), then makes the restore durable: one `syncfs` when `whole`, else an fsync of
/// every folder (each file was fsynced as it was written).
fn finish(to: &Path, mut dir_modes: Vec<(PathBuf, u32)>, whole: bool) -> Result<(), RemoteError> {
    dir_modes.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, mode) in &dir_modes {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| local(path, e))?;
    }
    if whole {
        return durable::sync_fs(to).map_err(RemoteError::Local);
    }
    let mut dirs: Vec<&Path> = dir_modes.iter().map(|(p, _)| p.as_path()).collect();
    dirs.push(to);
    dirs.extend(to.parent());
    durable::sync_paths(&dirs).map_err(RemoteError::Local)
}
