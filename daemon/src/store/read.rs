//! Reading objects back: from a pack's map, decompressed and checked against their id.

use std::io::{self, Write};

use super::pack::{self, FLAG_LZ4, FLAG_LZ4_BLOCK, Loc};
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
        let map = self.packs.map(loc.pack, loc.end())?;
        let stored = loc_bytes(&map, id, loc)?;
        let mut hashing = HashingWriter {
            inner: sink,
            hasher: Hasher::default(),
        };
        let res = if loc.flags & FLAG_LZ4_BLOCK != 0 {
            if loc.raw_len > IN_MEMORY_LIMIT {
                return Err(Error::Corrupt(format!(
                    "object {id} in pack {} claims an impossible length",
                    loc.pack
                )));
            }
            match lz4_flex::block::decompress(stored, loc.raw_len as usize) {
                Ok(raw) => hashing.write_all(&raw),
                Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        } else if loc.flags & FLAG_LZ4 != 0 {
            io::copy(
                &mut lz4_flex::frame::FrameDecoder::new(stored),
                &mut hashing,
            )
            .map(|_| ())
        } else {
            hashing.write_all(stored)
        };
        match res {
            Ok(()) => {}
            Err(e)
                if e.kind() == io::ErrorKind::InvalidData
                    || e.kind() == io::ErrorKind::UnexpectedEof =>
            {
                return Err(Error::Corrupt(format!(
                    "object {id} does not decompress: {e}"
                )));
            }
            Err(e) => return Err(Error::io("(restore target)", e)),
        }
        let (got, len) = hashing.hasher.finish();
        if got != *id || len != loc.raw_len {
            return Err(Error::Corrupt(format!(
                "object {id} in pack {} does not match its id",
                loc.pack
            )));
        }
        Ok(len)
    }

    /// An object's content, checked. Only for objects known to be small (trees, link targets).
    pub fn read_vec(&self, id: &Id) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(id, &mut out)?;
        Ok(out)
    }

    /// Reads and decodes a tree.
    pub fn tree(&self, id: &Id) -> Result<Tree> {
        let bytes = self.read_vec(id)?;
        Tree::decode(&bytes).map_err(|e| Error::Corrupt(format!("tree {id}: {e}")))
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
        (Some((hid, _, len)), Some(stored)) if (hid, len) == (*id, loc.len) => Ok(stored),
        _ => Err(Error::Corrupt(format!(
            "record header of object {id} in pack {} is damaged",
            loc.pack
        ))),
    }
}
