//! Tree ids persisted with the warm index (catalog format rule 5): a reopened workspace encodes
//! only the trees of what changed since, and a journal makes the ids above its changes unknown.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;

use chkpt_daemon::store::Store;
use chkpt_daemon::store::catalog::Trigger;
use chkpt_daemon::workspace::{Changes, SaveOptions, WatchOptions, Workspace, register};

/// 60 folders of 30 files, each folder with a subfolder: past the journal's slack, so the
/// first save writes a base.
const DIRS: usize = 60;

fn reopen(store: &Store, dir: &Path) -> Workspace {
    let rec = register(store, dir, WatchOptions::default()).unwrap();
    Workspace::open(store, rec).unwrap()
}

fn encoded(ws: &Workspace) -> u64 {
    ws.counters.trees_encoded.load(Ordering::Relaxed)
}

#[test]
fn a_reopened_index_encodes_only_the_trees_of_what_changed() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    for d in 0..DIRS {
        let dir = ws_dir.path().join(format!("d{d:02}/sub"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..30 {
            fs::write(dir.join(format!("f{f}")), format!("{d} {f}")).unwrap();
        }
    }
    // Past the racy window: no file is read again because it was written just before.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let folders = 2 * DIRS + 1;
    let first = {
        let store = Store::open(store_dir.path()).unwrap();
        let mut ws = reopen(&store, ws_dir.path());
        let opts = SaveOptions::new(Trigger::Manual, Changes::Full);
        let snap = ws.save(&store, &opts).unwrap().snapshot;
        assert_eq!(encoded(&ws), folders as u64);
        snap
    };

    // Reopened: every tree is known, a walk of the unchanged tree encodes none.
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = reopen(&store, ws_dir.path());
    assert_eq!(ws.index().cached_trees(), folders);
    let root = ws.working_tree(&store, &Changes::Full).unwrap();
    assert_eq!(root, first.root);
    assert_eq!(encoded(&ws), 0);

    // One file changed (journaled): its folder, the one above and the root are encoded.
    fs::write(ws_dir.path().join("d07/sub/f3"), b"changed").unwrap();
    let opts = SaveOptions::new(
        Trigger::Manual,
        Changes::Paths(vec![b"d07/sub/f3".to_vec()]),
    );
    let second = ws.save(&store, &opts).unwrap().snapshot;
    assert_eq!(encoded(&ws), 3);
    drop(ws);
    drop(store);

    // Reopened on base + journal: the journal's change makes those three unknown again, and
    // what is encoded for them is the same tree as before.
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = reopen(&store, ws_dir.path());
    assert_eq!(ws.index().cached_trees(), folders - 3);
    let root = ws.working_tree(&store, &Changes::Full).unwrap();
    assert_eq!(root, second.root);
    assert_eq!(encoded(&ws), 3);
}
