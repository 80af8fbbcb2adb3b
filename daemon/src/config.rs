//! The daemon's configuration: command line, environment, and where things live.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Default quiet period after the last change before an auto snapshot, e.g. 5s, 1m or
    /// 0.5 (seconds)
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub idle: Duration,
    /// Default longest wait after the first unsaved change, e.g. 60s, 2m or 90 (seconds)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    pub max_delay: Duration,
    /// Time between stat-walks of a workspace the kernel cannot watch (out of inotify
    /// watches), e.g. 30s or 1m; at least 1s
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    pub poll_interval: Duration,
    /// Default retention for new workspaces: keep the newest N automatic snapshots [default:
    /// no such rule]
    #[arg(long, value_name = "N", help_heading = RETENTION)]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours [default: 24, with the other
    /// built-in rules, when no retention flag is given]
    #[arg(long, value_name = "N", help_heading = RETENTION)]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days [default: 14, as above]
    #[arg(long, value_name = "N", help_heading = RETENTION)]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N weeks [default: 8, as above]
    #[arg(long, value_name = "N", help_heading = RETENTION)]
    pub keep_weekly: Option<u32>,
    /// Keep every snapshot younger than this, e.g. 90m, 2h, 3d or 3600 (seconds) [default: 1h,
    /// as above]
    #[arg(long, value_name = "DURATION", value_parser = duration_secs, help_heading = RETENTION)]
    pub keep_within: Option<u64>,
    /// Budget for the whole data directory: past it, the oldest automatic snapshots go (never
    /// manual or pinned ones, nor a workspace's newest). Bytes, or with K, M, G or T (powers
    /// of 1024); 0 = no budget [default: the smaller of 10 % of its file system and 20 GiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = STORE)]
    pub max_store_bytes: Option<u64>,
    /// Free space on the data directory's disk below which automatic snapshots pause (they
    /// resume by themselves; manual saves still work). Bytes or K/M/G/T; 0 = never pause
    /// [default: the smaller of 5 % of the file system and 2 GiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = STORE)]
    pub min_free_bytes: Option<u64>,
    /// Idle time after which what saves wrote is compressed again, harder (LZ4 HC: ~20 % less
    /// room on source code, read as fast), on one thread at low priority, stepping aside for
    /// saves; e.g. 30s or 5m; 0 = never
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration, help_heading = STORE)]
    pub recompress_after: Duration,
    /// Print chkptd's manual page (roff) on stdout and exit (`chkptctl man` installs it)
    #[arg(long, hide = true)]
    pub man: bool,
}

/// The help heading of the retention defaults.
const RETENTION: &str = "Retention defaults for new workspaces";
/// The help heading of the store's budget and free-space floor.
const STORE: &str = "Store budget";

fn duration(text: &str) -> Result<Duration, String> {
    chkpt_proto::duration::parse(text)
}

fn duration_secs(text: &str) -> Result<u64, String> {
    chkpt_proto::duration::parse_secs(text)
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
            keep_last: self.keep_last.unwrap_or(0),
            keep_hourly: self.keep_hourly.unwrap_or(0),
            keep_daily: self.keep_daily.unwrap_or(0),
            keep_weekly: self.keep_weekly.unwrap_or(0),
            keep_within_us: self.keep_within.unwrap_or(0).saturating_mul(1_000_000),
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
