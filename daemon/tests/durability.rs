//! What an acknowledged save or restore rests on, when other work runs beside it.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use chkpt_daemon::store::catalog::Trigger;
use chkpt_daemon::store::{IN_MEMORY_LIMIT, Id, Store, Streamed};
use chkpt_daemon::workspace::restore::RestoreOptions;
use chkpt_daemon::workspace::{Changes, SaveOptions, WatchOptions, Workspace, register};

fn open(store: &Store, dir: &Path) -> Workspace {
    let rec = register(store, dir, WatchOptions::default()).unwrap();
    Workspace::open(store, rec).unwrap()
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A large file (streamed, not read into memory) whose content another workspace's batch has
/// written but not committed: a save must adopt the object, so that its own commit makes it
/// durable; counting on the other batch, which then fails (or the machine stops first), left
/// an acknowledged snapshot naming an object the store never kept.
#[test]
fn a_large_file_another_open_batch_wrote_is_committed_by_the_save_that_names_it() {
    let store_dir = tempfile::tempdir().unwrap();
    let ws_dir = tempfile::tempdir().unwrap();
    let big = noise(IN_MEMORY_LIMIT as usize + 100_000, 5);
    fs::write(ws_dir.path().join("big.bin"), &big).unwrap();
    fs::write(ws_dir.path().join("small"), b"small").unwrap();
    let snapshot = {
        let store = Store::open(store_dir.path()).unwrap();
        let mut ws = open(&store, ws_dir.path());
        // Another workspace's save, still reading when this one runs.
        let other = store.batch();
        let (id, len) = Id::of_reader(&big[..]).unwrap();
        assert_eq!(
            other.put_stream(id, len, &mut &big[..], false).unwrap(),
            Streamed::Stored { new: true }
        );
        let snap = ws
            .save(&store, &SaveOptions::new(Trigger::Manual, Changes::Full))
            .unwrap()
            .snapshot;
        // The other save fails (a full disk, an unreadable file): its batch never commits.
        drop(other);
        snap
    };
    // As after a restart (or a power cut): only what was committed is there.
    let store = Store::open(store_dir.path()).unwrap();
    let report = store.verify(None).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let rec = store
        .catalog()
        .workspace(snapshot.workspace)
        .unwrap()
        .unwrap();
    let mut ws = Workspace::open(&store, rec).unwrap();
    let out = tempfile::tempdir().unwrap();
    let opts = RestoreOptions {
        to: Some(out.path().to_path_buf()),
        ..Default::default()
    };
    ws.restore(
        &store,
        &snapshot,
        &opts,
        &Changes::Full,
        &mut |_, _, _, _| {},
    )
    .unwrap();
    assert!(fs::read(out.path().join("big.bin")).unwrap() == big);
}
