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
    /// Budget for the whole data directory: past it, the oldest automatic snapshots go (never
    /// manual or pinned ones, nor a workspace's newest). Bytes, or with K, M, G or T (powers
    /// of 1024); 0 = no budget [default: the smaller of 10 % of its file system and 20 GiB].
    #[arg(long, value_parser = parse_size)]
    pub max_store_bytes: Option<u64>,
    /// Free space on the data directory's disk below which automatic snapshots pause (they
    /// resume by themselves; manual saves still work). Bytes or K/M/G/T; 0 = never pause
    /// [default: the smaller of 5 % of the file system and 2 GiB].
    #[arg(long, value_parser = parse_size)]
    pub min_free_bytes: Option<u64>,
}

/// Parses `1234`, `512K`, `64M`, `20G`, `1T` (powers of 1024; `KiB`, `MB`… accepted too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown size unit {other:?} (use K, M, G or T)")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 20G, 512M, 1048576)"))?;
    let bytes = n * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
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
            max_store_bytes: 0,
        }
    }

    /// The data directory's budget and the free-space floor.
    pub fn limits(&self) -> crate::engine::space::Limits {
        use crate::engine::space::Limit;
        let limit = |v: Option<u64>| v.map_or(Limit::Auto, Limit::Bytes);
        crate::engine::space::Limits {
            budget: limit(self.max_store_bytes),
            floor: limit(self.min_free_bytes),
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
