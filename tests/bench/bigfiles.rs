//! The targets of issue 17 (big, hot and sparse files), each beside a baseline measured in the
//! same run: what a save of a large file after a small change adds to the store (against the
//! file's size, what it cost before chunking) and how long it takes (against `cp` of the file),
//! for an append and an overwrite of 4 KiB in an incompressible file and for 100 rows updated in
//! a SQLite database (Python's `sqlite3`); and the restore of a sparse file with 1 MiB of data
//! (time and disk used, against `cp --sparse=always`). Smoke: 16 MiB, ~4 MiB and 256 MiB;
//! `--full`: 256 MiB, ~180 MiB and 4 GiB, the issue's sizes. Where the peer (chkpt 0.3.0) is
//! installed (a full run), it takes the same steps on the same files, in a store of its own,
//! and its figures stand beside ours.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use tonic::transport::Channel;

use crate::others::Peer;
use crate::tree;
use crate::util::{self, Daemon};

const MIB: f64 = 1048576.0;

/// One measured step: ours, its baseline, and the target (in the same unit).
struct Row {
    what: String,
    ours: f64,
    baseline: f64,
    baseline_name: String,
    /// `true`: bytes, else seconds.
    bytes: bool,
    target: Option<f64>,
    /// The peer's figure for the same step, when it ran.
    peer: Option<f64>,
}

fn show(v: f64, bytes: bool) -> String {
    if bytes {
        format!("{:.2} MiB", v / MIB)
    } else {
        format!("{:.3} s", v)
    }
}

/// The section's table, and whether a step failed.
pub struct Report {
    pub table: String,
    pub failed: bool,
}

pub async fn section(scratch: &Path, full: bool, peer: Option<&Peer>) -> Report {
    let mut rows = Vec::new();
    let res = steps(scratch, full, peer, &mut rows).await;
    let mut table = String::from(
        "\n| big files step (issue 17) | ours | baseline | ours/baseline | target | met? | chkpt 0.3.0 |\n|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        let met = match r.target {
            Some(t) if r.ours <= t => "yes",
            Some(_) => "**no**",
            None => "—",
        };
        table.push_str(&format!(
            "| {} | {} | {} ({}) | {:.4} | {} | {met} | {} |\n",
            r.what,
            show(r.ours, r.bytes),
            show(r.baseline, r.bytes),
            r.baseline_name,
            r.ours / r.baseline.max(1e-9),
            r.target
                .map_or("—".into(), |t| format!("≤ {}", show(t, r.bytes))),
            r.peer.map_or(
                if peer.is_some() {
                    "—".into()
                } else {
                    "not installed".into()
                },
                |v| show(v, r.bytes)
            ),
        ));
    }
    if let Err(e) = &res {
        eprintln!("bench: big files FAILED: {e}");
        table.push_str(&format!("\nBig files failure: {e}\n"));
    }
    Report {
        table,
        failed: res.is_err(),
    }
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    chkpt_testkit::noise(len, seed)
}

/// A workspace of its own (so a restore restores only its file), watched without automatic
/// snapshots: every snapshot here is a save the bench asks for.
async fn workspace(c: &mut ChkptClient<Channel>, scratch: &Path, name: &str) -> std::path::PathBuf {
    let ws = scratch.join(name);
    std::fs::create_dir_all(&ws).unwrap();
    util::watch(c, &ws, 3_600_000, 36_000_000).await;
    ws
}

/// Saves `ws`; the seconds the save took, what it added to the store's packs, and the
/// snapshot's id.
async fn save(
    c: &mut ChkptClient<Channel>,
    ws: &Path,
    what: &str,
) -> Result<(f64, u64, String), String> {
    let t0 = Instant::now();
    let snap = c
        .save(pb::SaveRequest {
            workspace: ws.display().to_string(),
            message: what.into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("save ({what}): {e}"))?
        .into_inner()
        .snapshot
        .ok_or("a save without a snapshot")?;
    Ok((t0.elapsed().as_secs_f64(), snap.new_bytes, snap.id))
}

/// Seconds `cp` of `file` takes (the least a save that stores the whole file again costs); the
/// page cache is warm for both, as for the save after it.
fn cp_secs(file: &Path, scratch: &Path, sparse: bool) -> Result<(f64, u64), String> {
    let to = scratch.join("cp-baseline");
    let _ = std::fs::remove_file(&to);
    let t0 = Instant::now();
    let mut cmd = Command::new("cp");
    if sparse {
        cmd.arg("--sparse=always");
    }
    let ok = cmd.arg(file).arg(&to).status().map_err(|e| e.to_string())?;
    let dt = t0.elapsed().as_secs_f64();
    if !ok.success() {
        return Err(format!("cp {} failed", file.display()));
    }
    let used = std::fs::metadata(&to).map_err(|e| e.to_string())?.blocks() * 512;
    std::fs::remove_file(&to).map_err(|e| e.to_string())?;
    Ok((dt, used))
}

fn write_at(path: &Path, at: u64, bytes: &[u8]) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| e.to_string())?;
    f.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
    f.write_all(bytes).map_err(|e| e.to_string())
}

fn python(script: &str, db: &Path, rows: usize) -> Result<(), String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(db)
        .arg(rows.to_string())
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "python3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

const MAKE_DB: &str = r#"
import random, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("create table t(id integer primary key, name text, score integer, payload blob)")
r = random.Random(1)
c.executemany("insert into t values(?,?,?,?)",
    ((i, f"user{i}", r.randrange(1000), r.randbytes(1000)) for i in range(int(sys.argv[2]))))
c.commit()
"#;

const UPDATE_DB: &str = r#"
import random, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
r = random.Random(2)
for i in r.sample(range(int(sys.argv[2])), 100):
    c.execute("update t set score=?, payload=? where id=?", (r.randrange(1000), r.randbytes(1000), i))
c.commit()
"#;

/// Whether two files have the same bytes, read 1 MiB at a time.
fn same_content(a: &Path, b: &Path) -> Result<bool, String> {
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| e.to_string());
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> Result<usize, String> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).map_err(|e| e.to_string())? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The peer's store (under `home`) for the workspace `ws`: its saves, their time and what each
/// adds to its store on disk.
struct PeerStore<'p> {
    peer: &'p Peer,
    home: tempfile::TempDir,
    ws: std::path::PathBuf,
}

impl<'p> PeerStore<'p> {
    fn new(peer: &'p Peer, ws: &Path) -> Result<PeerStore<'p>, String> {
        Ok(PeerStore {
            peer,
            home: tempfile::tempdir().map_err(|e| e.to_string())?,
            ws: ws.to_path_buf(),
        })
    }

    /// `chkpt save`: its seconds and the bytes its store grew by.
    fn save(&self, what: &str) -> Result<(f64, u64), String> {
        let before = tree::du(self.home.path());
        let t0 = Instant::now();
        self.peer
            .run(self.home.path(), &self.ws, &["save", "-m", what])?;
        let secs = t0.elapsed().as_secs_f64();
        Ok((secs, tree::du(self.home.path()).saturating_sub(before)))
    }
}

/// Each of `peer`'s saves of `ws` through `f`, or none without a peer; a failed step of the
/// peer is reported and leaves its figure out, it does not fail the section.
fn peer_step<'p, T>(
    store: &Option<PeerStore<'p>>,
    what: &str,
    f: impl FnOnce(&PeerStore<'p>) -> Result<T, String>,
) -> Option<T> {
    let s = store.as_ref()?;
    match f(s) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("bench: big files: the peer failed at {what}: {e}");
            None
        }
    }
}

async fn steps(
    scratch: &Path,
    full: bool,
    peer: Option<&Peer>,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let (big, db_rows, sparse) = if full {
        (256usize << 20, 140_000usize, 4u64 << 30)
    } else {
        (16 << 20, 20_000, 256 << 20)
    };
    let scratch = scratch.join("bigfiles");
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    // No budget: nothing the bench saves may be dropped while it measures.
    let d = Daemon::start(&["--max-store-bytes", "0"]);
    let mut c = d.client().await;

    // An incompressible file: a cold save, then 4 KiB appended, then 4 KiB overwritten.
    let ws = workspace(&mut c, &scratch, "big").await;
    let file = ws.join("big.bin");
    std::fs::write(&file, noise(big, 1)).map_err(|e| e.to_string())?;
    save(&mut c, &ws, "cold").await?;
    let theirs = peer.map(|p| PeerStore::new(p, &ws)).transpose()?;
    peer_step(&theirs, "the cold save", |p| p.save("cold"));
    let mib = big >> 20;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .map_err(|e| e.to_string())?;
    f.write_all(&noise(4096, 2)).map_err(|e| e.to_string())?;
    drop(f);
    let (cp, _) = cp_secs(&file, &scratch, false)?;
    let (secs, added, _) = save(&mut c, &ws, "append").await?;
    eprintln!("bench: big files: append 4 KiB: +{added} B in {secs:.3} s");
    let peer_append = peer_step(&theirs, "the append", |p| p.save("append"));
    rows.push(Row {
        what: format!("append 4 KiB to a {mib} MiB incompressible file, save: store growth"),
        ours: added as f64,
        baseline: big as f64,
        baseline_name: "the file's size, its cost before chunking".into(),
        bytes: true,
        target: Some(5.0 * MIB),
        peer: peer_append.map(|(_, b)| b as f64),
    });
    rows.push(Row {
        what: "… and the save's time".into(),
        ours: secs,
        baseline: cp,
        baseline_name: "`cp` of the file".into(),
        bytes: false,
        target: Some(0.4),
        peer: peer_append.map(|(t, _)| t),
    });
    write_at(&file, big as u64 / 2 + 12_345, &noise(4096, 3))?;
    let (cp, _) = cp_secs(&file, &scratch, false)?;
    let (secs, added, _) = save(&mut c, &ws, "overwrite").await?;
    eprintln!("bench: big files: overwrite 4 KiB: +{added} B in {secs:.3} s");
    let peer_overwrite = peer_step(&theirs, "the overwrite", |p| p.save("overwrite"));
    rows.push(Row {
        what: "overwrite 4 KiB in the middle of that file, save: store growth".into(),
        ours: added as f64,
        baseline: big as f64,
        baseline_name: "the file's size".into(),
        bytes: true,
        target: Some(5.0 * MIB),
        peer: peer_overwrite.map(|(_, b)| b as f64),
    });
    rows.push(Row {
        what: "… and the save's time".into(),
        ours: secs,
        baseline: cp,
        baseline_name: "`cp` of the file".into(),
        bytes: false,
        target: None,
        peer: peer_overwrite.map(|(t, _)| t),
    });

    // A SQLite database, 100 rows updated.
    let ws = workspace(&mut c, &scratch, "db").await;
    let db = ws.join("app.db");
    python(MAKE_DB, &db, db_rows)?;
    save(&mut c, &ws, "database").await?;
    let theirs = peer.map(|p| PeerStore::new(p, &ws)).transpose()?;
    peer_step(&theirs, "the database's first save", |p| p.save("database"));
    python(UPDATE_DB, &db, db_rows)?;
    let size = std::fs::metadata(&db).map_err(|e| e.to_string())?.len();
    let (cp, _) = cp_secs(&db, &scratch, false)?;
    let (secs, added, _) = save(&mut c, &ws, "100 rows").await?;
    eprintln!("bench: big files: sqlite 100 rows: +{added} B in {secs:.3} s");
    let peer_rows = peer_step(&theirs, "the 100 rows", |p| p.save("100 rows"));
    rows.push(Row {
        what: format!(
            "a {:.0} MiB SQLite database, 100 rows updated, save: store growth",
            size as f64 / MIB
        ),
        ours: added as f64,
        baseline: size as f64,
        baseline_name: "the database's size".into(),
        bytes: true,
        target: Some(8.0 * MIB),
        peer: peer_rows.map(|(_, b)| b as f64),
    });
    rows.push(Row {
        what: "… and the save's time".into(),
        ours: secs,
        baseline: cp,
        baseline_name: "`cp` of the database".into(),
        bytes: false,
        target: None,
        peer: peer_rows.map(|(t, _)| t),
    });

    // A sparse file holding 1 MiB of data in four places.
    let ws = workspace(&mut c, &scratch, "sparse").await;
    let img = ws.join("vm.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(sparse))
        .map_err(|e| e.to_string())?;
    for i in 0..4u64 {
        write_at(&img, i * (sparse / 4) + 4096, &noise(256 << 10, 10 + i))?;
    }
    let (_, _, snap) = save(&mut c, &ws, "sparse").await?;
    let (cp, cp_used) = cp_secs(&img, &scratch, true)?;
    let to = scratch.join("sparse-restored");
    let t0 = Instant::now();
    util::restore_to(&mut c, &ws, &snap, &to).await;
    let secs = t0.elapsed().as_secs_f64();
    let back = to.join("vm.img");
    let used = std::fs::metadata(&back)
        .map_err(|e| e.to_string())?
        .blocks()
        * 512;
    if !same_content(&img, &back)? {
        return Err("the restored sparse file differs".into());
    }
    eprintln!("bench: big files: sparse restore in {secs:.3} s, {used} B on disk");
    // The peer restores only into its workspace: the image is moved aside and restored in
    // place, then checked against it.
    let theirs = peer.map(|p| PeerStore::new(p, &ws)).transpose()?;
    let peer_sparse = peer_step(&theirs, "the sparse file", |p| {
        p.save("sparse")?;
        let aside = scratch.join("vm.img.aside");
        std::fs::rename(&img, &aside).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let r = p.peer.run(p.home.path(), &ws, &["restore", "latest"]);
        let secs = t0.elapsed().as_secs_f64();
        let checked = r.and_then(|_| {
            let used = std::fs::metadata(&img).map_err(|e| e.to_string())?.blocks() * 512;
            if same_content(&aside, &img)? {
                Ok((secs, used))
            } else {
                Err("its restored sparse file differs".into())
            }
        });
        let _ = std::fs::remove_file(&img);
        std::fs::rename(&aside, &img).map_err(|e| e.to_string())?;
        checked
    });
    let gib = sparse as f64 / (MIB * 1024.0);
    rows.push(Row {
        what: format!("a {gib:.2} GiB sparse file with 1 MiB of data: restore time"),
        ours: secs,
        baseline: cp,
        baseline_name: "`cp --sparse=always`".into(),
        bytes: false,
        target: Some(1.0),
        peer: peer_sparse.map(|(t, _)| t),
    });
    rows.push(Row {
        what: "… and the disk the restored file takes".into(),
        ours: used as f64,
        baseline: cp_used as f64,
        baseline_name: "`cp --sparse=always`'s copy".into(),
        bytes: true,
        target: Some(2.0 * MIB),
        peer: peer_sparse.map(|(_, b)| b as f64),
    });
    std::fs::remove_dir_all(&scratch).map_err(|e| e.to_string())?;
    Ok(())
}
