//! Chunked files against a real store: a damaged chunk is named by the file that has it and
//! stops a restore before it writes; garbage collection keeps the chunks live versions share.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use chkpt_daemon::Error;
use chkpt_daemon::store::catalog::{SnapshotRecord, Trigger};
use chkpt_daemon::store::{Id, Store};
use chkpt_daemon::workspace::restore::RestoreOptions;
use chkpt_daemon::workspace::{Changes, SaveOptions, WatchOptions, Workspace, register};

fn random(len: usize, seed: u64) -> Vec<u8> {
    chkpt_testkit::noise(len, seed)
}

fn save(ws: &mut Workspace, store: &Store) -> SnapshotRecord {
    ws.save(store, &SaveOptions::new(Trigger::Manual, Changes::Full))
        .unwrap()
        .snapshot
}

fn open(store: &Store, dir: &Path) -> Workspace {
    let rec = register(store, dir, WatchOptions::default()).unwrap();
    Workspace::open(store, rec).unwrap()
}

/// Two versions of a 3 MiB file that differ in their middle 4 KiB.
fn two_versions() -> (Vec<u8>, Vec<u8>) {
    let v1 = random(3 << 20, 1);
    let mut v2 = v1.clone();
    let m = v2.len() / 2;
    v2[m..m + 4096].copy_from_slice(&random(4096, 2));
    (v1, v2)
}

#[test]
fn verify_names_the_file_of_a_damaged_chunk_and_restore_refuses_before_writing() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let (v1, v2) = two_versions();
    let big = ws_dir.path().join("db/big.bin");
    fs::create_dir_all(big.parent().unwrap()).unwrap();
    fs::write(&big, &v1).unwrap();
    fs::write(ws_dir.path().join("other.txt"), b"fine").unwrap();
    let (s1, s2, shared) = {
        let store = Store::open(store_dir.path()).unwrap();
        let mut ws = open(&store, ws_dir.path());
        let s1 = save(&mut ws, &store);
        fs::write(&big, &v2).unwrap();
        let s2 = save(&mut ws, &store);
        let l1 = store.chunk_list(&Id::of(&v1)).unwrap().unwrap();
        let l2: HashSet<Id> = store
            .chunk_list(&Id::of(&v2))
            .unwrap()
            .unwrap()
            .chunk_ids()
            .collect();
        // A chunk both versions have, near the start.
        let shared = l1.chunk_ids().find(|c| l2.contains(c)).unwrap();
        (s1, s2, store.locate(&shared).unwrap().unwrap())
    };
    let pack = store_dir
        .path()
        .join(format!("packs/{:08x}.pack", shared.pack));
    let mut bytes = fs::read(&pack).unwrap();
    bytes[(shared.offset + shared.len / 2) as usize] ^= 0x40;
    fs::write(&pack, bytes).unwrap();

    let store = Store::open(store_dir.path()).unwrap();
    let report = store.verify(None).unwrap();
    let hurt: HashSet<(Option<u64>, Vec<u8>)> = report
        .problems
        .iter()
        .map(|p| (p.snapshot, p.path.clone()))
        .collect();
    assert_eq!(
        hurt,
        HashSet::from([
            (Some(s1.id), b"db/big.bin".to_vec()),
            (Some(s2.id), b"db/big.bin".to_vec())
        ]),
        "{:?}",
        report.problems
    );
    assert!(report.problems[0].problem.contains("chunk"));

    let mut ws = open(&store, ws_dir.path());
    fs::write(&big, b"edited since").unwrap();
    fs::write(ws_dir.path().join("other.txt"), b"edited too").unwrap();
    let res = ws.restore(
        &store,
        &s1,
        &RestoreOptions::default(),
        &Changes::Full,
        &mut |_, _, _, _| {},
    );
    assert!(matches!(res, Err(Error::Corrupt(_))), "{res:?}");
    assert_eq!(fs::read(&big).unwrap(), b"edited since");
    assert_eq!(
        fs::read(ws_dir.path().join("other.txt")).unwrap(),
        b"edited too"
    );
    let left: Vec<_> = fs::read_dir(big.parent().unwrap()).unwrap().collect();
    assert_eq!(left.len(), 1, "the staged file was removed");
}

#[test]
fn garbage_collection_keeps_the_chunks_live_versions_share_and_drops_the_rest() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let (v1, v2) = two_versions();
    let big = ws_dir.path().join("big.bin");
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, ws_dir.path());
    fs::write(&big, &v1).unwrap();
    let s1 = save(&mut ws, &store);
    fs::write(&big, &v2).unwrap();
    let s2 = save(&mut ws, &store);
    let chunks = |v: &[u8]| -> HashSet<Id> {
        store
            .chunk_list(&Id::of(v))
            .unwrap()
            .unwrap()
            .chunk_ids()
            .collect()
    };
    let (c1, c2) = (chunks(&v1), chunks(&v2));
    let only_v1: Vec<Id> = c1.difference(&c2).copied().collect();
    assert!(
        !only_v1.is_empty() && only_v1.len() <= 3,
        "{}",
        only_v1.len()
    );
    assert!(c1.intersection(&c2).count() > 50);

    store.catalog().remove_snapshot(&s1).unwrap();
    store.flush().unwrap();
    let report = store.gc().unwrap();
    assert!(report.objects_removed > only_v1.len() as u64, "{report:?}");
    assert!(!store.contains(&Id::of(&v1)).unwrap(), "the old list goes");
    for c in &only_v1 {
        assert!(
            !store.contains(c).unwrap(),
            "a chunk only the old version had goes"
        );
    }
    for c in &c2 {
        assert!(
            store.contains(c).unwrap(),
            "a chunk the live version has stays"
        );
    }
    assert!(store.verify(None).unwrap().problems.is_empty());
    fs::write(&big, b"changed").unwrap();
    ws.restore(
        &store,
        &s2,
        &RestoreOptions::default(),
        &Changes::Full,
        &mut |_, _, _, _| {},
    )
    .unwrap();
    assert!(fs::read(&big).unwrap() == v2);
}
