//! The catalog: tables of a redb database for the blob index, packs, workspaces, snapshots and
//! warm file indexes.
//!
//! # Format
//! 1. `blob_segments`: sequence number (8 bytes big-endian) → a version byte, then entries of
//!    a 16-byte id followed by its 29-byte [`Loc`]. One segment per committed chunk of objects;
//!    a later segment's entry for an id wins. The whole index is loaded into memory when the
//!    store opens: looking an id up never touches the catalog, and a cold save writes a few
//!    large values instead of one entry per object.
//! 2. `packs`: pack number (4 bytes big-endian) → committed length (8 bytes little-endian).
//!    Blob index entries that reach past their pack's committed length are the remains of an
//!    interrupted commit and are ignored.
//! 3. `workspaces`: workspace id (8 bytes BE) → bitcode [`WorkspaceRecord`]; `ws_paths`: the
//!    workspace's absolute path bytes → its id.
//! 4. `snapshots`: snapshot id (8 bytes BE) → bitcode [`SnapshotRecord`]; `ws_snaps`: workspace
//!    id, creation time in µs and snapshot id (8 bytes BE each) → empty, so a workspace's
//!    snapshots list in time order by a range scan.
//! 5. `index_segments`: workspace id (8 bytes BE), a sequence number (8 bytes BE) → bitcode
//!    list of (relative path, [`FileMeta`] or none for a removed path): the persisted warm
//!    index, as a base of whole-index segments followed by journal segments, each applied in
//!    order. When the journal outgrows a quarter of the base, it is folded into a new base.
//!    A directory's entry holds, where a file's holds its content id, the id of its tree as
//!    last encoded in a base segment, and zero (not known) in a journal segment; each journal
//!    entry makes the tree ids of the directories above it not known. Catalogs written
//!    before directories had them hold zero. The base's ids are trusted only while `meta`'s
//!    `index_trees/` + workspace id (8 bytes BE) names its first segment's sequence number
//!    (8 bytes BE), which is written with it: a version before tree ids copies whatever a
//!    directory's entry held into the bases it writes, and does not update that key. A loaded
//!    tree id is used only once the store is found to hold it still (and not for a directory
//!    stored split, whose parts it does not name), so a restart need not encode every tree
//!    again.
//! 6. Workspace and snapshot records are encoded as `records` says (a version byte, then
//!    the body). Blob and warm-index segments start with a version byte: [`SEGMENT_VERSION`]
//!    for those written now, and every version below it still reads.
//!    - Version 1: a blob segment is its entries, each a 16-byte id and a 29-byte `Loc`, one
//!      after the other; a warm-index segment is a byte 1 (base) or 0 (journal), then the
//!      bitcode list of rule 5.
//!    - Version 2: a blob segment is the bitcode `BlobColumns` of its entries (ids, then
//!      each field of their locations in a column of its own, which bitcode packs into the
//!      fewest bytes the column's values need: ~26 bytes an entry instead of 45); a
//!      warm-index segment is the base byte, then version 1's bitcode list as an LZ4 block
//!      with its length in front (`lz4_flex`'s size-prepended block; sorted paths share most
//!      of their bytes with the path before).
//! 7. Stores written before segments existed keep one `blobs` entry per object and one `files`
//!    entry per path; opening such a store moves them into segments once.
//! 8. `meta`: `next_id` → the next workspace id (8 bytes BE); ids are never given out twice,
//!    and each is larger than the ones before.
//! 9. Every table maps bytes to bytes, in byte order, in one redb file, [`FILE`] in the data
//!    directory. Each write is a transaction of its own, committed without an fsync, and
//!    [`Catalog::flush`] commits durably (see `kv`). Catalogs before this rule were sled
//!    databases in the folder `catalog/`, with the same trees and keys (and sled's id counter
//!    for rule 8): opening such a store copies every tree into [`FILE`] once (see `migrate`).
//! 10. A blob or warm-index segment holds about [`SEGMENT_ENTRIES`] entries, fewer or more so
//!     that a large one's value is just under a power of two bytes ([`fitted`]): redb stores
//!     a value larger than a page in a leaf of a power of two pages, so a value of 370 KiB took
//!     512 KiB (at 100,000 files, 30 bytes a file of the store were this rounding). A reader
//!     takes a segment of any number of entries.

mod kv;
mod migrate;

mod blobs;
mod snapshots;
mod warm_index;

pub use self::warm_index::{IndexChange, LoadedIndex};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use redb::{ReadableTable, TableDefinition, TableHandle};

use self::kv::Kv;
use self::warm_index::put_index_base;

use super::pack::Loc;
use super::{Id, Kind, WorkspaceId};
use crate::error::{Error, Result};

/// Objects per blob index segment, and index entries per warm-index segment.
const SEGMENT_ENTRIES: usize = 8192;

/// What a redb leaf holding one value needs besides the value (its header, the key and the
/// offsets), with room to spare (format rule 10).
const LEAF_OVERHEAD: usize = 512;

/// Splits `items` into segments of about [`SEGMENT_ENTRIES`], each as `encode` makes it,
/// sized so that a segment larger than a page ends just under a power of two bytes with its
/// leaf's overhead (format rule 10): the entries per segment are scaled to the bytes per entry
/// `encode` gave for the last try, at most a few tries, then cut back until it fits.
pub(super) fn fitted<T>(items: &[T], encode: impl Fn(&[T]) -> Vec<u8>) -> Vec<Vec<u8>> {
    const PAGE: usize = 4096;
    let mut out = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let mut n = rest.len().min(SEGMENT_ENTRIES);
        let mut value = encode(&rest[..n]);
        if value.len() + LEAF_OVERHEAD > PAGE {
            let room = (value.len() + LEAF_OVERHEAD).next_power_of_two() - LEAF_OVERHEAD;
            for _ in 0..3 {
                let full_enough = value.len() <= room && room - value.len() < room / 64;
                let most = rest.len().min(2 * SEGMENT_ENTRIES);
                if full_enough || (n == most && value.len() <= room) {
                    break;
                }
                let per_entry = value.len() as f64 / n as f64;
                // At most twice the usual entries: a warm-index segment's decoded size is
                // bounded (`MAX_INDEX_SEGMENT`) and its stored one is compressed.
                let most = rest.len().min(2 * SEGMENT_ENTRIES);
                let m = ((room as f64 * 0.99 / per_entry) as usize).clamp(1, most);
                if m == n {
                    break;
                }
                n = m;
                value = encode(&rest[..n]);
            }
            while value.len() > room && n > 1 {
                n = n * 31 / 32;
                value = encode(&rest[..n]);
            }
        }
        out.push(value);
        rest = &rest[n..];
    }
    out
}

/// The catalog's file in the data directory (format rule 9).
pub const FILE: &str = "catalog.redb";

/// The version byte in front of blob and warm-index segments written now (format rule 6).
pub const SEGMENT_VERSION: u8 = 2;
/// The first segment version (format rule 6), also that of the per-entry records of rule 7.
pub const SEGMENT_V1: u8 = 1;
/// The largest warm-index segment a catalog may claim to decompress to: 8,192 entries of
/// paths up to 4 KiB, with room to spare. A larger claim is corruption, not an allocation.
const MAX_INDEX_SEGMENT: usize = 64 << 20;

pub use super::records::{Note, SnapshotRecord, Tag, Trigger, TripwireRecord, WorkspaceRecord};

/// One entry of a workspace's warm index: what a path was when it was last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
pub struct FileMeta {
    /// File, symlink or directory.
    pub kind: Kind,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    /// Length.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
    /// Content id (files, symlinks); for a directory in a persisted base, its tree's id, or
    /// zero (format rule 5).
    pub id: Id,
    /// The content was read so soon after its last modification that a later write in the same
    /// timestamp tick would leave the metadata unchanged: re-read it next time.
    pub racy: bool,
}

/// Decodes a bitcode value of segment version 1 (the per-entry `files` records of rule 7).
fn decode_v1<T: for<'a> bitcode::Decode<'a>>(what: &str, bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&SEGMENT_V1, rest)) => {
            bitcode::decode(rest).map_err(|e| Error::Corrupt(format!("catalog {what} record: {e}")))
        }
        _ => Err(Error::Corrupt(format!(
            "catalog {what} record has an unknown format version"
        ))),
    }
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or_default()
}

/// A catalog table: byte keys to byte values, in key order.
type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;
/// A table open for writing.
type Table<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

const BLOB_SEGMENTS: Def = TableDefinition::new("blob_segments");
const PACKS: Def = TableDefinition::new("packs");
const WORKSPACES: Def = TableDefinition::new("workspaces");
const WS_PATHS: Def = TableDefinition::new("ws_paths");
const SNAPSHOTS: Def = TableDefinition::new("snapshots");
const WS_SNAPS: Def = TableDefinition::new("ws_snaps");
const INDEX_SEGMENTS: Def = TableDefinition::new("index_segments");
const META: Def = TableDefinition::new("meta");
/// The tables of format rule 7.
const OLD_BLOBS: Def = TableDefinition::new("blobs");
const OLD_FILES: Def = TableDefinition::new("files");
/// `meta`'s key of the next workspace id (format rule 8).
const NEXT_ID: &[u8] = b"next_id";

/// The catalog's tables.
#[derive(Debug)]
pub struct Catalog {
    kv: Kv,
    next_blob_segment: AtomicU64,
}

impl Catalog {
    /// Opens (creating) the catalog of the data directory `dir`, with a page cache of
    /// `cache_bytes`. A catalog of sled (before format rule 9) is moved into the new file
    /// first, and a store of the per-entry format into segments (format rule 7).
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<Catalog> {
        migrate::from_sled(dir, cache_bytes)?;
        let kv = Kv::open(&dir.join(FILE), cache_bytes)?;
        let tables = [
            BLOB_SEGMENTS,
            PACKS,
            WORKSPACES,
            WS_PATHS,
            SNAPSHOTS,
            WS_SNAPS,
            INDEX_SEGMENTS,
            META,
        ];
        let next = kv.write(|w| {
            for t in tables {
                w.open_table(t)?;
            }
            let segments = w.open_table(BLOB_SEGMENTS)?;
            let last = segments.last()?;
            Ok(last.map(|(k, _)| u64_at(k.value(), 0) + 1).unwrap_or(0))
        })?;
        kv.flush()?;
        let cat = Catalog {
            kv,
            next_blob_segment: AtomicU64::new(next),
        };
        cat.migrate_per_entry_tables()?;
        Ok(cat)
    }

    /// Makes every write so far durable. Fails when a write of this thread since its last
    /// flush may have been lost (the file was reopened after a failed write).
    pub fn flush(&self) -> Result<()> {
        self.kv.flush()
    }

    /// Changes each time the file is reopened after a failed write: what was written before
    /// and not flushed may be gone.
    pub fn generation(&self) -> u64 {
        self.kv.generation()
    }

    /// The error of an operation whose records a reopen may have lost.
    pub fn lost(&self) -> Error {
        self.kv.lost()
    }

    fn migrate_per_entry_tables(&self) -> Result<()> {
        let names: Vec<String> = self.kv.read(|r| {
            Ok(r.list_tables()?
                .map(|t| t.name().to_owned())
                .collect::<Vec<_>>())
        })?;
        if names.iter().any(|n| n == OLD_BLOBS.name()) {
            self.kv.write(|w| {
                let mut entries = Vec::new();
                for kv in w.open_table(OLD_BLOBS)?.iter()? {
                    let (k, v) = kv?;
                    if let (Ok(raw), Some(loc)) =
                        (<[u8; 16]>::try_from(k.value()), Loc::decode(v.value()))
                    {
                        entries.push((Id::from_bytes(raw), loc));
                    }
                }
                tracing::info!(
                    objects = entries.len(),
                    "moving the blob index into segments"
                );
                self.put_blob_segments(&mut w.open_table(BLOB_SEGMENTS)?, &entries)?;
                w.delete_table(OLD_BLOBS)?;
                Ok(())
            })?;
        }
        if names.iter().any(|n| n == OLD_FILES.name()) {
            self.kv.write(|w| {
                let mut per_ws: HashMap<WorkspaceId, Vec<IndexChange>> = HashMap::new();
                for kv in w.open_table(OLD_FILES)?.iter()? {
                    let (k, v) = kv?;
                    let k = k.value();
                    // A bad record only costs that file a re-read.
                    match decode_v1::<FileMeta>("file", v.value()) {
                        Ok(meta) if k.len() >= 8 => per_ws
                            .entry(WorkspaceId::new(u64_at(k, 0)))
                            .or_default()
                            .push(IndexChange {
                                path: k[8..].to_vec(),
                                meta: Some(meta),
                            }),
                        _ => tracing::warn!("skipping a malformed warm index record"),
                    }
                }
                let mut t = w.open_table(INDEX_SEGMENTS)?;
                for (ws, entries) in per_ws {
                    put_index_base(&mut t, ws, &entries)?;
                }
                drop(t);
                w.delete_table(OLD_FILES)?;
                Ok(())
            })?;
        }
        self.kv.flush()
    }

    // ---- blob index
}

#[cfg(test)]
impl Catalog {
    /// The tables in the file.
    pub(crate) fn table_names(&self) -> Result<Vec<String>> {
        self.kv
            .read(|r| Ok(r.list_tables()?.map(|t| t.name().to_owned()).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::blobs::{blob_segment, decode_blob_segment};
    use super::warm_index::{Segment, decode_index_segment, index_segment};
    use super::*;

    #[test]
    fn fitted_segments_end_just_under_a_power_of_two_and_keep_every_entry_in_order() {
        // Segments of ~45 bytes an entry, as blob and warm-index segments are, with some
        // entries larger than the others.
        let entries: Vec<(Id, Loc)> = (0..100_000u64)
            .map(|i| {
                let loc = Loc {
                    pack: (i / 40_000) as u32,
                    offset: i * 997,
                    len: 40 + i % 3_000,
                    raw_len: 40 + i % 5_000,
                    flags: (i % 5) as u8,
                };
                (Id::of(&i.to_le_bytes()), loc)
            })
            .collect();
        let values = fitted(&entries, blob_segment);
        let mut back = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let leaf = v.len() + LEAF_OVERHEAD;
            let pow = leaf.next_power_of_two();
            if i + 1 < values.len() {
                assert!(
                    leaf * 100 >= pow * 97,
                    "segment {i}: {} bytes in a {pow}-byte leaf",
                    v.len()
                );
            }
            back.extend(decode_blob_segment(v).unwrap());
        }
        assert!(values.len() < 100_000 / SEGMENT_ENTRIES, "{}", values.len());
        assert_eq!(back, entries);
        // Small ones are left as they come.
        let few = fitted(&entries[..10], blob_segment);
        assert_eq!(few, vec![blob_segment(&entries[..10])]);
        assert!(fitted(&entries[..0], blob_segment).is_empty());
    }

    fn meta(i: u64) -> FileMeta {
        FileMeta {
            kind: Kind::File,
            mode: 0o644,
            size: i,
            mtime_ns: 1_700_000_000_000_000_000 + i as i64,
            ctime_ns: 1_700_000_000_000_000_001 + i as i64,
            ino: 1000 + i,
            dev: 42,
            id: Id::of(&i.to_le_bytes()),
            racy: i.is_multiple_of(7),
        }
    }

    /// A base written with tree ids keeps its directories' (format rule 5); a journal makes
    /// the ids above its changes unknown; a base a version before tree ids rewrote (nothing in
    /// `meta` names it) has none trusted.
    #[test]
    fn directory_tree_ids_are_trusted_only_in_a_base_written_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path(), 1 << 20).unwrap();
        let ws = WorkspaceId::new(3);
        let tree = |n: u64| Id::of(&n.to_le_bytes());
        let dir_meta = |n: u64| FileMeta {
            kind: Kind::Dir,
            mode: 0o755,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 0,
            dev: 0,
            id: tree(n),
            racy: false,
        };
        let change = |p: &str, m: FileMeta| IndexChange {
            path: p.as_bytes().to_vec(),
            meta: Some(m),
        };
        let base = vec![
            change("", dir_meta(1)),
            change("a", dir_meta(2)),
            change("a/b", dir_meta(3)),
            change("a/b/f", meta(4)),
            change("c", dir_meta(5)),
        ];
        let ids = |cat: &Catalog| -> Vec<(String, Id)> {
            cat.load_index(ws)
                .unwrap()
                .entries
                .into_iter()
                .filter(|(_, m)| m.kind == Kind::Dir)
                .map(|(p, m)| (String::from_utf8(p).unwrap(), m.id))
                .collect()
        };
        let named = |v: &[(&str, Id)]| -> Vec<(String, Id)> {
            v.iter().map(|(p, id)| (p.to_string(), *id)).collect()
        };
        cat.write_index_base(ws, &base).unwrap();
        assert_eq!(
            ids(&cat),
            named(&[
                ("", tree(1)),
                ("a", tree(2)),
                ("a/b", tree(3)),
                ("c", tree(5))
            ])
        );
        cat.append_index(ws, &[change("a/b/g", meta(6))]).unwrap();
        let zero = Id::default();
        assert_eq!(
            ids(&cat),
            named(&[("", zero), ("a", zero), ("a/b", zero), ("c", tree(5))])
        );
        cat.kv
            .write(|w| put_index_base(&mut w.open_table(INDEX_SEGMENTS)?, ws, &base))
            .unwrap();
        assert_eq!(
            ids(&cat),
            named(&[("", zero), ("a", zero), ("a/b", zero), ("c", zero)])
        );
    }

    fn changes(n: u64) -> Vec<IndexChange> {
        (0..n)
            .map(|i| {
                let path = format!("src/module_{}/file_{i}.rs", i / 25).into_bytes();
                IndexChange {
                    path,
                    meta: (!i.is_multiple_of(11)).then(|| meta(i)),
                }
            })
            .collect()
    }

    fn blobs(n: u64) -> Vec<(Id, Loc)> {
        (0..n)
            .map(|i| {
                let loc = Loc {
                    pack: 1 + (i / 1000) as u32,
                    offset: i * 97,
                    len: 40 + i % 50,
                    raw_len: 60 + i % 70,
                    flags: (i % 3) as u8,
                };
                (Id::of(&i.to_be_bytes()), loc)
            })
            .collect()
    }

    #[test]
    fn segments_of_this_version_read_back_and_are_smaller_than_version_1() {
        let c = changes(8192);
        let seg = index_segment(Segment::Base, &c);
        assert_eq!(
            decode_index_segment(&seg).unwrap(),
            (Segment::Base, c.clone())
        );
        let mut v1 = vec![SEGMENT_V1, 0];
        v1.extend_from_slice(&bitcode::encode(&c));
        assert!(seg.len() * 2 < v1.len(), "{} vs {}", seg.len(), v1.len());

        let b = blobs(8192);
        let seg = blob_segment(&b);
        assert_eq!(decode_blob_segment(&seg).unwrap(), b);
        assert!(seg.len() < 1 + b.len() * 30, "{} bytes", seg.len());
    }

    /// Segments written while a change was a `(path, meta)` pair still read as changes.
    #[test]
    fn a_change_encodes_as_the_pair_it_was() {
        let c = changes(300);
        let pairs: Vec<(Vec<u8>, Option<FileMeta>)> =
            c.iter().map(|x| (x.path.clone(), x.meta)).collect();
        assert_eq!(bitcode::encode(&c), bitcode::encode(&pairs));
    }

    /// Segments written before version 2 (format rule 6) still read.
    #[test]
    fn version_1_segments_read() {
        let c = changes(300);
        let mut v1 = vec![SEGMENT_V1, 0];
        v1.extend_from_slice(&bitcode::encode(&c));
        assert_eq!(decode_index_segment(&v1).unwrap(), (Segment::Journal, c));

        let b = blobs(300);
        let mut v1 = vec![SEGMENT_V1];
        for (id, loc) in &b {
            v1.extend_from_slice(id.as_bytes());
            v1.extend_from_slice(&loc.encode());
        }
        assert_eq!(decode_blob_segment(&v1).unwrap(), b);
    }

    #[test]
    fn a_damaged_segment_is_an_error_not_a_panic_or_a_huge_allocation() {
        let seg = index_segment(Segment::Journal, &changes(100));
        let mut huge = seg.clone();
        huge[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_index_segment(&huge),
            Err(Error::Corrupt(_))
        ));
        for cut in [3, seg.len() / 2, seg.len() - 1] {
            assert!(decode_index_segment(&seg[..cut]).is_err(), "cut at {cut}");
        }
        let blob = blob_segment(&blobs(100));
        for cut in [1, blob.len() / 2, blob.len() - 1] {
            assert!(decode_blob_segment(&blob[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_blob_segment(&[9, 1, 2]).is_err());
        assert!(decode_index_segment(&[9, 1, 2]).is_err());
    }
}
