//! The corpus and what the benchmark does to it: generating or unpacking it, warming the page
//! cache, editing a few files, and checking restores through a manifest of the tree.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::Hasher;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use chkpt_testkit::Rng;

/// The Debian kernel source package this benchmark prefers as its corpus.
pub const KERNEL_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";

/// Sizes of a generated corpus.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Small text files (source-like, compressible).
    pub small: usize,
    /// Largest small file, in bytes.
    pub small_max: usize,
    /// Sizes of the multi-MiB text files.
    pub big: Vec<usize>,
    /// Sizes of the incompressible (random) files.
    pub random: Vec<usize>,
}

const WORDS: &[&str] = &[
    "let", "fn", "match", "self", "buffer", "index", "return", "Some", "None", "value", "error",
    "config", "path", "len", "into", "iter", "map", "node", "tree", "snapshot", "store", "read",
    "write", "flush", "u64", "String", "Vec", "Option", "Result", "impl", "pub", "struct",
];

/// Source-like text of about `len` bytes.
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 80);
    while out.len() < len {
        out.extend_from_slice(&b"        "[..rng.index(3) * 4]);
        for _ in 0..3 + rng.index(8) {
            out.extend_from_slice(WORDS[rng.index(WORDS.len())].as_bytes());
            out.push(if rng.index(5) == 0 { b'_' } else { b' ' });
        }
        writeln!(out, "{};", rng.index(1000)).unwrap();
    }
    out
}

/// Writes a generated corpus under `root`: `spec.small` text files spread over nested folders,
/// the big text files, the random files, a few executables and a symlink.
pub fn generate(root: &Path, spec: &Spec) {
    let mut rng = Rng::new(0x5eed);
    for i in 0..spec.small {
        let dir = root.join(format!("src/m{:03}/d{}", i / 40, i % 4));
        fs::create_dir_all(&dir).unwrap();
        let len = 64 + rng.index(spec.small_max);
        let path = dir.join(format!("file{i:05}.rs"));
        fs::write(&path, text(&mut rng, len)).unwrap();
        if i % 97 == 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    fs::create_dir_all(root.join("data")).unwrap();
    for (i, &len) in spec.big.iter().enumerate() {
        fs::write(root.join(format!("data/big{i}.log")), text(&mut rng, len)).unwrap();
    }
    for (i, &len) in spec.random.iter().enumerate() {
        let mut bytes = Vec::with_capacity(len + 8);
        while bytes.len() < len {
            bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        bytes.truncate(len);
        fs::write(root.join(format!("data/random{i}.bin")), bytes).unwrap();
    }
    std::os::unix::fs::symlink("data/big0.log", root.join("latest.log")).unwrap();
}

/// Unpacks the kernel tarball into `dir` and returns the tree's root.
///
/// Debian's packaging adds `/*` and `!/debian/` to the top-level `.gitignore` ("ignore everything
/// at the top level"); a tool that honours `.gitignore` would then save almost nothing, so those
/// two lines are removed: the corpus is the kernel tree as a kernel developer has it.
pub fn unpack_kernel(dir: &Path) -> Result<PathBuf, String> {
    if !Path::new(KERNEL_TARBALL).exists() {
        return Err(format!("{KERNEL_TARBALL} does not exist"));
    }
    eprintln!("bench: unpacking {KERNEL_TARBALL}");
    let st = Command::new("tar")
        .arg("-xf")
        .arg(KERNEL_TARBALL)
        .arg("-C")
        .arg(dir)
        .status()
        .map_err(|e| format!("tar: {e}"))?;
    if !st.success() {
        return Err(format!("tar -xf {KERNEL_TARBALL} failed: {st}"));
    }
    let root = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .ok_or("the tarball held no folder")?;
    let gi = root.join(".gitignore");
    if let Ok(text) = fs::read_to_string(&gi) {
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| *l != "/*" && *l != "!/debian/")
            .collect();
        fs::write(&gi, kept.join("\n") + "\n").unwrap();
    }
    Ok(root)
}

/// Every entry under `root` (not following symlinks), relative paths, sorted.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let is_dir = md.is_dir();
        out.push((rel, md));
        if is_dir {
            walk(root, &p, out);
        }
    }
}

/// How long `sync(2)` takes now: after a restore, what it still had to write to the disk.
pub fn sync_secs() -> f64 {
    let t0 = std::time::Instant::now();
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    t0.elapsed().as_secs_f64()
}

/// Reads every file of the tree once (untimed), so timed steps start from a warm page cache,
/// after writing back every dirty page on the machine: the peer never fsyncs, and an fsync of
/// ours would otherwise wait for the disk to take the ~500 MB the peer left in the page cache
/// (one Save measured 1.02 s that way). Returns (files, bytes).
pub fn warm(root: &Path) -> (u64, u64) {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let mut entries = Vec::new();
    walk(root, root, &mut entries);
    let mut buf = vec![0u8; 1 << 20];
    let (mut files, mut bytes) = (0, 0);
    for (rel, md) in entries {
        if md.is_file()
            && let Ok(mut f) = fs::File::open(root.join(rel))
        {
            files += 1;
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                bytes += n as u64;
            }
        }
    }
    (files, bytes)
}

/// Allocated bytes under `path` (what `du` reports).
pub fn du(path: &Path) -> u64 {
    let own = fs::symlink_metadata(path).map_or(0, |md| md.blocks() * 512);
    let mut entries = Vec::new();
    walk(path, path, &mut entries);
    own + entries.iter().map(|(_, md)| md.blocks() * 512).sum::<u64>()
}

/// One non-directory entry of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file: size, content hash, executable bit.
    File(u64, u64, bool),
    /// A symlink and its target.
    Link(PathBuf),
}

/// Relative path → entry for every file and symlink under `root`. Directories are left out:
/// only content is compared (a tool may or may not recreate a folder whose files it excludes).
pub type Manifest = BTreeMap<PathBuf, Entry>;

pub fn manifest(root: &Path) -> Manifest {
    let mut entries = Vec::new();
    walk(root, root, &mut entries);
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Manifest::new();
    for (rel, md) in entries {
        let p = root.join(&rel);
        if md.is_symlink() {
            out.insert(rel, Entry::Link(fs::read_link(&p).unwrap_or_default()));
        } else if md.is_file() {
            let mut h = std::hash::DefaultHasher::new();
            let mut f = fs::File::open(&p).unwrap();
            let mut len = 0;
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                h.write(&buf[..n]);
                len += n as u64;
            }
            out.insert(rel, Entry::File(len, h.finish(), md.mode() & 0o111 != 0));
        }
    }
    out
}

/// Compares a restored tree with the expected one, leaving out paths `skip` says the tool does
/// not save. Content and symlink targets must match; a lost executable bit is only counted.
/// Returns the number of files whose executable bit differs, or a description of the mismatch.
pub fn check(
    expected: &Manifest,
    actual: &Manifest,
    skip: &dyn Fn(&Path) -> bool,
) -> Result<u64, String> {
    let mut problems = Vec::new();
    let mut mode_diffs = 0;
    for (p, want) in expected.iter().filter(|(p, _)| !skip(p)) {
        match (want, actual.get(p)) {
            (_, None) => problems.push(format!("missing {}", p.display())),
            (Entry::File(l1, h1, x1), Some(Entry::File(l2, h2, x2))) if l1 == l2 && h1 == h2 => {
                mode_diffs += u64::from(x1 != x2);
            }
            (a, Some(b)) if a == b => {}
            _ => problems.push(format!("different {}", p.display())),
        }
    }
    for p in actual.keys() {
        if !expected.contains_key(p) || skip(p) {
            problems.push(format!("unexpected {}", p.display()));
        }
    }
    if problems.is_empty() {
        return Ok(mode_diffs);
    }
    let n = problems.len();
    problems.truncate(3);
    Err(format!("{n} paths differ, e.g. {}", problems.join(", ")))
}

/// Picks `n` files, spread evenly, that every tool saves: plain non-empty files under 1 MiB.
pub fn pick(m: &Manifest, n: usize, skip: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let candidates: Vec<&PathBuf> = m
        .iter()
        .filter(|(p, e)| {
            matches!(e, Entry::File(len, _, false) if *len > 0 && *len < 1 << 20) && !skip(p)
        })
        .map(|(p, _)| p)
        .collect();
    let step = (candidates.len() / (n + 1)).max(1);
    (1..=n)
        .filter_map(|i| candidates.get(i * step).map(|p| (*p).clone()))
        .collect()
}

/// Appends one line to each file.
pub fn append_line(root: &Path, files: &[PathBuf], tag: &str) {
    for f in files {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(root.join(f))
            .unwrap();
        writeln!(file, "// chkpt bench: {tag}").unwrap();
    }
}

/// Rewrites each file with an extra first line.
pub fn modify(root: &Path, files: &[PathBuf], tag: &str) {
    for f in files {
        let p = root.join(f);
        let mut bytes = format!("// modified by the chkpt bench: {tag}\n").into_bytes();
        bytes.extend(fs::read(&p).unwrap());
        fs::write(&p, bytes).unwrap();
    }
}

/// Deletes each file.
pub fn delete(root: &Path, files: &[PathBuf]) {
    for f in files {
        fs::remove_file(root.join(f)).unwrap();
    }
}

/// Files `git` considers ignored under `root` (what chkptd leaves out too), when git exists.
pub fn gitignored(root: &Path, scratch: &Path) -> BTreeSet<PathBuf> {
    let git_dir = scratch.join("probe.git");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("--git-dir")
            .arg(&git_dir)
            .arg("--work-tree")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    let mut out = BTreeSet::new();
    if git(&["init", "-q"]).is_some()
        && let Some(o) = git(&[
            "ls-files",
            "-z",
            "--others",
            "--ignored",
            "--exclude-standard",
        ])
    {
        for p in o.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
            out.insert(PathBuf::from(std::ffi::OsStr::from_bytes(p)));
        }
    }
    let _ = fs::remove_dir_all(&git_dir);
    out
}

/// Size of the files once compressed with `lz4 -1` (their raw size when lz4 is missing).
pub fn lz4_size(root: &Path, files: &[PathBuf]) -> u64 {
    files
        .iter()
        .map(|f| {
            let p = root.join(f);
            Command::new("lz4")
                .args(["-1", "-c", "-q"])
                .arg(&p)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map_or_else(
                    || fs::metadata(&p).map_or(0, |m| m.len()),
                    |o| o.stdout.len() as u64,
                )
        })
        .sum()
}

/// The contents of some files, to put back should a tool's restore leave them wrong.
pub fn read_files(root: &Path, files: &[PathBuf]) -> Vec<(PathBuf, Vec<u8>)> {
    files
        .iter()
        .map(|f| (f.clone(), fs::read(root.join(f)).unwrap()))
        .collect()
}

/// Writes back what [`read_files`] read, so the next tool starts from the right tree.
pub fn put_back(root: &Path, saved: &[(PathBuf, Vec<u8>)]) {
    for (f, bytes) in saved {
        fs::write(root.join(f), bytes).unwrap();
    }
}
