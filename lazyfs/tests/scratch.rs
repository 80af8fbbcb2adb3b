use std::fs::{self, File};
use std::io::Write;
#[test]
fn scratch() {
    let dir = tempfile::tempdir().unwrap();
    let m = chkpt_lazyfs::LazyMount::mount(&dir.path().join("backing"), &dir.path().join("mnt"))
        .unwrap();
    let ws = m.path().join("ws");
    fs::create_dir(&ws).unwrap();
    m.sync_all();
    fs::create_dir(ws.join("src")).unwrap();
    File::open(&ws).unwrap().sync_all().unwrap();
    eprintln!("a");
    let mut f = File::create(ws.join("src/a")).unwrap();
    eprintln!("b");
    f.write_all(b"x").unwrap();
    f.sync_all().unwrap();
}
#[test]
fn scratch2() {
    let dir = tempfile::tempdir().unwrap();
    let m = chkpt_lazyfs::LazyMount::mount(&dir.path().join("backing"), &dir.path().join("mnt"))
        .unwrap();
    let ws = m.path().join("ws");
    fs::create_dir(&ws).unwrap();
    fs::write(ws.join("a"), b"one").unwrap();
    let r = File::open(ws.join("a")).unwrap();
    eprintln!("c");
    let mut f = File::create(ws.join("a")).unwrap();
    eprintln!("d");
    f.write_all(b"x").unwrap();
    f.sync_all().unwrap();
    drop(r);
}
