//! Garbage collection leaves other workspaces' cached tree ids valid: a save after it encodes
//! only the trees its own change touched.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;

use chkpt_daemon::store::Store;
use chkpt_daemon::store::catalog::Trigger;
use chkpt_daemon::workspace::{Changes, SaveOptions, WatchOptions, Workspace, register};

fn open(store: &Store, dir: &Path) -> Workspace {
    let rec = register(store, dir, WatchOptions::default()).unwrap();
    Workspace::open(store, rec).unwrap()
}

fn tree_of(root: &Path, dirs: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("d{d}/sub"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("f.txt"), format!("file {d}")).unwrap();
    }
}

#[test]
fn a_collection_for_one_workspace_does_not_make_another_re_encode_its_trees() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("data")).unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    tree_of(&a_dir, 5);
    tree_of(&b_dir, 50);
    let mut a = open(&store, &a_dir);
    let mut b = open(&store, &b_dir);
    let save = |ws: &mut Workspace, changes: Changes| {
        ws.save(&store, &SaveOptions::new(Trigger::Manual, changes))
            .unwrap()
            .snapshot
    };
    save(&mut b, Changes::Full);
    let first = save(&mut a, Changes::Full);
    fs::write(a_dir.join("d0/sub/f.txt"), b"changed").unwrap();
    save(&mut a, Changes::Paths(vec![b"d0/sub/f.txt".to_vec()]));
    // A's first snapshot goes, and its unique objects with it.
    store.catalog().remove_snapshot(&first).unwrap();
    let report = store.gc().unwrap();
    assert!(report.objects_removed > 0, "{report:?}");

    let before = b.counters.trees_encoded.load(Ordering::Relaxed);
    fs::write(b_dir.join("d7/sub/f.txt"), b"changed too").unwrap();
    save(&mut b, Changes::Paths(vec![b"d7/sub/f.txt".to_vec()]));
    let encoded = b.counters.trees_encoded.load(Ordering::Relaxed) - before;
    // d7/sub, d7 and the root: not the 101 trees of the whole workspace.
    assert_eq!(
        encoded, 3,
        "trees encoded after another workspace's collection"
    );
    let report = store.verify(None).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
