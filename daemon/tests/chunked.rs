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

/// The ids of the chunks the stored file `v` is cut into.
fn chunk_ids(store: &Store, v: &[u8]) -> HashSet<Id> {
    store
        .chunk_list(&Id::of(v))
        .unwrap()
        .unwrap()
        .chunk_ids()
        .collect()
}

/// The store verifies clean, and `snap` restores `file` (changed first) to `bytes`.
fn verifies_and_restores(
    ws: &mut Workspace,
    store: &Store,
    snap: &SnapshotRecord,
    file: &Path,
    bytes: &[u8],
) {
    assert!(store.verify(None).unwrap().problems.is_empty());
    fs::write(file, b"changed").unwrap();
    ws.restore(
        store,
        snap,
        &RestoreOptions::default(),
        &Changes::Full,
        &mut |_, _, _, _| {},
    )
    .unwrap();
    assert!(fs::read(file).unwrap() == bytes);
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
    let hurt: HashSet<(Option<chkpt_daemon::store::SnapshotId>, Vec<u8>)> = report
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
    let chunks = |v: &[u8]| chunk_ids(&store, v);
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
    verifies_and_restores(&mut ws, &store, &s2, &big, &v2);
}

/// Bytes the pack files under `store` take on disk, by pack file name.
fn packs_on_disk(store: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<(String, u64)> = fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.blocks() * 512,
            )
        })
        .collect();
    out.sort();
    out
}

/// A hot big file's dead chunks are freed where they lie: the pack is not copied (under a
/// budget of about one pack, a copy would double the store for a while), what collection
/// frees is what `prune --dry-run` predicted, and the live version restores byte for byte.
#[test]
fn collection_frees_dead_chunks_in_place_without_a_second_copy() {
    let ws_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let v1 = random(8 << 20, 11);
    let mut v2 = v1.clone();
    for k in 0..8 {
        let at = (k * 2 + 1) * (v2.len() / 16);
        v2[at..at + 4096].copy_from_slice(&random(4096, 100 + k as u64));
    }
    let big = ws_dir.path().join("app.db");
    let store = Store::open(store_dir.path()).unwrap();
    let mut ws = open(&store, ws_dir.path());
    fs::write(&big, &v1).unwrap();
    let s1 = save(&mut ws, &store);
    fs::write(&big, &v2).unwrap();
    let s2 = save(&mut ws, &store);
    let chunks = |v: &[u8]| chunk_ids(&store, v);
    let only_v1: Vec<Id> = chunks(&v1).difference(&chunks(&v2)).copied().collect();
    let dead: u64 = only_v1
        .iter()
        .map(|c| store.locate(c).unwrap().unwrap().record_len())
        .sum();
    assert!(dead >= 8 * 8192, "{} chunks, {dead} bytes", only_v1.len());

    store.catalog().remove_snapshot(&s1).unwrap();
    store.flush().unwrap();
    let predicted = store.reclaimable_without(&HashSet::new()).unwrap();
    let before = packs_on_disk(store_dir.path());
    let report = store.gc().unwrap();
    let after = packs_on_disk(store_dir.path());

    assert_eq!(report.bytes_reclaimed, predicted, "{report:?}");
    assert_eq!(report.packs_repacked, 0, "{report:?}");
    assert!(report.packs_punched >= 1, "{report:?}");
    let names = |p: &[(String, u64)]| p.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before), "no pack written anew");
    // Whole blocks of each dead run are freed; at most a block at either end of it stays.
    let slack = only_v1.len() as u64 * 2 * 4096;
    assert!(
        report.bytes_reclaimed + slack >= dead && report.bytes_reclaimed <= dead,
        "freed {} of {dead} dead bytes",
        report.bytes_reclaimed
    );
    let total = |p: &[(String, u64)]| p.iter().map(|(_, b)| b).sum::<u64>();
    assert!(
        total(&before) - total(&after) + 4096 >= report.bytes_reclaimed,
        "on disk {} → {}, reported {}",
        total(&before),
        total(&after),
        report.bytes_reclaimed
    );
    // Collected once, nothing is left to free.
    assert_eq!(store.reclaimable_without(&HashSet::new()).unwrap(), 0);

    verifies_and_restores(&mut ws, &store, &s2, &big, &v2);
}
