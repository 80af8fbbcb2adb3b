//! Faults against the real daemon: a full disk, an unreadable file, a damaged pack, files that
//! change while they are read, and a caller who is somebody else.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod util;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use tonic::transport::Channel;
use util::{Daemon, listing, restore_to, snapshots};

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn watch(c: &mut ChkptClient<Channel>, dir: &Path) -> pb::Snapshot {
    // Quiet periods of an hour: only the tests' own saves make snapshots.
    util::watch(c, dir, 3_600_000, 3_600_000)
        .await
        .baseline
        .unwrap()
}

async fn save(c: &mut ChkptClient<Channel>, dir: &Path) -> Result<pb::Snapshot, tonic::Status> {
    let req = pb::SaveRequest {
        workspace: dir.display().to_string(),
        ..Default::default()
    };
    Ok(c.save(req).await?.into_inner().snapshot.unwrap())
}

async fn pid(c: &mut ChkptClient<Channel>) -> i32 {
    c.status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .pid as i32
}

fn set_file_size_limit(pid: i32, limit: u64) {
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid pid and rlimit; the old value is not wanted.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Fills the disk, as the daemon sees it: none of its files may grow more than `room` past the
/// largest of its data files now.
async fn fill_disk(d: &Daemon, c: &mut ChkptClient<Channel>, room: u64) {
    let largest = walk_sizes(&d.data).into_iter().max().unwrap_or(0);
    set_file_size_limit(pid(c).await, largest + room);
}

/// Frees the space [`fill_disk`] took.
async fn free_disk(c: &mut ChkptClient<Channel>) {
    set_file_size_limit(pid(c).await, libc::RLIM_INFINITY);
}

async fn assert_store_verifies(c: &mut ChkptClient<Channel>) {
    let v = c
        .verify(pb::VerifyRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{:?}", v.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_save_clearly_harms_nothing_and_the_next_save_works() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    fs::write(ws.path().join("small.txt"), b"already safe").unwrap();
    let mut c = d.client().await;
    let baseline = watch(&mut c, ws.path()).await;
    // A 4 MiB incompressible file cannot fit.
    fill_disk(&d, &mut c, 512 * 1024).await;
    let big = noise(4 << 20, 7);
    fs::write(ws.path().join("big.bin"), &big).unwrap();
    let err = save(&mut c, ws.path()).await.unwrap_err();
    println!(
        "figures: disk full: code={:?} message={:?}",
        err.code(),
        err.message()
    );
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("no space left"), "{}", err.message());
    // Nothing already saved is harmed.
    assert_store_verifies(&mut c).await;
    assert_eq!(snapshots(&mut c, ws.path()).await.len(), 1);
    let out = tempfile::tempdir().unwrap();
    restore_to(&mut c, ws.path(), &baseline.id, out.path()).await;
    assert_eq!(
        fs::read(out.path().join("small.txt")).unwrap(),
        b"already safe"
    );
    // Space is freed: the next save works and holds the file.
    free_disk(&mut c).await;
    let snap = save(&mut c, ws.path()).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    restore_to(&mut c, ws.path(), &snap.id, out.path()).await;
    assert_eq!(fs::read(out.path().join("big.bin")).unwrap(), big);
}

/// The disk fills while the last records of a save are written out at its commit (files small
/// enough to be gathered in memory first): the save fails, and once space is freed the next
/// save still holds every file, byte for byte, although their metadata did not change since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_full_at_the_commit_loses_nothing_the_next_save_needs() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    fs::write(ws.path().join("small.txt"), b"already safe").unwrap();
    let mut c = d.client().await;
    watch(&mut c, ws.path()).await;
    fill_disk(&d, &mut c, 64 * 1024).await;
    // 200 incompressible files of 3 KiB: 600 KiB of records, each far below the write buffer.
    let files: Vec<(String, Vec<u8>)> = (0..200u64)
        .map(|i| (format!("f{i:03}.bin"), noise(3 << 10, 100 + i)))
        .collect();
    for (name, bytes) in &files {
        fs::write(ws.path().join(name), bytes).unwrap();
    }
    // Past the racy window, a file whose metadata did not change is not read again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = save(&mut c, ws.path()).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::ResourceExhausted,
        "{}",
        err.message()
    );
    free_disk(&mut c).await;
    let snap = save(&mut c, ws.path()).await.unwrap();
    assert_store_verifies(&mut c).await;
    let out = tempfile::tempdir().unwrap();
    restore_to(&mut c, ws.path(), &snap.id, out.path()).await;
    for (name, bytes) in &files {
        assert_eq!(&fs::read(out.path().join(name)).unwrap(), bytes, "{name}");
    }
}

fn walk_sizes(dir: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(walk_sizes(&e.path()));
        } else {
            out.push(m.len());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_file_is_skipped_with_a_warning_and_the_save_succeeds() {
    // As root, permission bits bind only without the capabilities that override them.
    // SAFETY: getuid cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    let prefix: &[&str] = if root {
        &[
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
        ]
    } else {
        &[]
    };
    let d = Daemon::start_with_prefix(prefix, &[]);
    let ws = tempfile::tempdir().unwrap();
    fs::write(ws.path().join("fine.txt"), b"readable").unwrap();
    let secret = ws.path().join("secret.txt");
    fs::write(&secret, b"nobody may read this").unwrap();
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let mut c = d.client().await;
    let baseline = watch(&mut c, ws.path()).await;
    assert_eq!(
        baseline.files, 1,
        "only the readable file is in the snapshot"
    );
    assert!(
        baseline
            .warnings
            .iter()
            .any(|w| w.contains("secret.txt") && w.contains("ermission")),
        "{:?}",
        baseline.warnings
    );
    let shown = Command::new(env!("CARGO_BIN_EXE_chkptctl"))
        .args([
            "--socket",
            d.socket.to_str().unwrap(),
            "-w",
            ws.path().to_str().unwrap(),
            "show",
            &baseline.id,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("warning:") && text.contains("secret.txt"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_named_by_verify_and_a_restore_needing_it_changes_nothing() {
    let mut d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    fs::create_dir(ws.path().join("src")).unwrap();
    fs::write(ws.path().join("src/only-big.bin"), noise(300_000, 3)).unwrap();
    let mut c = d.client().await;
    let baseline = watch(&mut c, ws.path()).await;
    d.stop();
    // The one large blob fills most of the pack: flip a byte in its middle.
    let pack = fs::read_dir(d.data.join("packs"))
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut bytes = fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    fs::write(&pack, bytes).unwrap();
    d.restart_after_stop();
    let ctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_chkptctl"))
            .args([
                "--socket",
                d.socket.to_str().unwrap(),
                "-w",
                ws.path().to_str().unwrap(),
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let verify = ctl(&["verify"]);
    let out = String::from_utf8_lossy(&verify.stdout).into_owned()
        + &String::from_utf8_lossy(&verify.stderr);
    assert_ne!(verify.status.code(), Some(0), "{out}");
    assert!(
        out.contains("src/only-big.bin") && out.contains(&baseline.id[..8]),
        "{out}"
    );
    fs::write(ws.path().join("src/only-big.bin"), b"edited after").unwrap();
    fs::write(ws.path().join("new.txt"), b"new").unwrap();
    let before = listing(ws.path());
    let restore = ctl(&["restore", &baseline.id]);
    assert_eq!(restore.status.code(), Some(1));
    let err = String::from_utf8_lossy(&restore.stderr);
    assert!(
        err.contains("corrupt") || err.contains("does not match"),
        "{err}"
    );
    assert_eq!(
        listing(ws.path()),
        before,
        "a failed restore changed the workspace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_changing_while_read_never_give_torn_content() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let mut c = d.client().await;
    watch(&mut c, ws.path()).await;
    let hot = ws.path().join("hot.bin");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (hot, stop, dir) = (hot.clone(), stop.clone(), ws.path().to_path_buf());
        std::thread::spawn(move || {
            // Version v is (v % 251) repeated len(v) times: growing, shrinking, rewritten in place.
            let mut v = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let len = 1 + (v * 7919 % 3_000_000) as usize;
                if fs::write(&hot, vec![(v % 251) as u8; len]).is_err() {
                    break; // the test ended early
                }
                let moved = dir.join("moving.txt");
                // Another file renamed away and recreated while saves run.
                let _ = fs::rename(&moved, dir.join("renamed.txt"));
                let _ = fs::write(&moved, format!("{v}"));
                v += 1;
            }
            v
        })
    };
    let (mut saves, mut checks) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let snap = save(&mut c, ws.path())
            .await
            .expect("a save never fails because files move");
        saves += 1;
        let req = pb::ReadFileRequest {
            workspace: ws.path().display().to_string(),
            snapshot: snap.id,
            path: b"hot.bin".to_vec(),
        };
        if let Ok(resp) = c.read_file(req).await {
            let mut s = resp.into_inner();
            let mut got = Vec::new();
            while let Some(chunk) = s.message().await.unwrap() {
                got.extend_from_slice(&chunk.data);
            }
            checks += 1;
            // `fs::write` truncates before it writes: empty is a state the file really had.
            let Some(&first) = got.first() else { continue };
            assert!(
                got.iter().all(|b| *b == first),
                "torn content: a mix of versions"
            );
            let mut candidates = (0..1_000_000u64).filter(|v| (v % 251) as u8 == first);
            // A file caught in the middle of one `write` is a prefix of that version: also a
            // state it really had. A mix of two versions never is.
            assert!(
                candidates.any(|v| 1 + (v * 7919 % 3_000_000) as usize >= got.len()),
                "no version of {first} is {} bytes long or longer",
                got.len()
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let versions = writer.join().unwrap();
    println!(
        "figures: changing files: versions written={versions} saves={saves} checks={checks} torn=0"
    );
    assert!(saves >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_use_the_daemon() {
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        println!(
            "figures: another user: skipped (needs root to become another user; the uid check has a unit test)"
        );
        return;
    }
    let d = Daemon::start(&[]);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_chkptctl"))
        .args(["--socket", d.socket.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!(
        "figures: another user: exit={:?} stderr={err:?}",
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("chkptd"),
        "another user saw the daemon's status"
    );
}
