//! Pack files: blobs appended one after another, read back through memory maps.
//!
//! # Format
//! 1. A pack is `packs/<number, 8 hex digits>.pack` and starts with the 8 bytes `CHKPACK1`.
//! 2. Then records, each: the object's 16-byte id, one flags byte ([`FLAG_LZ4`],
//!    [`FLAG_LZ4_BLOCK`], [`FLAG_TREE`], [`FLAG_CHUNKED`], [`FLAG_HC`]), the stored length as 8 bytes little-endian, then the
//!    stored bytes: an LZ4 frame when `FLAG_LZ4` is set (objects streamed through), one LZ4
//!    block of the raw length when `FLAG_LZ4_BLOCK` is set (objects of at most
//!    [`IN_MEMORY_LIMIT`](super::IN_MEMORY_LIMIT) bytes, compressed in memory), else the raw
//!    content. With `FLAG_CHUNKED` the stored bytes are a chunk list (see
//!    [`chunked`](super::chunked)), never compressed. [`FLAG_HC`] says the block was made (or
//!    the record looked at) by the idle recompression (see [`recompress`](super::recompress));
//!    it decodes as any other.
//! 3. Packs only grow while open for writing. The catalog records for each pack the length up to
//!    which its data is fsynced and referenced; bytes past it are the remains of an interrupted
//!    save and are cut off when the store opens.
//! 4. The blob index maps an id to a [`Loc`]: pack, offset of the stored bytes, stored length,
//!    raw length and flags.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Id;
use crate::error::{Error, IoContext, Result};

/// The first bytes of every pack.
pub const MAGIC: &[u8; 8] = b"CHKPACK1";
/// Bytes of a record before its data.
pub const RECORD_HEADER: u64 = 16 + 1 + 8;
/// The stored bytes are an LZ4 frame.
pub const FLAG_LZ4: u8 = 1;
/// The object is a tree.
pub const FLAG_TREE: u8 = 2;
/// The stored bytes are one LZ4 block; the raw length is the index's.
pub const FLAG_LZ4_BLOCK: u8 = 4;
/// The stored bytes are the chunk list of a large file (see [`chunked`](super::chunked)); the raw
/// length is the file's.
pub const FLAG_CHUNKED: u8 = 8;
/// The record was recompressed at idle (an LZ4 HC block, or left as it was when that did not
/// pay): recompression passes over it.
pub const FLAG_HC: u8 = 16;
/// A pack stops taking new records once it is this large.
pub const PACK_TARGET_SIZE: u64 = 256 << 20;

/// Where an object's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Pack number.
    pub pack: u32,
    /// Offset of the stored bytes (after the record header).
    pub offset: u64,
    /// Stored (possibly compressed) length.
    pub len: u64,
    /// Uncompressed length.
    pub raw_len: u64,
    /// [`FLAG_LZ4`] | [`FLAG_LZ4_BLOCK`] | [`FLAG_TREE`] | [`FLAG_CHUNKED`] | [`FLAG_HC`].
    pub flags: u8,
}

impl Loc {
    pub(crate) const ENCODED: usize = 4 + 8 + 8 + 8 + 1;

    /// The fixed 29-byte index value.
    pub fn encode(&self) -> [u8; Self::ENCODED] {
        let mut b = [0u8; Self::ENCODED];
        b[0..4].copy_from_slice(&self.pack.to_le_bytes());
        b[4..12].copy_from_slice(&self.offset.to_le_bytes());
        b[12..20].copy_from_slice(&self.len.to_le_bytes());
        b[20..28].copy_from_slice(&self.raw_len.to_le_bytes());
        b[28] = self.flags;
        b
    }

    /// Parses [`Loc::encode`]'s output.
    pub fn decode(b: &[u8]) -> Option<Loc> {
        if b.len() != Self::ENCODED {
            return None;
        }
        let u64_at = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
        };
        Some(Loc {
            pack: u32::from_le_bytes(b[0..4].try_into().ok()?),
            offset: u64_at(4)?,
            len: u64_at(12)?,
            raw_len: u64_at(20)?,
            flags: b[28],
        })
    }

    /// The end of the record in its pack.
    pub fn end(&self) -> u64 {
        // Saturating: a corrupt entry must fail the length checks, not wrap around them.
        self.offset.saturating_add(self.len)
    }

    /// Bytes the record takes in its pack, header included.
    pub fn record_len(&self) -> u64 {
        self.len + RECORD_HEADER
    }
}

/// The path of pack `no` under `dir`.
pub fn pack_path(dir: &Path, no: u32) -> PathBuf {
    dir.join(format!("{no:08x}.pack"))
}

/// Parses a pack file name.
pub fn parse_pack_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".pack")?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// An open pack that takes new records at its end. One thread uses a writer at a time.
///
/// Records are gathered in memory and written [`WRITE_BUFFER`] bytes at a time: ext4's cost per
/// write call, not the copy, dominated appending thousands of small records. Bytes past
/// [`PackWriter::written`] are not in the file yet: the store writes them out before it
/// fsyncs the pack or maps that part of it.
#[derive(Debug)]
pub struct PackWriter {
    /// Pack number.
    pub no: u32,
    /// Shared so a commit can fsync it while another thread appends.
    pub file: Arc<File>,
    path: PathBuf,
    /// Current length, buffered records included.
    pub len: u64,
    /// Records not written to the file yet; they start at `len - buf.len()`.
    buf: Vec<u8>,
    /// Bytes up to which writeback was started.
    writeback: u64,
    /// Length at the last background fsync request.
    pub early_synced: u64,
    /// Why the pack lost buffered records (a failed write): nothing more may be appended, and
    /// no commit may count on it.
    pub failed: Option<String>,
}

/// Start writeback every this many bytes, so the fsync at commit finds little left to do.
const WRITEBACK_EVERY: u64 = 16 << 20;
/// Records are written to the file in pieces of at most this size (larger ones directly).
pub const WRITE_BUFFER: usize = 1 << 20;

impl PackWriter {
    /// Creates pack `no`.
    pub fn create(dir: &Path, no: u32) -> Result<PackWriter> {
        let path = pack_path(dir, no);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        file.write_all_at(MAGIC, 0).at(&path)?;
        // The new name must outlive a power loss as surely as the data later fsynced into it:
        // a vanished pack's number would be reused (and the catalog's notes on it misread).
        File::open(dir).and_then(|d| d.sync_all()).at(dir)?;
        Ok(PackWriter {
            no,
            file: Arc::new(file),
            path,
            len: MAGIC.len() as u64,
            buf: Vec::new(),
            writeback: 0,
            early_synced: 0,
            failed: None,
        })
    }

    /// Bytes of the pack that are in the file (the rest is buffered).
    pub fn written(&self) -> u64 {
        self.len - self.buf.len() as u64
    }

    /// Writes the buffered records to the file. A failure loses them: the writer is marked
    /// failed and must not be used again.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(Error::io(&self.path, io::Error::other(e.clone())));
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all_at(&self.buf, self.written()) {
            self.failed = Some(e.to_string());
            return Err(Error::io(&self.path, e));
        }
        self.buf.clear();
        self.start_writeback();
        Ok(())
    }

    /// Frees the write buffer's memory (when nothing is buffered).
    pub fn shrink(&mut self) {
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }

    /// Starts writing back what reached the file since the last call, without waiting, once
    /// enough accumulated: the fsync at commit then has little left to do.
    fn start_writeback(&mut self) {
        let written = self.written();
        if written - self.writeback < WRITEBACK_EVERY {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid fd and range; SYNC_FILE_RANGE_WRITE only starts writeback.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.writeback as libc::off64_t,
                    (written - self.writeback) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        self.writeback = written;
    }

    /// Appends one record of `data` (already in stored form).
    pub fn append(&mut self, id: Id, flags: u8, raw_len: u64, data: &[u8]) -> Result<Loc> {
        let record = RECORD_HEADER as usize + data.len();
        if self.buf.len() + record > WRITE_BUFFER {
            self.flush()?;
        }
        if let Some(e) = &self.failed {
            return Err(Error::io(&self.path, io::Error::other(e.clone())));
        }
        let start = self.len;
        if record > WRITE_BUFFER {
            // Too large to gather: straight to the file (nothing is buffered now).
            let res = self
                .file
                .write_all_at(&header(id, flags, data.len() as u64), start)
                .and_then(|()| self.file.write_all_at(data, start + RECORD_HEADER));
            if let Err(e) = res {
                self.rollback(start);
                return Err(Error::io(&self.path, e));
            }
        } else {
            if self.buf.capacity() < WRITE_BUFFER {
                self.buf.reserve_exact(WRITE_BUFFER - self.buf.len());
            }
            self.buf
                .extend_from_slice(&header(id, flags, data.len() as u64));
            self.buf.extend_from_slice(data);
        }
        self.len = start + record as u64;
        if record > WRITE_BUFFER {
            self.start_writeback();
        }
        Ok(Loc {
            pack: self.no,
            offset: start + RECORD_HEADER,
            len: data.len() as u64,
            raw_len,
            flags,
        })
    }

    /// Appends one record whose stored bytes are produced by `fill` writing into the pack; the
    /// header is written last, once the length is known. `fill` returns the object's id, or
    /// `None` to abandon the record (the bytes are cut off again).
    pub fn append_with(
        &mut self,
        flags: u8,
        raw_len: u64,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<Option<Id>>,
    ) -> Result<Option<Loc>> {
        self.flush()?;
        let start = self.len;
        let mut sink = AtWriter {
            file: &self.file,
            pos: start + RECORD_HEADER,
        };
        let id = match fill(&mut sink) {
            Ok(Some(id)) => id,
            Ok(None) => {
                self.rollback(start);
                return Ok(None);
            }
            Err(e) => {
                self.rollback(start);
                return Err(Error::io(&self.path, e));
            }
        };
        let len = sink.pos - start - RECORD_HEADER;
        if let Err(e) = self.file.write_all_at(&header(id, flags, len), start) {
            self.rollback(start);
            return Err(Error::io(&self.path, e));
        }
        self.len = start + RECORD_HEADER + len;
        self.start_writeback();
        Ok(Some(Loc {
            pack: self.no,
            offset: start + RECORD_HEADER,
            len,
            raw_len,
            flags,
        }))
    }

    /// Cuts off a record written straight to the file (nothing is buffered then).
    fn rollback(&mut self, start: u64) {
        if let Err(e) = self.file.set_len(start) {
            tracing::warn!(pack = %self.path.display(), error = %e, "could not cut off an abandoned record");
        }
        self.len = start;
        self.writeback = self.writeback.min(start);
    }
}

fn header(id: Id, flags: u8, len: u64) -> [u8; RECORD_HEADER as usize] {
    let mut h = [0u8; RECORD_HEADER as usize];
    h[..16].copy_from_slice(id.as_bytes());
    h[16] = flags;
    h[17..25].copy_from_slice(&len.to_le_bytes());
    h
}

/// A record header, read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// The object's id.
    pub id: Id,
    /// How it is stored (compression).
    pub flags: u8,
    /// Its stored length.
    pub len: u64,
}

/// Reads a record header back.
pub fn parse_header(bytes: &[u8]) -> Option<RecordHeader> {
    let id: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
    let flags = *bytes.get(16)?;
    let len = u64::from_le_bytes(bytes.get(17..25)?.try_into().ok()?);
    Some(RecordHeader {
        id: Id::from_bytes(id),
        flags,
        len,
    })
}

/// `Write` at increasing offsets of a file, without moving a shared cursor (a hole is left
/// by moving `pos`).
pub(crate) struct AtWriter<'a> {
    pub(crate) file: &'a File,
    pub(crate) pos: u64,
}

impl Write for AtWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loc_round_trip() {
        let loc = Loc {
            pack: 7,
            offset: 1 << 40,
            len: 99,
            raw_len: 1000,
            flags: FLAG_LZ4,
        };
        assert_eq!(Loc::decode(&loc.encode()), Some(loc));
        assert_eq!(Loc::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn pack_names() {
        assert_eq!(parse_pack_name("0000002a.pack"), Some(42));
        assert_eq!(parse_pack_name("2a.pack"), None);
        assert_eq!(parse_pack_name("0000002a.tmp"), None);
    }
}
