//! `chkptctl daemon start|stop`: starting `chkptd` in the background and
//! stopping it, judged only by whether it answers `Status` on the socket.

use std::{
    fs, io,
    os::unix::{
        fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use chkpt_proto::v1::StatusResponse;
use tokio::time::{Instant, sleep, timeout};

use crate::connect::{Client, Error};

/// How long `start` waits for the new daemon to answer, and `stop` for the
/// old one to go quiet.
const WAIT: Duration = Duration::from_secs(10);

/// Pause between two `Status` probes.
const POLL: Duration = Duration::from_millis(50);

/// What `start` found or did.
#[derive(Debug)]
pub struct Started {
    /// The daemon's answer to `Status`.
    pub status: StatusResponse,
    /// False when a daemon was already answering on the socket.
    pub spawned: bool,
    /// Where the daemon's stderr goes (when spawned by `chkptctl`).
    pub log: PathBuf,
}

/// The log file of a daemon started by `chkptctl`: next to its socket.
pub fn log_path(socket: &Path) -> PathBuf {
    socket.with_file_name("chkptd.log")
}

/// Asks the daemon on `socket` for its status; `None` when nobody answers.
pub(crate) async fn probe(
    socket: &Path,
    within: Duration,
) -> Result<Option<StatusResponse>, Error> {
    let attempt = async {
        let mut client = Client::connect(socket).await?;
        client.status().await
    };
    match timeout(within, attempt).await {
        Ok(Ok(status)) => Ok(Some(status)),
        Ok(Err(Error::NotRunning { .. } | Error::ConnectionLost { .. })) | Err(_) => Ok(None),
        Ok(Err(e)) => Err(e),
    }
}

/// Starts `chkptd --socket SOCKET` in the background unless a daemon already
/// answers there, then waits until it answers `Status`.
pub async fn start(socket: &Path) -> Result<Started, Error> {
    let log = log_path(socket);
    if let Some(status) = probe(socket, WAIT).await? {
        return Ok(Started {
            status,
            spawned: false,
            log,
        });
    }
    let exe = find_chkptd()?;
    if let Some(dir) = socket.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("create the socket directory {}", dir.display()), e))?;
    }
    let log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .map_err(|e| Error::io(format!("open the daemon log {}", log.display()), e))?;
    let mut child = Command::new(&exe)
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        // Its own process group, so the terminal's Ctrl-C does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(format!("start {}", exe.display()), e))?;

    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(exit)) = child.try_wait() {
            return Err(Error::Failed(format!(
                "chkptd exited while starting ({exit}): see {}",
                log.display()
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Failed(format!(
                "chkptd (pid {}) did not answer on {} within {} s: see {}",
                child.id(),
                socket.display(),
                WAIT.as_secs(),
                log.display()
            )));
        }
        if let Some(status) = probe(socket, left).await? {
            return Ok(Started {
                status,
                spawned: true,
                log,
            });
        }
        sleep(POLL).await;
    }
}

/// Sends SIGTERM to the daemon answering on `socket` and waits until it stops
/// answering. Returns its pid, or `None` when no daemon was running.
pub async fn stop(socket: &Path) -> Result<Option<u32>, Error> {
    let Some(status) = probe(socket, WAIT).await? else {
        return Ok(None);
    };
    let pid = status.pid;
    // pid 0, 1 or negative would signal a process group or init, never the daemon.
    let target = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| {
            Error::Failed(format!(
                "chkptd reported pid {pid}, which cannot be signalled: stop it by hand"
            ))
        })?;
    // SAFETY: kill has no memory-safety preconditions; target > 1 names one process.
    if unsafe { libc::kill(target, libc::SIGTERM) } != 0 {
        let err = io::Error::last_os_error();
        // ESRCH: it is already gone; the wait below confirms it.
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(Error::io(
                format!("send SIGTERM to chkptd (pid {pid})"),
                err,
            ));
        }
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Failed(format!(
                "chkptd (pid {pid}) still answers on {} after {} s: see {}, or force it with `kill -9 {pid}`",
                socket.display(),
                WAIT.as_secs(),
                log_path(socket).display()
            )));
        }
        if probe(socket, left).await?.is_none() {
            return Ok(Some(pid));
        }
        sleep(POLL).await;
    }
}

/// `chkptd` next to the running `chkptctl`, else the first one on `PATH`.
pub(crate) fn find_chkptd() -> Result<PathBuf, Error> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("chkptd")));
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("chkptd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(on_path)
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            Error::Failed(
                "cannot find chkptd next to chkptctl or on PATH: install it or add its directory to PATH"
                    .to_owned(),
            )
        })
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sits_next_to_the_socket() {
        assert_eq!(
            log_path(Path::new("/run/user/1/chkpt/chkptd.sock")),
            PathBuf::from("/run/user/1/chkpt/chkptd.log")
        );
    }

    #[tokio::test]
    async fn stopping_when_nothing_runs_is_a_no_op() {
        let socket = std::env::temp_dir().join(format!("chkpt-none-{}.sock", std::process::id()));
        assert!(matches!(stop(&socket).await, Ok(None)));
    }
}
