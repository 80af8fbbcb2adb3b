//! Stores written by earlier chkptd versions keep working: a fixture data directory of each
//! record format (see `store::records`, format rule 4) opens, lists its snapshots, restores
//! them byte for byte and verifies clean.
//!
//! `fixtures/store-format-1.tar.gz` was made by chkptd writing record format 1 (as of commit e2b9a47): a
//! folder `/tmp/fx/ws` watched (baseline), saved with `-m "first manual" --pin`, then edited
//! (`src/main.rs` rewritten, `src/deep/x.txt` removed, `new.txt` added) and saved with
//! `-m second`. `expected/baseline` and `expected/latest` hold the folder at those moments.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use chkpt_daemon::store::Store;
use chkpt_daemon::store::catalog::{self, Trigger};
use chkpt_daemon::workspace::restore::RestoreOptions;
use chkpt_daemon::workspace::{Changes, WatchOptions, Workspace, register};

fn unpack(fixture: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let archive = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let st = Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "tar could not unpack {}", archive.display());
    dir
}

/// Every entry under `a` and `b`, with content, exec bit and link target, must be equal.
fn assert_same_tree(a: &Path, b: &Path) {
    let list = |root: &Path| {
        let mut v: Vec<_> = walk(root)
            .into_iter()
            .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
            .collect();
        v.sort();
        v
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(la, lb, "the same paths");
    for rel in la {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let (ma, mb) = (
            fs::symlink_metadata(&pa).unwrap(),
            fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{}", rel.display());
        if ma.file_type().is_symlink() {
            assert_eq!(fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
        } else if ma.is_file() {
            assert_eq!(
                fs::read(&pa).unwrap(),
                fs::read(&pb).unwrap(),
                "{}",
                rel.display()
            );
            assert_eq!(
                ma.permissions().mode() & 0o111,
                mb.permissions().mode() & 0o111,
                "exec bit of {}",
                rel.display()
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        out.push(p.clone());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

#[test]
fn a_store_of_record_format_1_opens_lists_restores_and_verifies() {
    let dir = unpack("store-format-1.tar.gz");
    let store = Store::open(dir.path().join("data")).unwrap();
    let cat = store.catalog();
    let workspaces = cat.workspaces().unwrap();
    assert_eq!(workspaces.len(), 1);
    let record = workspaces[0].clone();
    assert_eq!(record.path, b"/tmp/fx/ws");
    assert_eq!((record.idle_ms, record.max_delay_ms), (1000, 2000));
    let snaps = cat.snapshots_of(record.id, None, 100).unwrap();
    let brief: Vec<_> = snaps
        .iter()
        .map(|s| (s.message.as_str(), s.trigger, s.pinned, s.files))
        .collect();
    assert_eq!(
        brief,
        vec![
            ("second", Trigger::Manual, false, 6),
            ("first manual", Trigger::Manual, true, 6),
            ("baseline", Trigger::Auto, false, 6),
        ]
    );
    assert_eq!(
        (snaps[0].added, snaps[0].modified, snaps[0].deleted),
        (1, 1, 1)
    );
    let report = store.verify(None).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.objects_checked >= 8, "{report:?}");

    let mut ws = Workspace::open(&store, record.clone()).unwrap();
    for (snap, expected) in [(&snaps[0], "latest"), (&snaps[2], "baseline")] {
        let out = tempfile::tempdir().unwrap();
        let to = out.path().join("restored");
        let opts = RestoreOptions {
            paths: vec![],
            dry_run: false,
            to: Some(to.clone()),
            skip_checkpoint: true,
            include_git: false,
            force: false,
        };
        ws.restore(
            &store,
            snap,
            &opts,
            &Changes::Paths(vec![]),
            &mut |_, _, _, _| {},
        )
        .unwrap();
        assert_same_tree(&dir.path().join("expected").join(expected), &to);
    }
    // A record changed now is written in today's format, and reads back.
    let mut pinned = snaps[1].clone();
    pinned.pinned = false;
    cat.put_snapshot(&pinned).unwrap();
    store.flush().unwrap();
    assert_eq!(cat.snapshot(pinned.id).unwrap().unwrap(), pinned);

    // The fixture's catalog is a sled database: the first open copied it into the redb file
    // and set sled's folder aside; the next open reads the copy, with the change above.
    let data = dir.path().join("data");
    assert!(data.join(catalog::FILE).is_file());
    assert!(!data.join("catalog").exists());
    assert!(data.join("catalog.sled-migrated/conf").is_file());
    drop(ws);
    drop(store);
    let store = Store::open(&data).unwrap();
    let cat = store.catalog();
    assert_eq!(cat.workspaces().unwrap(), vec![record.clone()]);
    let again = cat.snapshots_of(record.id, None, 100).unwrap();
    assert_eq!(again.len(), 3);
    assert_eq!(again[1], pinned);
    assert_eq!((&again[0], &again[2]), (&snaps[0], &snaps[2]));
    assert!(store.verify(None).unwrap().problems.is_empty());
    // A workspace added now gets an id sled never gave out.
    let other = tempfile::tempdir().unwrap();
    let added = register(&store, other.path(), WatchOptions::default()).unwrap();
    assert!(added.id > record.id, "{} after {}", added.id, record.id);
}

/// The content of the second fixture's large files (the Python that made them, in Rust).
fn fixture_text(n: usize, tag: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 64);
    let mut i = 0;
    while out.len() < n {
        if i % 4096 == 0 {
            out.extend_from_slice(format!("{tag} block {i:06}\n").as_bytes());
        } else {
            out.extend_from_slice(b"the same line again and again\n");
        }
        i += 1;
    }
    out.truncate(n);
    out
}

#[test]
fn a_store_of_unchunked_large_files_reads_them_and_the_next_save_chunks_them() {
    let dir = unpack("store-large-files-unchunked.tar.gz");
    let store = Store::open(dir.path().join("data")).unwrap();
    let record = store.catalog().workspaces().unwrap().remove(0);
    let snaps = store.catalog().snapshots_of(record.id, None, 10).unwrap();
    assert_eq!(
        snaps.iter().map(|s| s.message.as_str()).collect::<Vec<_>>(),
        ["appended", "baseline"]
    );
    let report = store.verify(None).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let medium = fixture_text(3 << 20, "medium");
    let mut big = fixture_text(9 << 20, "big");
    let baseline_big = big.clone();
    big.extend(b"appended line\n".repeat(1000));
    let mut ws = Workspace::open(&store, record).unwrap();
    for (snap, big) in [(&snaps[0], &big), (&snaps[1], &baseline_big)] {
        let out = tempfile::tempdir().unwrap();
        let to = out.path().join("restored");
        let opts = RestoreOptions {
            to: Some(to.clone()),
            skip_checkpoint: true,
            ..Default::default()
        };
        ws.restore(
            &store,
            snap,
            &opts,
            &Changes::Paths(vec![]),
            &mut |_, _, _, _| {},
        )
        .unwrap();
        assert!(fs::read(to.join("data/big.log")).unwrap() == *big);
        assert!(fs::read(to.join("data/medium.log")).unwrap() == medium);
        assert_eq!(fs::read(to.join("small.txt")).unwrap(), b"small file\n");
    }
    // The same files in a workspace of today: the unchanged one keeps its old blob, the
    // changed one is chunked, and both read back.
    let old_medium = chkpt_daemon::store::Id::of(&medium);
    assert!(store.chunk_list(&old_medium).unwrap().is_none());
    let folder = tempfile::tempdir().unwrap();
    fs::write(folder.path().join("medium.log"), &medium).unwrap();
    big.extend_from_slice(b"one more line\n");
    fs::write(folder.path().join("big.log"), &big).unwrap();
    let rec = register(&store, folder.path(), WatchOptions::default()).unwrap();
    let mut now = Workspace::open(&store, rec).unwrap();
    let snap = now
        .save(
            &store,
            &chkpt_daemon::workspace::SaveOptions::new(Trigger::Manual, Changes::Full),
        )
        .unwrap()
        .snapshot;
    let tree = store.tree(&snap.root).unwrap();
    let big_id = tree.get(b"big.log").unwrap().id;
    assert_eq!(tree.get(b"medium.log").unwrap().id, old_medium);
    assert!(store.chunk_list(&big_id).unwrap().is_some(), "chunked now");
    let mut back = Vec::new();
    store.read_into(&big_id, &mut back).unwrap();
    assert!(back == big);
    let report = store.verify(None).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
