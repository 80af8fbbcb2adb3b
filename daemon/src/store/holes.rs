//! Holes in files: where a file's data is (`SEEK_DATA`/`SEEK_HOLE`, for sparse files in the
//! workspace), and punching new ones into packs (`fallocate(PUNCH_HOLE)`, for garbage
//! collection).
//!
//! Collection reclaims a pack's dead records in place: it punches out the whole blocks that
//! no live record touches. The file keeps its length and every live record its offset, so
//! nothing is copied and the store never holds two copies of its live data, as a repack does
//! for a while (under a budget of about one pack, a repack would double the store). Nothing
//! reads a pack from start to end (every read goes through the blob index to a live record),
//! so the zeros of a hole are never read. A file system that cannot punch holes gets repacks.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::pack::{self, Loc, RECORD_HEADER};

/// The data regions of `file`'s first `size` bytes, `[start, end)` in order. A file system
/// that cannot tell says the whole file is data.
pub fn data_regions(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek on a valid fd only moves its offset (this thread's own handle).
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                // No data past `pos`: the rest is a hole.
                Some(libc::ENXIO) => Ok(out),
                // SEEK_DATA not supported: all data.
                Some(libc::EINVAL | libc::EOPNOTSUPP) => Ok(vec![(0, size)]),
                _ => Err(e),
            };
        }
        let data = data as u64;
        if data >= size {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let end = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        if end <= data {
            break;
        }
        out.push((data, end));
        pos = end;
    }
    Ok(out)
}

/// Bytes a file takes on disk (its allocated blocks; a sparse file counts what it holds).
pub fn allocated(meta: &std::fs::Metadata) -> u64 {
    meta.blocks() * 512
}

/// Whether the file system under `dir` punches holes (and reports them): tried once on a
/// scratch file, which is removed again.
pub fn can_punch(dir: &Path) -> bool {
    let path = dir.join(".punch-probe");
    let probe = || -> io::Result<bool> {
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let block = block_size(&f.metadata()?);
        std::os::unix::fs::FileExt::write_all_at(&f, &vec![1u8; 3 * block as usize], 0)?;
        punch(&f, &[(block, 2 * block)])?;
        let regions = data_regions(&f, 3 * block)?;
        Ok(regions == [(0, block), (2 * block, 3 * block)])
    };
    let ok = probe().unwrap_or(false);
    let _ = std::fs::remove_file(&path);
    ok
}

/// The granularity holes are punched in.
pub fn block_size(meta: &std::fs::Metadata) -> u64 {
    meta.blksize().clamp(512, 1 << 20)
}

/// Frees the ranges of `file` (each whole blocks), keeping its length.
pub fn punch(file: &File, ranges: &[(u64, u64)]) -> io::Result<()> {
    for &(start, end) in ranges {
        // SAFETY: fallocate on a valid fd; it changes only the file's blocks in the range.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                (end - start) as libc::off_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What punching a pack's dead blocks would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PunchPlan {
    /// The whole blocks no live record touches that still hold data, `[start, end)`.
    pub ranges: Vec<(u64, u64)>,
    /// Bytes those hold on disk now: what punching frees.
    pub frees: u64,
    /// Bytes the pack takes on disk now.
    pub allocated: u64,
}

impl PunchPlan {
    /// Bytes the pack takes on disk after the punch.
    pub fn left(&self) -> u64 {
        self.allocated.saturating_sub(self.frees)
    }
}

/// The plan for pack `file` (committed up to `committed`) whose live records are `live`.
pub fn plan(file: &File, live: &[Loc], committed: u64) -> io::Result<PunchPlan> {
    let meta = file.metadata()?;
    let dead = dead_blocks(live, committed, block_size(&meta));
    let data = data_regions(file, committed)?;
    let (ranges, frees) = intersect(&dead, &data);
    Ok(PunchPlan {
        ranges,
        frees,
        allocated: allocated(&meta),
    })
}

/// The whole blocks of `[MAGIC, committed)` that no record in `live` touches (header
/// included), in order.
fn dead_blocks(live: &[Loc], committed: u64, block: u64) -> Vec<(u64, u64)> {
    let mut used: Vec<(u64, u64)> = live
        .iter()
        .map(|l| (l.offset.saturating_sub(RECORD_HEADER), l.end()))
        .collect();
    used.sort_unstable();
    let mut out = Vec::new();
    let mut gap_start = pack::MAGIC.len() as u64;
    let mut push = |from: u64, to: u64| {
        let (s, e) = (from.div_ceil(block) * block, to / block * block);
        if s < e {
            out.push((s, e));
        }
    };
    for (start, end) in used {
        if start > gap_start {
            push(gap_start, start.min(committed));
        }
        gap_start = gap_start.max(end);
    }
    if committed > gap_start {
        push(gap_start, committed);
    }
    out
}

/// The parts of the sorted, disjoint `ranges` that lie in the sorted, disjoint `data`, and
/// their total length.
fn intersect(ranges: &[(u64, u64)], data: &[(u64, u64)]) -> (Vec<(u64, u64)>, u64) {
    let (mut out, mut total) = (Vec::new(), 0);
    let (mut i, mut j) = (0, 0);
    while i < ranges.len() && j < data.len() {
        let (s, e) = (ranges[i].0.max(data[j].0), ranges[i].1.min(data[j].1));
        if s < e {
            out.push((s, e));
            total += e - s;
        }
        if ranges[i].1 <= data[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    (out, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(offset: u64, len: u64) -> Loc {
        Loc {
            pack: 0,
            offset: offset + RECORD_HEADER,
            len: len - RECORD_HEADER,
            raw_len: len,
            flags: 0,
        }
    }

    #[test]
    fn dead_blocks_are_the_whole_blocks_between_live_records() {
        // Records (header included) at [8, 100), [5000, 9000), [20000, 20100); 30000 committed.
        let live = [loc(5000, 4000), loc(8, 92), loc(20000, 100)];
        assert_eq!(
            dead_blocks(&live, 30000, 4096),
            [(12288, 16384), (20480, 28672)]
        );
        // Nothing live: everything after the header's block.
        assert_eq!(dead_blocks(&[], 9000, 4096), [(4096, 8192)]);
        // A pack shorter than a block frees nothing.
        assert_eq!(dead_blocks(&[], 4000, 4096), []);
    }

    #[test]
    fn intersection_keeps_only_data() {
        let (r, n) = intersect(&[(0, 10), (20, 40), (50, 60)], &[(5, 25), (35, 55)]);
        assert_eq!(r, [(5, 10), (20, 25), (35, 40), (50, 55)]);
        assert_eq!(n, 20);
    }

    #[test]
    fn a_punched_file_keeps_its_length_and_its_other_bytes() {
        let dir = tempfile::tempdir().unwrap();
        if !can_punch(dir.path()) {
            panic!(
                "the test directory's file system cannot punch holes: {}",
                dir.path().display()
            );
        }
        let path = dir.path().join("p");
        let bytes: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(&path, &bytes).unwrap();
        let f = File::options().read(true).write(true).open(&path).unwrap();
        let live = [loc(8, 100), loc(40_000, 1000)];
        let before = plan(&f, &live, bytes.len() as u64).unwrap();
        assert!(before.frees >= 48 * 1024, "{before:?}");
        punch(&f, &before.ranges).unwrap();
        let after = std::fs::read(&path).unwrap();
        assert_eq!(after.len(), bytes.len());
        for l in &live {
            let r = (l.offset - RECORD_HEADER) as usize..l.end() as usize;
            assert_eq!(after[r.clone()], bytes[r]);
        }
        assert!(allocated(&f.metadata().unwrap()) <= before.left());
        // Punched once, nothing is left to free.
        assert_eq!(plan(&f, &live, bytes.len() as u64).unwrap().frees, 0);
    }
}
