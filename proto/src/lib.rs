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
