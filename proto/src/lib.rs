//! The chkpt gRPC contract.
//!
//! `chkptd` (the daemon) serves the `chkpt.v1.Chkpt` service over a Unix
//! domain socket and `chkptctl` (the client) calls it. This crate holds the
//! protobuf definition and the Rust code generated from it (prost messages,
//! tonic client and server), so both sides share one contract.
//!
//! # Layout
//!
//! - `chkpt/v1/chkpt.proto`: the protobuf source (package `chkpt.v1`); every
//!   message and field is documented there.
//! - [`v1`]: the generated code.
//!   - Messages and enums: [`v1::Snapshot`], [`v1::Workspace`],
//!     [`v1::StatusResponse`], [`v1::Trigger`], ...
//!   - Server: [`v1::chkpt_server::Chkpt`] (the trait to implement) and
//!     [`v1::chkpt_server::ChkptServer`] (the tower service to mount).
//!   - Client: [`v1::chkpt_client::ChkptClient`].
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptor set, for gRPC reflection.
//! - [`PROTOCOL_VERSION`]: the protocol version this contract describes.
//! - [`duration`]: the duration syntax both binaries' flags take (`90m`, `2h`, `5`).
//! - [`nearest`]: the nearest name to one not found, for both sides' "did you mean" hints.

pub mod duration;
pub mod nearest;

/// Generated code for the `chkpt.v1` protobuf package.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unused_qualifications,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::unwrap_used
)]
pub mod v1 {
    tonic::include_proto!("chkpt.v1");
}

/// The encoded `google.protobuf.FileDescriptorSet` of `chkpt/v1/chkpt.proto`,
/// for registering with `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chkpt_descriptor");

/// The protocol version described by this crate; reported by the daemon in
/// `StatusResponse.protocol`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The socket path used when neither `--socket` nor `CHKPT_SOCKET` is given:
/// `$XDG_RUNTIME_DIR/chkpt/chkptd.sock`, else `/tmp/chkpt-<uid>/chkptd.sock`. The daemon and
/// every client agree on it through this one function.
pub fn default_socket_path() -> std::path::PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    socket_path_from(std::env::var_os("XDG_RUNTIME_DIR"), uid)
}

/// [`default_socket_path`] with its inputs passed in. A relative or empty `XDG_RUNTIME_DIR` is
/// ignored, as the XDG base directory spec requires.
pub fn socket_path_from(runtime_dir: Option<std::ffi::OsString>, uid: u32) -> std::path::PathBuf {
    match runtime_dir.map(std::path::PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("chkpt").join("chkptd.sock"),
        _ => std::path::PathBuf::from(format!("/tmp/chkpt-{uid}")).join("chkptd.sock"),
    }
}
