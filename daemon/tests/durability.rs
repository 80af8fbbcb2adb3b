//! What an acknowledged save or restore rests on, when other work runs beside it.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use chkpt_daemon::store::catalog::Trigger;
use chkpt_daemon::store::{CHUNK_THRESHOLD, Store};
use chkpt_daemon::workspace::chunking;
use chkpt_daemon::workspace::restore::RestoreOptions;
use chkpt_daemon::workspace::{Changes, SaveOptions, WatchOptions, Workspace, register};
use chkpt_testkit::noise;

fn open(store: &Store, dir: &Path) -> Workspace {
    let rec = register(store, dir, WatchOptions::default()).unwrap();
    Workspace::open(store, rec).unwrap()
}

/// A large file (chunked, not read into memory) whose chunks and chunk list another
/// workspace's batch has written but not committed: a save must adopt the object, so that its own commit makes it
/// durable; counting on the other batch, which then fails (or the machine stops first), left
/// an acknowledged snapshot naming an object the store never kept.
#[test]
fn a_large_file_another_open_batch_wrote_is_committed_by_the_save_that_names_it() {
    let store_dir = tempfile::tempdir().unwrap();
    let ws_dir = tempfile::tempdir().unwrap();
    let big = noise(3 * CHUNK_THRESHOLD as usize + 100_000, 5);
    fs::write(ws_dir.path().join("big.bin"), &big).unwrap();
    fs::write(ws_dir.path().join("small"), b"small").unwrap();
    let snapshot = {
        let store = Store::open(store_dir.path()).unwrap();
        let mut ws = open(&store, ws_dir.path());
        // Another workspace's save, still reading when this one runs.
        let other = store.batch();
        let file = fs::File::open(ws_dir.path().join("big.bin")).unwrap();
        let (id, list) = chunking::store_chunks(&other, &file, big.len() as u64, None, |e| {
            std::io::Error::other(e.to_string())
        })
        .unwrap()
        .unwrap();
        assert!(
            other.put_chunked(id, &list).unwrap(),
            "the other batch wrote it"
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

/// A same-size edit made to a restored file after the restore wrote it, but before the
/// restore noted what it wrote (a large restore takes seconds): the index must not record the
/// snapshot's content for it, or the watcher's next save (which looks at the path) finds its
/// metadata unchanged and never reads the edit.
#[test]
fn a_same_size_edit_right_after_a_restore_wrote_the_file_is_saved() {
    let store_dir = tempfile::tempdir().unwrap();
    let ws_dir = tempfile::tempdir().unwrap();
    let root = ws_dir.path();
    fs::create_dir(root.join("x")).unwrap();
    fs::write(root.join("x/y"), b"restored content").unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, root);
    let snap = ws
        .save(&store, &SaveOptions::new(Trigger::Manual, Changes::Full))
        .unwrap()
        .snapshot;
    // Where the snapshot has a directory, a file: the restore writes x/y last, after removing
    // the file, and reports progress right after.
    fs::remove_dir_all(root.join("x")).unwrap();
    fs::write(root.join("x"), b"a file in the way").unwrap();
    let y = root.join("x/y");
    let mut edited = false;
    let mut progress = |_: u64, _: u64, _: u64, _: u64| {
        if !edited && fs::read(&y).is_ok_and(|c| c == b"restored content") {
            // The user's editor, at once: same size, new content. Then the restore goes on
            // for more than the racy window before it notes what it wrote.
            fs::write(&y, b"EDITED  content!").unwrap();
            edited = true;
            std::thread::sleep(std::time::Duration::from_millis(1200));
        }
    };
    ws.restore(
        &store,
        &snap,
        &RestoreOptions::default(),
        &Changes::Full,
        &mut progress,
    )
    .unwrap();
    assert!(edited, "the restore reported no progress after writing x/y");
    // The watcher reports the edit; the next save looks at that path.
    let after = ws
        .save(
            &store,
            &SaveOptions::new(Trigger::Manual, Changes::Paths(vec![b"x/y".to_vec()])),
        )
        .unwrap()
        .snapshot;
    let out = tempfile::tempdir().unwrap();
    let opts = RestoreOptions {
        to: Some(out.path().to_path_buf()),
        ..Default::default()
    };
    ws.restore(&store, &after, &opts, &Changes::Full, &mut |_, _, _, _| {})
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&fs::read(out.path().join("x/y")).unwrap()),
        "EDITED  content!",
        "the edit made after the restore wrote the file was never saved"
    );
}
