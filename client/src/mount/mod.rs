//! `chkptctl mount DIR`: every snapshot as a read-only folder, `DIR/<workspace>/<time>-<id>/`,
//! with a `latest` link per workspace. A FUSE file system (`fuser`, Linux only) whose files
//! stream from the daemon over gRPC, so `grep -r`, editors and `diff -r` work on any past state
//! without restoring it. It stays mounted until Ctrl-C, SIGTERM or `fusermount3 -u DIR`.
//!
//! # Layout
//! - `tree`: inodes and the daemon's answers, cached (independent of FUSE).
//! - `fs`: the `fuser` file system over it.

mod fs;
mod tree;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::connect::{Client, Error};

/// Unmounts `dir` even while something still uses it (the mount goes once that lets go).
fn lazy_unmount(dir: &Path) {
    let _ = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(dir)
        .status();
}

/// Mounts every snapshot at `dir` and serves it until a signal or an unmount.
pub async fn run(client: Client, dir: &Path) -> Result<(), Error> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| Error::io(format!("use {} as the mount point", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let dir: PathBuf = dir
        .canonicalize()
        .map_err(|e| Error::io(format!("resolve {}", dir.display()), e))?;
    // Unreadable mountinfo: fuser's own mount then says what is wrong.
    if let Some(fstype) = chkpt_mountinfo::mounted_at(&dir)
        .ok()
        .flatten()
        .map(|m| m.fs_type)
    {
        return Err(Error::Failed(format!(
            "{} is already a mount point ({fstype}); unmount it first (`fusermount3 -u {}`) \
             or pick another folder",
            dir.display(),
            dir.display()
        )));
    }
    // Fail now, not at the first `ls`, when the daemon is not there.
    client.clone().list_workspaces().await?;
    let fs = fs::ChkptFs::new(tokio::runtime::Handle::current(), client);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("chkpt".into()),
        fuser::MountOption::Subtype("chkpt".into()),
        fuser::MountOption::RO,
        fuser::MountOption::DefaultPermissions,
    ];
    config.n_threads = Some(4);
    let session = fuser::spawn_mount(fs, &dir, &config).map_err(|e| {
        Error::io(
            format!(
                "mount a FUSE file system at {} (is /dev/fuse there, and fusermount3?)",
                dir.display()
            ),
            e,
        )
    })?;
    eprintln!(
        "every snapshot is mounted read-only at {}; Ctrl-C, SIGTERM or `fusermount3 -u {}` unmounts",
        dir.display(),
        dir.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("wait for SIGTERM", e))?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                if session.guard.is_finished() {
                    // Unmounted from outside (`fusermount3 -u`).
                    let res = session.join();
                    eprintln!("{} was unmounted", dir.display());
                    return res.map_err(|e| Error::io("serve the mount", e));
                }
            }
        }
    }
    let at = dir.clone();
    let res = tokio::task::spawn_blocking(move || session.umount_and_join())
        .await
        .map_err(|e| Error::Failed(format!("the unmount failed: {e}")))?;
    if let Err(e) = res {
        // Busy (a shell inside it): detach it now; it goes once nothing uses it.
        eprintln!("{} is busy ({e}); detaching it", at.display());
        lazy_unmount(&at);
    }
    eprintln!("unmounted {}", dir.display());
    Ok(())
}
