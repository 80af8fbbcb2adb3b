//! The daemon's configuration: command line, environment, and where things live.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::Parser;

/// chkptd: automatic, instant, restorable checkpoints of your workspaces.
#[derive(Debug, Clone, Parser)]
#[command(name = "chkptd", version, about)]
pub struct Config {
    /// The Unix socket to serve on [default: $XDG_RUNTIME_DIR/chkpt/chkptd.sock, or
    /// /tmp/chkpt-$UID/chkptd.sock when XDG_RUNTIME_DIR is unset].
    #[arg(long, env = "CHKPT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Where snapshots are stored [default: the platform's data directory, e.g.
    /// ~/.local/share/chkpt].
    #[arg(long, env = "CHKPT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Start watching these folders (besides those watched before).
    #[arg(long = "watch", value_name = "PATH")]
    pub watch: Vec<PathBuf>,
    /// Default quiet period, in seconds, before an auto snapshot.
    #[arg(long, default_value_t = 5.0)]
    pub idle: f64,
    /// Default longest wait, in seconds, after the first unsaved change.
    #[arg(long, default_value_t = 60.0)]
    pub max_delay: f64,
    /// Seconds between stat-walks of a workspace the kernel cannot watch (out of inotify
    /// watches).
    #[arg(long, default_value_t = 30.0)]
    pub poll_interval: f64,
    /// Default retention for new workspaces: keep the newest N automatic snapshots.
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours [default rule: 24].
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days [default rule: 14].
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the last N weeks [default rule: 8].
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep every snapshot younger than this many seconds [default rule: 3600].
    #[arg(long, default_value_t = 0)]
    pub keep_within: u64,
    /// Per-workspace budget, in bytes, for what automatic snapshots add (0 = none).
    #[arg(long, default_value_t = 0)]
    pub max_store_bytes: u64,
}

impl Config {
    /// The default retention policy (all zero rules = the built-in default rules).
    pub fn retention(&self) -> crate::retention::Policy {
        crate::retention::Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_within_us: self.keep_within.saturating_mul(1_000_000),
            max_store_bytes: self.max_store_bytes,
        }
    }

    /// The socket path to use.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(chkpt_proto::default_socket_path)
    }

    /// The data directory to use.
    pub fn data_dir(&self) -> io::Result<PathBuf> {
        match &self.data_dir {
            Some(d) => Ok(d.clone()),
            None => directories::ProjectDirs::from("", "", "chkpt")
                .map(|p| p.data_dir().to_path_buf())
                .ok_or_else(|| {
                    io::Error::other("no home directory: pass --data-dir or set CHKPT_DATA_DIR")
                }),
        }
    }
}

/// Creates the socket's directory with mode 0700, or checks that an existing one is ours and
/// private (a directory someone else made could let them replace our socket).
pub fn prepare_socket_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if !meta.is_dir() || meta.uid() != uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory owned by uid {uid}; remove it or pass --socket",
                dir.display()
            ),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
