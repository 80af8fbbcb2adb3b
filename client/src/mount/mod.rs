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

/// What `/proc/self/mountinfo` says is mounted at `path`, if anything (its file system type).
fn mounted_at(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let point = unescape(fields.get(4)?);
        let dash = fields.iter().position(|f| *f == "-")?;
        (point == want).then(|| {
            fields
                .get(dash + 1)
                .map_or_else(String::new, |t| (*t).to_owned())
        })
    })
}

/// mountinfo escapes spaces and a few others as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

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
    if let Some(fstype) = mounted_at(&dir) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_found_with_escaped_names() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert!(mounted_at(Path::new("/")).is_some());
        assert_eq!(mounted_at(Path::new("/no/such/mount/point")), None);
    }
}
