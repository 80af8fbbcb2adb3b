//! `chkptctl`, the command-line client of `chkptd`.
//!
//! The daemon takes checkpoints of code workspaces; this crate asks it for
//! them over gRPC on a Unix socket (the contract is the `chkpt-proto` crate)
//! and prints the answers for people, or as JSON for scripts (`--json`).
//! It never touches the store itself.
//!
//! # Layout
//!
//! - [`connect`]: the typed client. Where the socket is, connecting to it,
//!   and [`connect::Error`], which turns transport failures and daemon status
//!   codes into one line that says what to do.
//! - [`cli`]: the command line (clap) and one function per subcommand;
//!   [`cli::main`] is all the `chkptctl` binary calls.
//! - [`daemon`]: `chkptctl daemon start|stop`: spawning and stopping `chkptd`.
//! - [`service`]: `chkptctl service install|uninstall|status`: chkptd as a systemd or launchd
//!   user service, from the repository's unit and plist templates.
//! - [`remote`]: `chkptctl remote …`: replication to object storage, and restores from it.
//! - `output`: pure formatting: tables, ages, sizes, patches, and the JSON documents.
//! - `mount`: `chkptctl mount DIR`, every snapshot as a read-only FUSE folder (Linux).
//! - `ui`: `chkptctl ui`, the timeline in a terminal (ratatui + crossterm).
//! - `pager`: long output through `$PAGER` (else `less -FRX`) on a terminal.
//!
//! # Exit codes
//!
//! 0 on success; 1 on failure, with one line on stderr; 2 on a usage error.
//!
//! # Example
//!
//! ```
//! use std::path::PathBuf;
//! use chkpt_client::connect::socket_path_from;
//!
//! // Where chkptctl looks for the daemon when neither --socket nor
//! // CHKPT_SOCKET says otherwise.
//! assert_eq!(
//!     socket_path_from(Some("/run/user/1000".into()), 1000),
//!     PathBuf::from("/run/user/1000/chkpt/chkptd.sock"),
//! );
//! assert_eq!(
//!     socket_path_from(None, 1000),
//!     PathBuf::from("/tmp/chkpt-1000/chkptd.sock"),
//! );
//! ```

pub mod cli;
pub mod connect;
pub mod daemon;
pub mod hook;
mod mcp;
#[cfg(target_os = "linux")]
mod mount;
mod output;
mod pager;
pub mod remote;
pub mod service;
mod ui;
