//! Restoring into another directory (`--to`): nothing there is deleted, and a new or empty
//! directory is filled through a private staging directory moved out at the end.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::apply::{Mode, apply_plan, tmp_name};
use super::durable::{sync_fs, sync_path, whole_fs_sync};
use super::{ProgressFn, RestoreOptions, RestoreSummary, plan_for, summarise};
use crate::error::{Error, IoContext, Result};
use crate::store::catalog::SnapshotRecord;
use crate::store::{Kind, Store};
use crate::workspace::Workspace;

/// Moves every entry of `from` into `to`, never replacing anything there.
pub(crate) fn move_children(from: &Path, to: &Path) -> Result<()> {
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

impl Workspace {
    pub(super) fn restore_to(
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
        let started = std::time::Instant::now();
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
        let written = started.elapsed();
        let whole = whole_fs_sync(&target, files);
        if whole {
            sync_fs(&target)?;
        } else {
            sync_path(&target)?;
        }
        sync_created()?;
        tracing::debug!(
            to = %target.display(),
            files,
            write_ms = written.as_millis() as u64,
            sync_ms = (started.elapsed() - written).as_millis() as u64,
            whole_fs_sync = whole,
            "restored into an empty directory"
        );
        Ok(summary)
    }
}
