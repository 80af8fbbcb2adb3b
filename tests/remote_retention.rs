//! Remote retention against a real Garage and the real chkptd: the snapshots the local policy
//! drops disappear from the remote, the packs only they needed are deleted from the bucket
//! (listed over S3), a pack a kept snapshot needs is never deleted, what is left restores
//! byte-exact on a fresh data directory, a remote's own rules are not undone by sending the
//! snapshots again, and a connection cut in the middle of a collection, followed by a killed
//! daemon, is finished by the next daemon.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod util;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use util::Daemon;
use util::cli::{fails_in, json_in, ok_in};
use util::garage::{Garage, S3};
use util::remote::{add_args, another_machine, restore_fresh, status, strs, tree};

/// The ids of the workspace's local snapshots.
fn local_ids(d: &Daemon, root: &Path) -> BTreeSet<String> {
    json_in(d, root, &["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The ids of the snapshots on remote `name`, as the remote lists them.
fn remote_ids(d: &Daemon, root: &Path, name: &str) -> BTreeSet<String> {
    json_in(d, root, &["remote", "snapshots", name])["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits for an auto snapshot not in `seen`; returns its id.
fn next_auto(d: &Daemon, root: &Path, seen: &BTreeSet<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(new) = local_ids(d, root).difference(seen).next() {
            return new.clone();
        }
        assert!(Instant::now() < deadline, "no auto snapshot in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The packs (name → size) in the bucket under `prefix`.
fn packs(g: &impl S3, prefix: &str) -> Vec<(String, u64)> {
    g.list(&format!("{prefix}/packs"))
}

/// The object names (after the last `/`) of a listing.
fn names(v: &[(String, u64)]) -> BTreeSet<String> {
    v.iter()
        .map(|(n, _)| n.rsplit('/').next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_local_policy_prunes_the_remote_and_only_unneeded_packs_are_deleted() {
    let g = Garage::start();
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    // Every snapshot keeps shared.txt; only the first has gone.bin, big enough (and
    // incompressible) to fill a pack of its own at the remote's 64 KiB pack size, and old.bin,
    // which shares a pack with shared.txt. Trees have packs of their own.
    std::fs::write(root.join("shared.txt"), b"in every snapshot\n".repeat(40)).unwrap();
    std::fs::write(root.join("gone.bin"), chkpt_testkit::noise(300_000, 9)).unwrap();
    std::fs::write(root.join("old.bin"), chkpt_testkit::noise(20_000, 10)).unwrap();
    let dir = root.display().to_string();
    let watched = json_in(
        &d,
        root,
        &[
            "watch",
            &dir,
            "--idle",
            "200ms",
            "--max-delay",
            "1s",
            "--keep-last",
            "2",
        ],
    );
    let s1 = next_auto(&d, root, &BTreeSet::new());
    let tree1 = tree(root);
    let secrets = tempfile::tempdir().unwrap();
    let creds = g.credentials(secrets.path(), None);
    let key = secrets.path().join("k");
    let mut args = add_args(&g, "r", "p", &creds, &key);
    args.extend(["--pack-size", "64K"].map(String::from));
    ok_in(&d, root, &strs(&args));
    ok_in(&d, root, &["remote", "sync", "r", "--timeout", "60s"]);
    let packs1 = packs(&g, "p");
    // By size: gone.bin's pack, old.bin's and shared.txt's, the first snapshot's trees'.
    let sized = |keep: &dyn Fn(u64) -> bool| -> String {
        let found: Vec<String> = names(
            &packs1
                .iter()
                .filter(|(_, size)| keep(*size))
                .cloned()
                .collect::<Vec<_>>(),
        )
        .into_iter()
        .collect();
        assert_eq!(found.len(), 1, "{packs1:?} ({watched})");
        found[0].clone()
    };
    assert_eq!(packs1.len(), 3, "{packs1:?} ({watched})");
    let big = sized(&|s| s >= 300_000);
    let shared = sized(&|s| (20_000..300_000).contains(&s));
    let trees1 = sized(&|s| s < 20_000);
    assert!(
        names(&g.list("p/index")).contains(&big),
        "each pack has its index"
    );

    std::fs::remove_file(root.join("gone.bin")).unwrap();
    std::fs::remove_file(root.join("old.bin")).unwrap();
    std::fs::write(root.join("b.txt"), b"second\n").unwrap();
    let s2 = next_auto(&d, root, &[s1.clone()].into());
    let tree2 = tree(root);
    ok_in(&d, root, &["remote", "sync", "r", "--timeout", "60s"]);
    std::fs::write(root.join("c.txt"), b"third\n").unwrap();
    let s3 = next_auto(&d, root, &[s1.clone(), s2.clone()].into());
    let tree3 = tree(root);
    // The workspace's own policy, applied locally now (the daemon also does so on its own,
    // at most every ten minutes).
    ok_in(&d, root, &["prune"]);
    assert_eq!(local_ids(&d, root), [s2.clone(), s3.clone()].into());

    ok_in(&d, root, &["remote", "sync", "r", "--timeout", "60s"]);
    assert_eq!(
        remote_ids(&d, root, "r"),
        [s2.clone(), s3.clone()].into(),
        "the remote keeps what the local policy keeps"
    );
    let after = names(&packs(&g, "p"));
    assert!(!after.contains(&big), "gone.bin's pack is still there");
    assert!(
        !after.contains(&trees1),
        "the first snapshot's trees' pack is still there"
    );
    assert!(
        !names(&g.list("p/index")).contains(&big),
        "gone.bin's index is still there"
    );
    assert!(
        after.contains(&shared),
        "a pack the kept snapshots need (shared.txt's) was deleted: {shared} not in {after:?}"
    );
    let st = status(&d, root, "r");
    assert_eq!(st["pruned_snapshots"], 1, "{st:#}");
    assert_eq!(st["deleted_packs"], 2, "{st:#}");
    assert!(st["deleted_bytes"].as_u64().unwrap() >= 300_000, "{st:#}");
    // old.bin sits beside shared.txt: kept, counted as dead.
    assert!(st["dead_bytes"].as_u64().unwrap() >= 20_000, "{st:#}");
    assert_eq!(st["collect_pending"], false, "{st:#}");
    let text = ok_in(&d, root, &["remote", "status", "r"]).text();
    assert!(
        text.contains("retention: follows each workspace's local policy")
            && text.contains("deleted 1 snapshot and 2 packs"),
        "{text}"
    );

    // What is left restores byte for byte, on a fresh data directory.
    let (fresh, other) = another_machine(&g, "r", "p", &creds, &key);
    assert_eq!(tree(&restore_fresh(&fresh, other.path(), "r", &s2)), tree2);
    assert_eq!(tree(&restore_fresh(&fresh, other.path(), "r", &s3)), tree3);
    let nowhere = other.path().join("s1").display().to_string();
    let out = fails_in(
        &fresh,
        other.path(),
        &["remote", "restore", "r", &s1, "--to", &nowhere],
    );
    assert!(out.stderr.contains("no snapshot"), "{}", out.stderr);
    assert_ne!(tree1, tree2);

    // Rules of the remote's own: it keeps one snapshot while two stay here, and the one it
    // dropped is not sent again.
    let set = ok_in(&d, root, &["remote", "retention", "r", "--keep-last", "1"]).text();
    assert!(set.contains("own rules: keep-last 1"), "{set}");
    ok_in(&d, root, &["remote", "sync", "r", "--timeout", "60s"]);
    assert_eq!(remote_ids(&d, root, "r"), [s3.clone()].into());
    assert_eq!(local_ids(&d, root), [s2.clone(), s3.clone()].into());
    let st = status(&d, root, "r");
    assert_eq!(st["pending_snapshots"], 0, "{st:#}");
    assert_eq!(st["pruned_snapshots"], 2, "{st:#}");
    let sent = st["uploaded_packs"].clone();
    ok_in(&d, root, &["remote", "sync", "r", "--timeout", "60s"]);
    let st = status(&d, root, "r");
    assert_eq!(
        st["uploaded_packs"], sent,
        "a dropped snapshot was sent again: {st:#}"
    );
    assert_eq!(remote_ids(&d, root, "r"), [s3.clone()].into());
    // shared.txt's pack is needed by the third too, so kept.
    assert!(names(&packs(&g, "p")).contains(&shared));
    std::fs::remove_dir_all(other.path().join(format!("r-{s3}"))).unwrap();
    assert_eq!(tree(&restore_fresh(&fresh, other.path(), "r", &s3)), tree3);
}

#[test]
fn a_collection_cut_in_its_middle_is_finished_by_the_next_daemon() {
    let mut g = Garage::start();
    let mut d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    // Many small folders: a collection walks ~800 trees (seconds in a debug build) before it
    // deletes anything, which leaves time to cut it there.
    for i in 0..800 {
        let sub = root.join(format!("d{:02}/e{i:04}", i % 20));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("f.txt"), format!("file {i}\n")).unwrap();
    }
    // Named to come first in the walk, so it fills the first pack alone.
    std::fs::write(root.join("a-gone.bin"), chkpt_testkit::noise(300_000, 4)).unwrap();
    let dir = root.display().to_string();
    ok_in(
        &d,
        root,
        &[
            "watch",
            &dir,
            "--idle",
            "200ms",
            "--max-delay",
            "1s",
            "--keep-last",
            "1",
        ],
    );
    let s1 = next_auto(&d, root, &BTreeSet::new());
    let secrets = tempfile::tempdir().unwrap();
    let creds = g.credentials(secrets.path(), None);
    let key = secrets.path().join("k");
    let mut args = add_args(&g, "r", "p", &creds, &key);
    args.extend(["--pack-size", "64K", "--keep-all"].map(String::from));
    ok_in(&d, root, &strs(&args));
    ok_in(&d, root, &["remote", "sync", "r", "--timeout", "120s"]);
    let big = packs(&g, "p")
        .into_iter()
        .find(|(_, size)| *size >= 300_000)
        .map(|(n, _)| n.rsplit('/').next().unwrap().to_owned())
        .unwrap();
    std::fs::remove_file(root.join("a-gone.bin")).unwrap();
    let s2 = next_auto(&d, root, &[s1.clone()].into());
    let tree2 = tree(root);
    ok_in(&d, root, &["remote", "sync", "r", "--timeout", "120s"]);
    assert_eq!(remote_ids(&d, root, "r"), [s1.clone(), s2.clone()].into());

    // Now the remote follows the local policy (keep-last 1): the first snapshot's record goes,
    // then the collection walks every tree; the server dies in that walk.
    ok_in(&d, root, &["remote", "retention", "r", "--follow-local"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = names(&g.list("p/snapshots"));
        if !listed.iter().any(|n| n.ends_with(&s1)) {
            break;
        }
        assert!(Instant::now() < deadline, "the record stayed: {listed:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    g.kill();
    d.kill9();
    g.start_again();
    assert!(
        names(&packs(&g, "p")).contains(&big),
        "the cut came after the collection: this test did not cut it"
    );
    // Consistent as it stands: the snapshot left restores, from the cut remote.
    let (fresh, other) = another_machine(&g, "r", "p", &creds, &key);
    assert_eq!(tree(&restore_fresh(&fresh, other.path(), "r", &s2)), tree2);

    // The next daemon has no record left to delete: it collects because it was recorded that
    // a collection was pending.
    d.start_again();
    ok_in(&d, root, &["remote", "sync", "r", "--timeout", "120s"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = status(&d, root, "r");
        if st["collect_pending"] == false && st["busy"] == false && st["connected"] == true {
            assert_eq!(st["deleted_packs"], 1, "{st:#}");
            break;
        }
        assert!(Instant::now() < deadline, "no collection: {st:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !names(&packs(&g, "p")).contains(&big),
        "the unneeded pack stayed"
    );
    assert_eq!(remote_ids(&d, root, "r"), [s2.clone()].into());
    std::fs::remove_dir_all(other.path().join(format!("r-{s2}"))).unwrap();
    assert_eq!(tree(&restore_fresh(&fresh, other.path(), "r", &s2)), tree2);
}
