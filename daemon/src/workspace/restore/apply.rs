//! Applying a restore plan under a directory: stage every file as a checked temporary file,
//! then remove what goes, rename the staged files into place and fix directory modes.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::ProgressFn;
use super::durable::{start_writeback, sync_fs, sync_path, sync_paths, whole_fs_sync};
use crate::error::{Error, IoContext, Result};
use crate::store::{Kind, Store};
use crate::workspace::diff::{Change, DiffEntry, Side};
use crate::workspace::now_ns;
use crate::workspace::rules::{abs, split_last};

/// What a restore wrote at a path: the inode and modification time it had once written. The
/// index records the snapshot's content for the path only while it still has both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Written {
    pub(super) ino: u64,
    pub(super) mtime_ns: i64,
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

pub(crate) fn tmp_name(target: &Path) -> PathBuf {
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
                .and_then(|_| file.metadata().at(tmp))
                .and_then(|meta| {
                    start_writeback(&file);
                    // On the open file: no second lookup of its path.
                    file.set_permissions(fs::Permissions::from_mode(side.mode))
                        .at(tmp)
                        .map(|()| meta)
                });
            // A file that could not be written whole is not left behind.
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
            Ok(Written::of(&meta))
        }
        Kind::Dir => Err(Error::Corrupt("a directory has no content to write".into())),
    }
}

/// How [`apply_plan`] writes under its base directory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
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
pub(super) fn apply_plan(
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
