//! A FUSE file system that forgets what was not made durable, for power-loss tests (after
//! LazyFS, which Jepsen used on etcd and PostgreSQL).
//!
//! It passes every operation through to a backing folder, and remembers in memory what a power
//! cut would take back, following what POSIX promises and no more:
//! - file data written (or cut off) since the file's last `fsync`/`fdatasync`, at page
//!   granularity ([`PAGE`]), and a mode changed since its last `fsync`;
//! - names created, removed or renamed in a directory since that directory's last `fsync`
//!   (a new file's name is not durable until its directory is synced, even if the file is).
//!
//! [`LazyMount::power_cut`] unmounts, drops what was not durable (all of it, or a seeded choice
//! of pages, lengths and directories: [`Cut`]) and mounts again: the kernel's caches go with
//! the old mount, so only the durable state is visible. Whatever used the mount must be
//! stopped first (a test SIGKILLs the daemon under test).
//!
//! # Layout
//! - `model.rs`: the durable/live bookkeeping and the cut, independent of FUSE;
//! - `fuse.rs`: the `fuser` file system over it.
//!
//! Hard links, special files, extended attributes and `RENAME_EXCHANGE` are not offered.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let mut fs = chkpt_lazyfs::LazyMount::mount(&dir.path().join("backing"), &dir.path().join("mnt"))?;
//! std::fs::write(fs.path().join("a"), b"not synced")?;
//! fs.power_cut(chkpt_lazyfs::Cut::LoseAll)?;
//! assert!(!fs.path().join("a").exists());
//! # Ok(()) }
//! ```

mod fuse;
mod model;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use model::State;
pub use model::{Cut, CutReport, PAGE};

/// A mounted lazy file system. Dropping it unmounts (also when a test panics); if the process
/// dies, a watchdog process unmounts it (see [`LazyMount::mount`]).
#[derive(Debug)]
pub struct LazyMount {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    watchdog: Option<std::process::Child>,
}

impl LazyMount {
    /// Mounts a lazy file system over `backing` (created if missing; what it holds counts as
    /// durable) at `mountpoint` (created if missing).
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<LazyMount> {
        std::fs::create_dir_all(mountpoint)?;
        let state = Arc::new(Mutex::new(State::load_backing(backing)?));
        let mountpoint = mountpoint.canonicalize()?;
        let watchdog = spawn_watchdog(&mountpoint)?;
        let mut m = LazyMount {
            state,
            mountpoint,
            session: None,
            watchdog: Some(watchdog),
        };
        m.attach()?;
        Ok(m)
    }

    fn attach(&mut self) -> io::Result<()> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("chkpt-lazyfs".into()),
            fuser::MountOption::Subtype("lazyfs".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        let fs = fuse::LazyFs::new(self.state.clone());
        let session = fuser::spawn_mount(fs, &self.mountpoint, &config)?;
        self.session = Some(session);
        // The mount is in place once the root is no longer the bare mount point's directory.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !is_mounted(&self.mountpoint)? {
            if std::time::Instant::now() > deadline {
                return Err(io::Error::other("the lazy file system did not appear"));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }

    fn detach(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // Busy for a moment when another thread forks while this process has a file open
        // here (the child holds it until it execs): try again for a while.
        let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
            self.mountpoint.as_os_str(),
        ))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            // Put back, so that dropping still tries.
            self.session = Some(session);
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot unmount {}: {e} (is something using it?)",
                    self.mountpoint.display()
                ),
            ));
        }
        // The session ends once the kernel has let go of the mount.
        session.join()
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The power cut: unmounts, drops what was not durable as `how` says, and mounts again.
    /// Nothing may be using the mount (its unmount waits for open files to close).
    pub fn power_cut(&mut self, how: Cut) -> io::Result<CutReport> {
        self.detach()?;
        let report = fuse::lock(&self.state).cut(how)?;
        self.attach()?;
        Ok(report)
    }

    /// Makes everything durable, as a `sync` would.
    pub fn sync_all(&self) {
        fuse::lock(&self.state).sync_all();
    }

    /// Whether anything is not durable now.
    pub fn has_unsynced(&self) -> bool {
        fuse::lock(&self.state).dirty()
    }

    /// Unmounts now (dropping does it too).
    pub fn unmount(mut self) -> io::Result<()> {
        self.detach()
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        let _ = self.detach();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// A process that waits for this one to end, then aborts the FUSE connection of whatever is
/// mounted at `mountpoint` and detaches it: a test killed mid-way leaves no dead mount behind.
/// Aborting matters: a process killed while it has a file open on its own mount would wait
/// forever in `close` for an answer only it could give. One watchdog for the mount's whole
/// life (it looks the connection up when it fires), so a remount is covered too.
fn spawn_watchdog(mountpoint: &Path) -> io::Result<std::process::Child> {
    const SCRIPT: &str = r#"
pid=$1; mnt=$2
# Alive: not a zombie, and not exiting (PF_EXITING, 0x4 in the flags: a thread that waits in
# close for its own mount's answer never becomes a zombie).
alive() { [ -r /proc/$pid/stat ] && read -r _ _ st _ _ _ _ _ fl _ < /proc/$pid/stat && [ "$st" != Z ] && [ "$st" != X ] && [ $((fl & 4)) -eq 0 ]; }
# Gone only when three looks in a row say so (a look that fails for another reason must not
# abort a live mount).
gone=0
while [ $gone -lt 3 ]; do if alive; then gone=0; else gone=$((gone+1)); fi; sleep 0.2; done
[ -n "$(ls /sys/fs/fuse/connections 2>/dev/null)" ] || mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null
while read -r _ _ dev _ point _; do
  [ "$point" = "$mnt" ] && echo 1 > "/sys/fs/fuse/connections/${dev#*:}/abort" 2>/dev/null
done < /proc/self/mountinfo
umount -l "$mnt" 2>/dev/null
exit 0
"#;
    std::process::Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("lazyfs-watchdog")
        .arg(std::process::id().to_string())
        .arg(mountpoint)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
}

/// Whether a FUSE file system of ours is mounted at `path`.
fn is_mounted(path: &Path) -> io::Result<bool> {
    let want = path.to_string_lossy();
    Ok(chkpt_mountinfo::mounts()?
        .iter()
        .any(|m| m.point == want && m.source == "chkpt-lazyfs"))
}
