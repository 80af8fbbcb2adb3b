//! Replication to object storage, against a real Garage server (tests/util/garage.rs) and the
//! real chkptd over its socket: a snapshot replicated and restored byte for byte on a fresh
//! data directory; a wrong key, a missing bucket, bad credentials and a server that is down
//! each refused clearly with every local snapshot intact; a connection cut in the middle of
//! an upload, and a daemon killed in the middle of one, both resumed with nothing lost and
//! nothing indexed twice.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod util;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::Daemon;
use util::cli::{fails_in, json_in, ok_in, project, run_in, save};
use util::garage::{Garage, S3};
use util::remote::{
    add_args, another_machine, noise_files, restore_fresh, slow_add_args, status, strs, tree,
    wait_status,
};

#[test]
fn a_replicated_snapshot_restores_byte_exact_on_a_fresh_data_dir() {
    let g = Garage::start();
    let d = Daemon::start(&[]);
    let ws = project(&d);
    let root = ws.path();
    // What a workspace holds: text, an executable, an empty file, a chunked file (> 1 MiB,
    // with a run of zeros), incompressible data, a symlink, a non-UTF-8 name, nesting.
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::write(root.join("a/b/c/deep.txt"), b"deep\n".repeat(100)).unwrap();
    std::fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    let mut big = chkpt_testkit::noise(3 << 20, 5);
    big[1 << 20..(3 << 19) + (1 << 20)].fill(0);
    std::fs::write(root.join("big.bin"), &big).unwrap();
    noise_files(&root.join("noise"), 3, 100_000, 1);
    std::os::unix::fs::symlink("a/b/c/deep.txt", root.join("link")).unwrap();
    std::fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")),
        b"latin-1 name",
    )
    .unwrap();
    let snap = save(&d, root, "to replicate");

    let secrets = tempfile::tempdir().unwrap();
    let creds = g.credentials(secrets.path(), None);
    let key = secrets.path().join("remote.key");
    let added = ok_in(
        &d,
        root,
        &strs(&add_args(&g, "off-site", "laptop", &creds, &key)),
    );
    assert!(
        added.stderr.contains("keep a copy of it somewhere safe"),
        "{}",
        added.stderr
    );
    assert!(
        added.stderr.contains("Made a new key at"),
        "{}",
        added.stderr
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let started = Instant::now();
    ok_in(
        &d,
        root,
        &["remote", "sync", "off-site", "--timeout", "60s"],
    );
    let upload = started.elapsed();
    let s = status(&d, root, "off-site");
    assert_eq!(s["pending_snapshots"], 0, "{s:#}");
    assert_eq!(s["replicated"], true, "{s:#}");
    assert!(s["remote_snapshots"].as_u64().unwrap() >= 1, "{s:#}");
    // The credentials are not in the daemon's records, only the file's path.
    let registry = std::fs::read_to_string(d.data.join("remotes.json")).unwrap();
    assert!(
        !registry.contains(&g.secret) && registry.contains("credentials"),
        "{registry}"
    );

    // Another machine: a fresh data directory, the same bucket, the same key.
    let fresh = Daemon::start(&[]);
    let elsewhere = tempfile::tempdir().unwrap();
    let out = ok_in(
        &fresh,
        elsewhere.path(),
        &strs(&add_args(&g, "home", "laptop", &creds, &key)),
    );
    assert!(
        out.text().contains("holding data already"),
        "{}",
        out.text()
    );
    let listed = json_in(&fresh, elsewhere.path(), &["remote", "snapshots", "home"]);
    let ids: Vec<&str> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&snap.as_str()), "{snap} not in {listed:#}");
    let to = elsewhere.path().join("restored");
    let r = json_in(
        &fresh,
        elsewhere.path(),
        &[
            "remote",
            "restore",
            "home",
            &snap[..8],
            "--to",
            &to.display().to_string(),
        ],
    );
    assert_eq!(r["id"], snap.as_str(), "{r:#}");
    assert_eq!(
        tree(&to),
        tree(root),
        "the restore differs from what was saved"
    );
    let local_to = root
        .parent()
        .unwrap()
        .join(format!("local-{}", std::process::id()));
    let started = Instant::now();
    ok_in(
        &d,
        root,
        &["restore", &snap, "--to", &local_to.display().to_string()],
    );
    let local = started.elapsed();
    std::fs::remove_dir_all(&local_to).unwrap();
    let mib = |b: &Value| b.as_u64().unwrap() as f64 / f64::from(1 << 20);
    eprintln!(
        "figure: {:.1} MiB sent in {} ms ({:.1} MiB/s, debug build, whole sync); remote restore \
         {} ms on a fresh data dir, local restore {} ms",
        mib(&s["uploaded_bytes"]),
        upload.as_millis(),
        mib(&s["uploaded_bytes"]) / upload.as_secs_f64(),
        r["restored"]["elapsed_ms"],
        local.as_millis()
    );
    assert!(r["restored"]["files"].as_u64().unwrap() >= 9, "{r:#}");
    // `latest` with -w picks the workspace; into a folder that is not empty it refuses.
    let out = run_in(
        &fresh.socket,
        elsewhere.path(),
        &[
            "remote",
            "restore",
            "home",
            "latest",
            "--to",
            &to.display().to_string(),
        ],
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("is not empty"), "{}", out.stderr);
    let to2 = elsewhere.path().join("again");
    ok_in(
        &fresh,
        elsewhere.path(),
        &[
            "-w",
            &root.display().to_string(),
            "remote",
            "restore",
            "home",
            "latest",
            "--to",
            &to2.display().to_string(),
        ],
    );
    assert_eq!(tree(&to2), tree(root));
}

/// A byte flipped in a pack on the server (many files share each request): the restore fails
/// naming the object, leaves the folder it was given empty, and the local store is untouched.
#[test]
fn a_damaged_pack_fails_the_remote_restore_and_leaves_its_folder_empty() {
    let g = Garage::start();
    let d = Daemon::start(&[]);
    let ws = project(&d);
    let root = ws.path();
    noise_files(&root.join("noise"), 40, 20_000, 7);
    let snap = save(&d, root, "to damage");
    let secrets = tempfile::tempdir().unwrap();
    let creds = g.credentials(secrets.path(), None);
    let key = secrets.path().join("remote.key");
    ok_in(
        &d,
        root,
        &strs(&add_args(&g, "off-site", "dmg", &creds, &key)),
    );
    ok_in(
        &d,
        root,
        &["remote", "sync", "off-site", "--timeout", "60s"],
    );
    let (pack, size) = g
        .list("dmg/packs")
        .into_iter()
        .max_by_key(|(_, size)| *size)
        .expect("a pack on the server");
    let mut bytes = g.get(&pack);
    assert_eq!(bytes.len() as u64, size);
    bytes[size as usize / 2] ^= 0x40;
    g.put(&pack, bytes).unwrap();

    let (fresh, elsewhere) = another_machine(&g, "home", "dmg", &creds, &key);
    let to = elsewhere.path().join("restored");
    std::fs::create_dir(&to).unwrap();
    let out = fails_in(
        &fresh,
        elsewhere.path(),
        &[
            "remote",
            "restore",
            "home",
            &snap,
            "--to",
            &to.display().to_string(),
        ],
    );
    assert!(
        out.stderr.contains("does not open with the key") && out.stderr.contains("damaged"),
        "{}",
        out.stderr
    );
    let left: Vec<_> = std::fs::read_dir(&to).unwrap().collect();
    assert!(left.is_empty(), "the failed restore left {left:?}");
    // The local snapshot still restores byte for byte.
    let local_to = elsewhere.path().join("local");
    ok_in(
        &d,
        root,
        &["restore", &snap, "--to", &local_to.display().to_string()],
    );
    assert_eq!(tree(&local_to), tree(root));
}

/// Snapshot ids and roots of the workspace, to check nothing local changed.
fn local_snapshots(d: &Daemon, ws: &Path) -> Value {
    json_in(d, ws, &["list"])
}

#[test]
fn bad_keys_buckets_credentials_and_a_dead_server_are_refused_clearly() {
    let g = Garage::start();
    let d = Daemon::start(&[]);
    let ws = project(&d);
    let root = ws.path();
    save(&d, root, "kept");
    let before = local_snapshots(&d, root);
    let secrets = tempfile::tempdir().unwrap();
    let creds = g.credentials(secrets.path(), None);
    let key = secrets.path().join("k1");
    ok_in(&d, root, &strs(&add_args(&g, "first", "p", &creds, &key)));

    let refused = |args: Vec<String>, want: &str| {
        let out = fails_in(&d, root, &strs(&args));
        assert!(
            out.stderr.contains(want),
            "{args:?}: want {want:?} in: {}",
            out.stderr
        );
        let json = run_in(&d.socket, root, &[&["--json"][..], &strs(&args)].concat());
        assert_eq!(json.code, 1);
        assert!(
            json.json()["error"].as_str().unwrap().contains(want),
            "{}",
            json.text()
        );
    };
    // Another key for a prefix set up with k1; a key file that does not exist.
    let k2 = secrets.path().join("k2");
    other_key(&k2);
    refused(
        add_args(&g, "wrong-key", "p", &creds, &k2),
        "the key does not open this remote",
    );
    let missing = secrets.path().join("missing.key");
    refused(
        add_args(&g, "no-key", "p", &creds, &missing),
        "holds data already",
    );
    assert!(
        !missing.exists(),
        "no key is made for a remote that has one"
    );
    // A bucket that does not exist.
    let mut args = add_args(&g, "no-bucket", "p", &creds, &key);
    args[3] = "s3://no-such-bucket/p".into();
    refused(args, "bucket no-such-bucket");
    // A secret that is not the key's.
    let bad = g.credentials(secrets.path(), Some(&"0".repeat(64)));
    refused(
        add_args(&g, "bad-creds", "p", &bad, &key),
        "refused the credentials",
    );
    // A credentials file others may read.
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(add_args(&g, "loose", "p", &bad, &key), "chmod 600");
    // A server that is not there.
    let mut args = add_args(&g, "down", "p", &creds, &key);
    args[5] = format!("http://127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    refused(args, "cannot reach");

    let listed = json_in(&d, root, &["remote", "list"]);
    let names: Vec<&str> = listed["remotes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["first"],
        "only the remote that worked is registered"
    );
    assert_eq!(
        local_snapshots(&d, root),
        before,
        "no local snapshot changed"
    );
    ok_in(&d, root, &["verify"]);

    // On a fresh machine the wrong key cannot even register the remote: nothing restores.
    let fresh = Daemon::start(&[]);
    let other = tempfile::tempdir().unwrap();
    let out = fails_in(
        &fresh,
        other.path(),
        &strs(&add_args(&g, "x", "p", &creds, &k2)),
    );
    assert!(
        out.stderr.contains("the key does not open"),
        "{}",
        out.stderr
    );
    let out = fails_in(&fresh, other.path(), &["remote", "snapshots", "x"]);
    assert!(out.stderr.contains("no remote named"), "{}", out.stderr);
}

/// Writes a valid key that no remote was set up with.
fn other_key(path: &Path) {
    let hex: String = chkpt_testkit::noise(32, 77)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(path, hex).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn a_cut_connection_and_a_killed_daemon_resume_with_nothing_lost_or_sent_twice() {
    let mut g = Garage::start();
    let mut d = Daemon::start(&[]);
    let ws = project(&d);
    let root = ws.path();
    noise_files(&root.join("data"), 24, 256 << 10, 2);
    save(&d, root, "six MiB of noise");
    let secrets = tempfile::tempdir().unwrap();
    let creds = g.credentials(secrets.path(), None);
    let key = secrets.path().join("k");
    // Small packs, two at a time, slowed to 2 MiB/s: the upload takes ~3 s and is cut in its
    // middle.
    let args = slow_add_args(&g, "cut", "p", &creds, &key);
    ok_in(&d, root, &strs(&args));
    wait_status(&d, root, "cut", "first packs", |s| {
        s["uploaded_packs"].as_u64().unwrap() >= 3
    });
    g.kill();
    // A save while the server is gone: it does not wait for the remote.
    std::fs::write(
        root.join("data/during.txt"),
        b"saved while the server was down\n",
    )
    .unwrap();
    let started = Instant::now();
    save(&d, root, "during the outage");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a save waited {:?}",
        started.elapsed()
    );
    let s = wait_status(&d, root, "cut", "error", |s| {
        !s["last_error"].as_str().unwrap().is_empty()
    });
    assert!(
        s["last_error"].as_str().unwrap().contains("cannot reach"),
        "{s:#}"
    );
    assert!(s["pending_snapshots"].as_u64().unwrap() >= 2, "{s:#}");
    assert!(s["pending_bytes"].as_u64().unwrap() > 1 << 20, "{s:#}");
    assert!(s["oldest_pending_unix_ms"].as_i64().unwrap() > 0, "{s:#}");
    let text = ok_in(&d, root, &["remote", "status"]).text();
    assert!(
        text.contains("not replicated: ") && text.contains("cannot reach"),
        "{text}"
    );
    let sent_before = s["uploaded_packs"].as_u64().unwrap();
    assert!(
        sent_before < 24,
        "the cut came after the whole upload: {s:#}"
    );

    g.start_again();
    ok_in(&d, root, &["remote", "sync", "cut", "--timeout", "120s"]);
    let s = status(&d, root, "cut");
    assert_eq!(s["pending_snapshots"], 0, "{s:#}");
    // Every object indexed once: what was sent and committed is what the remote holds.
    assert_eq!(
        s["uploaded_objects"], s["remote_objects"],
        "an object was indexed twice: {s:#}"
    );

    // A daemon killed in the middle of an upload starts again where the remote is.
    let packs = s["uploaded_packs"].as_u64().unwrap();
    noise_files(&root.join("more"), 16, 256 << 10, 3);
    save(&d, root, "four MiB more");
    let before_kill = wait_status(&d, root, "cut", "packs of the second upload", |s| {
        s["uploaded_packs"].as_u64().unwrap() >= packs + 4
    });
    assert!(
        before_kill["pending_snapshots"].as_u64().unwrap() >= 1,
        "{before_kill:#}"
    );
    let objects_before = before_kill["remote_objects"].as_u64().unwrap();
    d.kill9();
    d.start_again();
    ok_in(&d, root, &["remote", "sync", "cut", "--timeout", "120s"]);
    let s = status(&d, root, "cut");
    assert_eq!(s["pending_snapshots"], 0, "{s:#}");
    let added = s["remote_objects"].as_u64().unwrap() - objects_before;
    let sent = s["uploaded_objects"].as_u64().unwrap();
    assert!(
        sent <= added && added < 16,
        "the restarted daemon sent {sent} objects; {added} were missing after the kill: {s:#}"
    );

    // Byte for byte, on a fresh data directory.
    let (fresh, other) = another_machine(&g, "cut", "p", &creds, &key);
    let to = restore_fresh(&fresh, other.path(), "cut", "latest");
    assert_eq!(tree(&to), tree(root));
}

/// `chkptctl --socket … args` with `CHKPT_REMOTE_PASSPHRASE` set.
fn with_passphrase(d: &Daemon, cwd: &Path, pass: &str, args: &[String]) -> util::cli::Out {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chkptctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .current_dir(cwd)
        .env("CHKPT_REMOTE_PASSPHRASE", pass)
        .output()
        .unwrap();
    util::cli::Out {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A passphrase remote: auto snapshots replicate on their own (the time from a 5-file
/// change's snapshot to replicated is printed, for the README), a fresh machine restores
/// with the passphrase alone, and a wrong passphrase is refused.
#[test]
fn a_passphrase_remote_replicates_auto_snapshots_and_restores_elsewhere() {
    let g = Garage::start();
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    for i in 0..20 {
        std::fs::write(root.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    let dir = root.display().to_string();
    ok_in(
        &d,
        root,
        &["watch", &dir, "--idle", "200ms", "--max-delay", "1s"],
    );
    let secrets = tempfile::tempdir().unwrap();
    let creds = g.credentials(secrets.path(), None);
    let mut args = add_args(&g, "pp", "auto", &creds, Path::new("/unused"));
    args.truncate(args.len() - 2);
    let out = with_passphrase(&d, root, "correct horse battery staple", &args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("Keep the passphrase safe"),
        "{}",
        out.stderr
    );
    ok_in(&d, root, &["remote", "sync", "pp", "--timeout", "60s"]);

    // A 5-file change: an auto snapshot, then replicated without being asked.
    let before = json_in(&d, root, &["list"]).as_array().map_or(0, Vec::len);
    for i in 0..5 {
        std::fs::write(root.join(format!("f{i}.txt")), format!("changed {i}\n")).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let taken = loop {
        let list = json_in(&d, root, &["list"]);
        if list.as_array().map_or(0, Vec::len) > before {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "no auto snapshot: {list:#}");
        std::thread::sleep(Duration::from_millis(10));
    };
    wait_status(&d, root, "pp", "replication of the auto snapshot", |s| {
        s["pending_snapshots"] == 0 && s["busy"] == false
    });
    eprintln!(
        "figure: auto snapshot of a 5-file change to replicated: {} ms (seen by polling)",
        taken.elapsed().as_millis()
    );

    let fresh = Daemon::start(&[]);
    let other = tempfile::tempdir().unwrap();
    let out = with_passphrase(&fresh, other.path(), "wrong horse", &args);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("the key does not open"),
        "{}",
        out.stderr
    );
    let out = with_passphrase(&fresh, other.path(), "correct horse battery staple", &args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let to = restore_fresh(&fresh, other.path(), "pp", "latest");
    assert_eq!(tree(&to), tree(root));
}
