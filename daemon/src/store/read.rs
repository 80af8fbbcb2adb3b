//! Reading objects back: from a pack's map, decompressed and checked against their id.

use std::io::{self, Write};

use super::pack::{self, FLAG_CHUNKED, FLAG_LZ4, FLAG_LZ4_BLOCK, Loc};
use super::{Hasher, IN_MEMORY_LIMIT, Id, Store, Tree};
use crate::error::{Error, Result};

impl Store {
    /// Streams an object's content into `sink`, checking it against its id. Returns its length.
    /// A mismatch is [`Error::Corrupt`]; nothing is promised about what `sink` got by then.
    pub fn read_into(&self, id: &Id, sink: &mut dyn Write) -> Result<u64> {
        let loc = self
            .index
            .locate(id)
            .ok_or_else(|| Error::Corrupt(format!("object {id} is not in the store")))?;
        self.read_loc_into(id, &loc, sink)
    }

    pub(crate) fn read_loc_into(&self, id: &Id, loc: &Loc, sink: &mut dyn Write) -> Result<u64> {
        if loc.flags & FLAG_CHUNKED != 0 {
            return self.read_chunked_into(id, loc, sink);
        }
        let map = self.packs.map(loc.pack, loc.end())?;
        let stored = loc_bytes(&map, id, loc)?;
        let mut hashing = HashingWriter {
            inner: sink,
            hasher: Hasher::default(),
        };
        decode(id, loc, stored, None, &mut hashing, "(restore target)")?;
        let (got, len) = hashing.hasher.finish();
        if got != *id || len != loc.raw_len {
            return Err(Error::Corrupt(format!(
                "object {id} in pack {} does not match its id",
                loc.pack
            )));
        }
        Ok(len)
    }

    /// Streams `len` bytes (0 = to the end) of an object's content from `offset` into `sink`;
    /// returns how many were written. A range that reaches the end of the object is checked
    /// against its id like [`Store::read_into`]; a shorter one is not (checking needs every
    /// byte, and a random read near the start of a large file must not decode all of it).
    pub fn read_range_into(
        &self,
        id: &Id,
        offset: u64,
        len: u64,
        sink: &mut dyn Write,
    ) -> Result<u64> {
        let loc = self
            .index
            .locate(id)
            .ok_or_else(|| Error::Corrupt(format!("object {id} is not in the store")))?;
        let end = if len == 0 {
            loc.raw_len
        } else {
            offset.saturating_add(len).min(loc.raw_len)
        };
        if offset >= end {
            return Ok(0);
        }
        if loc.flags & FLAG_CHUNKED != 0 {
            // Only the chunks the range overlaps are read.
            self.read_chunked_range(id, &loc, offset, end, sink)?;
        } else {
            self.read_blob_range(id, &loc, offset, end, sink)?;
        }
        Ok(end - offset)
    }

    /// Streams bytes `from..to` (within its length) of the blob at `loc` into `sink`: checked
    /// when the range reaches its end (every byte is decoded then anyway), else decoded no
    /// further than `to`.
    pub(crate) fn read_blob_range(
        &self,
        id: &Id,
        loc: &Loc,
        from: u64,
        to: u64,
        sink: &mut dyn Write,
    ) -> Result<()> {
        let mut window = Window {
            inner: sink,
            pos: 0,
            from,
            to,
        };
        if to == loc.raw_len {
            self.read_loc_into(id, loc, &mut window)?;
            return Ok(());
        }
        let map = self.packs.map(loc.pack, loc.end())?;
        let stored = loc_bytes(&map, id, loc)?;
        decode(id, loc, stored, Some(to), &mut window, "(read target)")
    }

    /// An object's content, checked. Only for objects known to be small (trees, link targets).
    pub fn read_vec(&self, id: &Id) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(id, &mut out)?;
        Ok(out)
    }

    /// Reads a directory's entries: a split tree's parts are read and joined (tree format
    /// rule 5).
    pub fn tree(&self, id: &Id) -> Result<Tree> {
        let node = self.tree_node(id)?;
        if !node.is_split() {
            return Ok(node);
        }
        self.join_parts(id, &node, &|_| true)
    }

    /// Reads and decodes a tree as it is stored: a split tree's parts are not read.
    pub fn tree_node(&self, id: &Id) -> Result<Tree> {
        let bytes = self.read_vec(id)?;
        Tree::decode(&bytes).map_err(|e| Error::Corrupt(format!("tree {id}: {e}")))
    }

    /// The entries of the parts of the split tree `node` (stored as `id`) that `keep` keeps,
    /// in order, each part checked against rule 5: not split, not empty, its first name the
    /// one the split tree gives, all its names before the next part's.
    pub fn join_parts(&self, id: &Id, node: &Tree, keep: &dyn Fn(&Id) -> bool) -> Result<Tree> {
        let bad = |what: &str| Error::Corrupt(format!("split tree {id}: {what}"));
        let total: u64 = node.entries.iter().map(|e| e.size).sum();
        let mut entries = Vec::with_capacity(usize::try_from(total).unwrap_or(0).min(1 << 24));
        for (i, p) in node.entries.iter().enumerate() {
            if !keep(&p.id) {
                continue;
            }
            let part = self.tree_node(&p.id)?;
            if part.is_split() || part.entries.is_empty() {
                return Err(bad("a part is split or empty"));
            }
            if part.entries[0].name != p.name[1..] || part.entries.len() as u64 != p.size {
                return Err(bad("a part is not the one the split tree names"));
            }
            if let Some(next) = node.entries.get(i + 1)
                && part
                    .entries
                    .last()
                    .is_some_and(|e| e.name[..] >= next.name[1..])
            {
                return Err(bad("parts overlap"));
            }
            entries.extend(part.entries);
        }
        Ok(Tree { entries })
    }

    /// The entry `name` of the directory whose tree is `id`, reading only the part of a split
    /// tree that would hold it.
    pub fn tree_entry(&self, id: &Id, name: &[u8]) -> Result<Option<super::Entry>> {
        let node = self.tree_node(id)?;
        if !node.is_split() {
            return Ok(node.get(name).cloned());
        }
        // The last part whose first name is not after `name`.
        let at = node.entries.partition_point(|p| p.name[1..] <= *name);
        let Some(i) = at.checked_sub(1) else {
            return Ok(None);
        };
        let one = Tree {
            entries: node.entries[i..].iter().take(2).cloned().collect(),
        };
        let part = self.join_parts(id, &one, &|p| *p == node.entries[i].id)?;
        Ok(part.get(name).cloned())
    }

    /// Gives memory back after a heavy operation: unmaps the packs (their pages count as the
    /// daemon's resident memory while mapped; the next read maps them again) and returns
    /// freed heap to the system.
    pub fn release_memory(&self) {
        self.packs.release_memory();
        // glibc keeps freed memory in per-thread arenas; malloc_trim returns what is free in
        // every arena (after a cold save of the Linux tree: ~130 MiB resident, against ~155 MiB
        // with mimalloc and its own collection).
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory of the allocator.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Decodes an object's stored bytes into `sink`: all of it, or its first `end` bytes (then a
/// frame is decoded no further, and a raw object is a slice of the map). `target` names what
/// `sink` writes to, for its I/O errors; bytes that do not decode are [`Error::Corrupt`].
fn decode(
    id: &Id,
    loc: &Loc,
    stored: &[u8],
    end: Option<u64>,
    sink: &mut dyn Write,
    target: &str,
) -> Result<()> {
    let res = if loc.flags & FLAG_LZ4_BLOCK != 0 {
        if loc.raw_len > IN_MEMORY_LIMIT {
            return Err(Error::Corrupt(format!(
                "object {id} in pack {} claims an impossible length",
                loc.pack
            )));
        }
        match lz4_flex::block::decompress(stored, loc.raw_len as usize) {
            Ok(raw) => sink.write_all(&raw),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    } else if loc.flags & FLAG_LZ4 != 0 {
        let mut decoder = lz4_flex::frame::FrameDecoder::new(stored);
        match end {
            Some(end) => io::copy(&mut io::Read::take(&mut decoder, end), sink),
            None => io::copy(&mut decoder, sink),
        }
        .map(|_| ())
    } else {
        match end.map_or(Some(stored), |end| stored.get(..end as usize)) {
            Some(bytes) => sink.write_all(bytes),
            None => Err(io::Error::new(io::ErrorKind::InvalidData, "short record")),
        }
    };
    res.map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
            Error::Corrupt(format!("object {id} does not decompress: {e}"))
        }
        _ => Error::io(target, e),
    })
}

/// Passes on the bytes of `from..to` of what is written through it, counting from 0.
struct Window<'a> {
    inner: &'a mut dyn Write,
    pos: u64,
    from: u64,
    to: u64,
}

impl Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let start = self.pos;
        let stop = start + buf.len() as u64;
        let lo = self.from.max(start);
        let hi = self.to.min(stop);
        if lo < hi {
            self.inner
                .write_all(&buf[(lo - start) as usize..(hi - start) as usize])?;
        }
        self.pos = stop;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: Hasher,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An object's stored bytes in its mapped pack, once its record header says it is there.
pub(crate) fn loc_bytes<'m>(map: &'m [u8], id: &Id, loc: &Loc) -> Result<&'m [u8]> {
    let header = loc
        .offset
        .checked_sub(pack::RECORD_HEADER)
        .and_then(|h| map.get(h as usize..loc.offset as usize))
        .and_then(pack::parse_header);
    let stored = map.get(loc.offset as usize..loc.end() as usize);
    match (header, stored) {
        (Some(h), Some(stored)) if (h.id, h.len) == (*id, loc.len) => Ok(stored),
        _ => Err(Error::Corrupt(format!(
            "record header of object {id} in pack {} is damaged",
            loc.pack
        ))),
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Id, ObjectKind, Store};

    fn ranges_match(store: &Store, id: &Id, data: &[u8]) {
        let n = data.len() as u64;
        for (offset, len) in [
            (0, 10),
            (1, 0),
            (n / 2, 4096),
            (n - 5, 100),
            (n - 1, 1),
            (n, 1),
            (n + 9, 0),
            (7, n),
        ] {
            let mut out = Vec::new();
            let got = store.read_range_into(id, offset, len, &mut out).unwrap();
            let lo = (offset.min(n)) as usize;
            let hi = if len == 0 {
                n
            } else {
                offset.saturating_add(len).min(n)
            } as usize;
            let want = &data[lo..hi.max(lo)];
            assert_eq!(out, want, "offset {offset} len {len}");
            assert_eq!(got, want.len() as u64);
        }
    }

    #[test]
    fn ranges_of_raw_block_and_frame_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut x: u32 = 1;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect();
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let b = store.batch();
        let (raw, _) = b.put(&noise, ObjectKind::Blob).unwrap();
        let (block, _) = b.put(&text, ObjectKind::Blob).unwrap();
        let (id, len) = Id::of_reader(&text[..]).unwrap();
        let mut changed = text.clone();
        changed[0] = b'L';
        let (frame, flen) = Id::of_reader(&changed[..]).unwrap();
        // Stores of old wrote large files as LZ4 frames (nothing writes them now).
        let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
        std::io::Write::write_all(&mut enc, &changed).unwrap();
        let framed = enc.finish().unwrap();
        let loc = store
            .packs
            .take_writer()
            .unwrap()
            .append(frame, crate::store::pack::FLAG_LZ4, flen, &framed)
            .unwrap();
        b.record(frame, loc);
        b.finish().unwrap();
        assert_eq!((id, len), (block, text.len() as u64));
        assert_eq!(
            store.locate(&frame).unwrap().unwrap().flags & crate::store::pack::FLAG_LZ4,
            crate::store::pack::FLAG_LZ4
        );
        ranges_match(&store, &raw, &noise);
        ranges_match(&store, &block, &text);
        ranges_match(&store, &frame, &changed);
    }

    /// A chunked file (chunks of different lengths and a hole) read by ranges: at, before and
    /// after every piece boundary, across several pieces, and a range that misses a damaged
    /// chunk still reads (only the chunks a range overlaps are read).
    #[test]
    fn ranges_of_a_chunked_file_read_only_the_chunks_they_overlap() {
        use crate::store::{ChunkList, Piece};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let lens = [70_000usize, 5, 100_000, 33_333];
        let b = store.batch();
        let (mut whole, mut pieces) = (Vec::new(), Vec::new());
        for (i, &len) in lens.iter().enumerate() {
            if i == 2 {
                whole.extend(std::iter::repeat_n(0u8, 50_000));
                pieces.push(Piece::Hole { len: 50_000 });
            }
            let data = chkpt_testkit::noise(len, i as u64 + 1);
            let (id, _) = b.put(&data, ObjectKind::Blob).unwrap();
            whole.extend_from_slice(&data);
            pieces.push(Piece::Data {
                id,
                len: len as u64,
            });
        }
        let file = Id::of(&whole);
        let list = ChunkList { pieces };
        b.put_chunked(file, &list).unwrap();
        b.finish().unwrap();
        ranges_match(&store, &file, &whole);
        let mut bounds = vec![0u64];
        for p in &list.pieces {
            bounds.push(bounds.last().unwrap() + p.len());
        }
        for &at in &bounds {
            for (offset, len) in [
                (at, 1),
                (at.saturating_sub(1), 2),
                (at.saturating_sub(3), 100_000),
            ] {
                let mut out = Vec::new();
                let got = store.read_range_into(&file, offset, len, &mut out).unwrap();
                let n = whole.len() as u64;
                let (lo, hi) = (offset.min(n), (offset + len).min(n));
                assert_eq!(got, hi - lo, "offset {offset} len {len}");
                assert!(out == whole[lo as usize..hi as usize], "offset {offset}");
            }
        }
        // Damage the first chunk's stored bytes: a range in the last chunk still reads, one
        // through the first chunk's end is refused.
        let first = list.chunk_ids().next().unwrap();
        let loc = store.locate(&first).unwrap().unwrap();
        store.release_memory();
        let path = store.packs.path(loc.pack);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[loc.offset as usize + 10] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let last = bounds[bounds.len() - 2];
        let mut out = Vec::new();
        store
            .read_range_into(&file, last + 7, 1000, &mut out)
            .unwrap();
        assert!(out == whole[last as usize + 7..last as usize + 1007]);
        let err = store.read_range_into(&file, 60_000, 20_000, &mut Vec::new());
        assert!(
            matches!(err, Err(crate::error::Error::Corrupt(_))),
            "{err:?}"
        );
    }
}
