//! The `chkptctl` command line: clap definitions and the context every subcommand gets (`run`
//! dispatches to one function per subcommand). Its shape is a contract that scripts depend on.
#![allow(clippy::print_stdout)] // printing is the client's job

use std::{
    io::{self, Write},
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use chkpt_proto::v1;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

mod commands;
mod history;
mod run;
mod watch;

pub use self::run::main;

use crate::{
    connect::{self, Client, Error},
    output::Palette,
};

/// The help heading of the options every subcommand takes, kept apart from its own.
const GLOBAL: &str = "Global options";

/// Talk to chkptd, the daemon that checkpoints your workspaces.
#[derive(Debug, Parser)]
#[command(name = "chkptctl", version, propagate_version = true)]
pub struct Cli {
    /// Socket of chkptd [default: $XDG_RUNTIME_DIR/chkpt/chkptd.sock, else /tmp/chkpt-<uid>/chkptd.sock]
    #[arg(long, global = true, env = connect::SOCKET_ENV, value_name = "PATH", help_heading = GLOBAL)]
    socket: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text (errors too, as {"error": …})
    #[arg(long, global = true, help_heading = GLOBAL)]
    json: bool,
    /// Workspace to act on (any path inside it) [default: the current directory]. Run from
    /// outside it, relative paths in the workspace are taken from PATH, as with `git -C`
    #[arg(short, long, global = true, value_name = "PATH", help_heading = GLOBAL)]
    workspace: Option<PathBuf>,
    /// Colour: auto (on a terminal, unless NO_COLOR is set), always, never
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    color: ColorWhen,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the daemon's health and the state of every watched workspace
    Status,
    /// Replicate snapshots to object storage (S3, S3-compatible servers, a folder), encrypted
    /// here, and restore from it on any machine
    Remote {
        #[command(subcommand)]
        action: crate::remote::RemoteAction,
    },
    /// List the watched workspaces, newest first
    Workspaces,
    /// Start watching a directory and take its baseline snapshot
    Watch(WatchArgs),
    /// Stop watching a directory (its snapshots are kept)
    Unwatch {
        /// Directory to stop watching [default: the workspace]
        path: Option<PathBuf>,
    },
    /// Take a snapshot now and print its id
    ///
    /// When nothing changed since the latest snapshot, that one is printed and marked
    /// unchanged (the message and tags are kept on it as a note) unless --allow-empty.
    Save {
        /// Message to attach to the snapshot
        #[arg(short, long, value_name = "MSG")]
        message: Option<String>,
        /// Pin the snapshot so pruning never removes it
        #[arg(long)]
        pin: bool,
        /// A label, KEY=VALUE (repeatable), e.g. --tag agent=claude-code
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<v1::Tag>,
        /// Record a new snapshot even when nothing changed since the latest one
        #[arg(long)]
        allow_empty: bool,
    },
    /// List snapshots, newest first
    List {
        /// Show at most N snapshots
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// List the snapshots of all workspaces
        #[arg(long)]
        all: bool,
        /// Only snapshots carrying this tag, KEY=VALUE (repeatable: all of them), by
        /// themselves or in a note
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<v1::Tag>,
        /// Only one agent session's checkpoints (the same as --tag session=ID)
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// Only snapshots that changed these files or directories (after `--`)
        #[arg(last = true, value_name = "PATH", conflicts_with = "all")]
        paths: Vec<PathBuf>,
    },
    /// Show every detail of one snapshot; with -p or --stat, its changes too
    Show(history::ShowArgs),
    /// List the snapshots in which files or directories changed; with -p, their patches
    Log(history::LogArgs),
    /// Compare snapshots as a patch: latest vs the working tree, SNAP vs the working tree, or
    /// SNAP vs SNAP2
    Diff(history::DiffArgs),
    /// Browse the timeline in the terminal: snapshots, their files and patches; restore, pin
    Ui {
        /// Draw the first frame and exit (for the benchmark)
        #[arg(long, hide = true)]
        first_frame: bool,
    },
    /// Mount every snapshot read-only at DIR (DIR/<workspace>/<time>-<id>/, and a `latest`
    /// link) until Ctrl-C, SIGTERM or `fusermount3 -u DIR` (Linux only)
    Mount {
        /// An empty directory to mount at
        dir: PathBuf,
    },
    /// Write a file as it was in a snapshot to stdout
    Cat {
        /// Snapshot selector
        snap: String,
        /// File in the workspace
        path: PathBuf,
    },
    /// Restore a snapshot, or some paths of it (the current state is saved first)
    Restore {
        /// Snapshot selector
        snap: String,
        /// Files or directories to restore [default: everything]
        paths: Vec<PathBuf>,
        /// Only show what would change
        #[arg(long)]
        dry_run: bool,
        /// Restore into this directory instead of in place: a new or empty one outside the
        /// workspace (a new one is made with your umask)
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// With --to, restore into a folder that is not empty (files of the same names are
        /// replaced, the others kept)
        #[arg(long, requires = "to")]
        force: bool,
        /// Roll `.git` back too (in place it is left alone unless asked; a workspace without
        /// `.git`, or `--to`, gets the snapshot's)
        #[arg(long)]
        include_git: bool,
    },
    /// Undo the last restore (restore the snapshot taken just before it)
    Undo {
        /// Roll `.git` back too
        #[arg(long)]
        include_git: bool,
    },
    /// Delete snapshots (a pinned one only with --force)
    Delete {
        /// Snapshot selectors
        #[arg(required = true)]
        snaps: Vec<String>,
        /// Delete pinned snapshots too
        #[arg(long)]
        force: bool,
    },
    /// Pin a snapshot so pruning never removes it
    Pin {
        /// Snapshot selector
        snap: String,
    },
    /// Remove the pin from a snapshot
    Unpin {
        /// Snapshot selector
        snap: String,
    },
    /// Remove old snapshots by a retention policy (unset options use the daemon's policy)
    Prune(PruneArgs),
    /// Check the integrity of the store (only the workspace's snapshots with -w)
    Verify,
    /// Acknowledge a fired mass-change tripwire, clearing it from `status`
    Ack,
    /// Start or stop chkptd
    Daemon {
        #[command(subcommand)]
        action: DaemonAction,
    },
    /// Run chkptd as a user service: systemd on Linux, launchd on macOS
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Take a tagged checkpoint from an AI agent's hook (never fails the agent: exits 0, with
    /// one line on stderr when no checkpoint could be taken)
    Hook {
        #[command(subcommand)]
        agent: HookAgent,
    },
    /// Serve the Model Context Protocol on stdin/stdout: tools an agent can call to
    /// checkpoint, list, diff, read and restore the workspace
    Mcp,
    /// Print a shell completion script
    Completions {
        /// Shell to complete for
        shell: Shell,
    },
    /// Write the manual pages (chkptctl.1, one per subcommand, and chkptd.1) into DIR, e.g.
    /// ~/.local/share/man/man1
    Man {
        /// Folder to write the pages into (made if missing)
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum HookAgent {
    /// Read a Claude Code hook's JSON from stdin (SessionStart, UserPromptSubmit,
    /// PreToolUse, PostToolUse, Stop): tags agent=claude-code, session, phase, tool
    ClaudeCode {
        /// Longest wait for the daemon, in milliseconds
        #[arg(long, value_name = "MS", default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// The same facts as flags, for any agent
    Generic(GenericHookArgs),
}

#[derive(Debug, Args)]
struct GenericHookArgs {
    /// The agent, e.g. codex (the `agent` tag)
    #[arg(long)]
    agent: String,
    /// The agent's session id (the `session` tag; `session:ID^` restores what was before it)
    #[arg(long, value_name = "ID", default_value = "")]
    session: String,
    /// When in the agent's turn this is
    #[arg(long, value_enum)]
    phase: crate::hook::Phase,
    /// The tool about to run, or that ran
    #[arg(long, default_value = "")]
    tool: String,
    /// The prompt (its first line goes into the message)
    #[arg(long, default_value = "")]
    prompt: String,
    /// The agent's working directory [default: the workspace, else the current directory]
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Longest wait for the daemon, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    timeout_ms: u64,
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// Directory to watch [default: the workspace]
    path: Option<PathBuf>,
    /// Quiet period after the last change before a snapshot, e.g. 5s, 2m or 0.3 (seconds)
    /// [default: chkptd's --idle]
    #[arg(long, value_name = "DURATION", value_parser = chkpt_proto::duration::parse_ms)]
    idle: Option<u64>,
    /// Longest wait for a snapshot while changes keep coming, e.g. 60s, 5m or 90 (seconds)
    /// [default: chkptd's --max-delay]
    #[arg(long, value_name = "DURATION", value_parser = chkpt_proto::duration::parse_ms)]
    max_delay: Option<u64>,
    /// Snapshot dependency and build folders (node_modules, target, ...) too
    #[arg(long)]
    include_deps: bool,
    /// Snapshot `.git` too, so a deleted repository comes back with its commits, stashes and
    /// branches (off by default: it can be large, and git operations make noise)
    #[arg(long)]
    include_git: bool,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Beyond the rules, drop the oldest automatic snapshots while what they added exceeds
    /// this many bytes
    #[arg(long, value_name = "BYTES")]
    max_store_bytes: Option<u64>,
}

#[derive(Debug, Args)]
struct PruneArgs {
    /// Only show what would be removed
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// Retention rules (restic-style); unset rules leave the defaults.
#[derive(Debug, Args)]
#[command(next_help_heading = "Retention rules")]
pub(crate) struct PolicyArgs {
    /// Keep the newest N snapshots
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N weeks
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_weekly: Option<u32>,
    /// Keep every snapshot younger than this, e.g. 90m, 2h, 3d, 1w, 1d12h or 3600 (seconds)
    #[arg(long, value_name = "DURATION", value_parser = chkpt_proto::duration::parse_secs)]
    keep_within: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum DaemonAction {
    /// Start chkptd in the background unless it is already running
    Start,
    /// Stop chkptd and wait until it is gone
    Stop,
}

#[derive(Debug, Subcommand)]
enum ServiceAction {
    /// Write the service files for this OS, then enable and start chkptd
    Install {
        /// Print what would be written and run, as a script, and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop and disable the service and remove its files (snapshots are kept)
    Uninstall {
        /// Print what would be removed and run, as a script, and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Show whether the service files exist and what the service manager says
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ColorWhen {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl PolicyArgs {
    /// The policy to send with `watch`: `None` (the daemon's default) when nothing is set.
    pub(crate) fn to_wire(&self, max_store_bytes: Option<u64>) -> Option<v1::RetentionPolicy> {
        let policy = v1::RetentionPolicy {
            keep_last: self.keep_last.unwrap_or(0),
            keep_hourly: self.keep_hourly.unwrap_or(0),
            keep_daily: self.keep_daily.unwrap_or(0),
            keep_weekly: self.keep_weekly.unwrap_or(0),
            keep_within_secs: self.keep_within.unwrap_or(0),
            max_store_bytes: max_store_bytes.unwrap_or(0),
        };
        (policy != v1::RetentionPolicy::default()).then_some(policy)
    }
}

/// What every subcommand needs: where the daemon is, how to print.
#[derive(Debug)]
struct Ctx {
    socket: PathBuf,
    json: bool,
    workspace: Option<PathBuf>,
    palette: Palette,
    /// Whether progress bars and spinners may be drawn (stderr is a terminal, and no --json).
    progress: bool,
}

impl Ctx {
    async fn client(&self) -> Result<Client, Error> {
        Client::connect(&self.socket).await
    }

    /// The workspace to send: `-w` made absolute, else the current directory.
    fn workspace(&self) -> Result<String, Error> {
        path_string(self.workspace.as_deref().unwrap_or(Path::new(".")))
    }

    /// A path in the workspace, for a `bytes` field. A relative path is taken from the current
    /// directory, unless `-w DIR` was given and the current directory is outside DIR: then it
    /// is taken from DIR (`chkptctl -w ~/p cat latest src/main.rs`, run from anywhere).
    fn ws_path(&self, path: &Path) -> Result<Vec<u8>, Error> {
        if let Some(dir) = &self.workspace
            && path.is_relative()
        {
            let dir = absolute(dir)?;
            let cwd = absolute(Path::new("."))?;
            // Compared as the file system sees them, so a symlinked way in still counts.
            let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
            if !real(&cwd).starts_with(real(&dir)) {
                return Ok(dir.join(path).into_os_string().into_vec());
            }
        }
        path_bytes(path)
    }

    fn print(&self, text: &str) -> Result<(), Error> {
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Error::io("write to stdout", e))
    }

    /// Long output: through the pager on a terminal (see [`crate::pager`]).
    fn page(&self, bytes: &[u8]) -> Result<(), Error> {
        crate::pager::page(bytes).map_err(|e| Error::io("write to stdout", e))
    }

    fn print_json(&self, value: &impl serde::Serialize) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| Error::Failed(format!("cannot encode the JSON output: {e}")))?;
        self.print(&format!("{text}\n"))
    }

    /// Prints `value` with `--json`, else the text `human` makes.
    fn emit(
        &self,
        value: impl FnOnce() -> Value,
        human: impl FnOnce() -> String,
    ) -> Result<(), Error> {
        self.emit_doc(value, human)
    }

    /// [`Context::emit`] for any serialisable document (a list of thousands is written from
    /// its structs, with no map built for each).
    fn emit_doc<T: serde::Serialize>(
        &self,
        value: impl FnOnce() -> T,
        human: impl FnOnce() -> String,
    ) -> Result<(), Error> {
        if self.json {
            self.print_json(&value())
        } else {
            self.print(&human())
        }
    }
}

/// `path` joined onto the current directory; not canonicalized, so the daemon
/// sees the path the user meant even through symlinks.
fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(|e| {
        Error::io(
            format!(
                "make {} absolute (is the current directory gone?)",
                path.display()
            ),
            e,
        )
    })
}

/// An absolute path for a `string` field of the protocol.
fn path_string(path: &Path) -> Result<String, Error> {
    absolute(path)?.into_os_string().into_string().map_err(|p| {
        Error::Usage(format!(
            "{} is not valid UTF-8, which chkptd needs here",
            p.display()
        ))
    })
}

/// An absolute path for a `bytes` field of the protocol (any file name works).
fn path_bytes(path: &Path) -> Result<Vec<u8>, Error> {
    Ok(absolute(path)?.into_os_string().into_vec())
}

/// Makes a missing `restore --to` folder here, not in chkptd: the daemon's umask is 077 for
/// its own files, and the copy is the user's, made with the user's umask. An existing one is
/// left for chkptd to judge (empty, or `--force`).
/// Returns the folders it made, deepest first.
fn make_restore_target(to: &Path) -> Result<Vec<PathBuf>, Error> {
    let to = absolute(to)?;
    let made: Vec<PathBuf> = to
        .ancestors()
        .take_while(|a| std::fs::symlink_metadata(a).is_err())
        .map(Path::to_path_buf)
        .collect();
    if !made.is_empty() {
        std::fs::create_dir_all(&to)
            .map_err(|e| Error::io(format!("make --to {}", to.display()), e))?;
    }
    Ok(made)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `KEY=VALUE` as a tag.
pub fn parse_tag(text: &str) -> Result<v1::Tag, String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok(v1::Tag {
            key: key.to_owned(),
            value: value.to_owned(),
        }),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

#[cfg(test)]
mod tests;
