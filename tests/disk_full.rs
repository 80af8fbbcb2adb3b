//! A real full disk: the daemon's data directory is a small tmpfs (`size=`, `nr_inodes=`),
//! filled for real with a filler file or empty files, so the daemon meets ENOSPC where the
//! kernel gives it: writing a pack, writing the catalog (redb), creating a file or a folder.
//! Each time the operation fails with `ResourceExhausted` naming what could not be written,
//! nothing already saved is harmed, and once space is freed the next one works.
//!
//! The tmpfs is mounted in a mount namespace of the daemon's own (`unshare --user --mount`):
//! nobody else sees it, it needs no root, and it goes away with the daemon however the test
//! ends, so there is no mount to clean up. The test reaches it through `/proc/<pid>/root`.
//! On tmpfs space is taken when written: ENOSPC comes from `write`, `open` and `mkdir`, never
//! from `fsync` (a failed background fsync is a unit test in `store/mod.rs`).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod util;

use std::fs;
use std::path::{Path, PathBuf};

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use chkpt_testkit::noise;
use tonic::transport::Channel;
use util::{Daemon, listing, restore_to, snapshots};

type Client = ChkptClient<Channel>;

/// The tmpfs holding the data directory.
const SIZE: &str = "24m";
const INODES: &str = "400";

/// A daemon whose data directory is a fresh tmpfs in a mount namespace of its own.
fn daemon_on_a_small_tmpfs() -> Daemon {
    Daemon::on_a_tmpfs(
        &format!("size={SIZE},nr_inodes={INODES}"),
        // No store budget: its default (10 % of this 24 MiB disk) would drop the snapshots
        // the test counts; the disk itself is what runs out here.
        &["--max-store-bytes", "0"],
    )
}

/// The data directory as the daemon sees it (inside its mount namespace).
struct Disk {
    filler: PathBuf,
}

impl Disk {
    async fn of(d: &Daemon, c: &mut Client) -> Disk {
        let pid = c
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .pid;
        let root =
            PathBuf::from(format!("/proc/{pid}/root")).join(d.data.strip_prefix("/").unwrap());
        let st = nix_statfs(&root);
        assert_eq!(
            st.f_type as i64, 0x0102_1994,
            "the data directory is not the tmpfs"
        );
        let filler = root.join("filler");
        fs::create_dir_all(&filler).unwrap();
        Disk { filler }
    }

    /// Fills the blocks, leaving `room` bytes.
    fn fill(&self, room: u64) {
        chkpt_testkit::disk::fill(&self.filler.join("blocks"), room);
    }

    /// Uses every inode but `room`.
    fn fill_inodes(&self, room: usize) {
        let mut made = Vec::new();
        for i in 0.. {
            let p = self.filler.join(format!("i{i}"));
            match fs::File::create(&p) {
                Ok(_) => made.push(p),
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling inodes: {e}"),
            }
        }
        for p in made.iter().rev().take(room) {
            fs::remove_file(p).unwrap();
        }
    }

    /// Frees everything the filler took.
    fn free(&self) {
        for e in fs::read_dir(&self.filler).unwrap().flatten() {
            fs::remove_file(e.path()).unwrap();
        }
    }
}

fn nix_statfs(p: &Path) -> libc::statfs {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path and an out-parameter of the right type.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        assert_eq!(
            libc::statfs(c.as_ptr(), &mut st),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
        st
    }
}

async fn save(c: &mut Client, ws: &Path) -> Result<pb::Snapshot, tonic::Status> {
    let req = pb::SaveRequest {
        workspace: ws.display().to_string(),
        ..Default::default()
    };
    Ok(c.save(req).await?.into_inner().snapshot.unwrap())
}

/// What a failed write named: the pack, the catalog, or another path of the data directory.
fn named(e: &tonic::Status) -> &'static str {
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{}", e.message());
    let m = e.message();
    assert!(m.starts_with("no space left on the disk holding "), "{m}");
    if m.contains("/packs/") {
        "pack"
    } else if m.contains("catalog") {
        "catalog"
    } else if m.contains("/journal") {
        "journal"
    } else {
        panic!("{m}")
    }
}

/// The daemon still answers and nothing saved is harmed: Status, List and Verify work, and the
/// snapshot `id` restores to `tree`.
async fn nothing_harmed(c: &mut Client, ws: &Path, count: usize, id: &str, tree: &util::Listing) {
    c.status(pb::StatusRequest {}).await.unwrap();
    assert_eq!(
        snapshots(c, ws).await.len(),
        count,
        "a failed write left a snapshot"
    );
    util::assert_store_verifies(c).await;
    let out = tempfile::tempdir().unwrap();
    restore_to(c, ws, id, out.path()).await;
    assert!(
        &listing(out.path()) == tree,
        "snapshot {id} does not restore exactly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_full_disk_fails_each_write_clearly_harms_nothing_and_the_next_one_works() {
    let d = daemon_on_a_small_tmpfs();
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().canonicalize().unwrap();
    fs::write(ws.join("small.txt"), b"already safe").unwrap();
    let mut c = d.client().await;
    let baseline = util::watch(&mut c, &ws, 3_600_000, 3_600_000)
        .await
        .baseline
        .unwrap();
    let baseline_tree = listing(&ws);
    let disk = Disk::of(&d, &mut c).await;
    let mut failed = std::collections::BTreeMap::<&str, u64>::new();

    // 1. No room at all, a 4 MiB file: the pack cannot take it.
    disk.fill(0);
    fs::write(ws.join("big.bin"), noise(4 << 20, 7)).unwrap();
    let err = save(&mut c, &ws).await.unwrap_err();
    assert_eq!(named(&err), "pack");
    *failed.entry("pack").or_default() += 1;
    nothing_harmed(&mut c, &ws, 1, &baseline.id, &baseline_tree).await;
    disk.free();
    let snap = save(&mut c, &ws).await.unwrap();
    assert_eq!(
        util::read_file(&mut c, &ws, &snap.id, b"big.bin")
            .await
            .unwrap(),
        noise(4 << 20, 7)
    );
    let (mut last, mut last_tree, mut count) = (snap.id, listing(&ws), 2);

    // 2. Less and less short of room for 40 small files (written out at the commit): the
    // pack's write fails first, then the catalog's, until there is room for both.
    let rooms = [
        0u64, 8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 1536, 2048, 4096,
    ];
    let mut saved_on_a_nearly_full_disk = None;
    for (round, room) in rooms.into_iter().map(|k| k << 10).enumerate() {
        disk.fill(room);
        for i in 0..40u64 {
            fs::write(
                ws.join(format!("f{i:02}.bin")),
                noise(3 << 10, 1000 * round as u64 + i),
            )
            .unwrap();
        }
        let tree = listing(&ws);
        match save(&mut c, &ws).await {
            Ok(s) => {
                assert_eq!(
                    util::read_file(&mut c, &ws, &s.id, b"f39.bin")
                        .await
                        .unwrap(),
                    noise(3 << 10, 1000 * round as u64 + 39)
                );
                saved_on_a_nearly_full_disk = Some(room);
                disk.free();
                break;
            }
            Err(e) => {
                *failed.entry(named(&e)).or_default() += 1;
                nothing_harmed(&mut c, &ws, count, &last, &last_tree).await;
            }
        }
        disk.free();
        // Space is back: the next save works and holds every file.
        let s = save(&mut c, &ws).await.unwrap();
        count += 1;
        assert_eq!(
            util::read_file(&mut c, &ws, &s.id, b"f39.bin")
                .await
                .unwrap(),
            noise(3 << 10, 1000 * round as u64 + 39)
        );
        (last, last_tree) = (s.id, tree);
    }
    let room = saved_on_a_nearly_full_disk.expect("no save worked even with 4 MiB of room");
    assert!(failed.get("pack").is_some_and(|n| *n >= 2), "{failed:?}");
    assert!(
        failed.contains_key("catalog"),
        "the catalog never met the full disk: {failed:?}"
    );

    // 3. No inode left: an in-place restore cannot make its journal's folder, and fails
    // before it touches the workspace.
    fs::write(ws.join("small.txt"), b"edited after").unwrap();
    let before = listing(&ws);
    disk.fill_inodes(0);
    let err = util::restore_in_place(&mut c, &ws, &baseline.id)
        .await
        .unwrap_err();
    assert_eq!(named(&err), "journal");
    *failed.entry("journal").or_default() += 1;
    assert!(
        listing(&ws) == before,
        "a failed restore changed the workspace"
    );
    disk.free();
    util::restore_in_place(&mut c, &ws, &baseline.id)
        .await
        .unwrap();
    assert!(
        listing(&ws) == baseline_tree,
        "the restore after freeing inodes"
    );
    util::assert_store_verifies(&mut c).await;
    println!(
        "figures: real ENOSPC (tmpfs of {SIZE}, {INODES} inodes): failures by what could not be written {failed:?}, each clean, each followed by a save or restore that worked; a save with {room} bytes of room worked"
    );
}
