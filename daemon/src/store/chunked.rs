//! Chunked files: a large file is stored as a list of content-defined chunks, so a version
//! that changed in a few places costs those places, not the whole file again.
//!
//! # Format (chunk lists, version 1)
//! 1. A chunked file is one pack record with [`FLAG_CHUNKED`] stored under the id of the
//!    file's whole content (xxh3-128 of every byte, a hole read as zeros), so a tree entry's
//!    id still names its content (tree format rule 4) and equal files share one object
//!    whichever way either was stored. Its [`Loc`]'s raw length is the file's length; its stored
//!    bytes are the chunk list, never compressed.
//! 2. A chunk list is the version byte [`LIST_VERSION`], then one 25-byte piece after another
//!    (a kind byte: 0 for data, 1 for a hole; the piece's length, 8 bytes little-endian; for
//!    data the chunk's 16-byte id, for a hole 16 zero bytes), then the xxh3-64 of everything
//!    before it, 8 bytes little-endian. A list whose checksum does not match is damaged.
//! 3. Pieces have non-zero lengths that add up to the file's length; a list has at least one.
//!    The file is its pieces in order: a data piece is the content of its chunk, a hole that
//!    many zero bytes (restored as a hole: the length is set, nothing written).
//! 4. A data piece's chunk is an ordinary blob (its own record, LZ4 when it pays, shared by
//!    every version, file and workspace that has those bytes) of at most [`CHUNK_MAX`] bytes.
//!    Only files larger than [`CHUNK_THRESHOLD`] (> `CHUNK_MAX`) are chunked, so a chunk's
//!    content is never a chunked file's: a list never names a list, and a reader refuses one
//!    that does.
//! 5. How a save cuts (not a rule readers rely on): regular files larger than
//!    [`CHUNK_THRESHOLD`] are cut by FastCDC 2020 (the `fastcdc` crate's `v2020`, normalization
//!    level 1, no seed) with [`CHUNK_MIN`]/[`CHUNK_AVG`]/[`CHUNK_MAX`], each data region that
//!    `SEEK_DATA`/`SEEK_HOLE` report cut on its own; what lies between regions is holes. The
//!    cut points depend on the content and the holes only, so equal files get equal lists.
//!    The sizes (8/32/128 KiB) were chosen by measuring store growth for small edits of a
//!    256 MiB file and of a SQLite database against larger ones (README, *Chunk sizes,
//!    measured*).
//!    Other parameters need no new version: older lists still read, only deduplication
//!    against versions cut the old way is lost.
//! 6. Stores written before chunk lists existed hold every file as one blob of any size (an
//!    LZ4 frame, an LZ4 block or raw bytes); they read as before, and a file saved again once
//!    it changed is chunked. Any reader accepts either form for a file of any size.
//! 7. A list whose version byte is not one this chkptd knows is refused as newer.

use std::fs::File;
use std::io::{self, Write};

use super::pack::{AtWriter, FLAG_CHUNKED, Loc};
use super::read::loc_bytes;
use super::{Batch, Id, Store};
use crate::error::{Error, Result};

/// Files larger than this are chunked (format rule 5). Chosen by measurement (see the README):
/// below it a file is one blob, as every file was before, so trees of small files cost what
/// they did.
pub const CHUNK_THRESHOLD: u64 = 1 << 20;
/// The smallest chunk FastCDC cuts (but a region's last).
pub const CHUNK_MIN: usize = 8 << 10;
/// The average chunk FastCDC aims for.
pub const CHUNK_AVG: usize = 32 << 10;
/// The largest chunk (format rule 4).
pub const CHUNK_MAX: usize = 128 << 10;
const _: () = assert!(CHUNK_THRESHOLD > CHUNK_MAX as u64, "format rule 4");

/// The version byte of chunk lists (format rule 2).
pub const LIST_VERSION: u8 = 1;
const PIECE: usize = 1 + 8 + 16;
const KIND_DATA: u8 = 0;
const KIND_HOLE: u8 = 1;

/// One piece of a chunked file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// The content of chunk `id`, `len` bytes.
    Data {
        /// The chunk's blob id.
        id: Id,
        /// Its length.
        len: u64,
    },
    /// `len` zero bytes, stored as nothing and restored as a hole.
    Hole {
        /// Its length.
        len: u64,
    },
}

impl Piece {
    /// Its length in the file.
    pub fn len(&self) -> u64 {
        match *self {
            Piece::Data { len, .. } | Piece::Hole { len } => len,
        }
    }

    /// Whether it is empty (never, in a valid list).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The pieces of a chunked file, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkList {
    /// In file order.
    pub pieces: Vec<Piece>,
}

impl ChunkList {
    /// The file's length.
    pub fn len(&self) -> u64 {
        self.pieces.iter().map(Piece::len).sum()
    }

    /// Whether it has no pieces.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The chunks it names (a chunk may appear more than once).
    pub fn chunk_ids(&self) -> impl Iterator<Item = Id> + '_ {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Data { id, .. } => Some(*id),
            Piece::Hole { .. } => None,
        })
    }

    /// The stored form (format rule 2).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.pieces.len() * PIECE + 8);
        out.push(LIST_VERSION);
        for p in &self.pieces {
            match p {
                Piece::Data { id, len } => {
                    out.push(KIND_DATA);
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(id.as_bytes());
                }
                Piece::Hole { len } => {
                    out.push(KIND_HOLE);
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(&[0; 16]);
                }
            }
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Parses and checks the stored form (format rules 2, 3 and 7).
    pub fn decode(bytes: &[u8]) -> std::result::Result<ChunkList, String> {
        let Some((&version, _)) = bytes.split_first() else {
            return Err("empty chunk list".into());
        };
        if version != LIST_VERSION {
            return Err(format!(
                "chunk list format {version} is newer than this chkptd knows; upgrade chkptd"
            ));
        }
        if bytes.len() < 1 + PIECE + 8 || !(bytes.len() - 9).is_multiple_of(PIECE) {
            return Err("chunk list has a bad length".into());
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        let sum = u64::from_le_bytes(sum.try_into().map_err(|_| "checksum")?);
        if xxhash_rust::xxh3::xxh3_64(body) != sum {
            return Err("chunk list does not match its checksum".into());
        }
        let mut pieces = Vec::with_capacity((body.len() - 1) / PIECE);
        for p in body[1..].chunks_exact(PIECE) {
            let len = u64::from_le_bytes(p[1..9].try_into().map_err(|_| "length")?);
            if len == 0 {
                return Err("chunk list has an empty piece".into());
            }
            let id: [u8; 16] = p[9..].try_into().map_err(|_| "id")?;
            pieces.push(match p[0] {
                KIND_DATA if len <= CHUNK_MAX as u64 => Piece::Data {
                    id: Id::from_bytes(id),
                    len,
                },
                KIND_DATA => return Err("chunk list names a chunk too large".into()),
                KIND_HOLE => Piece::Hole { len },
                k => return Err(format!("chunk list has a piece of unknown kind {k}")),
            });
        }
        Ok(ChunkList { pieces })
    }
}

impl Batch<'_> {
    /// Stores `list` as the chunked file whose whole content has id `id` (format rule 1),
    /// unless an object of that id is stored already. Its chunks must be stored (or adopted)
    /// by this batch first. Returns whether it was new.
    pub fn put_chunked(&self, id: Id, list: &ChunkList) -> Result<bool> {
        if self.adopt(&id)? {
            return Ok(false);
        }
        let bytes = list.encode();
        let loc = {
            let mut w = self.store().packs.take_writer()?;
            w.append(id, FLAG_CHUNKED, list.len(), &bytes)?
        };
        self.record(id, loc);
        Ok(true)
    }
}

impl Store {
    /// The chunk list of object `id` when it is a chunked file; none when it is a blob (or not
    /// stored).
    pub fn chunk_list(&self, id: &Id) -> Result<Option<ChunkList>> {
        match self.index.locate(id) {
            Some(loc) if loc.flags & FLAG_CHUNKED != 0 => self.list_at(id, &loc).map(Some),
            _ => Ok(None),
        }
    }

    /// The chunk list stored at `loc`, checked (format rules 2–4, and that it has the length
    /// its index entry says).
    pub(crate) fn list_at(&self, id: &Id, loc: &Loc) -> Result<ChunkList> {
        let map = self.packs.map(loc.pack, loc.end())?;
        let bytes = loc_bytes(&map, id, loc)?;
        let list = ChunkList::decode(bytes)
            .map_err(|e| Error::Corrupt(format!("chunked file {id}: {e}")))?;
        if list.len() != loc.raw_len {
            return Err(Error::Corrupt(format!(
                "chunked file {id}: its pieces do not add up to its length"
            )));
        }
        Ok(list)
    }

    /// Where chunk `chunk` of file `id` is: a stored blob, never a chunked file (rule 4).
    fn chunk_loc(&self, id: &Id, chunk: &Id) -> Result<Loc> {
        match self.index.locate(chunk) {
            Some(loc) if loc.flags & FLAG_CHUNKED == 0 => Ok(loc),
            Some(_) => Err(Error::Corrupt(format!(
                "chunked file {id} names another chunked file as a chunk"
            ))),
            None => Err(Error::Corrupt(format!(
                "chunk {chunk} of file {id} is not in the store"
            ))),
        }
    }

    /// Streams a chunked file into `sink`, one chunk at a time, each checked against its id.
    pub(crate) fn read_chunked_into(
        &self,
        id: &Id,
        loc: &Loc,
        sink: &mut dyn Write,
    ) -> Result<u64> {
        let list = self.list_at(id, loc)?;
        let zeros = [0u8; 64 << 10];
        for piece in &list.pieces {
            match *piece {
                Piece::Data { id: chunk, len } => {
                    let cloc = self.chunk_loc(id, &chunk)?;
                    if self.read_loc_into(&chunk, &cloc, sink)? != len {
                        return Err(Error::Corrupt(format!(
                            "chunk {chunk} of file {id} has another length than its list says"
                        )));
                    }
                }
                Piece::Hole { mut len } => {
                    while len > 0 {
                        let n = len.min(zeros.len() as u64) as usize;
                        sink.write_all(&zeros[..n])
                            .map_err(|e| Error::io("(restore target)", e))?;
                        len -= n as u64;
                    }
                }
            }
        }
        Ok(list.len())
    }

    /// Streams bytes `from..to` (within its length) of a chunked file into `sink`: only the
    /// chunks the range overlaps are read, each checked against its id where the range covers
    /// its end (see [`Store::read_range_into`]).
    pub(crate) fn read_chunked_range(
        &self,
        id: &Id,
        loc: &Loc,
        from: u64,
        to: u64,
        sink: &mut dyn Write,
    ) -> Result<()> {
        let list = self.list_at(id, loc)?;
        let zeros = [0u8; 64 << 10];
        let mut pos = 0u64;
        for piece in &list.pieces {
            let (start, stop) = (pos, pos + piece.len());
            pos = stop;
            if stop <= from {
                continue;
            }
            if start >= to {
                break;
            }
            let (lo, hi) = (from.max(start) - start, to.min(stop) - start);
            match *piece {
                Piece::Data { id: chunk, len } => {
                    let cloc = self.chunk_loc(id, &chunk)?;
                    if cloc.raw_len != len {
                        return Err(Error::Corrupt(format!(
                            "chunk {chunk} of file {id} has another length than its list says"
                        )));
                    }
                    self.read_blob_range(&chunk, &cloc, lo, hi, sink)?;
                }
                Piece::Hole { .. } => {
                    let mut n = hi - lo;
                    while n > 0 {
                        let k = n.min(zeros.len() as u64) as usize;
                        sink.write_all(&zeros[..k])
                            .map_err(|e| Error::io("(read target)", e))?;
                        n -= k as u64;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes object `id` into `file` (new and empty), checked: a chunked file's data pieces
    /// at their offsets and its holes left as holes (the length is set at the end), so a
    /// restored sparse file takes the disk space of its data only.
    pub fn read_to_file(&self, id: &Id, file: &File) -> Result<u64> {
        let loc = self
            .index
            .locate(id)
            .ok_or_else(|| Error::Corrupt(format!("object {id} is not in the store")))?;
        let to_file = |e: io::Error| Error::io("(restore target)", e);
        if loc.flags & FLAG_CHUNKED == 0 {
            // Under chkptd's fixed mmap threshold (256 KiB, `src/bin/chkptd.rs`): a buffer at
            // or above it is a mapping of its own, mapped and unmapped for every file restored
            // (~1.5 s more on the Linux tree's 86,000 files).
            let mut w = io::BufWriter::with_capacity(128 * 1024, file);
            let n = self.read_loc_into(id, &loc, &mut w)?;
            w.flush().map_err(to_file)?;
            return Ok(n);
        }
        let list = self.list_at(id, &loc)?;
        let mut at = AtWriter { file, pos: 0 };
        for piece in &list.pieces {
            match *piece {
                Piece::Data { id: chunk, len } => {
                    let cloc = self.chunk_loc(id, &chunk)?;
                    let start = at.pos;
                    if self.read_loc_into(&chunk, &cloc, &mut at)? != len {
                        return Err(Error::Corrupt(format!(
                            "chunk {chunk} of file {id} has another length than its list says"
                        )));
                    }
                    debug_assert_eq!(at.pos, start + len);
                }
                Piece::Hole { len } => at.pos += len,
            }
        }
        file.set_len(at.pos).map_err(to_file)?;
        Ok(at.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_damage_is_caught() {
        let list = ChunkList {
            pieces: vec![
                Piece::Data {
                    id: Id::of(b"a"),
                    len: 100,
                },
                Piece::Hole { len: 1 << 40 },
                Piece::Data {
                    id: Id::of(b"b"),
                    len: 7,
                },
            ],
        };
        let bytes = list.encode();
        assert_eq!(bytes.len(), 1 + 3 * PIECE + 8);
        assert_eq!(ChunkList::decode(&bytes).unwrap(), list);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(ChunkList::decode(&bad).is_err(), "a flipped byte {i} read");
        }
        let mut newer = bytes.clone();
        newer[0] = 2;
        assert!(ChunkList::decode(&newer).unwrap_err().contains("newer"));
        assert!(ChunkList::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
