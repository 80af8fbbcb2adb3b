//! Replication to a real three-node Garage cluster with replication factor 3 (Garage's
//! default consistency: a write needs two of the three copies): a node killed in the middle
//! of an upload does not stop it, and a fresh data directory restores the snapshot byte for
//! byte with that node still down.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod util;

use util::Daemon;
use util::cli::{ok_in, project, save};
use util::garage::{Cluster, S3};
use util::remote::{
    another_machine, noise_files, restore_fresh, slow_add_args, status, strs, tree, wait_status,
};

#[test]
fn an_upload_completes_with_a_node_killed_in_its_middle_and_restores_exactly() {
    let mut c = Cluster::start(3, 3);
    let d = Daemon::start(&[]);
    let ws = project(&d);
    let root = ws.path();
    noise_files(&root.join("data"), 16, 256 << 10, 6);
    save(&d, root, "four MiB of noise");
    let secrets = tempfile::tempdir().unwrap();
    let creds = c.credentials(secrets.path(), None);
    let key = secrets.path().join("k");
    // Small packs, two at a time, slowed to 2 MiB/s: the upload takes ~2 s, and a node dies
    // in it.
    let args = slow_add_args(&c, "rf3", "p", &creds, &key);
    ok_in(&d, root, &strs(&args));
    let before = wait_status(&d, root, "rf3", "first packs", |s| {
        s["uploaded_packs"].as_u64().unwrap() >= 2
    });
    assert!(
        before["pending_snapshots"].as_u64().unwrap() >= 1,
        "the upload ended before the kill: {before:#}"
    );
    c.kill(2);
    ok_in(&d, root, &["remote", "sync", "rf3", "--timeout", "120s"]);
    let s = status(&d, root, "rf3");
    assert_eq!(s["pending_snapshots"], 0, "{s:#}");
    assert!(
        s["uploaded_packs"].as_u64().unwrap() > before["uploaded_packs"].as_u64().unwrap(),
        "nothing was sent after the kill: {s:#}"
    );
    assert_eq!(s["uploaded_objects"], s["remote_objects"], "{s:#}");

    // A fresh data directory, the node still down.
    let (fresh, other) = another_machine(&c, "rf3", "p", &creds, &key);
    let to = restore_fresh(&fresh, other.path(), "rf3", "latest");
    assert_eq!(tree(&to), tree(root));
}
