//! The engine against real files: round trips, cost, racy writes, crash safety, corruption.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::sync::atomic::Ordering;

use chkpt_daemon::Error;
use chkpt_daemon::store::catalog::{LoadedIndex, Trigger};
use chkpt_daemon::store::{Id, ObjectKind, Store};
use chkpt_daemon::workspace::restore::RestoreOptions;
use chkpt_daemon::workspace::{Changes, SaveOptions, WatchOptions, Workspace, register};
use proptest::prelude::*;

/// What a folder holds, for comparing: path → (kind, mode, content or link target).
type Listing = BTreeMap<Vec<u8>, (char, u32, Vec<u8>)>;

fn listing(root: &Path) -> Listing {
    fn rec(root: &Path, dir: &Path, out: &mut Listing) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    (
                        'l',
                        0,
                        fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec(),
                    ),
                );
            } else if m.is_dir() {
                out.insert(rel, ('d', mode, Vec::new()));
                rec(root, &p, out);
            } else {
                out.insert(rel, ('f', mode, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    rec(root, root, &mut out);
    out
}

fn open(store: &Store, dir: &Path) -> Workspace {
    let rec = register(store, dir, WatchOptions::default()).unwrap();
    Workspace::open(store, rec).unwrap()
}

fn save(
    ws: &mut Workspace,
    store: &Store,
    changes: Changes,
) -> chkpt_daemon::store::catalog::SnapshotRecord {
    ws.save(store, &SaveOptions::new(Trigger::Manual, changes))
        .unwrap()
        .snapshot
}

fn restore(
    ws: &mut Workspace,
    store: &Store,
    snap: &chkpt_daemon::store::catalog::SnapshotRecord,
    opts: RestoreOptions,
) {
    ws.restore(store, snap, &opts, &Changes::Full, &mut |_, _, _, _| {})
        .unwrap();
}

fn data(len: usize, seed: u64, compressible: bool) -> Vec<u8> {
    if !compressible {
        return chkpt_testkit::noise(len, seed);
    }
    let pattern = b"fn main() { println!(\"hello\"); }\n";
    (0..len).map(|i| pattern[i % pattern.len()]).collect()
}

/// A file tree to build: (path components, what).
#[derive(Debug, Clone)]
enum Item {
    File {
        len: usize,
        seed: u64,
        exec: bool,
        compressible: bool,
    },
    /// A sparse file: `len` bytes long, data only in a few places, holes between.
    Sparse {
        len: u64,
        seed: u64,
    },
    Link(Vec<u8>),
    EmptyDir,
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-e]{1,3}".prop_map(|s| s.into_bytes()),
        1 => Just(b"caf\xe9".to_vec()),          // Latin-1, not UTF-8
        1 => Just(b"\xff\xfe name".to_vec()),
        1 => Just("ünï cödé".as_bytes().to_vec()),
        1 => Just(b".hidden".to_vec()),
    ]
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        6 => (0usize..5000, any::<u64>(), any::<bool>(), any::<bool>())
            .prop_map(|(len, seed, exec, compressible)| Item::File { len, seed, exec, compressible }),
        1 => (any::<u64>(), any::<bool>()).prop_map(|(seed, c)| Item::File { len: 3 << 20, seed, exec: false, compressible: c }),
        1 => Just(Item::File { len: 0, seed: 0, exec: false, compressible: true }),
        // Past the threshold: a file of at most 1 MiB is one blob, its holes stored as zeros.
        1 => ((1u64 << 20) + 1..12 << 20, any::<u64>()).prop_map(|(len, seed)| Item::Sparse { len, seed }),
        2 => "[a-z/.]{1,12}".prop_map(|t| Item::Link(t.into_bytes())),
        1 => Just(Item::EmptyDir),
    ]
}

fn build(root: &Path, items: &[(Vec<Vec<u8>>, Item)]) {
    for (comps, item) in items {
        let mut path = root.to_path_buf();
        let mut ok = true;
        for (i, c) in comps.iter().enumerate() {
            path.push(OsStr::from_bytes(c));
            let last = i + 1 == comps.len();
            match fs::symlink_metadata(&path) {
                Ok(m) if !last && !m.is_dir() => ok = false,
                Ok(_) if last => ok = false,
                Err(_) if !last => fs::create_dir(&path).unwrap(),
                _ => {}
            }
            if !ok {
                break;
            }
        }
        if !ok {
            continue;
        }
        match item {
            Item::File {
                len,
                seed,
                exec,
                compressible,
            } => {
                fs::write(&path, data(*len, *seed, *compressible)).unwrap();
                fs::set_permissions(
                    &path,
                    fs::Permissions::from_mode(if *exec { 0o755 } else { 0o644 }),
                )
                .unwrap();
            }
            Item::Sparse { len, seed } => {
                use std::os::unix::fs::FileExt;
                let f = fs::File::create(&path).unwrap();
                f.set_len(*len).unwrap();
                for i in 0..3 {
                    let at = (seed.rotate_left(i * 20)) % len;
                    f.write_all_at(&data(5000, seed + i as u64, false), at)
                        .unwrap();
                }
            }
            Item::Link(t) => symlink(OsStr::from_bytes(t), &path).unwrap(),
            Item::EmptyDir => fs::create_dir(&path).unwrap(),
        }
    }
}

/// The disk each regular file under `root` takes (`st_blocks`), by path.
fn disk_use(root: &Path) -> BTreeMap<Vec<u8>, u64> {
    use std::os::unix::fs::MetadataExt;
    listing(root)
        .into_iter()
        .filter(|(_, (kind, _, _))| *kind == 'f')
        .map(|(rel, _)| {
            let m = fs::symlink_metadata(root.join(OsStr::from_bytes(&rel))).unwrap();
            (rel, m.blocks() * 512)
        })
        .collect()
}

/// Random changes to a built tree: deletions, rewrites, additions, mode flips, type changes
/// (file → folder, folder → symlink, file → symlink, symlink → file, symlink → folder). The
/// new links point inside the workspace (a sibling, the root) or `outside` it, which a restore
/// must never write into.
fn mutate(root: &Path, outside: &Path, seed: u64) {
    let mut rng = chkpt_testkit::Rng::new(seed);
    let mut next = move || rng.next_u64();
    let all: Vec<_> = listing(root).into_iter().collect();
    let mut linked: Vec<Vec<u8>> = Vec::new();
    for (rel, (kind, _, _)) in all {
        let p = root.join(OsStr::from_bytes(&rel));
        // What was under a folder now a link is not the workspace's any more.
        let under_link = linked
            .iter()
            .any(|l| rel.starts_with(l) && rel.get(l.len()) == Some(&b'/'));
        if under_link || fs::symlink_metadata(&p).is_err() {
            continue;
        }
        let link_target = match next() % 3 {
            0 => outside.as_os_str().as_bytes().to_vec(),
            1 => b".".to_vec(),
            _ => root.as_os_str().as_bytes().to_vec(),
        };
        match (next() % 7, kind) {
            (5, 'd') => {
                fs::remove_dir_all(&p).unwrap();
                symlink(OsStr::from_bytes(&link_target), &p).unwrap();
                linked.push(rel.clone());
            }
            (5, 'f') => {
                fs::remove_file(&p).unwrap();
                symlink(OsStr::from_bytes(&link_target), &p).unwrap();
            }
            (5, 'l') => {
                fs::remove_file(&p).unwrap();
                fs::write(&p, b"was a link").unwrap();
            }
            (6, 'l') => {
                fs::remove_file(&p).unwrap();
                fs::create_dir(&p).unwrap();
                fs::write(p.join("inner"), b"was a link").unwrap();
            }
            (0, 'd') => fs::remove_dir_all(&p).unwrap(),
            (0, _) => fs::remove_file(&p).unwrap(),
            (1, 'f') => fs::write(&p, data((next() % 3000) as usize, next(), true)).unwrap(),
            (2, 'f') => fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap(),
            (3, 'f') => {
                fs::remove_file(&p).unwrap();
                fs::create_dir(&p).unwrap();
                fs::write(p.join("inner"), b"was a file").unwrap();
            }
            (4, 'd') => fs::write(p.join("new-file"), b"added").unwrap(),
            _ => {}
        }
    }
    fs::write(root.join("brand-new"), b"new at top").unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// save → random mutations → restore gives back exactly what was saved, in place and --to
    /// (small files, chunked ones past the threshold, sparse ones), and a restored file takes
    /// no more disk than the one saved (holes stay holes).
    #[test]
    fn round_trip(items in prop::collection::vec((prop::collection::vec(name(), 1..4), item()), 1..40), seed in any::<u64>()) {
        let ws_dir = tempfile::tempdir().unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        build(ws_dir.path(), &items);
        let saved = listing(ws_dir.path());
        let used = disk_use(ws_dir.path());
        let store = Store::open(store_dir.path()).unwrap();
        let mut ws = open(&store, ws_dir.path());
        let snap = save(&mut ws, &store, Changes::Full);
        prop_assert_eq!(snap.files as usize, saved.values().filter(|v| v.0 != 'd').count());

        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("sentinel"), b"not the workspace's").unwrap();
        let outside_before = listing(outside.path());
        mutate(ws_dir.path(), outside.path(), seed);
        restore(&mut ws, &store, &snap, RestoreOptions::default());
        prop_assert_eq!(&listing(ws_dir.path()), &saved);
        prop_assert_eq!(&listing(outside.path()), &outside_before);

        let to = tempfile::tempdir().unwrap();
        restore(&mut ws, &store, &snap, RestoreOptions { to: Some(to.path().to_path_buf()), ..Default::default() });
        prop_assert_eq!(&listing(to.path()), &saved);
        for (rel, back) in disk_use(to.path()) {
            // A file system may allocate a little differently; written zeros are megabytes.
            let was = used.get(&rel).copied().unwrap_or(0);
            prop_assert!(back <= was + (256 << 10), "{:?}: {back} bytes on disk, {was} saved", String::from_utf8_lossy(&rel));
        }
    }
}

/// One edit of a large file in the chunked round trip.
#[derive(Debug, Clone)]
enum Edit {
    /// Overwrite `len` bytes at a fraction (per mille) of the file.
    Write { at: u16, len: usize, seed: u64 },
    /// Cut the file to a length (possibly below the chunking threshold).
    Truncate(usize),
    /// Append `len` bytes (possibly growing it past the threshold).
    Append { len: usize, seed: u64 },
    /// Write `len` bytes `gap` bytes past the end, leaving a hole.
    Hole { gap: usize, len: usize, seed: u64 },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (0u16..=1000, 1usize..70_000, any::<u64>()).prop_map(|(at, len, seed)| Edit::Write { at, len, seed }),
        1 => (0usize..2_500_000).prop_map(Edit::Truncate),
        2 => (1usize..1_500_000, any::<u64>()).prop_map(|(len, seed)| Edit::Append { len, seed }),
        1 => (1usize..8 << 20, 1usize..200_000, any::<u64>()).prop_map(|(gap, len, seed)| Edit::Hole { gap, len, seed }),
    ]
}

fn apply(path: &Path, e: &Edit) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    let size = f.metadata().unwrap().len() as usize;
    match *e {
        Edit::Write { at, len, seed } => {
            let off = size * at as usize / 1000;
            f.seek(SeekFrom::Start(off as u64)).unwrap();
            f.write_all(&data(len, seed, seed % 2 == 0)).unwrap();
        }
        Edit::Truncate(len) => f.set_len(len.min(size) as u64).unwrap(),
        Edit::Append { len, seed } => {
            f.seek(SeekFrom::End(0)).unwrap();
            f.write_all(&data(len, seed, seed % 3 == 0)).unwrap();
        }
        Edit::Hole { gap, len, seed } => {
            f.seek(SeekFrom::Start((size + gap) as u64)).unwrap();
            f.write_all(&data(len, seed, false)).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// A large file (chunked above the threshold, sparse or not) edited at its start, middle
    /// and end, truncated, grown across the threshold both ways and given holes: every
    /// version saved restores byte for byte, in place and `--to`, and the store verifies.
    #[test]
    fn chunked_and_sparse_round_trip(start in 0usize..3_000_000, sparse in any::<bool>(), edits in prop::collection::vec(edit(), 1..6)) {
        let ws_dir = tempfile::tempdir().unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let path = ws_dir.path().join("big.bin");
        fs::write(&path, data(start, 1, false)).unwrap();
        if sparse {
            apply(&path, &Edit::Hole { gap: 5 << 20, len: 4096, seed: 2 });
        }
        fs::write(ws_dir.path().join("small.txt"), b"small").unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let mut ws = open(&store, ws_dir.path());
        let mut versions = vec![(save(&mut ws, &store, Changes::Full), fs::read(&path).unwrap())];
        for e in &edits {
            apply(&path, e);
            let snap = save(&mut ws, &store, Changes::Paths(vec![b"big.bin".to_vec()]));
            versions.push((snap, fs::read(&path).unwrap()));
        }
        let report = store.verify(None).unwrap();
        prop_assert!(report.problems.is_empty(), "{:?}", report.problems);
        for (snap, content) in versions.iter().rev() {
            fs::write(&path, b"overwritten").unwrap();
            restore(&mut ws, &store, snap, RestoreOptions::default());
            prop_assert!(fs::read(&path).unwrap() == *content, "in place, {} bytes", content.len());
            let to = tempfile::tempdir().unwrap();
            restore(&mut ws, &store, snap, RestoreOptions { to: Some(to.path().to_path_buf()), ..Default::default() });
            let back = fs::read(to.path().join("big.bin")).unwrap();
            prop_assert!(back == *content, "--to, {} bytes", content.len());
        }
    }
}

#[test]
fn large_files_stream_and_random_data_does_not_grow() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let random = data(12 << 20, 99, false);
    let text = data(12 << 20, 0, true);
    fs::write(ws_dir.path().join("random.bin"), &random).unwrap();
    fs::write(ws_dir.path().join("text.txt"), &text).unwrap();
    fs::write(ws_dir.path().join("copy.txt"), &text).unwrap(); // deduplicated
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, ws_dir.path());
    let snap = save(&mut ws, &store, Changes::Full);
    let written = store.counters.pack_bytes_written.load(Ordering::Relaxed);
    assert!(
        written < (12 << 20) + (2 << 20),
        "random data grew or the copy was stored twice: {written}"
    );
    let list = store.chunk_list(&Id::of(&random)).unwrap().unwrap();
    assert!(list.pieces.len() > 12 << 20 >> 17, "stored as chunks");
    for chunk in list.chunk_ids() {
        let loc = store.locate(&chunk).unwrap().unwrap();
        assert_eq!(loc.len, loc.raw_len, "incompressible chunks are stored raw");
    }
    fs::remove_file(ws_dir.path().join("random.bin")).unwrap();
    fs::write(ws_dir.path().join("text.txt"), b"short").unwrap();
    restore(&mut ws, &store, &snap, RestoreOptions::default());
    assert_eq!(fs::read(ws_dir.path().join("random.bin")).unwrap(), random);
    assert_eq!(fs::read(ws_dir.path().join("text.txt")).unwrap(), text);
}

#[test]
fn save_of_one_change_in_20k_files_costs_the_change_only() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    for d in 0..200 {
        let dir = ws_dir.path().join(format!("dir{d:03}/sub"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            fs::write(
                dir.join(format!("f{f}.rs")),
                format!("// file {d} {f}\nfn f{f}() {{}}\n"),
            )
            .unwrap();
        }
    }
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, ws_dir.path());
    let first = save(&mut ws, &store, Changes::Full);
    assert_eq!(first.files, 20_000);

    let rel = b"dir117/sub/f42.rs".to_vec();
    fs::write(ws_dir.path().join("dir117/sub/f42.rs"), b"changed\n").unwrap();
    let bytes_before = store.counters.pack_bytes_written.load(Ordering::Relaxed);
    let stats_before = ws.counters.paths_stated.load(Ordering::Relaxed);
    let hashed_before = ws.counters.files_hashed.load(Ordering::Relaxed);
    let second = save(&mut ws, &store, Changes::Paths(vec![rel]));
    let written = store.counters.pack_bytes_written.load(Ordering::Relaxed) - bytes_before;
    let stated = ws.counters.paths_stated.load(Ordering::Relaxed) - stats_before;
    let hashed = ws.counters.files_hashed.load(Ordering::Relaxed) - hashed_before;
    assert!(written < 64 * 1024, "one change wrote {written} bytes");
    assert_eq!(stated, 1, "stat-ed more than the dirty path");
    assert_eq!(hashed, 1);
    assert_eq!((second.modified, second.added, second.deleted), (1, 0, 0));
    assert_eq!(second.new_bytes, written);

    // A full stat-walk of an unchanged tree re-reads nothing (once past the racy window).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = store.batch();
    ws.refresh(&b, &Changes::Full).unwrap();
    drop(b);
    let b = store.batch();
    let hashed_before = ws.counters.files_hashed.load(Ordering::Relaxed);
    ws.refresh(&b, &Changes::Full).unwrap();
    assert_eq!(
        ws.counters.files_hashed.load(Ordering::Relaxed),
        hashed_before
    );
}

/// A folder of 6,000 files is stored as parts (tree format rule 5): one changed file writes
/// its part and the split tree, not the whole folder's tree; diff names only that file; both
/// snapshots restore exactly; and after the first is deleted, a GC keeps the parts the second
/// shares with it and verify stays clean.
#[test]
fn one_change_in_a_folder_of_6000_entries_rewrites_one_part() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let big = ws_dir.path().join("cache");
    fs::create_dir_all(&big).unwrap();
    for f in 0..6_000 {
        fs::write(
            big.join(format!("entry-{f:05}.json")),
            format!("{{\"n\": {f}}}\n"),
        )
        .unwrap();
    }
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, ws_dir.path());
    let first = save(&mut ws, &store, Changes::Full);
    assert_eq!(first.files, 6_000);
    let before = listing(ws_dir.path());

    let rel = b"cache/entry-02345.json".to_vec();
    fs::write(big.join("entry-02345.json"), b"changed\n").unwrap();
    let bytes_before = store.counters.pack_bytes_written.load(Ordering::Relaxed);
    let second = save(&mut ws, &store, Changes::Paths(vec![rel.clone()]));
    let written = store.counters.pack_bytes_written.load(Ordering::Relaxed) - bytes_before;
    // The folder's tree whole holds 6,000 ids of 16 random bytes: at least 94 KiB. One part
    // holds at most 2,048 entries (tree format rule 6): here the changed one has 1,911, ~39 KiB.
    assert!(written < 48 * 1024, "one change wrote {written} bytes");
    assert_eq!((second.modified, second.added, second.deleted), (1, 0, 0));
    let diff =
        chkpt_daemon::workspace::diff::diff(&store, Some(first.root), Some(second.root)).unwrap();
    let paths: Vec<&[u8]> = diff.iter().map(|e| e.path.as_slice()).collect();
    assert_eq!(paths, [rel.as_slice()]);
    let after = listing(ws_dir.path());

    let restored = |ws: &mut Workspace, snap| {
        let to = tempfile::tempdir().unwrap();
        restore(
            ws,
            &store,
            snap,
            RestoreOptions {
                to: Some(to.path().to_path_buf()),
                ..Default::default()
            },
        );
        listing(to.path())
    };
    assert!(restored(&mut ws, &first) == before, "the first snapshot");
    assert!(restored(&mut ws, &second) == after, "the second snapshot");
    store.catalog().remove_snapshot(&first).unwrap();
    store.gc().unwrap();
    let problems = store.verify(None).unwrap().problems;
    assert!(problems.is_empty(), "{problems:?}");
    assert!(restored(&mut ws, &second) == after, "the second after a GC");
}

/// Runs a full save of `ws` with its watch placed only after `before_watch` has run, once the
/// walk has read `read` files: what `before_watch` changes reaches neither the walk's first
/// look nor a watcher.
fn save_changed_before_watch(
    ws: &mut Workspace,
    store: &Store,
    read: u64,
    before_watch: impl FnOnce(),
) -> chkpt_daemon::store::catalog::SnapshotRecord {
    let placed = std::sync::Arc::new(std::sync::OnceLock::new());
    ws.set_watching(placed.clone());
    let counters = ws.counters.clone();
    std::thread::scope(|s| {
        let saving = s.spawn(|| save(ws, store, Changes::Full));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while counters.files_hashed.load(Ordering::SeqCst) < read {
            assert!(
                std::time::Instant::now() < deadline,
                "the walk never read the files"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        before_watch();
        placed.set(std::time::Instant::now()).unwrap();
        saving.join().unwrap()
    })
}

#[test]
fn what_a_full_save_saw_before_the_watch_was_in_place_is_looked_at_again() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let root = ws_dir.path();
    fs::create_dir(root.join("sub")).unwrap();
    for name in ["a.txt", "sub/b.txt", "sub/c.txt"] {
        fs::write(root.join(name), format!("first version of {name}\n")).unwrap();
    }
    // Past the racy window: only a changed stat can make the save look again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, root);
    // Every file was read: the walk saw them all before these changes.
    let snap = save_changed_before_watch(&mut ws, &store, 3, || {
        fs::write(root.join("a.txt"), b"second, longer version of a.txt\n").unwrap();
        fs::write(root.join("sub/new.txt"), b"created during the save\n").unwrap();
        fs::remove_file(root.join("sub/c.txt")).unwrap();
    });
    let read = |path: &[u8]| {
        chkpt_daemon::workspace::diff::lookup(&store, snap.root, path)
            .unwrap()
            .map(|e| store.read_vec(&e.id).unwrap())
    };
    assert_eq!(
        read(b"a.txt").as_deref(),
        Some(&b"second, longer version of a.txt\n"[..])
    );
    assert_eq!(
        read(b"sub/new.txt").as_deref(),
        Some(&b"created during the save\n"[..])
    );
    assert_eq!(read(b"sub/c.txt"), None);
    assert_eq!(snap.files, 3);
}

#[test]
fn an_ignore_file_created_before_the_watch_was_in_place_is_walked_again() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let root = ws_dir.path();
    fs::write(root.join(".gitignore"), b"*.log\n").unwrap();
    fs::create_dir_all(root.join("sub/deep")).unwrap();
    fs::write(root.join("sub/deep/a.txt"), b"a\n").unwrap();
    fs::write(root.join("sub/deep/keep.log"), b"wanted after all\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, root);
    let snap = save_changed_before_watch(&mut ws, &store, 2, || {
        // sub/ was listed already: only its changed time tells of the new file; neither
        // sub/deep/ nor keep.log changed.
        fs::write(root.join("sub/.gitignore"), b"!keep.log\n").unwrap();
    });
    let entry = chkpt_daemon::workspace::diff::lookup(&store, snap.root, b"sub/deep/keep.log")
        .unwrap()
        .expect("sub/deep/keep.log is saved once a new ignore file takes it back");
    assert_eq!(store.read_vec(&entry.id).unwrap(), b"wanted after all\n");
}

#[test]
fn an_ignore_file_changed_before_the_watch_was_in_place_is_walked_again() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let root = ws_dir.path();
    fs::write(root.join(".gitignore"), b"secret.txt\nscratch/\n").unwrap();
    fs::write(root.join("secret.txt"), b"now wanted\n").unwrap();
    fs::write(root.join("a.txt"), b"a\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, root);
    let snap = save_changed_before_watch(&mut ws, &store, 2, || {
        // secret.txt is no longer left out; nothing tells the save but its second look.
        fs::write(root.join(".gitignore"), b"scratch/\n").unwrap();
    });
    let entry = chkpt_daemon::workspace::diff::lookup(&store, snap.root, b"secret.txt")
        .unwrap()
        .expect("secret.txt is saved once the ignore file no longer names it");
    assert_eq!(store.read_vec(&entry.id).unwrap(), b"now wanted\n");
}

#[test]
fn racy_same_size_rewrite_in_the_same_tick_is_captured() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, ws_dir.path());
    let f = ws_dir.path().join("racy.txt");
    for round in 0..20u32 {
        fs::write(&f, format!("one {round:04}")).unwrap();
        let a = save(&mut ws, &store, Changes::Paths(vec![b"racy.txt".to_vec()]));
        fs::write(&f, format!("two {round:04}")).unwrap(); // same size, most likely same tick
        let b = save(&mut ws, &store, Changes::Paths(vec![b"racy.txt".to_vec()]));
        assert_ne!(a.root, b.root, "round {round}: the rewrite was missed");
        let mut out = Vec::new();
        let entry = chkpt_daemon::workspace::diff::lookup(&store, b.root, b"racy.txt")
            .unwrap()
            .unwrap();
        store.read_into(&entry.id, &mut out).unwrap();
        assert_eq!(out, format!("two {round:04}").into_bytes());
    }
}

#[test]
fn gitignore_and_dependency_folders_by_evidence() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let w = ws_dir.path();
    fs::write(w.join(".gitignore"), "*.o\n").unwrap();
    fs::create_dir_all(w.join("target/debug")).unwrap();
    fs::write(
        w.join("target/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    fs::write(w.join("target/debug/app"), b"binary").unwrap();
    fs::create_dir_all(w.join("drivers/target")).unwrap();
    fs::write(w.join("drivers/target/core.c"), b"int x;").unwrap();
    fs::write(w.join("main.o"), b"obj").unwrap();
    fs::create_dir_all(w.join(".git")).unwrap();
    fs::write(w.join(".git/HEAD"), b"ref").unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, w);
    let snap = save(&mut ws, &store, Changes::Full);
    let paths: Vec<String> = chkpt_daemon::workspace::diff::diff(&store, None, Some(snap.root))
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect();
    assert_eq!(paths, vec![".gitignore", "drivers/target/core.c"]);
    // Both exclusions are listed for the user, with their reasons; .git is not news.
    let excluded: Vec<(String, String)> = ws
        .excluded()
        .iter()
        .map(|(p, why)| (String::from_utf8_lossy(p).into_owned(), why.describe()))
        .collect();
    assert_eq!(excluded.len(), 2, "{excluded:?}");
    assert_eq!(excluded[0].0, "main.o");
    assert!(excluded[0].1.contains("ignore file"));
    assert_eq!(excluded[1].0, "target");
    assert!(excluded[1].1.contains("CACHEDIR.TAG"));
}

#[test]
fn fifo_is_skipped_and_vanished_file_is_not_an_error() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let fifo = ws_dir.path().join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    fs::write(ws_dir.path().join("a"), b"a").unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, ws_dir.path());
    let snap = save(&mut ws, &store, Changes::Full);
    assert_eq!(snap.files, 1);
    let snap = save(
        &mut ws,
        &store,
        Changes::Paths(vec![b"gone-before-read".to_vec(), b"pipe".to_vec()]),
    );
    assert_eq!(snap.files, 1);
}

#[test]
fn verify_names_the_path_hurt_by_a_flipped_byte_and_restore_refuses_before_writing() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let content = data(50_000, 5, false);
    fs::create_dir_all(ws_dir.path().join("src")).unwrap();
    fs::write(ws_dir.path().join("src/precious.bin"), &content).unwrap();
    fs::write(ws_dir.path().join("other.txt"), b"fine").unwrap();
    let snap_id;
    let loc;
    {
        let store = Store::open(store_dir.path()).unwrap();
        let mut ws = open(&store, ws_dir.path());
        snap_id = save(&mut ws, &store, Changes::Full).id;
        loc = store.locate(&Id::of(&content)).unwrap().unwrap();
        assert!(store.verify(None).unwrap().problems.is_empty());
    }
    let pack = store_dir
        .path()
        .join(format!("packs/{:08x}.pack", loc.pack));
    let mut bytes = fs::read(&pack).unwrap();
    bytes[(loc.offset + 100) as usize] ^= 0x40;
    fs::write(&pack, bytes).unwrap();

    let store = Store::open(store_dir.path()).unwrap();
    let report = store.verify(None).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].path, b"src/precious.bin".to_vec());
    assert_eq!(report.problems[0].snapshot, Some(snap_id));

    let mut ws = open(&store, ws_dir.path());
    fs::write(ws_dir.path().join("src/precious.bin"), b"edited since").unwrap();
    fs::write(ws_dir.path().join("other.txt"), b"edited too").unwrap();
    let snap = store.catalog().snapshot(snap_id).unwrap().unwrap();
    let res = ws.restore(
        &store,
        &snap,
        &RestoreOptions::default(),
        &Changes::Full,
        &mut |_, _, _, _| {},
    );
    assert!(matches!(res, Err(Error::Corrupt(_))), "{res:?}");
    assert_eq!(
        fs::read(ws_dir.path().join("src/precious.bin")).unwrap(),
        b"edited since"
    );
    assert_eq!(
        fs::read(ws_dir.path().join("other.txt")).unwrap(),
        b"edited too"
    );
    let leftovers: Vec<_> = fs::read_dir(ws_dir.path().join("src")).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "staged temp files were cleaned up");

    // Restores elsewhere (--to) leave an empty directory, or one that holds files, as it was.
    for existing in [false, true] {
        let to = tempfile::tempdir().unwrap();
        if existing {
            fs::write(to.path().join("keep.txt"), b"mine").unwrap();
        }
        let res = ws.restore(
            &store,
            &snap,
            &RestoreOptions {
                to: Some(to.path().to_path_buf()),
                ..Default::default()
            },
            &Changes::Full,
            &mut |_, _, _, _| {},
        );
        assert!(matches!(res, Err(Error::Corrupt(_))), "{res:?}");
        let expected: Listing = if existing {
            BTreeMap::from([(b"keep.txt".to_vec(), ('f', 0o644, b"mine".to_vec()))])
        } else {
            BTreeMap::new()
        };
        let mut got = listing(to.path());
        for (_, (_, mode, _)) in got.iter_mut() {
            *mode &= 0o644;
        }
        assert_eq!(got, expected, "restore --to left changes behind");
    }
}

#[test]
fn hostile_restore_paths_are_refused() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    fs::write(ws_dir.path().join("a"), b"a").unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, ws_dir.path());
    let snap = save(&mut ws, &store, Changes::Full);
    for bad in [&b"../etc/passwd"[..], b"/etc/passwd", b"a\0b", b"x/../../y"] {
        let opts = RestoreOptions {
            paths: vec![bad.to_vec()],
            ..Default::default()
        };
        let res = ws.restore(&store, &snap, &opts, &Changes::Full, &mut |_, _, _, _| {});
        assert!(
            matches!(res, Err(Error::InvalidArgument(_))),
            "{bad:?}: {res:?}"
        );
    }
    // A symlinked directory in the workspace is never written through.
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir(ws_dir.path().join("d")).unwrap();
    fs::write(ws_dir.path().join("d/f"), b"inside").unwrap();
    let snap2 = save(&mut ws, &store, Changes::Full);
    fs::remove_dir_all(ws_dir.path().join("d")).unwrap();
    symlink(outside.path(), ws_dir.path().join("d")).unwrap();
    let opts = RestoreOptions {
        paths: vec![b"d/f".to_vec()],
        ..Default::default()
    };
    let res = ws.restore(&store, &snap2, &opts, &Changes::Full, &mut |_, _, _, _| {});
    assert!(res.is_err());
    assert!(
        fs::read_dir(outside.path()).unwrap().next().is_none(),
        "nothing written outside"
    );
}

#[test]
fn delete_and_gc_free_the_bytes_of_what_went() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, ws_dir.path());
    fs::write(ws_dir.path().join("big"), data(2 << 20, 1, false)).unwrap();
    let old = save(&mut ws, &store, Changes::Full);
    fs::write(ws_dir.path().join("big"), data(2 << 20, 2, false)).unwrap();
    let new = save(&mut ws, &store, Changes::Full);
    store.catalog().remove_snapshot(&old).unwrap();
    let report = store.gc().unwrap();
    assert!(report.objects_removed >= 1);
    // All of it but, where it is freed in place, a block at either end of each dead run.
    assert!(report.bytes_reclaimed >= (2 << 20) - 8192, "{report:?}");
    let problems = store.verify(None).unwrap().problems;
    assert!(problems.is_empty(), "{problems:?}");
    let to = tempfile::tempdir().unwrap();
    restore(
        &mut ws,
        &store,
        &new,
        RestoreOptions {
            to: Some(to.path().to_path_buf()),
            ..Default::default()
        },
    );
    assert_eq!(
        fs::read(to.path().join("big")).unwrap(),
        data(2 << 20, 2, false)
    );
    // Saves after a GC still work (cached tree ids are re-checked).
    fs::write(ws_dir.path().join("small"), b"x").unwrap();
    let after = save(&mut ws, &store, Changes::Paths(vec![b"small".to_vec()]));
    assert!(store.verify(None).unwrap().problems.is_empty());
    assert_eq!(after.files, 2);
}

/// Runs `test` (this binary's test of that exact name) again in a child process with `var` set
/// to `dir`: the test then plays the child's part. Returns the child.
fn spawn_child(test: &str, var: &str, dir: &Path) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(var, dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// The child's part: saves once, then writes more objects into a new pack and dies before
/// committing them.
fn crash_mid_save(dir: &Path) -> ! {
    let store = Store::open(dir.join("store")).unwrap();
    let mut ws = open(&store, &dir.join("ws"));
    save(&mut ws, &store, Changes::Full);
    store.close_writers();
    fs::write(dir.join("ws/new.bin"), data(1 << 20, 3, false)).unwrap();
    let batch = store.batch();
    ws.refresh(&batch, &Changes::Full).unwrap();
    std::process::abort();
}

#[test]
fn save_interrupted_before_catalog_commit_leaves_a_clean_store_and_gc_reclaims_the_orphan() {
    const CHILD: &str = "CHKPT_CRASH_CHILD";
    if let Some(dir) = std::env::var_os(CHILD) {
        crash_mid_save(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("ws")).unwrap();
    fs::write(dir.path().join("ws/kept.txt"), b"acknowledged content").unwrap();
    let status = spawn_child(
        "save_interrupted_before_catalog_commit_leaves_a_clean_store_and_gc_reclaims_the_orphan",
        CHILD,
        dir.path(),
    )
    .wait()
    .unwrap();
    // abort() ends the child with SIGABRT: no exit code.
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGABRT),
        "the child was meant to die mid-save: {status}"
    );
    let packs = |d: &Path| fs::read_dir(d.join("store/packs")).unwrap().count();
    assert_eq!(
        packs(dir.path()),
        2,
        "the child left a pack it never committed"
    );

    let store = Store::open(dir.path().join("store")).unwrap();
    assert!(store.verify(None).unwrap().problems.is_empty());
    let ws_rec = store.catalog().workspaces().unwrap().pop().unwrap();
    let snap = store.catalog().latest(ws_rec.id).unwrap().unwrap();
    assert_eq!(snap.files, 1);
    let report = store.gc().unwrap();
    assert_eq!(report.packs_removed, 1, "{report:?}");
    assert!(report.bytes_reclaimed >= 1 << 20);
    assert_eq!(packs(dir.path()), 1);
    let mut ws = Workspace::open(&store, ws_rec).unwrap();
    let to = tempfile::tempdir().unwrap();
    restore(
        &mut ws,
        &store,
        &snap,
        RestoreOptions {
            to: Some(to.path().to_path_buf()),
            ..Default::default()
        },
    );
    assert_eq!(
        fs::read(to.path().join("kept.txt")).unwrap(),
        b"acknowledged content"
    );
}

/// The child's part: restores the first snapshot in place (the parent kills it).
fn restore_until_killed(dir: &Path) -> ! {
    let store = Store::open(dir.join("store")).unwrap();
    let mut ws = open(&store, &dir.join("ws"));
    let ws_id = store.catalog().workspaces().unwrap()[0].id;
    let first = store
        .catalog()
        .snapshots_of(ws_id, None, 10)
        .unwrap()
        .pop()
        .unwrap();
    restore(&mut ws, &store, &first, RestoreOptions::default());
    // Reaching here means the parent was too slow to kill us: that run proves nothing.
    std::process::exit(3);
}

#[test]
fn a_restore_killed_midway_is_finished_when_the_workspace_is_next_opened() {
    const CHILD: &str = "CHKPT_RESTORE_CHILD";
    if let Some(dir) = std::env::var_os(CHILD) {
        restore_until_killed(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let ws_dir = dir.path().join("ws");
    for d in 0..40 {
        fs::create_dir_all(ws_dir.join(format!("d{d}"))).unwrap();
        for f in 0..50 {
            fs::write(
                ws_dir.join(format!("d{d}/f{f}")),
                data(4000, (d * 100 + f) as u64, false),
            )
            .unwrap();
        }
    }
    let expected = listing(&ws_dir);
    {
        let store = Store::open(dir.path().join("store")).unwrap();
        let mut ws = open(&store, &ws_dir);
        save(&mut ws, &store, Changes::Full);
        for d in 0..40 {
            for f in 0..50 {
                fs::write(ws_dir.join(format!("d{d}/f{f}")), b"edited").unwrap();
            }
        }
        save(&mut ws, &store, Changes::Full);
    }
    let journal = dir.path().join("store/journal");
    let mut child = spawn_child(
        "a_restore_killed_midway_is_finished_when_the_workspace_is_next_opened",
        CHILD,
        dir.path(),
    );
    // Kill it the moment its journal exists: mid-restore.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let has_journal = || {
        fs::read_dir(&journal)
            .map(|d| {
                d.flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "restore"))
            })
            .unwrap_or(false)
    };
    while !has_journal() {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never started restoring"
        );
        std::thread::yield_now();
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the child was meant to be killed mid-restore (exit code 3: it finished first): {status}"
    );

    let store = Store::open(dir.path().join("store")).unwrap();
    let mut ws = open(&store, &ws_dir);
    let done = ws
        .finish_interrupted_restore(&store)
        .unwrap()
        .expect("a journal to finish");
    assert!(done.pre_restore_snapshot.is_some());
    assert_eq!(
        listing(&ws_dir),
        expected,
        "the interrupted restore was finished exactly"
    );
    assert!(
        ws.finish_interrupted_restore(&store).unwrap().is_none(),
        "the journal is gone"
    );
    assert!(store.verify(None).unwrap().problems.is_empty());
}

/// A restore that fails after it began writing (here the workspace folder is moved away under
/// it) was reported as failed: the next start must not apply it again over what the user has
/// done since.
#[test]
fn a_failed_restore_is_not_applied_again_at_the_next_start() {
    let base = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let root = base.path().join("ws");
    let away = base.path().join("away");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("a.txt"), b"first").unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, &root);
    let first = save(&mut ws, &store, Changes::Full);
    fs::write(root.join("a.txt"), b"second").unwrap();
    let res = ws.restore(
        &store,
        &first,
        &RestoreOptions::default(),
        &Changes::Full,
        &mut |done, total, _, _| {
            if done == total && root.exists() {
                fs::rename(&root, &away).unwrap();
            }
        },
    );
    assert!(res.is_err(), "{res:?}");
    fs::rename(&away, &root).unwrap();
    fs::write(root.join("a.txt"), b"the user's edit after the failure").unwrap();
    let mut ws = open(&store, &root);
    assert!(ws.finish_interrupted_restore(&store).unwrap().is_none());
    assert_eq!(
        fs::read(root.join("a.txt")).unwrap(),
        b"the user's edit after the failure"
    );
}

#[test]
fn a_crafted_snapshot_with_hostile_names_cannot_write_outside_its_target() {
    use chkpt_daemon::store::{Entry, Kind, Tree};
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(ws_dir.path().join("a"), b"a").unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, ws_dir.path());
    let honest = save(&mut ws, &store, Changes::Full);
    let escape = outside.path().join("pwned").display().to_string();
    for name in [
        "..".to_string(),
        "../pwned".to_string(),
        escape,
        "a\0b".to_string(),
    ] {
        // Encoding does not check names; a hand-made tree can hold anything.
        let b = store.batch();
        let (blob, _) = b.put(b"evil", ObjectKind::Blob).unwrap();
        let entry = Entry {
            name: name.clone().into_bytes(),
            kind: Kind::File,
            mode: 0o644,
            size: 4,
            id: blob,
        };
        let (tree, _) = b
            .put(
                &Tree {
                    entries: vec![entry],
                }
                .encode(),
                ObjectKind::Tree,
            )
            .unwrap();
        b.finish().unwrap();
        let mut crafted = honest.clone();
        crafted.id = chkpt_daemon::store::SnapshotId::new(crafted.id.get() ^ 0xdead_beef);
        crafted.root = tree;
        store.catalog().put_snapshot(&crafted).unwrap();
        let to = tempfile::tempdir().unwrap();
        for opts in [
            RestoreOptions::default(),
            RestoreOptions {
                to: Some(to.path().to_path_buf()),
                ..Default::default()
            },
        ] {
            let res = ws.restore(
                &store,
                &crafted,
                &opts,
                &Changes::Full,
                &mut |_, _, _, _| {},
            );
            assert!(matches!(res, Err(Error::Corrupt(_))), "{name:?}: {res:?}");
        }
        assert!(
            fs::read_dir(outside.path()).unwrap().next().is_none(),
            "{name:?} wrote outside"
        );
        assert!(
            fs::read_dir(to.path()).unwrap().next().is_none(),
            "{name:?} wrote into --to"
        );
        assert_eq!(fs::read(ws_dir.path().join("a")).unwrap(), b"a");
        store.catalog().remove_snapshot(&crafted).unwrap();
    }
}

/// The warm index is persisted as a base plus journal segments; reopened at each stage (journal
/// appended, journal folded into a new base) it equals the live index and re-reads nothing.
#[test]
fn the_persisted_warm_index_survives_journal_appends_and_base_rewrites() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let path = |i: usize| format!("d{}/f{i}", i % 30);
    for i in 0..3000 {
        fs::create_dir_all(ws_dir.path().join(format!("d{}", i % 30))).unwrap();
        fs::write(ws_dir.path().join(path(i)), format!("file {i}")).unwrap();
    }
    let rels = |range: std::ops::Range<usize>| -> Vec<Vec<u8>> {
        range.map(|i| path(i).into_bytes()).collect()
    };
    let (ws_id, mut expected) = {
        let store = Store::open(store_dir.path()).unwrap();
        let mut ws = open(&store, ws_dir.path());
        save(&mut ws, &store, Changes::Full);
        (ws.record().id, ws.index().entries())
    };
    // (what, files touched, deleted rather than rewritten, left in the journal)
    let stages = [
        ("400 files modified", 0..400, false, true),
        ("100 files deleted", 2900..3000, true, true),
        ("1,500 files modified", 1000..2500, false, false),
    ];
    for (what, touched, delete, journaled) in stages {
        let store = Store::open(store_dir.path()).unwrap();
        let rec = store.catalog().workspace(ws_id).unwrap().unwrap();
        let mut ws = Workspace::open(&store, rec).unwrap();
        assert_eq!(ws.index().entries(), expected, "reopened before: {what}");
        for i in touched.clone() {
            let file = ws_dir.path().join(path(i));
            if delete {
                fs::remove_file(file).unwrap();
            } else {
                fs::write(file, format!("{what} {i}")).unwrap();
            }
        }
        save(&mut ws, &store, Changes::Paths(rels(touched)));
        expected = ws.index().entries();
        let LoadedIndex {
            entries: persisted,
            journal,
        } = store.catalog().load_index(ws_id).unwrap();
        assert_eq!(
            journal > 0,
            journaled,
            "{what}: journal of {journal} entries"
        );
        // A directory's persisted entry holds its tree's id (format rule 5); in memory, the
        // tree is cached in the node instead.
        let persisted: BTreeMap<_, _> = persisted
            .into_iter()
            .map(|(p, mut m)| {
                if m.kind == chkpt_daemon::store::Kind::Dir {
                    m.id = Default::default();
                }
                (p, Some(m))
            })
            .collect();
        let live: BTreeMap<_, _> = expected.iter().map(|c| (c.path.clone(), c.meta)).collect();
        assert_eq!(persisted, live, "persisted after: {what}");
    }
    // Once past the racy window, a full save re-reads the racy files for the last time; after
    // a reopen, a full stat-walk re-reads nothing.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    {
        let store = Store::open(store_dir.path()).unwrap();
        let rec = store.catalog().workspace(ws_id).unwrap().unwrap();
        let mut ws = Workspace::open(&store, rec).unwrap();
        save(&mut ws, &store, Changes::Full);
        expected = ws.index().entries();
    }
    let store = Store::open(store_dir.path()).unwrap();
    let rec = store.catalog().workspace(ws_id).unwrap().unwrap();
    let mut ws = Workspace::open(&store, rec).unwrap();
    let b = store.batch();
    ws.refresh(&b, &Changes::Full).unwrap();
    assert_eq!(ws.counters.files_hashed.load(Ordering::Relaxed), 0);
    assert_eq!(ws.index().entries(), expected);
}

/// `--to` restores, into an empty directory (written in a private staging directory, moved
/// out at the end) and into one that holds files, with overlapping paths.
#[test]
fn restore_to_an_empty_or_a_used_directory_with_overlapping_paths() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(ws_dir.path().join("src/deep")).unwrap();
    fs::write(ws_dir.path().join("src/a.txt"), b"a").unwrap();
    fs::write(ws_dir.path().join("src/deep/b.txt"), b"b").unwrap();
    fs::write(ws_dir.path().join("top.txt"), b"top").unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, ws_dir.path());
    let snap = save(&mut ws, &store, Changes::Full);
    let expected = listing(ws_dir.path());
    for (paths, used) in [
        (vec![], false),
        (vec![b"src".to_vec(), b"src/a.txt".to_vec()], false),
        (vec![], true),
    ] {
        let to = tempfile::tempdir().unwrap();
        if used {
            fs::write(to.path().join("mine.txt"), b"mine").unwrap();
        }
        restore(
            &mut ws,
            &store,
            &snap,
            RestoreOptions {
                to: Some(to.path().to_path_buf()),
                paths: paths.clone(),
                ..Default::default()
            },
        );
        let mut want = expected.clone();
        if !paths.is_empty() {
            want.retain(|p, _| p.starts_with(b"src"));
        }
        if used {
            let mine = fs::symlink_metadata(to.path().join("mine.txt")).unwrap();
            want.insert(
                b"mine.txt".to_vec(),
                ('f', mine.permissions().mode() & 0o7777, b"mine".to_vec()),
            );
        }
        assert_eq!(listing(to.path()), want, "paths {paths:?}, used {used}");
    }
}
