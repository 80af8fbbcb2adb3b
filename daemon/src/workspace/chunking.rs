//! Saving a large file as content-defined chunks (see `store::chunked` for the format): its
//! data regions found with `SEEK_DATA`/`SEEK_HOLE` (holes are neither read nor stored), each
//! cut by FastCDC, every chunk stored once.
//!
//! A file saved before is cut with the help of its previous version: where a previous chunk
//! starts at a cut point and its bytes and the first byte after it are unchanged (one xxh3 of
//! it and of the chunk after it, far cheaper than the gear hash), it is taken as it is; FastCDC
//! runs only from a chunk that changed until its cuts meet the previous ones again. The result
//! is the one FastCDC gives on the whole file (each cut depends only on the bytes since the last
//! and the one byte at the cut, and on how much of the region is left, which [`same_cut`]
//! checks), so appending 4 KiB to a 256 MiB file hashes the file and cuts only its last chunks.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use fastcdc::v2020::{Normalization, cut, select_masks};

use crate::error::Error;
use crate::store::chunked::{CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};
use crate::store::holes::data_regions;
use crate::store::{Batch, ChunkList, Hasher, Id, ObjectKind, Piece};

/// Bytes read at a time: many chunks per read call.
const READ_AT_ONCE: usize = 2 << 20;
const _: () = assert!(READ_AT_ONCE >= 2 * CHUNK_MAX);

thread_local! {
    /// Each thread's read buffer for large files, kept from one file to the next.
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Frees this thread's buffer (see [`crate::store::release_thread_buffers`]).
pub fn release_thread_buffers() {
    BUF.with(|b| *b.borrow_mut() = Vec::new());
}

/// A store failure carried through an `io::Error` (see `refresh::StoreFailure`).
pub type StoreErr = fn(Error) -> io::Error;

/// Where a previous version's chunks started: offset → (length, id, bytes from its start to
/// the end of its data region).
type Previous = HashMap<u64, (u64, Id, u64)>;

fn previous_cuts(list: &ChunkList) -> Previous {
    let mut out = HashMap::with_capacity(list.pieces.len());
    let mut pos = 0u64;
    // Walk backwards so each chunk knows where its data region ends.
    let mut ends = vec![0u64; list.pieces.len()];
    let mut region_end = list.len();
    let mut at = list.len();
    for (i, p) in list.pieces.iter().enumerate().rev() {
        if matches!(p, Piece::Hole { .. }) {
            region_end = at - p.len();
        }
        ends[i] = region_end;
        at -= p.len();
    }
    for (i, p) in list.pieces.iter().enumerate() {
        if let Piece::Data { id, len } = *p {
            out.insert(pos, (len, id, ends[i] - pos));
        }
        pos += p.len();
    }
    out
}

/// Whether FastCDC, started at a chunk's start, would cut it where it cut the previous version
/// (given the same bytes): it saw the same input both times, a full [`CHUNK_MAX`] or exactly
/// the chunk (the last of its region, then and now). Near a region's end it may not have (the
/// cut depends on how much is left), and the chunk is cut afresh.
fn same_cut(len: u64, rem_before: u64, rem_now: u64) -> bool {
    let max = CHUNK_MAX as u64;
    (rem_before >= max && rem_now >= max) || (rem_before == len && rem_now == len)
}

/// Hashes `n` zero bytes.
fn hash_zeros(h: &mut Hasher, mut n: u64) {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// Reads `file`'s first `size` bytes as data regions and holes, cuts and stores the data, and
/// returns the content id and the chunk list (not stored yet: see [`Batch::put_chunked`]).
/// `None` when the file was shorter than `size` (it changed while read). `previous` is the
/// list of the version saved before, if any.
pub fn store_chunks(
    batch: &Batch<'_>,
    file: &File,
    size: u64,
    previous: Option<&ChunkList>,
    store_err: StoreErr,
) -> io::Result<Option<(Id, ChunkList)>> {
    let regions = data_regions(file, size)?;
    let prev = previous.map(previous_cuts).unwrap_or_default();
    let (mask_s, mask_l) = select_masks(CHUNK_AVG, Normalization::Level1);
    let mut whole = Hasher::default();
    let mut pieces = Vec::new();
    let mut pos = 0u64;
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < READ_AT_ONCE {
            buf.resize(READ_AT_ONCE, 0);
        }
        for &(start, end) in &regions {
            if start > pos {
                pieces.push(Piece::Hole { len: start - pos });
                hash_zeros(&mut whole, start - pos);
            }
            // The buffer holds the file's bytes [at, at + filled).
            let (mut at, mut filled) = (start, 0usize);
            // A previous chunk found unchanged by looking ahead (not hashed again).
            let mut verified: Option<u64> = None;
            pos = start;
            while pos < end {
                // A chunk and the one after it (see below) are in the buffer.
                let want = (pos + 2 * CHUNK_MAX as u64).min(end);
                if at + (filled as u64) < want {
                    let keep = (pos - at) as usize;
                    buf.copy_within(keep..filled, 0);
                    filled -= keep;
                    at = pos;
                    let limit = (READ_AT_ONCE as u64).min(end - at) as usize;
                    while filled < limit {
                        match file.read_at(&mut buf[filled..limit], at + filled as u64) {
                            Ok(0) => return Ok(None),
                            Ok(n) => filled += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                let window = &buf[(pos - at) as usize..(want - at) as usize];
                let avail = &window[..window.len().min(CHUNK_MAX)];
                // FastCDC's cut at a chunk's end looked at the byte there, the next chunk's
                // first: a previous chunk is taken as it is only when the next one is unchanged
                // too (or the region ends with it), so the result is what a fresh cut gives.
                let same = |from_pos: u64, verified: bool| -> Option<(u64, Id)> {
                    let &(len, id, rem) = prev.get(&from_pos)?;
                    let from = (from_pos - pos) as usize;
                    let fits = from_pos + len <= end && same_cut(len, rem, end - from_pos);
                    let bytes = window.get(from..from + len as usize).filter(|_| fits)?;
                    (verified || Id::of(bytes) == id).then_some((len, id))
                };
                let unchanged = same(pos, verified == Some(pos)).and_then(|(len, id)| {
                    let next = pos + len;
                    if next < end {
                        same(next, false)?;
                        verified = Some(next);
                    }
                    Some((&avail[..len as usize], id))
                });
                let (bytes, id) = match unchanged {
                    Some(hit) => hit,
                    None => {
                        let (_, n) = cut(
                            avail,
                            CHUNK_MIN,
                            CHUNK_AVG,
                            CHUNK_MAX,
                            mask_s,
                            mask_l,
                            mask_s << 1,
                            mask_l << 1,
                        );
                        let bytes = &avail[..n.max(1).min(avail.len())];
                        (bytes, Id::of(bytes))
                    }
                };
                batch
                    .put_known(id, bytes, ObjectKind::Blob)
                    .map_err(store_err)?;
                whole.update(bytes);
                pieces.push(Piece::Data {
                    id,
                    len: bytes.len() as u64,
                });
                pos += bytes.len() as u64;
            }
        }
        if size > pos {
            pieces.push(Piece::Hole { len: size - pos });
            hash_zeros(&mut whole, size - pos);
        }
        Ok(Some(()))
    })
    .map(|done| {
        done.map(|()| {
            let (id, len) = whole.finish();
            debug_assert_eq!(len, size);
            (id, ChunkList { pieces })
        })
    })
}

/// The content id of `file`'s first `size` bytes, holes hashed as zeros without reading them;
/// `None` when it is shorter.
pub(super) fn content_id(file: &File, size: u64) -> io::Result<Option<Id>> {
    let regions = data_regions(file, size)?;
    let mut whole = Hasher::default();
    let mut pos = 0u64;
    let mut buf = vec![0u8; READ_AT_ONCE];
    for (start, end) in regions {
        hash_zeros(&mut whole, start - pos);
        pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            match file.read_at(&mut buf[..n], pos) {
                Ok(0) => return Ok(None),
                Ok(k) => {
                    whole.update(&buf[..k]);
                    pos += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    hash_zeros(&mut whole, size - pos);
    Ok(Some(whole.finish().0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use std::io::{Seek, SeekFrom, Write};

    fn random(len: usize, seed: u64) -> Vec<u8> {
        chkpt_testkit::noise(len, seed)
    }

    fn no_store_err(e: Error) -> io::Error {
        io::Error::other(e.to_string())
    }

    /// The list a save without a previous version makes.
    fn cold(store: &Store, path: &std::path::Path) -> (Id, ChunkList) {
        let f = File::open(path).unwrap();
        let size = f.metadata().unwrap().len();
        let b = store.batch();
        let out = store_chunks(&b, &f, size, None, no_store_err)
            .unwrap()
            .unwrap();
        b.put_chunked(out.0, &out.1).unwrap();
        b.finish().unwrap();
        out
    }

    #[test]
    fn cutting_with_the_previous_version_gives_what_cutting_afresh_gives() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("data")).unwrap();
        let path = dir.path().join("f");
        let mut data = random(3 << 20, 5);
        std::fs::write(&path, &data).unwrap();
        let (id0, list0) = cold(&store, &path);
        assert_eq!(id0, Id::of(&data));
        assert!(list0.pieces.len() > 40, "{} pieces", list0.pieces.len());
        // Edit at the start, in the middle, append, and truncate: each time the helped cut
        // equals a cold one, and most chunks are the previous version's.
        type Edit = Box<dyn Fn(&mut Vec<u8>)>;
        let edits: Vec<Edit> = vec![
            Box::new(|d| d[10..20].copy_from_slice(b"0123456789")),
            Box::new(|d| {
                let m = d.len() / 2;
                d[m..m + 4096].copy_from_slice(&random(4096, 9));
            }),
            Box::new(|d| d.extend_from_slice(&random(4096, 11))),
            Box::new(|d| {
                let m = d.len() / 3;
                d.splice(m..m, random(100, 12));
            }),
            Box::new(|d| d.truncate(d.len() - 200_000)),
        ];
        // Overwrites that start exactly at a chunk's first byte: the cut before it looked at
        // that byte, so the chunk before must be cut again (a few times, at different chunks).
        let starts: Vec<usize> = {
            let mut at = 0usize;
            list0
                .pieces
                .iter()
                .map(|p| {
                    let s = at;
                    at += p.len() as usize;
                    s
                })
                .collect()
        };
        let mut edits = edits;
        for k in [5usize, 17, 30] {
            let s = starts[k];
            edits.push(Box::new(move |d: &mut Vec<u8>| {
                for b in &mut d[s..s + 3] {
                    *b ^= 0x5a;
                }
            }));
        }
        let mut prev = list0;
        for edit in edits {
            edit(&mut data);
            std::fs::write(&path, &data).unwrap();
            let f = File::open(&path).unwrap();
            let b = store.batch();
            let (id, helped) = store_chunks(&b, &f, data.len() as u64, Some(&prev), no_store_err)
                .unwrap()
                .unwrap();
            b.put_chunked(id, &helped).unwrap();
            b.finish().unwrap();
            let fresh_dir = tempfile::tempdir().unwrap();
            let fresh_store = Store::open(fresh_dir.path()).unwrap();
            let (fresh_id, fresh) = cold(&fresh_store, &path);
            assert_eq!((id, &helped), (fresh_id, &fresh));
            let old: std::collections::HashSet<Id> = prev.chunk_ids().collect();
            let new = helped.chunk_ids().filter(|c| !old.contains(c)).count();
            assert!(new <= 4, "{new} new chunks of {}", helped.pieces.len());
            let mut back = Vec::new();
            store.read_into(&id, &mut back).unwrap();
            assert!(back == data, "the stored file reads back");
            prev = helped;
        }
    }

    #[test]
    fn holes_are_neither_read_nor_stored_and_restore_as_holes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("data")).unwrap();
        let path = dir.path().join("sparse");
        let mut f = File::create(&path).unwrap();
        let blob = random(300_000, 3);
        f.seek(SeekFrom::Start(64 << 20)).unwrap();
        f.write_all(&blob).unwrap();
        f.set_len(1 << 30).unwrap();
        drop(f);
        let (id, list) = cold(&store, &path);
        let holes: u64 = list
            .pieces
            .iter()
            .filter(|p| matches!(p, Piece::Hole { .. }))
            .map(Piece::len)
            .sum();
        // File systems report data in blocks: the data region is at least the blob.
        assert!(holes >= (1 << 30) - (1 << 20), "holes {holes}");
        assert_eq!(list.len(), 1 << 30);
        assert_eq!(
            content_id(&File::open(&path).unwrap(), 1 << 30).unwrap(),
            Some(id)
        );
        let out = dir.path().join("restored");
        let target = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&out)
            .unwrap();
        assert_eq!(store.read_to_file(&id, &target).unwrap(), 1 << 30);
        drop(target);
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&out).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(
            meta.blocks() * 512 < 4 << 20,
            "{} bytes on disk",
            meta.blocks() * 512
        );
        let back = std::fs::read(&out).unwrap();
        assert!(back[..64 << 20].iter().all(|&b| b == 0));
        assert_eq!(&back[64 << 20..(64 << 20) + blob.len()], &blob[..]);
        assert!(back[(64 << 20) + blob.len()..].iter().all(|&b| b == 0));
    }
}
