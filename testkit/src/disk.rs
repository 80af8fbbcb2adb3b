//! A file system of a test's own (a tmpfs in a user and mount namespace: no root needed, nobody
//! else sees it, gone with the process), and filling one, for the tests of a full disk.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// A command prefix that runs the command after it (`"$0" "$@"`) in a mount namespace of its
/// own, with a fresh tmpfs mounted with the `-o` options `options` (e.g. `size=24m`) at
/// `mount_point`: a shell word, which may name variables that the shell code `before` sets
/// from the command's arguments.
pub fn private_tmpfs(options: &str, mount_point: &str, before: &str) -> Vec<String> {
    let script = format!(
        r#"{before}mount -t tmpfs -o {options},mode=0700 chkpt-test {mount_point} && exec "$0" "$@""#
    );
    [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "--",
        "sh",
        "-c",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([script])
    .collect()
}

/// Fills the file system that holds `path` (a file, created or grown) but `room` bytes.
pub fn fill(path: &Path, room: u64) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the filler");
    let chunk = vec![0x5au8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    f.flush().expect("flush the filler");
    let len = f.metadata().expect("the filler's size").len();
    f.set_len(len.saturating_sub(room))
        .expect("leave room in the filler");
}
