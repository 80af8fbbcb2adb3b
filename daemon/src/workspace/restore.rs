//! Restoring a snapshot, in place or into another directory.
//!
//! In place, a restore:
//! 1. brings the warm index up to date and compares the current tree with the snapshot's,
//!    skipping equal subtrees: only what differs is written, nothing unchanged is re-read;
//! 2. checkpoints the current state (trigger `pre-restore`) so the restore can be undone;
//! 3. stages every file to write as a temporary file in its own directory, checking each blob
//!    against its id — a corrupt blob stops the restore here, with the workspace unchanged;
//! 4. removes what the snapshot does not have (never ignored or excluded paths: they are not in
//!    either tree), renames the staged files over their targets and fixes directory modes.
//!
//! A restore never writes through a symlink: every directory on the way to a written path must
//! be a real directory inside the target.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::diff::{Change, DiffEntry, Differ, Side, lookup, normalise, validate_rel};
use super::rules::{abs, split_last};
use super::scan::{Looked, Stat};
use super::{Changes, SaveOptions, Workspace, now_ns};
use crate::error::{Error, IoContext, Result};
use crate::store::catalog::{SnapshotRecord, Trigger};
use crate::store::{Entry, Kind, Store};

/// What to restore, and how.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Only these paths (relative to the workspace); all when empty.
    pub paths: Vec<Vec<u8>>,
    /// Only report what would change.
    pub dry_run: bool,
    /// Write into this directory instead of the workspace (nothing there is deleted).
    pub to: Option<PathBuf>,
    /// Do not checkpoint the current state first (finishing an interrupted restore, whose
    /// checkpoint exists already).
    pub skip_checkpoint: bool,
    /// Roll `.git` back too, in place, when the workspace has one now (otherwise `.git` is
    /// left alone there: a restore must not rewind a living repository by surprise).
    pub include_git: bool,
    /// Restore into a `to` that holds files (checked by the engine, which refuses otherwise).
    pub force: bool,
}

/// A restore in progress: written (and fsynced) before the workspace is touched, removed when
/// the restore ends. Finding one at start-up means the daemon died mid-restore; the restore is
/// then finished (see [`Workspace::finish_interrupted_restore`]).
#[derive(Debug, Clone, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
pub struct Journal {
    /// The snapshot being restored.
    pub snapshot: u64,
    /// The checkpoint taken before it.
    pub pre_restore: Option<u64>,
    /// The paths restored (all when empty).
    pub paths: Vec<Vec<u8>>,
    /// Directories where staged temporary files may be left.
    pub dirs: Vec<Vec<u8>>,
    /// The restore rolls `.git` back too.
    pub include_git: bool,
}

/// The journal's layout before it said whether `.git` is restored (read, never written).
#[derive(Debug, Clone, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
struct JournalV1 {
    snapshot: u64,
    pre_restore: Option<u64>,
    paths: Vec<Vec<u8>>,
    dirs: Vec<Vec<u8>>,
}

/// What a journal written since it has a layout version starts with.
const JOURNAL_MAGIC: &[u8; 4] = b"CJ\x02\x00";

fn journal_path(store: &Store, ws: u64) -> PathBuf {
    store
        .dir()
        .join("journal")
        .join(format!("{ws:016x}.restore"))
}

fn write_journal(store: &Store, ws: u64, j: &Journal) -> Result<()> {
    let path = journal_path(store, ws);
    let dir = store.dir().join("journal");
    if !dir.is_dir() {
        fs::create_dir_all(&dir).at(&dir)?;
        // The journal's own fsyncs below count only once its folder's name is durable.
        sync_path(store.dir())?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).at(&tmp)?;
    f.write_all(&[JOURNAL_MAGIC.as_slice(), &bitcode::encode(j)].concat())
        .at(&tmp)?;
    f.sync_all().at(&tmp)?;
    fs::rename(&tmp, &path).at(&path)?;
    fs::File::open(&dir).and_then(|d| d.sync_all()).at(&dir)?;
    Ok(())
}

/// Removes the journal, durably: one that came back after a power cut would have the next
/// start apply the snapshot again, over whatever the user did since.
fn remove_journal(store: &Store, ws: u64) {
    let path = journal_path(store, ws);
    match fs::remove_file(&path) {
        Ok(()) => {
            if let Some(dir) = path.parent()
                && let Err(e) = sync_path(dir)
            {
                tracing::warn!(journal = %path.display(), error = %e, "could not make the restore journal's removal durable");
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(journal = %path.display(), error = %e, "could not remove the restore journal")
        }
    }
}

/// fsyncs a file or directory.
fn sync_path(path: &Path) -> Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|f| f.sync_all())
        .at(path)
}

/// Files fsynced at once: an fsync mostly waits (for the disk, for the file system's journal),
/// and the file system commits many waiting fsyncs together.
const SYNC_THREADS: usize = 16;

/// Past this many files, a restore on a local file system that `syncfs` covers makes them
/// durable with one `syncfs` instead of an fsync each: on this machine's ext4 an fsync costs
/// 0.1–0.4 ms even with 16 in flight (the disk's cache is flushed each time), ~30 s for the
/// 86,000 files of the Linux tree, where one `syncfs` costs what writing them out costs.
const SYNCFS_PAST: usize = 1000;

/// Whether a restore writing `files` files under `dir` makes them durable with one `syncfs`:
/// only on local file systems that write everything (data, inodes, names) on `syncfs`. On
/// others (FUSE among them, where `syncfs` does nothing unless the server implements it)
/// every file and directory is fsynced.
fn whole_fs_sync(dir: &Path, files: usize) -> bool {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const F2FS: i64 = 0xF2F5_2010;
    if files <= SYNCFS_PAST {
        return false;
    }
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct for a valid NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    matches!(st.f_type as i64, EXT4 | XFS | BTRFS | F2FS)
}

/// `syncfs` of the file system holding `dir`.
fn sync_fs(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(dir).at(dir)?;
    // SAFETY: a valid open file descriptor.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(Error::io(dir, io::Error::last_os_error()));
    }
    Ok(())
}

/// fsyncs every path (files or directories), many at a time.
fn sync_paths(paths: &[&Path]) -> Result<()> {
    if paths.len() <= 1 {
        return paths.iter().try_for_each(|p| sync_path(p));
    }
    let next = AtomicU64::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..SYNC_THREADS.min(paths.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(p) = paths.get(i) else { break };
                    if let Err(e) = sync_path(p) {
                        failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The journal of an interrupted restore of workspace `ws`, if any.
pub fn read_journal(store: &Store, ws: u64) -> Result<Option<Journal>> {
    let path = journal_path(store, ws);
    let corrupt =
        |e: bitcode::Error| Error::Corrupt(format!("restore journal {}: {e}", path.display()));
    match fs::read(&path) {
        Ok(bytes) => match bytes.strip_prefix(JOURNAL_MAGIC.as_slice()) {
            Some(body) => bitcode::decode(body).map(Some).map_err(corrupt),
            None => bitcode::decode::<JournalV1>(&bytes)
                .map(|j| {
                    Some(Journal {
                        snapshot: j.snapshot,
                        pre_restore: j.pre_restore,
                        paths: j.paths,
                        dirs: j.dirs,
                        include_git: false,
                    })
                })
                .map_err(corrupt),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// What a restore did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreSummary {
    /// The snapshot restored.
    pub snapshot: u64,
    /// The checkpoint taken just before, for undo.
    pub pre_restore_snapshot: Option<u64>,
    /// Files and symlinks created.
    pub added: u64,
    /// Files and symlinks rewritten.
    pub modified: u64,
    /// Files and symlinks removed.
    pub deleted: u64,
    /// Files and symlinks already as in the snapshot.
    pub unchanged: u64,
    /// Paths that change (all for a dry run, else the first thousand), with how.
    pub changed_paths: Vec<(Vec<u8>, Change)>,
    /// How many paths change in all (also past the thousand).
    pub changed_total: u64,
}

/// Progress: (entries done, entries total, bytes done, bytes total).
pub type ProgressFn<'a> = dyn FnMut(u64, u64, u64, u64) + Send + 'a;

/// What a restore wrote at a path: the inode and modification time it had once written. The
/// index records the snapshot's content for the path only while it still has both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    ino: u64,
    mtime_ns: i64,
}

impl Written {
    fn of(meta: &fs::Metadata) -> Written {
        use std::os::unix::fs::MetadataExt;
        Written {
            ino: meta.ino(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        }
    }
}

struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    rel: Vec<u8>,
    written: Written,
    /// A regular file (fsynced before it is renamed into place); else a symlink, which its
    /// directory's fsync makes durable.
    file: bool,
}

/// Undoes phase-1 staging if the restore stops early.
struct Stage {
    staged: Vec<Staged>,
    created_dirs: Vec<PathBuf>,
    done: bool,
}

impl Drop for Stage {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for s in &self.staged {
            let _ = fs::remove_file(&s.tmp);
        }
        for d in self.created_dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

fn tmp_name(target: &Path) -> PathBuf {
    let n = now_ns() as u64 ^ (std::process::id() as u64) << 32;
    let salt = xxhash_rust::xxh3::xxh3_64(target.as_os_str().as_bytes()) ^ n;
    target.with_file_name(format!(".chkpt-{salt:016x}.tmp"))
}

/// Makes sure every directory from `base` down to `dir` exists as a real directory (never a
/// symlink), creating what is missing. Returns false when something that is not a directory is
/// in the way (the caller defers until it is removed): a file, or a symlink the plan removes
/// (`replaced`; a folder the user replaced by a link comes back as a folder, and the link is
/// never followed). Any other symlink on the way is refused.
fn ensure_dirs(
    base: &Path,
    rel_dir: &[u8],
    replaced: &HashSet<&[u8]>,
    verified: &mut HashSet<Vec<u8>>,
    created: &mut Vec<PathBuf>,
) -> Result<bool> {
    let mut prefix: Vec<u8> = Vec::new();
    for c in rel_dir.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(c);
        if verified.contains(&prefix) {
            continue;
        }
        let path = abs(base, &prefix);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() && replaced.contains(prefix.as_slice()) => {
                return Ok(false);
            }
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::FailedPrecondition(format!(
                    "refusing to restore through the symlink {}: it could lead outside the target",
                    path.display()
                )));
            }
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&path).at(&path)?;
                created.push(path);
            }
            Err(e) => return Err(Error::io(&path, e)),
        }
        verified.insert(prefix.clone());
    }
    Ok(true)
}

/// Writes an entry's content to `tmp` (a new file or symlink), checked against its id. Returns
/// what it wrote.
fn write_tmp(store: &Store, side: &Side, tmp: &Path) -> Result<Written> {
    match side.kind {
        Kind::Symlink => {
            let target = store.read_vec(&side.id)?;
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), tmp).at(tmp)?;
            Ok(Written::of(&fs::symlink_metadata(tmp).at(tmp)?))
        }
        Kind::File => {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(tmp)
                .at(tmp)?;
            // Chunked files come chunk by chunk, their holes left as holes.
            let res = store
                .read_to_file(&side.id, &file)
                .and_then(|_| file.metadata().at(tmp));
            let meta = match res {
                Ok(m) => m,
                Err(e) => {
                    let _ = fs::remove_file(tmp);
                    return Err(match e {
                        Error::Io { source, .. } => Error::io(tmp, source),
                        other => other,
                    });
                }
            };
            fs::set_permissions(tmp, fs::Permissions::from_mode(side.mode)).at(tmp)?;
            Ok(Written::of(&meta))
        }
        Kind::Dir => Err(Error::Corrupt("a directory has no content to write".into())),
    }
}

/// How [`apply_plan`] writes under its base directory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The workspace: files are staged as temp files, then what goes is deleted and the
    /// rest renamed into place.
    InPlace,
    /// A directory that may hold files: staged, then renamed into place.
    Staged,
    /// A directory this restore created for itself: files are written under their final
    /// names (created, never replaced).
    Direct,
}

/// Restores the entries of `plan` under `base`: stage, then apply.
/// What it wrote goes into `written` (by path relative to `base`), also when it fails later.
fn apply_plan(
    store: &Store,
    base: &Path,
    plan: &[DiffEntry],
    mode: Mode,
    progress: &mut ProgressFn<'_>,
    written: &mut HashMap<Vec<u8>, Written>,
    touched: &mut bool,
) -> Result<()> {
    let total = plan.len() as u64;
    let total_bytes: u64 = plan
        .iter()
        .filter_map(|e| e.after.as_ref())
        .filter(|s| s.kind != Kind::Dir)
        .map(|s| s.size)
        .sum();
    let mut verified = HashSet::new();
    // Symlinks the plan removes (only in place: elsewhere nothing is removed), where it then
    // makes a directory.
    let replaced: HashSet<&[u8]> = if mode == Mode::InPlace {
        plan.iter()
            .filter(|e| e.before.as_ref().is_some_and(|b| b.kind == Kind::Symlink))
            .filter(|e| e.after.as_ref().is_some_and(|a| a.kind == Kind::Dir))
            .map(|e| e.path.as_slice())
            .collect()
    } else {
        HashSet::new()
    };
    let mut stage = Stage {
        staged: Vec::new(),
        created_dirs: Vec::new(),
        done: false,
    };
    let mut deferred: Vec<&DiffEntry> = Vec::new();
    // Phase 1: stage every file and symlink; nothing the user has is touched yet. Directories
    // are made first, one by one (each checked not to be a symlink); the files then in parallel.
    let mut to_stage: Vec<(&DiffEntry, &Side)> = Vec::new();
    for e in plan {
        let Some(after) = e.after.as_ref().filter(|s| s.kind != Kind::Dir) else {
            continue;
        };
        let (parent, _) = split_last(&e.path);
        if ensure_dirs(
            base,
            parent,
            &replaced,
            &mut verified,
            &mut stage.created_dirs,
        )? {
            to_stage.push((e, after));
        } else {
            // A file stands where a parent directory goes; it is removed in phase 2. Check the
            // content now so a corrupt blob still stops the restore before any change.
            store.read_into(&after.id, &mut io::sink())?;
            deferred.push(e);
        }
    }
    let done = AtomicU64::new(0);
    let done_bytes = AtomicU64::new(0);
    let progress_lock = Mutex::new(&mut *progress);
    let staged: Vec<Result<Staged>> = to_stage
        .par_iter()
        .map(|(e, after)| {
            let target = abs(base, &e.path);
            let tmp = if mode == Mode::Direct {
                target.clone()
            } else {
                tmp_name(&target)
            };
            let w = write_tmp(store, after, &tmp)?;
            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
            let b = done_bytes.fetch_add(after.size, Ordering::Relaxed) + after.size;
            if let Ok(mut p) = progress_lock.try_lock() {
                p(d, total, b, total_bytes);
            }
            Ok(Staged {
                tmp,
                target,
                rel: e.path.clone(),
                written: w,
                file: after.kind == Kind::File,
            })
        })
        .collect();
    let mut first_error = None;
    for s in staged {
        match s {
            Ok(s) => stage.staged.push(s),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e); // `stage` removes what was staged
    }
    // Durable before any is renamed into place: a power cut after a rename must not leave an
    // empty or partly written file under a user's name.
    let files: Vec<&Path> = stage
        .staged
        .iter()
        .filter(|s| s.file)
        .map(|s| s.tmp.as_path())
        .collect();
    let whole = whole_fs_sync(base, files.len());
    if !whole {
        sync_paths(&files)?;
    }
    // Every directory whose entries this restore changes.
    let mut touched_dirs: std::collections::BTreeSet<PathBuf> = plan
        .iter()
        .map(|e| abs(base, split_last(&e.path).0))
        .collect();
    touched_dirs.insert(base.to_path_buf());
    let (mut done, mut done_bytes) = (done.into_inner(), done_bytes.into_inner());
    *touched = true;
    // Phase 2: remove what goes (deepest first), create directories, rename files into place.
    if mode == Mode::InPlace {
        let mut removals: Vec<&DiffEntry> = plan
            .iter()
            .filter(|e| {
                e.before.is_some()
                    && (e.change == Change::Deleted || e.change == Change::TypeChanged)
            })
            .collect();
        removals.sort_by(|a, b| b.path.cmp(&a.path));
        for e in removals {
            let path = abs(base, &e.path);
            let res = match e.before.as_ref().map(|s| s.kind) {
                Some(Kind::Dir) => fs::remove_dir(&path),
                _ => fs::remove_file(&path),
            };
            match res {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) if err.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    let held: Vec<String> = fs::read_dir(&path)
                        .map(|d| {
                            d.flatten()
                                .take(3)
                                .map(|e| e.file_name().to_string_lossy().into_owned())
                                .collect()
                        })
                        .unwrap_or_default();
                    tracing::warn!(path = %path.display(), ?held, "directory kept: it holds ignored or excluded files");
                }
                Err(err) => return Err(Error::io(&path, err)),
            }
            done += 1;
            progress(done, total, done_bytes, total_bytes);
        }
    }
    let mut dirs: Vec<&DiffEntry> = plan
        .iter()
        .filter(|e| e.after.as_ref().is_some_and(|s| s.kind == Kind::Dir))
        .collect();
    dirs.sort_by(|a, b| a.path.cmp(&b.path));
    for e in &dirs {
        ensure_dirs(
            base,
            &e.path,
            &replaced,
            &mut verified,
            &mut stage.created_dirs,
        )?;
    }
    stage
        .staged
        .par_iter()
        .filter(|s| s.tmp != s.target)
        .try_for_each(|s| fs::rename(&s.tmp, &s.target).at(&s.target))?;
    stage.done = true;
    written.extend(stage.staged.iter().map(|s| (s.rel.clone(), s.written)));
    for e in deferred {
        let Some(after) = e.after.as_ref() else {
            continue;
        };
        let (parent, _) = split_last(&e.path);
        if !ensure_dirs(base, parent, &replaced, &mut verified, &mut Vec::new())? {
            return Err(Error::FailedPrecondition(format!(
                "cannot restore {}: a file is in the way of its directory",
                abs(base, &e.path).display()
            )));
        }
        let target = abs(base, &e.path);
        let tmp = tmp_name(&target);
        let w = write_tmp(store, after, &tmp)?;
        if after.kind == Kind::File {
            sync_path(&tmp)?;
        }
        fs::rename(&tmp, &target).at(&target)?;
        written.insert(e.path.clone(), w);
        done += 1;
        done_bytes += after.size;
        progress(done, total, done_bytes, total_bytes);
    }
    // Directory modes last (a read-only directory would refuse the writes above).
    for e in dirs.iter().rev() {
        if let Some(after) = &e.after {
            let path = abs(base, &e.path);
            fs::set_permissions(&path, fs::Permissions::from_mode(after.mode)).at(&path)?;
            touched_dirs.insert(path);
        }
    }
    // Then the directories: the renames, removals and new names above, and new directories'
    // own names in their parents, are durable before the restore is acknowledged.
    for d in &stage.created_dirs {
        touched_dirs.insert(d.clone());
        if let Some(parent) = d.parent() {
            touched_dirs.insert(parent.to_path_buf());
        }
    }
    if whole {
        // Files, names and modes at once (before the restore is acknowledged; a power cut
        // before it leaves what the journal finishes, or a `--to` never acknowledged).
        return sync_fs(base);
    }
    // A directory the plan removed is no longer there to sync (its parent is), nor one a
    // symlink now stands for.
    touched_dirs.retain(|d| fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()));
    let dirs: Vec<&Path> = touched_dirs.iter().map(PathBuf::as_path).collect();
    sync_paths(&dirs)?;
    Ok(())
}

/// Entries of `root` under each of `paths` (all when empty) compared with `current`.
fn plan_for(
    store: &Store,
    current: Option<crate::store::Id>,
    snapshot: &SnapshotRecord,
    paths: &[Vec<u8>],
) -> Result<Vec<DiffEntry>> {
    let target = snapshot.root;
    let mut d = Differ::new(store, true);
    if paths.is_empty() {
        d.trees(b"", current, Some(target))?;
        Ok(d.finish())
    } else {
        let mut seen = HashSet::new();
        for p in paths {
            validate_rel(p)?;
            let p = normalise(p);
            if !seen.insert(p.clone()) {
                continue;
            }
            let new: Option<Entry> = lookup(store, target, &p)?;
            let old: Option<Entry> = match current {
                Some(c) => lookup(store, c, &p)?,
                None => None,
            };
            if new.is_none() && old.is_none() {
                return Err(Error::PathNotInSnapshot {
                    path: String::from_utf8_lossy(&p).into_owned(),
                    snapshot: snapshot.hex_id(),
                    nearest: super::diff::nearest_path(store, target, &p),
                    // Filled in by `Workspace::restore`, which knows it.
                    workspace: String::new(),
                });
            }
            d.entries(&p, old.as_ref(), new.as_ref())?;
        }
        // Overlapping paths (`src` and `src/a`) list entries twice.
        let mut plan = d.finish();
        plan.sort_by(|a, b| a.path.cmp(&b.path));
        plan.dedup_by(|a, b| a.path == b.path);
        Ok(plan)
    }
}

/// The folders on the way to the plan's paths that are symlinks on disk.
fn symlinked_parents(root: &Path, plan: &[DiffEntry]) -> Vec<Vec<u8>> {
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut linked = Vec::new();
    for e in plan {
        let mut parent = split_last(&e.path).0;
        while !parent.is_empty() && seen.insert(parent) {
            if fs::symlink_metadata(abs(root, parent)).is_ok_and(|m| m.is_symlink()) {
                linked.push(parent.to_vec());
            }
            parent = split_last(parent).0;
        }
    }
    linked
}

/// Moves every entry of `from` into `to`, never replacing anything there.
fn move_children(from: &Path, to: &Path) -> Result<()> {
    for entry in fs::read_dir(from).at(from)? {
        let name = entry.at(from)?.file_name();
        let (src, dst) = (from.join(&name), to.join(&name));
        rename_noreplace(&src, &dst).at(&dst)?;
    }
    Ok(())
}

/// `rename` that fails with `EEXIST` instead of replacing an existing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let cstr = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
    };
    let (from, to) = (cstr(from)?, cstr(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn summarise(
    snapshot: &SnapshotRecord,
    plan: &[DiffEntry],
    in_scope_files: u64,
    all_paths: bool,
) -> RestoreSummary {
    let mut s = RestoreSummary {
        snapshot: snapshot.id,
        ..Default::default()
    };
    for e in plan {
        let leaf = |side: &Option<Side>| side.as_ref().is_some_and(|s| s.kind != Kind::Dir);
        match e.change {
            Change::Added if leaf(&e.after) => s.added += 1,
            Change::Deleted if leaf(&e.before) => s.deleted += 1,
            Change::Modified if leaf(&e.after) => s.modified += 1,
            Change::TypeChanged => {
                if leaf(&e.after) {
                    s.modified += 1;
                } else if leaf(&e.before) {
                    s.deleted += 1;
                }
            }
            _ => {}
        }
        s.changed_total += 1;
        if all_paths || s.changed_paths.len() < 1000 {
            s.changed_paths.push((e.path.clone(), e.change));
        }
    }
    s.unchanged = in_scope_files.saturating_sub(s.added + s.modified);
    s
}

fn files_in(
    store: &Store,
    root: crate::store::Id,
    paths: &[Vec<u8>],
    snapshot: &SnapshotRecord,
) -> Result<u64> {
    if paths.is_empty() {
        return Ok(snapshot.files);
    }
    let mut n = 0;
    for p in paths {
        match lookup(store, root, &normalise(p))? {
            Some(e) if e.kind == Kind::Dir => {
                n += super::diff::diff(store, None, Some(e.id))?.len() as u64;
            }
            Some(_) => n += 1,
            None => {}
        }
    }
    Ok(n)
}

impl Workspace {
    /// Restores `snapshot`. In place, the current state is checkpointed first (unless nothing
    /// would change), so the restore can be undone.
    pub fn restore(
        &mut self,
        store: &Store,
        snapshot: &SnapshotRecord,
        opts: &RestoreOptions,
        changes: &Changes,
        progress: &mut ProgressFn<'_>,
    ) -> Result<RestoreSummary> {
        self.recovering(store, |ws| {
            ws.restore_or_fail(store, snapshot, opts, changes, progress)
        })
        .map_err(|e| match e {
            Error::PathNotInSnapshot {
                path,
                snapshot,
                nearest,
                workspace,
            } if workspace.is_empty() => Error::PathNotInSnapshot {
                path,
                snapshot,
                nearest,
                workspace: self.root.display().to_string(),
            },
            e => e,
        })
    }

    fn restore_or_fail(
        &mut self,
        store: &Store,
        snapshot: &SnapshotRecord,
        opts: &RestoreOptions,
        changes: &Changes,
        progress: &mut ProgressFn<'_>,
    ) -> Result<RestoreSummary> {
        if snapshot.workspace != self.record.id {
            return Err(Error::InvalidArgument(
                "that snapshot belongs to another workspace".into(),
            ));
        }
        for p in &opts.paths {
            validate_rel(p)?;
        }
        let in_scope = files_in(store, snapshot.root, &opts.paths, snapshot)?;
        if let Some(to) = &opts.to {
            return self.restore_to(store, snapshot, opts, to, in_scope, progress);
        }
        let batch = store.batch();
        let mut warnings = self.refresh(&batch, changes)?;
        let mut current = self.root_tree(&batch)?;
        let mut plan = plan_for(store, Some(current), snapshot, &opts.paths)?;
        // A folder just replaced by a symlink, whose events are still on the way, is a folder
        // to the index: looked at again, it is a link the plan removes, never writes through.
        let linked = symlinked_parents(&self.root, &plan);
        if !linked.is_empty() {
            warnings.extend(self.refresh(&batch, &Changes::Paths(linked))?);
            current = self.root_tree(&batch)?;
            plan = plan_for(store, Some(current), snapshot, &opts.paths)?;
        }
        // A living repository's `.git` is rolled back only when asked, and never removed by a
        // snapshot that holds none.
        if self.root.join(".git").exists()
            && (!opts.include_git || lookup(store, snapshot.root, b".git")?.is_none())
        {
            plan.retain(|e| !super::rules::in_git_dir(&e.path));
        }
        let mut summary = summarise(snapshot, &plan, in_scope, opts.dry_run);
        if opts.dry_run || plan.is_empty() {
            batch.commit_objects()?;
            self.persist_index(store)?;
            batch.finish()?;
            return Ok(summary);
        }
        if opts.skip_checkpoint {
            batch.commit_objects()?;
            self.persist_index(store)?;
            batch.finish()?;
        } else {
            let latest = store.cat.latest(self.record.id)?;
            let mut pre_opts = SaveOptions::new(Trigger::PreRestore, Changes::Paths(Vec::new()));
            pre_opts.message = format!("before restoring {}", snapshot.hex_id());
            let pre =
                self.record_snapshot(store, &batch, current, latest.as_ref(), &pre_opts, warnings)?;
            batch.finish()?;
            summary.pre_restore_snapshot = Some(pre.id);
        }
        tracing::info!(workspace = %self.root.display(), snapshot = %snapshot.hex_id(), changes = plan.len(), "restoring");
        let mut dirs: Vec<Vec<u8>> = plan
            .iter()
            .map(|e| split_last(&e.path).0.to_vec())
            .collect();
        dirs.sort();
        dirs.dedup();
        let journal = Journal {
            snapshot: snapshot.id,
            pre_restore: summary.pre_restore_snapshot,
            paths: opts.paths.clone(),
            dirs,
            include_git: opts.include_git,
        };
        write_journal(store, self.record.id, &journal)?;

        let mut written = HashMap::new();
        let mut touched = false;
        let applied = apply_plan(
            store,
            &self.root,
            &plan,
            Mode::InPlace,
            progress,
            &mut written,
            &mut touched,
        );
        if applied.is_err() && !touched {
            // Failed before changing anything: the workspace is as the checkpoint has it, and
            // left behind, the checkpoint would be `latest`, which a retried `restore latest`
            // would then restore instead of the snapshot asked for.
            self.forget_checkpoint(store, summary.pre_restore_snapshot.take());
        }
        // Whatever happened, bring the index back in line with the disk for the paths touched.
        let noted = self.note_restored(&plan, &written);
        let touched: Vec<Vec<u8>> = plan
            .iter()
            .map(|e| e.path.clone())
            .filter(|p| !noted.contains(p))
            .collect();
        // The index, and the baseline auto saves compare with, in line with the disk.
        let settled = self
            .current_tree(store, &Changes::Paths(touched))
            .map(|root| self.baseline = Some(root));
        // Ended, well or not: a failure is reported to the caller, and the pre-restore
        // checkpoint is the way back. Left behind, the journal would have the next start
        // apply the snapshot again over whatever the user did since.
        remove_journal(store, self.record.id);
        applied?;
        settled?;
        Ok(summary)
    }

    /// Removes the checkpoint a restore took, when the restore changed nothing after all.
    fn forget_checkpoint(&mut self, store: &Store, id: Option<u64>) {
        let Some(id) = id else { return };
        let res = store
            .cat
            .snapshot(id)
            .and_then(|s| s.map_or(Ok(()), |s| store.cat.remove_snapshot(&s)))
            .and_then(|()| store.flush());
        if let Err(e) = res {
            tracing::warn!(workspace = %self.root.display(), error = %e, "could not remove the checkpoint of a restore that changed nothing");
        }
    }

    /// Finishes a restore the daemon died in (its journal is still there): removes staged
    /// temporary files it left and restores the snapshot again, which writes only what is still
    /// missing. Returns what it did, or `None` when no restore was interrupted.
    pub fn finish_interrupted_restore(&mut self, store: &Store) -> Result<Option<RestoreSummary>> {
        let Some(journal) = read_journal(store, self.record.id)? else {
            return Ok(None);
        };
        for dir in &journal.dirs {
            let path = abs(&self.root, dir);
            let Ok(entries) = fs::read_dir(&path) else {
                continue;
            };
            for e in entries.flatten() {
                if super::rules::is_own_temp(e.file_name().as_bytes()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let Some(snapshot) = store.cat.snapshot(journal.snapshot)? else {
            tracing::warn!(workspace = %self.root.display(), "an interrupted restore's snapshot is gone; nothing to finish");
            remove_journal(store, self.record.id);
            return Ok(None);
        };
        tracing::warn!(workspace = %self.root.display(), snapshot = %snapshot.hex_id(), "finishing a restore interrupted by a crash");
        let opts = RestoreOptions {
            paths: journal.paths.clone(),
            skip_checkpoint: true,
            include_git: journal.include_git,
            ..Default::default()
        };
        let mut summary = self.restore(
            store,
            &snapshot,
            &opts,
            &Changes::Full,
            &mut |_, _, _, _| {},
        )?;
        // Also when nothing was left to write (the restore had got through).
        remove_journal(store, self.record.id);
        summary.pre_restore_snapshot = journal.pre_restore;
        Ok(Some(summary))
    }

    /// Seeds the index with what a restore wrote, so the refresh after it hashes nothing: the
    /// written files' metadata is taken from disk and their ids from the plan, for each path
    /// that still holds the inode the restore wrote, unmodified since (`written`). A path
    /// edited since (even to the same size) is left to the refresh, which reads it.
    fn note_restored(
        &mut self,
        plan: &[DiffEntry],
        written: &HashMap<Vec<u8>, Written>,
    ) -> HashSet<Vec<u8>> {
        let mut noted = HashSet::new();
        for e in plan {
            let Some(after) = e.after.as_ref().filter(|s| s.kind != Kind::Dir) else {
                continue;
            };
            let Some(w) = written.get(&e.path) else {
                continue;
            };
            let path = abs(&self.root, &e.path);
            if let Ok(Looked::Stat(st)) = Stat::lstat(&path)
                && st.kind == after.kind
                && st.size == after.size
                && (st.ino, st.mtime_ns) == (w.ino, w.mtime_ns)
            {
                let racy = st.mtime_ns >= now_ns() - super::RACY_WINDOW_NS;
                self.index.insert(&e.path, st.to_meta(after.id, racy));
                noted.insert(e.path.clone());
            }
        }
        noted
    }

    fn restore_to(
        &mut self,
        store: &Store,
        snapshot: &SnapshotRecord,
        opts: &RestoreOptions,
        to: &Path,
        in_scope: u64,
        progress: &mut ProgressFn<'_>,
    ) -> Result<RestoreSummary> {
        if !to.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "--to {} must be an absolute path",
                to.display()
            )));
        }
        if to.as_os_str().as_bytes().contains(&0) {
            return Err(Error::InvalidArgument("--to contains a NUL byte".into()));
        }
        if fs::symlink_metadata(to).is_ok_and(|m| !m.is_dir()) {
            return Err(Error::InvalidArgument(format!(
                "--to {} exists and is not a directory",
                to.display()
            )));
        }
        // Folders `--to` creates: their names must be durable too.
        let created: Vec<PathBuf> = to
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && fs::symlink_metadata(a).is_err())
            .map(Path::to_path_buf)
            .collect();
        if !opts.dry_run {
            fs::create_dir_all(to).map_err(|e| match e.raw_os_error() {
                Some(libc::EEXIST | libc::ENOTDIR | libc::ENAMETOOLONG) => {
                    Error::InvalidArgument(format!("--to {}: {e}", to.display()))
                }
                _ => Error::io(to, e),
            })?;
        }
        let target = if opts.dry_run && !to.exists() {
            to.to_path_buf()
        } else {
            to.canonicalize().at(to)?
        };
        if target.starts_with(store.dir()) {
            return Err(Error::InvalidArgument(format!(
                "--to {} is inside chkpt's data directory",
                to.display()
            )));
        }
        let plan = plan_for(store, None, snapshot, &opts.paths)?;
        let summary = summarise(snapshot, &plan, in_scope, opts.dry_run);
        if opts.dry_run {
            return Ok(summary);
        }
        let sync_created = || -> Result<()> {
            for c in &created {
                if let Some(parent) = c.parent() {
                    sync_path(parent)?;
                }
            }
            Ok(())
        };
        if fs::read_dir(&target).at(&target)?.next().is_some() {
            apply_plan(
                store,
                &target,
                &plan,
                Mode::Staged,
                progress,
                &mut HashMap::new(),
                &mut false,
            )?;
            sync_created()?;
            return Ok(summary);
        }
        // Into an empty directory: everything is written under its final name inside a
        // private staging directory, whose top-level entries are then moved out (a handful of
        // renames instead of one per file). A failure, or a kill, leaves only that directory.
        let staging = tmp_name(&target.join("restore"));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .at(&staging)?;
        let res = apply_plan(
            store,
            &staging,
            &plan,
            Mode::Direct,
            progress,
            &mut HashMap::new(),
            &mut false,
        )
        .and_then(|()| move_children(&staging, &target));
        if res.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        res?;
        fs::remove_dir(&staging).at(&staging)?;
        // The moved entries' new names, and the staging directory's removal.
        let files = plan
            .iter()
            .filter(|e| e.after.as_ref().is_some_and(|a| a.kind == Kind::File))
            .count();
        if whole_fs_sync(&target, files) {
            sync_fs(&target)?;
        } else {
            sync_path(&target)?;
        }
        sync_created()?;
        Ok(summary)
    }
}
