//! An install or uninstall as a list of steps, built without touching anything, so that it can
//! be printed as a shell script (`--dry-run`, or the steps left to run by hand) or carried out.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::files::{Env, Manager, UNITS, render};
use crate::connect::Error;

/// One thing an install or uninstall does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write `contents` to `path`, creating its directory.
    Write {
        /// The file.
        path: PathBuf,
        /// Its new contents.
        contents: String,
    },
    /// Remove `path`.
    Remove {
        /// The file.
        path: PathBuf,
    },
    /// Run a command of the service manager.
    Run {
        /// The command and its arguments.
        argv: Vec<String>,
        /// Whether a failure is expected and harmless (unloading what is not loaded).
        may_fail: bool,
    },
    /// Stop the chkptd someone started by hand on the service's socket, so the service can
    /// take the socket over.
    StopDaemon {
        /// The socket it answers on.
        socket: PathBuf,
        /// Its pid.
        pid: u32,
    },
}

fn run(argv: &[&str]) -> Step {
    Step::Run {
        argv: argv.iter().map(|&a| a.to_owned()).collect(),
        may_fail: false,
    }
}

impl Step {
    /// The step as shell commands, one per line, each line ending in a newline.
    pub fn script(&self) -> String {
        match self {
            Step::Write { path, contents } => {
                let mut text = String::new();
                if let Some(dir) = path.parent() {
                    text.push_str(&format!(
                        "mkdir -p {}\n",
                        sh_quote(&dir.display().to_string())
                    ));
                }
                text.push_str(&format!(
                    "cat > {} <<'EOF'\n{contents}",
                    sh_quote(&path.display().to_string())
                ));
                if !contents.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str("EOF\n");
                text
            }
            Step::Remove { path } => format!("rm -f {}\n", sh_quote(&path.display().to_string())),
            Step::Run { argv, may_fail } => {
                let line: Vec<String> = argv.iter().map(|a| sh_quote(a)).collect();
                let tail = if *may_fail { " || true" } else { "" };
                format!("{}{tail}\n", line.join(" "))
            }
            Step::StopDaemon { socket, pid } => format!(
                "chkptctl --socket {} daemon stop  # pid {pid}, started by hand\n",
                sh_quote(&socket.display().to_string())
            ),
        }
    }

    /// What the step did, for the report of a run.
    pub fn done_text(&self) -> String {
        match self {
            Step::Write { path, .. } => format!("wrote {}", path.display()),
            Step::Remove { path } => format!("removed {}", path.display()),
            Step::Run { argv, .. } => format!("ran {}", argv.join(" ")),
            Step::StopDaemon { pid, .. } => {
                format!("stopped the chkptd started by hand (pid {pid}); the service takes over")
            }
        }
    }

    /// The step as JSON.
    pub fn to_json(&self) -> Value {
        match self {
            Step::Write { path, contents } => {
                json!({ "write": path.display().to_string(), "contents": contents })
            }
            Step::Remove { path } => json!({ "remove": path.display().to_string() }),
            Step::Run { argv, may_fail } => json!({ "run": argv, "may_fail": may_fail }),
            Step::StopDaemon { socket, pid } => {
                json!({ "stop_daemon": { "socket": socket.display().to_string(), "pid": pid } })
            }
        }
    }
}

/// `word` quoted for a POSIX shell, unless it needs no quotes.
pub(super) fn sh_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./@%+=:,".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What an install or uninstall does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The service manager.
    pub manager: Manager,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The socket the service listens on.
    pub socket: PathBuf,
    /// Where the files go.
    pub env: Env,
}

impl Plan {
    /// The steps from `from` on, as a shell script.
    pub fn script(&self, from: usize) -> String {
        self.steps.iter().skip(from).map(Step::script).collect()
    }

    /// The steps as JSON.
    pub fn steps_json(steps: &[Step]) -> Value {
        steps.iter().map(Step::to_json).collect()
    }
}

/// The steps of an install of `chkptd`; `takeover` (stopping a chkptd started by hand) goes
/// right before the service is started.
pub fn install_steps(
    manager: Manager,
    env: &Env,
    chkptd: &Path,
    takeover: Option<Step>,
) -> Result<Vec<Step>, Error> {
    let mut steps: Vec<Step> = env
        .files(manager)
        .into_iter()
        .zip(render(manager, env, chkptd)?)
        .map(|(path, contents)| Step::Write { path, contents })
        .collect();
    match manager {
        Manager::Systemd => {
            steps.push(run(&["systemctl", "--user", "daemon-reload"]));
            steps.extend(takeover);
            steps.push(run(&[
                "systemctl",
                "--user",
                "enable",
                "--now",
                UNITS[0],
                UNITS[1],
            ]));
        }
        Manager::Launchd => {
            // A reinstall replaces the loaded agent; the first install has none to unload.
            steps.push(Step::Run {
                argv: vec!["launchctl".into(), "bootout".into(), env.launchd_target()],
                may_fail: true,
            });
            steps.extend(takeover);
            // Undoes a `launchctl disable` from earlier, which would make bootstrap fail.
            steps.push(run(&["launchctl", "enable", &env.launchd_target()]));
            let plist = env.files(manager).remove(0);
            steps.push(Step::Run {
                argv: vec![
                    "launchctl".into(),
                    "bootstrap".into(),
                    env.gui_domain(),
                    plist.display().to_string(),
                ],
                may_fail: false,
            });
        }
    }
    Ok(steps)
}

/// The steps of an uninstall that removes `present`, the service files that exist.
pub fn uninstall_steps(manager: Manager, env: &Env, present: Vec<PathBuf>) -> Vec<Step> {
    let mut steps = Vec::new();
    match manager {
        Manager::Systemd => {
            steps.push(run(&[
                "systemctl",
                "--user",
                "disable",
                "--now",
                UNITS[0],
                UNITS[1],
            ]));
            steps.extend(present.into_iter().map(|path| Step::Remove { path }));
            steps.push(run(&["systemctl", "--user", "daemon-reload"]));
        }
        Manager::Launchd => {
            steps.push(Step::Run {
                argv: vec!["launchctl".into(), "bootout".into(), env.launchd_target()],
                may_fail: true,
            });
            steps.extend(present.into_iter().map(|path| Step::Remove { path }));
        }
    }
    steps
}
