//! What the remote tests share: `remote add` arguments for a Garage, the remote's status,
//! waiting for it, and a workspace's contents to compare restores with.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Daemon;
use super::cli::{json_in, ok_in};
use super::garage::S3;

/// Every entry under `root`: path → (mode, symlink target or file content; none for folders).
pub fn tree(root: &Path) -> Vec<(PathBuf, u32, Option<Vec<u8>>)> {
    fn rec(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, u32, Option<Vec<u8>>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.push((rel, 0, Some(target.as_os_str().as_bytes().to_vec())));
            } else if meta.is_dir() {
                out.push((rel, mode, None));
                rec(root, &p, out);
            } else {
                out.push((rel, mode, Some(std::fs::read(&p).unwrap())));
            }
        }
    }
    let mut out = Vec::new();
    rec(root, root, &mut out);
    out
}

/// Adds `files` of `size` random bytes each under `dir` (seeded: the same call, the same bytes).
pub fn noise_files(dir: &Path, files: usize, size: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        std::fs::write(
            dir.join(format!("blob-{i:03}.bin")),
            chkpt_testkit::noise(size, seed * 1000 + i as u64),
        )
        .unwrap();
    }
}

/// [`add_args`] with small packs, two at a time, slowed to 2 MiB/s: an upload of a few MiB
/// takes seconds, long enough to cut or kill something in its middle.
pub fn slow_add_args(
    g: &impl S3,
    name: &str,
    prefix: &str,
    creds: &Path,
    key: &Path,
) -> Vec<String> {
    let mut args = add_args(g, name, prefix, creds, key);
    args.extend(
        [
            "--pack-size",
            "256K",
            "--concurrency",
            "2",
            "--limit-upload",
            "2M",
        ]
        .map(String::from),
    );
    args
}

/// `remote add` arguments for Garage `g`'s bucket under `prefix`.
pub fn add_args(g: &impl S3, name: &str, prefix: &str, creds: &Path, key: &Path) -> Vec<String> {
    [
        "remote",
        "add",
        name,
        &format!("s3://{}/{prefix}", g.bucket()),
        "--endpoint",
        &g.endpoint(),
        "--region",
        "garage",
        "--credentials",
        &creds.display().to_string(),
        "--key-file",
        &key.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub fn status(d: &Daemon, cwd: &Path, name: &str) -> Value {
    json_in(d, cwd, &["remote", "status", name])["remotes"][0].clone()
}

/// Waits until `cond` holds for the remote's status, or fails with the last one seen.
pub fn wait_status(
    d: &Daemon,
    cwd: &Path,
    name: &str,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(d, cwd, name);
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in 60 s: {s:#}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Restores snapshot `id` from the remote on the fresh daemon into a new folder under `dir`.
/// Another machine: a fresh data directory (and a folder to run chkptctl in) with the remote
/// `name` added, the bucket's `prefix` holding data already.
pub fn another_machine(
    g: &impl S3,
    name: &str,
    prefix: &str,
    creds: &Path,
    key: &Path,
) -> (Daemon, tempfile::TempDir) {
    let fresh = Daemon::start(&[]);
    let cwd = tempfile::tempdir().unwrap();
    ok_in(
        &fresh,
        cwd.path(),
        &strs(&add_args(g, name, prefix, creds, key)),
    );
    (fresh, cwd)
}

pub fn restore_fresh(fresh: &Daemon, dir: &Path, name: &str, id: &str) -> PathBuf {
    let to = dir.join(format!("r-{id}"));
    ok_in(
        fresh,
        dir,
        &[
            "remote",
            "restore",
            name,
            id,
            "--to",
            &to.display().to_string(),
        ],
    );
    to
}
