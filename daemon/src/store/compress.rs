//! Compression: LZ4 blocks for objects held in memory (liblz4, with a buffer per thread). A
//! large file is stored as chunks, each one such block (see [`chunked`](super::chunked)).

use super::IN_MEMORY_LIMIT;

thread_local! {
    /// Each thread's LZ4 output buffer, reused from one object to the next.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Frees this thread's compression buffer. Threads of a walk end with it; a long-lived thread
/// (rayon's) calls this after a save, so a large file read once does not stay in memory.
pub fn release_thread_buffers() {
    SCRATCH.with(|s| *s.borrow_mut() = Vec::new());
}

/// `data` compressed as one LZ4 block into `out` (resized as needed); its length, or none when
/// compressing does not save at least 1/32.
pub fn lz4_block(data: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let need = lz4::block::compress_bound(data.len()).ok()?;
    if out.len() < need {
        out.resize(need, 0);
    }
    lz4::block::compress_to_buffer(data, None, false, &mut out[..need])
        .ok()
        .filter(|&n| n < data.len() - data.len() / 32)
}

/// LZ4 HC's level for the idle recompression. On the Linux tree, file by file: the fast
/// compressor leaves 30.9 % of the bytes, level 3 25.0 %, 6 24.5 %, 9 24.4 %, at about 5×, 9×
/// and 11× its time; decoding is as fast at every level.
pub const HC_LEVEL: i32 = 3;

/// `data` compressed as one LZ4 HC block ([`HC_LEVEL`]) into `out` (resized as needed); its
/// length, or none when that does not save at least 1/32.
pub fn lz4_hc_block(data: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let need = lz4::block::compress_bound(data.len()).ok()?;
    if out.len() < need {
        out.resize(need, 0);
    }
    let mode = lz4::block::CompressionMode::HIGHCOMPRESSION(HC_LEVEL);
    lz4::block::compress_to_buffer(data, Some(mode), false, &mut out[..need])
        .ok()
        .filter(|&n| n < data.len() - data.len() / 32)
}

/// Calls `f` with `data` as one LZ4 block, or with none when compressing does not pay (the
/// block must save at least 1/32) or `data` is larger than a block object may be
/// ([`IN_MEMORY_LIMIT`]: a tree of a directory with ~150,000 entries; stored raw).
pub(crate) fn with_compressed<T>(data: &[u8], f: impl FnOnce(Option<&[u8]>) -> T) -> T {
    if data.len() < 64 || data.len() as u64 > IN_MEMORY_LIMIT {
        return f(None);
    }
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        let n = lz4_block(data, &mut buf);
        f(n.map(|n| &buf[..n]))
    })
}
