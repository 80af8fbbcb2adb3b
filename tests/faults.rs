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
use chkpt_testkit::noise;
use tonic::transport::Channel;
use util::{Daemon, listing, restore_to, snapshots};

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
    util::assert_store_verifies(&mut c).await;
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
    util::assert_store_verifies(&mut c).await;
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
    let d = Daemon::start_bound_by_permissions(&[]);
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

/// Version `v` of `hot.bin`: the byte `v % 251`, `hot_len(v)` times.
fn hot_len(v: u64) -> usize {
    1 + (v * 7919 % 3_000_000) as usize
}

/// Why `got` is not a state `hot.bin` really had, if it is not: one version's byte throughout,
/// and no longer than that version (a file caught in the middle of one `write` is a prefix of
/// it). A mix of two versions never is. `versions` bounds the versions written so far.
fn torn(got: &[u8], versions: u64) -> Option<String> {
    let &first = got.first()?;
    if let Some(at) = got.iter().position(|b| *b != first) {
        return Some(format!(
            "{} bytes: byte {first} up to offset {at}, then {}",
            got.len(),
            got[at]
        ));
    }
    let fits = (0..=versions).any(|v| (v % 251) as u8 == first && hot_len(v) >= got.len());
    (!fits).then(|| {
        format!(
            "{} bytes of {first}: no version of {first} is that long",
            got.len()
        )
    })
}

/// Files rewritten in place of one length (1 MiB, read whole into memory; 8 MiB and a bit, streamed) hold
/// version `v` as the byte `v % 251` throughout. One `write` goes front to back, so the states
/// such a file really has are one version, or the next version up to some offset and the one
/// before it after: a newer run first. A reader that saw the file change under it would get
/// the opposite, an older run first (or more runs): that is torn.
const IN_PLACE: [(&str, usize); 2] = [
    ("inplace-small.bin", 1 << 20),
    ("inplace-big.bin", (8 << 20) + (64 << 10)),
];

/// Why `got` is not a state an in-place file of `len` bytes really had, if it is not.
fn torn_in_place(got: &[u8], len: usize) -> Option<String> {
    if got.len() != len {
        return Some(format!("{} bytes, not {len}", got.len()));
    }
    let mut runs: Vec<(u8, usize)> = Vec::new();
    for &b in got {
        match runs.last_mut() {
            Some((x, n)) if *x == b => *n += 1,
            _ => runs.push((b, 1)),
        }
    }
    match runs.as_slice() {
        [_] => None,
        [(newer, _), (older, _)] if *newer == ((*older as u16 + 1) % 251) as u8 => None,
        _ => Some(format!(
            "runs {:?}",
            runs.iter().take(4).collect::<Vec<_>>()
        )),
    }
}

/// Files rewritten in place, truncated, grown and renamed while saves read them: every save's
/// copy is a state the file really had, or the file is left out with a warning on the
/// snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_changing_while_read_never_give_torn_content() {
    /// Saves go on (for at least 4 s) until this many copies of each changing file with content
    /// were checked; fewer within the deadline fails the test, which would otherwise prove
    /// nothing.
    const ENOUGH: u64 = 10;
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let mut c = d.client().await;
    watch(&mut c, ws.path()).await;
    let hot = ws.path().join("hot.bin");
    // The first version is in place before the first save.
    fs::write(&hot, vec![0u8; hot_len(0)]).unwrap();
    for (name, len) in IN_PLACE {
        fs::write(ws.path().join(name), vec![0u8; len]).unwrap();
    }
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (hot, stop, written) = (hot.clone(), stop.clone(), written.clone());
        let dir = ws.path().to_path_buf();
        std::thread::spawn(move || {
            // Growing, shrinking, rewritten in place.
            let mut v = 1u64;
            let mut in_place_v = [0u64; IN_PLACE.len()];
            let mut last_big = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Counted before the write starts: a save may see it half written.
                written.store(v + 1, std::sync::atomic::Ordering::SeqCst);
                if fs::write(&hot, vec![(v % 251) as u8; hot_len(v)]).is_err() {
                    break; // the test ended early
                }
                // Each in-place file counts its own versions. The large one is rewritten every
                // second only, so that some saves read it whole between two versions.
                for (k, (name, len)) in IN_PLACE.into_iter().enumerate() {
                    use std::os::unix::fs::FileExt;
                    if k == 1 {
                        if last_big.elapsed() < Duration::from_secs(1) {
                            continue;
                        }
                        last_big = Instant::now();
                    }
                    in_place_v[k] += 1;
                    let byte = (in_place_v[k] % 251) as u8;
                    let Ok(f) = fs::OpenOptions::new().write(true).open(dir.join(name)) else {
                        break;
                    };
                    if f.write_all_at(&vec![byte; len], 0).is_err() {
                        break;
                    }
                }
                let moved = dir.join("moving.txt");
                // Another file renamed away and recreated while saves run.
                let _ = fs::rename(&moved, dir.join("renamed.txt"));
                let _ = fs::write(&moved, format!("{v}"));
                v += 1;
            }
            (v, in_place_v)
        })
    };
    let (mut saves, mut checks, mut non_empty, mut left_out, mut torn_copies) = (0, 0, 0, 0, 0);
    let mut small_checks = 0;
    let mut in_place_checks = [0u64; IN_PLACE.len()];
    let mut first_torn = None;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    while start.elapsed() < Duration::from_secs(4)
        || non_empty < ENOUGH
        || in_place_checks[0] < ENOUGH
        || in_place_checks[1] < ENOUGH / 2
    {
        assert!(
            Instant::now() < deadline,
            "too few copies checked in {saves} saves within the deadline: hot.bin {non_empty} with content, in place {in_place_checks:?} ({left_out} left out)"
        );
        let snap = save(&mut c, ws.path())
            .await
            .expect("a save never fails because files move");
        saves += 1;
        let versions = written.load(std::sync::atomic::Ordering::SeqCst);
        match util::read_file(&mut c, ws.path(), &snap.id, b"hot.bin").await {
            Ok(got) => {
                checks += 1;
                // `fs::write` truncates before it writes: empty is a state the file really had.
                non_empty += u64::from(!got.is_empty());
                if let Some(why) = torn(&got, versions) {
                    torn_copies += 1;
                    first_torn.get_or_insert(why);
                }
            }
            // A file that kept changing while read may be left out, never silently.
            Err(e) if e.code() == tonic::Code::NotFound => {
                assert!(
                    snap.warnings.iter().any(|w| w.contains("hot.bin")),
                    "hot.bin is missing from snapshot {} without a warning: {:?}",
                    snap.id,
                    snap.warnings
                );
                left_out += 1;
            }
            Err(e) => panic!("ReadFile of hot.bin in {}: {e}", snap.id),
        }
        for (k, (name, len)) in IN_PLACE.into_iter().enumerate() {
            match util::read_file(&mut c, ws.path(), &snap.id, name.as_bytes()).await {
                Ok(got) => {
                    in_place_checks[k] += 1;
                    if let Some(why) = torn_in_place(&got, len) {
                        torn_copies += 1;
                        first_torn.get_or_insert(format!("{name}: {why}"));
                    }
                }
                Err(e) if e.code() == tonic::Code::NotFound => {
                    assert!(
                        snap.warnings.iter().any(|w| w.contains(name)),
                        "{name} is missing from snapshot {} without a warning: {:?}",
                        snap.id,
                        snap.warnings
                    );
                    left_out += 1;
                }
                Err(e) => panic!("ReadFile of {name} in {}: {e}", snap.id),
            }
        }
        // The renamed pair: whichever names the snapshot holds hold a number the writer wrote.
        for name in [&b"moving.txt"[..], b"renamed.txt"] {
            match util::read_file(&mut c, ws.path(), &snap.id, name).await {
                Ok(got) => {
                    small_checks += 1;
                    if !got.iter().all(u8::is_ascii_digit) {
                        torn_copies += 1;
                        first_torn.get_or_insert(format!(
                            "{}: {:?}",
                            String::from_utf8_lossy(name),
                            String::from_utf8_lossy(&got)
                        ));
                    }
                }
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => panic!("ReadFile of {}: {e}", String::from_utf8_lossy(name)),
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (versions, in_place_versions) = writer.join().unwrap();
    println!(
        "figures: changing files: versions written={versions} saves={saves} hot.bin copies checked={checks} (with content {non_empty}) in-place copies checked={in_place_checks:?} (versions {in_place_versions:?}) left out with a warning={left_out} renamed-file copies checked={small_checks} torn={torn_copies}"
    );
    assert_eq!(torn_copies, 0, "torn content, first: {first_torn:?}");
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
