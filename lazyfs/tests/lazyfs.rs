//! The lazy file system against what POSIX promises: mounted for real (root and /dev/fuse;
//! `.ci/run` installs fuse3 for fusermount3), written through the mount, cut, looked at.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use chkpt_lazyfs::{Cut, LazyMount, PAGE};

fn mounted() -> (tempfile::TempDir, LazyMount) {
    let dir = tempfile::tempdir().unwrap();
    let m = LazyMount::mount(&dir.path().join("backing"), &dir.path().join("mnt")).unwrap();
    (dir, m)
}

fn sync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

/// Writes `data` to a new file and makes it and its name durable.
fn durable_file(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    sync_dir(path.parent().unwrap());
}

#[test]
fn a_write_without_fsync_is_gone_after_a_cut_and_its_name_too() {
    let (_d, mut m) = mounted();
    let root = m.path().to_path_buf();
    // Named durably, data never synced: the file is there, empty.
    File::create(root.join("named")).unwrap();
    sync_dir(&root);
    fs::write(root.join("named"), b"unsynced").unwrap();
    // Appended to a durable file without fsync: cut back.
    durable_file(&root.join("grown"), b"durable");
    // Data synced, name never: gone.
    let mut f = File::create(root.join("unnamed")).unwrap();
    f.write_all(b"synced data").unwrap();
    f.sync_all().unwrap();
    drop(f);
    OpenOptions::new()
        .append(true)
        .open(root.join("grown"))
        .unwrap()
        .write_all(b" and more")
        .unwrap();
    assert!(m.has_unsynced());
    let report = m.power_cut(Cut::LoseAll).unwrap();
    assert_eq!(fs::read(root.join("named")).unwrap(), b"");
    assert!(!root.join("unnamed").exists());
    assert_eq!(fs::read(root.join("grown")).unwrap(), b"durable");
    assert!(
        report.pages_lost >= 2 && report.dirs_reverted == 1,
        "{report:?}"
    );
    assert!(!m.has_unsynced());
}

#[test]
fn what_was_fsynced_stays_whatever_the_cut_keeps() {
    for seed in 1..20u64 {
        let (_d, mut m) = mounted();
        let root = m.path().to_path_buf();
        fs::create_dir(root.join("sub")).unwrap();
        sync_dir(&root);
        let big: Vec<u8> = (0..5 * PAGE + 17).map(|i| (i % 251) as u8).collect();
        durable_file(&root.join("sub/big"), &big);
        durable_file(&root.join("small"), b"small");
        // Noise that is not durable, beside it.
        fs::write(root.join("sub/noise"), b"noise").unwrap();
        m.power_cut(Cut::Torn(seed)).unwrap();
        assert_eq!(fs::read(root.join("sub/big")).unwrap(), big, "seed {seed}");
        assert_eq!(
            fs::read(root.join("small")).unwrap(),
            b"small",
            "seed {seed}"
        );
    }
}

#[test]
fn a_rename_without_a_directory_fsync_reverts_and_with_one_stays() {
    let (_d, mut m) = mounted();
    let root = m.path().to_path_buf();
    durable_file(&root.join("a"), b"content");
    durable_file(&root.join("old"), b"replaced");
    fs::rename(root.join("a"), root.join("b")).unwrap();
    fs::rename(root.join("b"), root.join("old")).unwrap();
    m.power_cut(Cut::LoseAll).unwrap();
    assert_eq!(fs::read(root.join("a")).unwrap(), b"content");
    assert_eq!(fs::read(root.join("old")).unwrap(), b"replaced");
    assert!(!root.join("b").exists());

    fs::rename(root.join("a"), root.join("b")).unwrap();
    sync_dir(&root);
    m.power_cut(Cut::LoseAll).unwrap();
    assert!(!root.join("a").exists());
    assert_eq!(fs::read(root.join("b")).unwrap(), b"content");

    // Across directories: both must be synced; a half-synced move keeps the synced side.
    fs::create_dir(root.join("d")).unwrap();
    sync_dir(&root);
    fs::rename(root.join("b"), root.join("d/b")).unwrap();
    sync_dir(&root.join("d"));
    m.power_cut(Cut::LoseAll).unwrap();
    assert!(!root.join("b").exists());
    assert_eq!(fs::read(root.join("d/b")).unwrap(), b"content");
}

#[test]
fn a_removed_file_and_directory_come_back_unless_their_directory_was_synced() {
    let (_d, mut m) = mounted();
    let root = m.path().to_path_buf();
    fs::create_dir(root.join("dir")).unwrap();
    sync_dir(&root);
    durable_file(&root.join("dir/f"), b"kept");
    fs::remove_file(root.join("dir/f")).unwrap();
    fs::remove_dir(root.join("dir")).unwrap();
    m.power_cut(Cut::LoseAll).unwrap();
    assert_eq!(fs::read(root.join("dir/f")).unwrap(), b"kept");

    fs::remove_file(root.join("dir/f")).unwrap();
    sync_dir(&root.join("dir"));
    m.power_cut(Cut::LoseAll).unwrap();
    assert!(root.join("dir").is_dir() && !root.join("dir/f").exists());
}

#[test]
fn a_mode_change_needs_an_fsync() {
    let (_d, mut m) = mounted();
    let root = m.path().to_path_buf();
    durable_file(&root.join("x"), b"x");
    fs::set_permissions(root.join("x"), fs::Permissions::from_mode(0o755)).unwrap();
    m.power_cut(Cut::LoseAll).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root.join("x")), 0o644);
    fs::set_permissions(root.join("x"), fs::Permissions::from_mode(0o700)).unwrap();
    File::open(root.join("x")).unwrap().sync_all().unwrap();
    m.power_cut(Cut::LoseAll).unwrap();
    assert_eq!(mode(&root.join("x")), 0o700);
}

/// Unsynced overwrites are lost or kept whole pages at a time; an unsynced append leaves a
/// length between the durable and the live one, each page past the durable end either written
/// or zeros. Over seeds, every outcome shows up.
#[test]
fn a_torn_write_is_torn_at_page_granularity() {
    let pages = 8u64;
    let (mut lost, mut kept, mut mixed, mut lengths) = (0, 0, 0, std::collections::BTreeSet::new());
    for seed in 1..40u64 {
        let (_d, mut m) = mounted();
        let root = m.path().to_path_buf();
        let old = vec![b'o'; (pages * PAGE) as usize];
        durable_file(&root.join("f"), &old);
        durable_file(&root.join("g"), &vec![b'o'; PAGE as usize]);
        let f = OpenOptions::new().write(true).open(root.join("f")).unwrap();
        // Overwrites crossing page boundaries, not aligned to them.
        f.write_all_at(&vec![b'n'; (pages * PAGE - 100) as usize], 50)
            .unwrap();
        drop(f);
        OpenOptions::new()
            .append(true)
            .open(root.join("g"))
            .unwrap()
            .write_all(&vec![b'n'; 3 * PAGE as usize])
            .unwrap();
        m.power_cut(Cut::Torn(seed)).unwrap();
        let got = fs::read(root.join("f")).unwrap();
        assert_eq!(got.len() as u64, pages * PAGE, "seed {seed}: same length");
        let mut news = 0;
        for (p, page) in got.chunks(PAGE as usize).enumerate() {
            let start = p as u64 * PAGE;
            let expect_new: Vec<u8> = (start..start + PAGE)
                .map(|i| {
                    if i < 50 || i >= pages * PAGE - 50 {
                        b'o'
                    } else {
                        b'n'
                    }
                })
                .collect();
            if page == expect_new.as_slice() {
                news += 1;
            } else {
                assert!(
                    page.iter().all(|&b| b == b'o'),
                    "seed {seed}: page {p} is neither old nor new"
                );
            }
        }
        match news {
            0 => lost += 1,
            n if n == pages => kept += 1,
            _ => mixed += 1,
        }
        let g = fs::read(root.join("g")).unwrap();
        assert!(
            g.len() as u64 >= PAGE
                && g.len() as u64 <= 4 * PAGE
                && (g.len() as u64).is_multiple_of(PAGE),
            "seed {seed}: {}",
            g.len()
        );
        assert!(
            g[..PAGE as usize].iter().all(|&b| b == b'o'),
            "seed {seed}: the durable page changed"
        );
        for page in g[PAGE as usize..].chunks(PAGE as usize) {
            assert!(
                page.iter().all(|&b| b == b'n') || page.iter().all(|&b| b == 0),
                "seed {seed}: a torn page in the append"
            );
        }
        lengths.insert(g.len());
    }
    assert!(
        mixed > 0 && lost + kept + mixed == 39,
        "lost {lost} kept {kept} mixed {mixed}"
    );
    assert!(lengths.len() >= 3, "lengths seen: {lengths:?}");
}

#[test]
fn sync_all_makes_everything_durable() {
    let (_d, mut m) = mounted();
    let root = m.path().to_path_buf();
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::write(root.join("a/b/c"), b"c").unwrap();
    m.sync_all();
    assert!(!m.has_unsynced());
    m.power_cut(Cut::LoseAll).unwrap();
    assert_eq!(fs::read(root.join("a/b/c")).unwrap(), b"c");
}

/// The child of the test below: mounts, says so, and waits to be killed.
#[test]
fn mounted_child() {
    let Some(dir) = std::env::var_os("LAZYFS_CHILD_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let m = LazyMount::mount(&dir.join("backing"), &dir.join("mnt")).unwrap();
    fs::write(m.path().join("open"), b"x").unwrap();
    let _held = File::open(m.path().join("open")).unwrap();
    println!("mounted");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn a_killed_process_leaves_no_mount_behind() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "mounted_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LAZYFS_CHILD_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("mounted") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child ended");
    }
    let mnt = dir.path().join("mnt").canonicalize().unwrap();
    let listed = || chkpt_mountinfo::mounted_at(&mnt).unwrap().is_some();
    assert!(listed(), "the child's mount is there");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while listed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the mount outlived its process"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The folder is usable again.
    assert!(fs::read_dir(&mnt).unwrap().next().is_none());
}

#[test]
fn removing_entries_while_listing_a_directory_skips_none() {
    let (_d, m) = mounted();
    let dir = m.path().join("many");
    fs::create_dir(&dir).unwrap();
    for i in 0..2000 {
        fs::write(dir.join(format!("f{i}")), b"x").unwrap();
    }
    for e in fs::read_dir(&dir).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    fs::remove_dir(&dir).unwrap();
}
