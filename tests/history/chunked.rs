//! Big files through `chkptctl`: a file past the chunking threshold (1 MiB) is stored as
//! chunks, and `diff`, `cat`, `verify` and `restore` see the file, not its chunks; a sparse file
//! restores as holes.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::cli::{ok, run, save, setup};
use chkpt_testkit::noise;

/// `n` numbered lines of text, 3 MiB and more for 100,000.
fn lines(n: u32) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("line {i:06} of a large text file\n").into_bytes())
        .collect()
}

#[test]
fn a_chunked_text_file_diffs_and_cats_like_a_small_one() {
    let (d, ws) = setup();
    let w = ws.path();
    let v1 = lines(100_000);
    assert!(v1.len() > 3 << 20);
    fs::write(w.join("big.log"), &v1).unwrap();
    let a = save(&d, w, "v1");
    let text = String::from_utf8(v1.clone()).unwrap();
    let v2 = text
        .replace(
            "line 050000 of a large text file\n",
            "line 050000 CHANGED in the middle\n",
        )
        .replace("line 000002 of", "line 000002 EDITED at the start of")
        + "one more line at the end\n";
    fs::write(w.join("big.log"), &v2).unwrap();
    let b = save(&d, w, "v2");

    let patch = ok(&d, w, &["diff", &a, &b]).text();
    for want in [
        "diff --git a/big.log b/big.log",
        "-line 050000 of a large text file",
        "+line 050000 CHANGED in the middle",
        "+line 000002 EDITED at the start of a large text file",
        "+one more line at the end",
        " line 049999 of a large text file",
    ] {
        assert!(patch.contains(want), "no {want:?} in:\n{patch}");
    }
    let hunks = patch.lines().filter(|l| l.starts_with("@@")).count();
    assert_eq!(hunks, 3, "{patch}");
    let stat = ok(&d, w, &["diff", "--stat", &a, &b]).text();
    assert!(
        stat.contains("big.log")
            && stat.contains("1 file changed, 3 insertions(+), 2 deletions(-)"),
        "{stat}"
    );
    assert!(ok(&d, w, &["cat", &a, "big.log"]).stdout == v1);
    assert!(ok(&d, w, &["cat", &b, "big.log"]).stdout == v2.as_bytes());
}

/// The offset in the data directory's packs where `needle` is stored, if raw.
fn find_in_packs(data: &Path, needle: &[u8]) -> Option<(std::path::PathBuf, u64)> {
    for e in fs::read_dir(data.join("packs")).unwrap() {
        let p = e.unwrap().path();
        let bytes = fs::read(&p).unwrap();
        if let Some(i) = bytes.windows(needle.len()).position(|w| w == needle) {
            return Some((p, i as u64));
        }
    }
    None
}

#[test]
fn a_flipped_byte_in_one_chunk_is_named_by_verify_and_restore_refuses_before_touching_anything() {
    let (d, ws) = setup();
    let w = ws.path();
    // Incompressible: its chunks are stored raw, so the test finds one in the packs.
    let big = noise(3 << 20, 41);
    fs::create_dir_all(w.join("db")).unwrap();
    fs::write(w.join("db/big.bin"), &big).unwrap();
    fs::write(w.join("notes.txt"), b"notes v1\n").unwrap();
    let snap = save(&d, w, "both");
    ok(&d, w, &["verify"]);

    let middle = big.len() / 2;
    let (pack, at) = find_in_packs(&d.data, &big[middle..middle + 64]).expect("the chunk, raw");
    let f = fs::OpenOptions::new().write(true).open(&pack).unwrap();
    let mut byte = [0u8];
    fs::File::open(&pack)
        .unwrap()
        .read_exact_at(&mut byte, at + 10)
        .unwrap();
    f.write_all_at(&[byte[0] ^ 0x20], at + 10).unwrap();
    drop(f);

    let out = run(&d, w, &["verify"]);
    assert_ne!(out.code, 0, "verify passed a damaged chunk: {}", out.text());
    let text = out.text();
    let problems: Vec<&str> = text.lines().filter(|l| l.starts_with("problem:")).collect();
    assert_eq!(problems.len(), 1, "{text}");
    assert!(
        problems[0].contains("db/big.bin") && problems[0].contains("chunk"),
        "{text}"
    );
    assert!(!text.contains("notes.txt"), "{text}");

    // Both files edited since: the restore needs the damaged chunk, so it changes nothing.
    fs::write(w.join("db/big.bin"), b"edited since").unwrap();
    fs::write(w.join("notes.txt"), b"notes v2\n").unwrap();
    let out = run(&d, w, &["restore", &snap]);
    assert_ne!(out.code, 0, "the restore went through: {}", out.text());
    assert!(
        out.stderr.contains("damaged")
            || out.stderr.contains("corrupt")
            || out.stderr.contains("does not match"),
        "{}",
        out.stderr
    );
    assert_eq!(fs::read(w.join("db/big.bin")).unwrap(), b"edited since");
    assert_eq!(fs::read(w.join("notes.txt")).unwrap(), b"notes v2\n");
    let litter: Vec<_> = fs::read_dir(w.join("db"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(litter.len(), 1, "{litter:?}");
    // What does not need the chunk still restores.
    ok(&d, w, &["restore", &snap, "notes.txt"]);
    assert_eq!(fs::read(w.join("notes.txt")).unwrap(), b"notes v1\n");
}

#[test]
fn a_sparse_file_restores_taking_the_disk_of_its_data() {
    let (d, ws) = setup();
    let w = ws.path();
    let len = 64u64 << 20;
    let mut want = vec![0u8; len as usize];
    {
        let f = fs::File::create(w.join("vm.img")).unwrap();
        f.set_len(len).unwrap();
        for (i, at) in [0u64, 20 << 20, len - 100_000].into_iter().enumerate() {
            let bytes = noise(100_000, i as u64 + 1);
            f.write_all_at(&bytes, at).unwrap();
            want[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
        }
    }
    let snap = save(&d, w, "sparse");
    let scratch = tempfile::tempdir().unwrap();
    let to = scratch.path().join("r");
    ok(&d, w, &["restore", &snap, "--to", to.to_str().unwrap()]);
    let back = to.join("vm.img");
    let meta = fs::metadata(&back).unwrap();
    assert_eq!(meta.len(), len);
    // 300,000 bytes of data, in blocks: far below the 64 MiB written zeros would take.
    assert!(
        meta.blocks() * 512 <= 1 << 20,
        "{} bytes on disk",
        meta.blocks() * 512
    );
    assert!(fs::read(&back).unwrap() == want);
    // In place too, over a file that is all data.
    fs::write(w.join("vm.img"), noise(len as usize, 9)).unwrap();
    ok(&d, w, &["restore", &snap]);
    let meta = fs::metadata(w.join("vm.img")).unwrap();
    assert!(
        meta.blocks() * 512 <= 1 << 20,
        "{} bytes on disk",
        meta.blocks() * 512
    );
    assert!(fs::read(w.join("vm.img")).unwrap() == want);
    assert!(ok(&d, w, &["cat", &snap, "vm.img"]).stdout == want);
}
