//! Compiles `chkpt/v1/chkpt.proto` with protox (pure Rust, no `protoc`),
//! generates prost messages plus tonic client and server code, and writes
//! the encoded file descriptor set to `$OUT_DIR/chkpt_descriptor.bin` for
//! gRPC reflection.

use std::{env, fs, io, path::PathBuf};

const PROTO: &str = "chkpt/v1/chkpt.proto";
/// Replication to object storage: the `Remotes` service, in the same package.
const REMOTE_PROTO: &str = "chkpt/v1/remote.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed={REMOTE_PROTO}");
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(
        env::var_os("OUT_DIR").ok_or_else(|| io::Error::other("OUT_DIR is not set"))?,
    );

    let mut compiler = protox::Compiler::new(["."])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files([PROTO, REMOTE_PROTO])?;

    fs::write(
        out_dir.join("chkpt_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out_dir)
        .compile_fds(compiler.file_descriptor_set())?;

    Ok(())
}
