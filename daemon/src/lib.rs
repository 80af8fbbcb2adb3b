//! chkpt's engine and daemon: automatic, restorable checkpoints of code workspaces.
//!
//! # Layout
//! - [`store`]: the content-addressed store (packs, trees, the sled catalog), synchronous.
//! - [`workspace`]: scanning, the warm file index, save, restore and diff of one workspace.
//! - [`error`]: the engine's error type.
//! - [`server`]: the daemon's start-up, serving and shutdown; [`systemd`]: socket activation
//!   and readiness notification under systemd.

pub mod error;
pub mod store;
pub mod workspace;

pub use error::{Error, Result};
pub mod config;
pub mod engine;
pub mod retention;
pub mod server;
pub mod service;
pub mod systemd;
pub mod watch;
