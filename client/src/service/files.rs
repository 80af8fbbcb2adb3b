//! The service files: the repository's templates, embedded so that there is one source of
//! truth, where they go, and how the path of chkptd and the home directory are filled in
//! (escaped for a unit file, for XML).

use std::path::{Path, PathBuf};

use crate::connect::{self, Error};

/// The service unit: `ExecStart=@CHKPTD@` is filled in with the path of chkptd.
const SERVICE_UNIT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../systemd/chkptd.service"
));
/// The socket unit, used as it is.
pub(super) const SOCKET_UNIT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../systemd/chkptd.socket"
));
/// The LaunchAgent: `<string>@CHKPTD@` is filled in with the path of chkptd, `<string>@HOME@`
/// with the home directory.
const LAUNCH_AGENT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../launchd/dev.chkpt.chkptd.plist"
));

/// The systemd units, in the order they are written and named to `systemctl`.
pub(super) const UNITS: [&str; 2] = ["chkptd.socket", "chkptd.service"];

/// The LaunchAgent's label (reverse DNS, as launchd expects).
pub const LABEL: &str = "dev.chkpt.chkptd";

/// The service manager chkptd is installed into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    /// systemd's per-user manager (`systemctl --user`).
    Systemd,
    /// launchd's per-user GUI domain (`launchctl ... gui/$UID`).
    Launchd,
}

impl Manager {
    /// launchd on macOS, systemd everywhere else.
    pub fn current() -> Self {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }

    /// Its name, as printed.
    pub fn name(self) -> &'static str {
        match self {
            Manager::Systemd => "systemd",
            Manager::Launchd => "launchd",
        }
    }
}

/// Where the files go: the user's home and config directories, and the uid for launchd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `$HOME`.
    pub home: PathBuf,
    /// `$XDG_CONFIG_HOME`, else `~/.config`.
    pub config_home: PathBuf,
    /// The user's uid.
    pub uid: u32,
}

impl Env {
    /// The environment of this process.
    pub fn from_process() -> Result<Self, Error> {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|h| h.is_absolute())
            .ok_or_else(|| {
                Error::Failed(
                    "HOME is not set to an absolute path; the service files go under it".into(),
                )
            })?;
        let config_home = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|c| c.is_absolute())
            .unwrap_or_else(|| home.join(".config"));
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        Ok(Env {
            home,
            config_home,
            uid,
        })
    }

    /// The files the manager's install writes, in order.
    pub fn files(&self, manager: Manager) -> Vec<PathBuf> {
        match manager {
            Manager::Systemd => {
                let dir = self.config_home.join("systemd/user");
                UNITS.iter().map(|unit| dir.join(unit)).collect()
            }
            Manager::Launchd => vec![
                self.home
                    .join("Library/LaunchAgents")
                    .join(format!("{LABEL}.plist")),
            ],
        }
    }

    /// The socket the service listens on. launchd gives its agents no `XDG_RUNTIME_DIR`.
    pub fn socket(&self, manager: Manager) -> PathBuf {
        match manager {
            Manager::Systemd => connect::default_socket_path(),
            Manager::Launchd => connect::socket_path_from(None, self.uid),
        }
    }

    /// Where the daemon's logs are, as a command or a path.
    pub fn logs(&self, manager: Manager) -> String {
        match manager {
            Manager::Systemd => "journalctl --user -u chkptd".into(),
            Manager::Launchd => self
                .home
                .join("Library/Logs/chkptd.log")
                .display()
                .to_string(),
        }
    }

    pub(super) fn gui_domain(&self) -> String {
        format!("gui/{}", self.uid)
    }

    pub(super) fn launchd_target(&self) -> String {
        format!("gui/{}/{LABEL}", self.uid)
    }
}

/// The contents of the manager's files (as [`Env::files`] names them) for `chkptd`.
pub fn render(manager: Manager, env: &Env, chkptd: &Path) -> Result<Vec<String>, Error> {
    Ok(match manager {
        Manager::Systemd => vec![
            SOCKET_UNIT.to_owned(),
            SERVICE_UNIT.replace(
                "\nExecStart=@CHKPTD@\n",
                &format!("\nExecStart={}\n", systemd_exec_path(chkptd)?),
            ),
        ],
        Manager::Launchd => vec![
            LAUNCH_AGENT
                .replace(
                    "<string>@CHKPTD@",
                    &format!("<string>{}", xml_text(utf8(chkptd)?)),
                )
                .replace(
                    "<string>@HOME@",
                    &format!("<string>{}", xml_text(utf8(&env.home)?)),
                ),
        ],
    })
}

fn utf8(path: &Path) -> Result<&str, Error> {
    path.to_str().ok_or_else(|| {
        Error::Failed(format!(
            "{} is not valid UTF-8, which a service file needs",
            path.display()
        ))
    })
}

/// `path` as the command of an `ExecStart=` line: `%` doubled (specifiers are expanded on the
/// whole line), quoted when it holds a space or a quote, a control character refused. `$` stays
/// as it is: systemd expands variables in the arguments only, not in the command's path.
pub(super) fn systemd_exec_path(path: &Path) -> Result<String, Error> {
    let text = utf8(path)?;
    if text.chars().any(char::is_control) {
        return Err(Error::Failed(format!(
            "{} holds a control character, which a unit file cannot express",
            path.display()
        )));
    }
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' => escaped.push_str("%%"),
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            c => escaped.push(c),
        }
    }
    let needs_quotes = text
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | ';'));
    Ok(if needs_quotes {
        format!("\"{escaped}\"")
    } else {
        escaped
    })
}

/// `text` escaped for XML character data.
fn xml_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
