//! `chkptctl service install|uninstall|status`: chkptd as a user service of the running OS's
//! service manager. On Linux that is systemd, with a socket unit (chkptd starts on the first
//! connection) and a service unit; on macOS it is launchd, with a LaunchAgent.
//!
//! The files are the repository's `systemd/` and `launchd/` templates, embedded (`files`) so that
//! there is one source of truth, with the path of the installed `chkptd` filled in.
//!
//! An install or uninstall is first a [`Plan`]: the [`Step`]s it takes, in order. `--dry-run`
//! prints the plan as a shell script; [`execute`] carries it out. Before its first command it
//! checks that the service manager is reachable, and if it is not, stops there and reports
//! which steps were done, so that the rest can be printed for the user to run by hand.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use chkpt_proto::v1::StatusResponse;
use tokio::time::{Instant, sleep};

use crate::{connect::Error, daemon};

mod files;
mod plan;

use files::UNITS;
pub use files::{Env, LABEL, Manager, render};
pub use plan::{Plan, Step, install_steps, uninstall_steps};

/// How long `install` waits for the started chkptd to answer.
const START_WAIT: Duration = Duration::from_secs(15);

/// The plan to install the `chkptd` next to this `chkptctl` (else the one on `PATH`) as a
/// service of this OS. Looks at the running daemon but changes nothing.
pub async fn install_plan() -> Result<Plan, Error> {
    let manager = Manager::current();
    let env = Env::from_process()?;
    let found = daemon::find_chkptd()?;
    let chkptd = std::path::absolute(&found)
        .map_err(|e| Error::io(format!("make {} absolute", found.display()), e))?;
    let socket = env.socket(manager);
    // A chkptd started by hand holds the store's lock, so the service could not start.
    let takeover = if service_running(manager, &env).await {
        None
    } else {
        daemon::probe(&socket, Duration::from_secs(5))
            .await?
            .map(|status| Step::StopDaemon {
                socket: socket.clone(),
                pid: status.pid,
            })
    };
    Ok(Plan {
        manager,
        steps: install_steps(manager, &env, &chkptd, takeover)?,
        socket,
        env,
    })
}

/// The plan to uninstall, or `None` when no service file exists.
pub fn uninstall_plan() -> Result<Option<Plan>, Error> {
    let manager = Manager::current();
    let env = Env::from_process()?;
    let present: Vec<PathBuf> = env
        .files(manager)
        .into_iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    if present.is_empty() {
        return Ok(None);
    }
    Ok(Some(Plan {
        manager,
        steps: uninstall_steps(manager, &env, present),
        socket: env.socket(manager),
        env,
    }))
}

/// How a plan ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every step was taken.
    Done,
    /// The service manager could not be reached; the first `done` steps were taken.
    Unreachable {
        /// What the manager's command said.
        reason: String,
        /// How many steps were taken (none of them a command of the manager).
        done: usize,
    },
}

/// Carries out `plan`, calling `on_done` after each step. A command that fails (and may not)
/// stops it with an error that says which and what it printed.
pub async fn execute(
    plan: &Plan,
    mut on_done: impl FnMut(&Step) -> Result<(), Error>,
) -> Result<Outcome, Error> {
    let mut checked = false;
    for (index, step) in plan.steps.iter().enumerate() {
        if !checked && matches!(step, Step::Run { .. }) {
            if let Err(reason) = reachable(plan.manager, &plan.env).await {
                return Ok(Outcome::Unreachable {
                    reason,
                    done: index,
                });
            }
            checked = true;
        }
        match step {
            Step::Write { path, contents } => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir)
                        .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
                }
                fs::write(path, contents)
                    .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
            }
            Step::Remove { path } => match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("remove {}", path.display()), e)),
            },
            Step::Run { argv, may_fail } => {
                let ran = command(argv)
                    .await
                    .map_err(|e| Error::io(format!("run {}", argv.join(" ")), e))?;
                if !ran.success && !may_fail {
                    return Err(Error::Failed(format!(
                        "`{}` failed{}: {}",
                        argv.join(" "),
                        ran.code.map(|c| format!(" (exit {c})")).unwrap_or_default(),
                        ran.said(),
                    )));
                }
            }
            Step::StopDaemon { socket, .. } => {
                daemon::stop(socket).await?;
            }
        }
        on_done(step)?;
    }
    Ok(Outcome::Done)
}

/// Waits until chkptd answers on `socket` (the service was just started).
pub async fn wait_until_running(socket: &Path) -> Result<Option<StatusResponse>, Error> {
    let deadline = Instant::now() + START_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        if let Some(status) = daemon::probe(socket, left).await? {
            return Ok(Some(status));
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// What a command printed and how it ended.
#[derive(Debug)]
struct Ran {
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// Its stderr (else stdout) on one line.
    fn said(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let line = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        if line.is_empty() {
            "it printed nothing".into()
        } else {
            line
        }
    }
}

async fn command(argv: &[impl AsRef<str>]) -> io::Result<Ran> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let out = tokio::process::Command::new(program.as_ref())
        .args(args.iter().map(AsRef::as_ref))
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    Ok(Ran {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Whether the manager answers; else what its command said.
async fn reachable(manager: Manager, env: &Env) -> Result<(), String> {
    let argv: Vec<String> = match manager {
        Manager::Systemd => ["systemctl", "--user", "show", "--property=Version"]
            .map(String::from)
            .to_vec(),
        Manager::Launchd => vec!["launchctl".into(), "print".into(), env.gui_domain()],
    };
    match command(&argv).await {
        Ok(ran) if ran.success => Ok(()),
        Ok(ran) => Err(format!("`{}` said: {}", argv.join(" "), ran.said())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "{} was not found (does this system run {}?)",
            argv[0],
            manager.name()
        )),
        Err(e) => Err(format!("cannot run {}: {e}", argv[0])),
    }
}

/// Whether the service manager runs chkptd now.
async fn service_running(manager: Manager, env: &Env) -> bool {
    let argv: Vec<String> = match manager {
        Manager::Systemd => ["systemctl", "--user", "is-active", "--quiet", UNITS[1]]
            .map(String::from)
            .to_vec(),
        Manager::Launchd => vec!["launchctl".into(), "print".into(), env.launchd_target()],
    };
    command(&argv).await.is_ok_and(|ran| ran.success)
}

/// A service file and how it compares with what `install` would write now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Not there.
    Missing,
    /// The same as `install` would write.
    Current,
    /// Different: written for another chkptd or by an older chkptctl.
    Differs,
    /// There, but cannot be compared (no chkptd found to render it for).
    Present,
}

impl FileState {
    /// Its name in JSON.
    pub fn key(self) -> &'static str {
        match self {
            FileState::Missing => "missing",
            FileState::Current => "current",
            FileState::Differs => "differs",
            FileState::Present => "present",
        }
    }

    /// Its description, as printed.
    pub fn name(self) -> &'static str {
        match self {
            FileState::Missing => "missing",
            FileState::Current => "installed",
            FileState::Differs => {
                "installed, differs from what `chkptctl service install` writes now"
            }
            FileState::Present => "installed",
        }
    }
}

/// What `service status` found.
#[derive(Debug)]
pub struct ServiceStatus {
    /// The service manager of this OS.
    pub manager: Manager,
    /// Each service file and its state.
    pub files: Vec<(PathBuf, FileState)>,
    /// What the manager says of each unit or job, or why it could not be asked.
    pub manager_says: Result<Vec<(String, String)>, String>,
    /// The socket the service listens on.
    pub socket: PathBuf,
    /// chkptd's answer on that socket, if it answers.
    pub daemon: Option<StatusResponse>,
    /// Where the logs are.
    pub logs: String,
}

/// Looks at the service files, asks the manager and the daemon; changes nothing (though a
/// connection to an activation socket starts chkptd, as any client's would).
pub async fn status() -> Result<ServiceStatus, Error> {
    let manager = Manager::current();
    let env = Env::from_process()?;
    let rendered = daemon::find_chkptd()
        .ok()
        .and_then(|found| std::path::absolute(found).ok())
        .and_then(|chkptd| render(manager, &env, &chkptd).ok());
    let files = env
        .files(manager)
        .into_iter()
        .enumerate()
        .map(|(i, path)| {
            let state = match (fs::read_to_string(&path), &rendered) {
                (Err(e), _) if e.kind() == io::ErrorKind::NotFound => FileState::Missing,
                (Ok(text), Some(want)) if want.get(i) == Some(&text) => FileState::Current,
                (Ok(_), Some(_)) => FileState::Differs,
                _ => FileState::Present,
            };
            (path, state)
        })
        .collect();
    let manager_says = match reachable(manager, &env).await {
        Err(reason) => Err(reason),
        Ok(()) => Ok(manager_states(manager, &env).await),
    };
    let socket = env.socket(manager);
    let daemon = daemon::probe(&socket, Duration::from_secs(5)).await?;
    Ok(ServiceStatus {
        manager,
        files,
        manager_says,
        socket,
        daemon,
        logs: env.logs(manager),
    })
}

async fn manager_states(manager: Manager, env: &Env) -> Vec<(String, String)> {
    let first_line = |ran: io::Result<Ran>| {
        ran.ok()
            .and_then(|r| r.stdout.lines().next().map(|l| l.trim().to_owned()))
            .filter(|l| !l.is_empty())
    };
    match manager {
        Manager::Systemd => {
            let mut states = Vec::new();
            for unit in UNITS {
                let enabled =
                    first_line(command(&["systemctl", "--user", "is-enabled", unit]).await)
                        .unwrap_or_else(|| "not-found".into());
                let active = first_line(command(&["systemctl", "--user", "is-active", unit]).await)
                    .unwrap_or_else(|| "unknown".into());
                states.push((unit.to_owned(), format!("{enabled}, {active}")));
            }
            states
        }
        Manager::Launchd => {
            let target = env.launchd_target();
            let state = match command(&["launchctl", "print", &target]).await {
                Ok(ran) if ran.success => {
                    let detail: Vec<&str> = ran
                        .stdout
                        .lines()
                        .map(str::trim)
                        .filter(|l| l.starts_with("state = ") || l.starts_with("pid = "))
                        .collect();
                    format!("loaded, {}", detail.join(", "))
                }
                _ => "not loaded".into(),
            };
            vec![(LABEL.to_owned(), state)]
        }
    }
}

#[cfg(test)]
mod tests;
