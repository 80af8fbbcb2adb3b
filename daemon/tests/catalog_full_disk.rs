//! The catalog on a real full disk, past the free-space check: redb refuses every call after
//! an I/O error until its file is reopened, so the catalog reopens it, and the operations whose
//! unflushed records the reopen dropped fail instead of being acknowledged.
//!
//! The test runs itself again as a child in a user and mount namespace of its own
//! (`unshare --user --map-root-user --mount`), with a small tmpfs mounted over the data
//! directory: on tmpfs space is taken when written, so redb's own writes meet ENOSPC. The
//! mount needs no root and goes away with the child.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::process::Command;

use chkpt_daemon::error::Error;
use chkpt_daemon::store::catalog::{self, FileMeta, IndexChange, WorkspaceRecord};
use chkpt_daemon::store::{Id, Kind, ObjectKind, Store, WorkspaceId};

const CHILD: &str = "CHKPT_CATALOG_FULL_DISK_CHILD";
const DONE: &str = "CHKPT_CATALOG_FULL_DISK_DONE";

fn workspace(id: u64) -> WorkspaceRecord {
    WorkspaceRecord {
        id: WorkspaceId::new(id),
        path: format!("/ws/{id}").into_bytes(),
        ..Default::default()
    }
}

/// A warm index far larger than the room left: its write must meet the full disk.
/// A warm index larger than the room left, even compressed (catalog segment version 2 is an
/// LZ4 block): every path and id carries 32 bytes that do not compress.
fn big_index() -> Vec<IndexChange> {
    (0..200_000u64)
        .map(|i| {
            let meta = FileMeta {
                kind: Kind::File,
                mode: 0o644,
                size: i,
                mtime_ns: i as i64,
                ctime_ns: i as i64,
                ino: i,
                dev: 1,
                id: Id::of(&i.to_le_bytes()),
                racy: false,
            };
            let path = format!("src/{}/{i}.rs", Id::of(&i.to_be_bytes()).to_hex());
            IndexChange {
                path: path.into_bytes(),
                meta: Some(meta),
            }
        })
        .collect()
}

fn is_catalog_disk_full(e: &Error) -> bool {
    matches!(e, Error::DiskFull { path } if path.ends_with(catalog::FILE))
}

/// The child: the data directory `data` is a 16 MiB tmpfs. Not a test of its own (it needs the
/// mount the parent makes): ignored, and run by the parent with `--ignored --exact`.
#[test]
#[ignore = "run by a_catalog_write_that_meets_a_full_disk… in a mount namespace of its own"]
fn catalog_full_disk_child() {
    let root = std::env::var_os(CHILD).expect("started by the parent test, with its folder");
    let data = Path::new(&root).join("data");
    let filler = data.join("filler");
    let store = Store::open(&data).unwrap();
    fs::create_dir(&filler).unwrap();
    let cat = store.catalog();
    cat.put_workspace(&workspace(1)).unwrap();
    store.flush().unwrap();
    // Written, not flushed, before the disk fills.
    cat.put_workspace(&workspace(2)).unwrap();
    // A batch open across the failure, its object written and recorded.
    let batch = store.batch();
    let (object, _) = batch.put(&[7u8; 5000], ObjectKind::Blob).unwrap();
    batch.commit_objects().unwrap();

    // 1 MiB of room passes the free-space check; the index needs more.
    chkpt_testkit::disk::fill(&filler.join("blocks"), 1 << 20);
    let err = cat
        .write_index_base(WorkspaceId::new(1), &big_index())
        .unwrap_err();
    assert!(is_catalog_disk_full(&err), "{err:?}");
    // Still full: the flush fails first, as a full disk, without touching the catalog.
    let err = store.flush().unwrap_err();
    assert!(is_catalog_disk_full(&err), "{err:?}");
    fs::remove_file(filler.join("blocks")).unwrap();

    // The reopen dropped workspace 2: the flush that would have acknowledged it fails, and
    // says to retry.
    let err = store.flush().unwrap_err();
    assert!(err.to_string().contains("retry"), "{err}");
    assert_eq!(cat.workspace(WorkspaceId::new(2)).unwrap(), None);
    // So does the batch, whose records went with it; its object is not in the index.
    let err = batch.finish().unwrap_err();
    assert!(err.to_string().contains("retry"), "{err}");
    assert!(!store.contains(&object).unwrap());

    // The catalog works again, and the same writes succeed.
    cat.put_workspace(&workspace(2)).unwrap();
    cat.write_index_base(WorkspaceId::new(1), &big_index())
        .unwrap();
    let batch = store.batch();
    let (again, _) = batch.put(&[7u8; 5000], ObjectKind::Blob).unwrap();
    batch.finish().unwrap();
    assert_eq!(again, object);
    drop(store);

    let store = Store::open(&data).unwrap();
    let cat = store.catalog();
    assert_eq!(
        cat.workspace(WorkspaceId::new(1)).unwrap(),
        Some(workspace(1))
    );
    assert_eq!(
        cat.workspace(WorkspaceId::new(2)).unwrap(),
        Some(workspace(2))
    );
    assert_eq!(
        cat.load_index(WorkspaceId::new(1)).unwrap().entries.len(),
        big_index().len()
    );
    assert_eq!(store.read_vec(&object).unwrap(), vec![7u8; 5000]);
    assert!(store.verify(None).unwrap().problems.is_empty());
    fs::write(std::env::var_os(DONE).unwrap(), b"done").unwrap();
}

#[test]
fn a_catalog_write_that_meets_a_full_disk_fails_the_operations_it_cost_and_the_next_ones_work() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    fs::create_dir(&data).unwrap();
    let done = root.path().join("done");
    let prefix = chkpt_testkit::disk::private_tmpfs(
        "size=16m",
        r#""$CHKPT_CATALOG_FULL_DISK_CHILD/data""#,
        "",
    );
    let out = Command::new(&prefix[0])
        .args(&prefix[1..])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "catalog_full_disk_child",
            "--nocapture",
        ])
        .env(CHILD, root.path())
        .env(DONE, &done)
        .output()
        .unwrap();
    assert!(
        out.status.success() && done.exists(),
        "the child failed: {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The tmpfs was the child's own: nothing was written to the folder below it.
    assert_eq!(fs::read_dir(&data).unwrap().count(), 0);
}
