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

mod kv;
mod migrate;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{ReadableTable, TableDefinition, TableHandle};

use self::kv::Kv;

use super::pack::Loc;
use super::records;
use super::{Id, Kind};
use crate::error::{Error, Result};

/// The catalog's file in the data directory (format rule 9).
pub const FILE: &str = "catalog.redb";

/// The version byte in front of blob and warm-index segments written now (format rule 6).
pub const SEGMENT_VERSION: u8 = 2;
/// The first segment version (format rule 6), also that of the per-entry records of rule 7.
pub const SEGMENT_V1: u8 = 1;
/// The largest warm-index segment a catalog may claim to decompress to: 8,192 entries of
/// paths up to 4 KiB, with room to spare. A larger claim is corruption, not an allocation.
const MAX_INDEX_SEGMENT: usize = 64 << 20;

/// A version 2 blob index segment (format rule 6): its entries' fields, column by column.
#[derive(Debug, bitcode::Encode, bitcode::Decode)]
struct BlobColumns {
    ids: Vec<[u8; 16]>,
    packs: Vec<u32>,
    offsets: Vec<u64>,
    lens: Vec<u64>,
    raw_lens: Vec<u64>,
    flags: Vec<u8>,
}

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
    /// Content id (files, symlinks); unused for directories.
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

/// A `ws_snaps` key (format rule 4).
fn snap_key(ws: u64, created_us: u64, id: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&be(ws));
    key[8..16].copy_from_slice(&be(created_us));
    key[16..].copy_from_slice(&be(id));
    key
}

/// The `ws_snaps` key of a snapshot.
fn ws_snap_key(s: &SnapshotRecord) -> [u8; 24] {
    snap_key(s.workspace, s.created_us, s.id)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or_default()
}

/// Objects per blob index segment, and index entries per warm-index segment.
const SEGMENT_ENTRIES: usize = 8192;
/// Bytes of one blob index entry: id and [`Loc`].
const BLOB_ENTRY: usize = 16 + Loc::ENCODED;

/// A warm-index change: a path's new entry, or none when it is gone.
pub type IndexChange = (Vec<u8>, Option<FileMeta>);
/// A persisted warm index: (relative path, entry) in path order, and the number of journal
/// entries it was rebuilt from on top of its base.
pub type LoadedIndex = (Vec<(Vec<u8>, FileMeta)>, usize);

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
                let mut per_ws: HashMap<u64, Vec<IndexChange>> = HashMap::new();
                for kv in w.open_table(OLD_FILES)?.iter()? {
                    let (k, v) = kv?;
                    let k = k.value();
                    // A bad record only costs that file a re-read.
                    match decode_v1::<FileMeta>("file", v.value()) {
                        Ok(meta) if k.len() >= 8 => per_ws
                            .entry(u64_at(k, 0))
                            .or_default()
                            .push((k[8..].to_vec(), Some(meta))),
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

    /// The committed blob index, without entries that reach past their pack's committed
    /// length (format rule 2), and how many such entries were left out.
    pub fn load_blob_index(&self) -> Result<(HashMap<Id, Loc>, u64)> {
        let lengths: HashMap<u32, u64> = self.pack_lengths()?.into_iter().collect();
        let mut index = HashMap::new();
        let mut ignored = 0u64;
        self.kv.read(|r| {
            for kv in r.open_table(BLOB_SEGMENTS)?.iter()? {
                let (_, v) = kv?;
                for (id, loc) in decode_blob_segment(v.value())? {
                    if lengths.get(&loc.pack).is_some_and(|&len| loc.end() <= len) {
                        index.insert(id, loc);
                    } else {
                        ignored += 1;
                    }
                }
            }
            Ok(())
        })?;
        if ignored > 0 {
            tracing::info!(
                ignored,
                "blob index entries of an interrupted commit ignored"
            );
        }
        Ok((index, ignored))
    }

    fn put_blob_segments(&self, t: &mut Table<'_>, entries: &[(Id, Loc)]) -> Result<()> {
        for chunk in entries.chunks(SEGMENT_ENTRIES) {
            let seq = self.next_blob_segment.fetch_add(1, Ordering::SeqCst);
            t.insert(be(seq).as_slice(), blob_segment(chunk).as_slice())?;
        }
        Ok(())
    }

    /// Appends entries to the blob index (visible once their packs' lengths are raised).
    pub fn append_blob_segments(&self, entries: &[(Id, Loc)]) -> Result<()> {
        self.kv
            .write(|w| self.put_blob_segments(&mut w.open_table(BLOB_SEGMENTS)?, entries))
    }

    /// Replaces the whole blob index by `entries`, atomically.
    pub fn rewrite_blob_index(&self, entries: &[(Id, Loc)]) -> Result<()> {
        self.kv.write(|w| {
            let mut t = w.open_table(BLOB_SEGMENTS)?;
            t.retain(|_, _| false)?;
            self.put_blob_segments(&mut t, entries)
        })
    }

    // ---- packs

    /// (pack, committed length) of every pack.
    pub fn pack_lengths(&self) -> Result<Vec<(u32, u64)>> {
        self.kv.read(|r| {
            let mut out = Vec::new();
            for kv in r.open_table(PACKS)?.iter()? {
                let (k, v) = kv?;
                let no = k
                    .value()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| Error::Corrupt("pack key".into()))?;
                let len = v
                    .value()
                    .try_into()
                    .map(u64::from_le_bytes)
                    .map_err(|_| Error::Corrupt("pack length".into()))?;
                out.push((no, len));
            }
            Ok(out)
        })
    }

    /// Raises packs' committed lengths (never lowers them: commits may race).
    pub fn raise_pack_lengths(&self, ends: &HashMap<u32, u64>) -> Result<()> {
        self.kv.write(|w| {
            let mut t = w.open_table(PACKS)?;
            for (no, end) in ends {
                let key = no.to_be_bytes();
                let old = t
                    .get(key.as_slice())?
                    .and_then(|o| o.value().try_into().ok())
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                if *end > old {
                    t.insert(key.as_slice(), end.to_le_bytes().as_slice())?;
                }
            }
            Ok(())
        })
    }

    /// Sets a pack's committed length exactly (after it was rewritten).
    pub fn set_pack_length(&self, no: u32, len: u64) -> Result<()> {
        self.kv.write(|w| {
            w.open_table(PACKS)?
                .insert(no.to_be_bytes().as_slice(), len.to_le_bytes().as_slice())?;
            Ok(())
        })
    }

    /// Forgets a pack.
    pub fn remove_pack(&self, no: u32) -> Result<()> {
        self.kv.write(|w| {
            w.open_table(PACKS)?.remove(no.to_be_bytes().as_slice())?;
            Ok(())
        })
    }

    // ---- workspaces

    /// A new unique id, larger than every id given out before (format rule 8).
    pub fn new_id(&self) -> Result<u64> {
        self.kv.write(|w| {
            let mut t = w.open_table(META)?;
            let id = t
                .get(NEXT_ID)?
                .map(|v| u64_at(v.value(), 0))
                .unwrap_or(0)
                .max(1);
            t.insert(NEXT_ID, be(id + 1).as_slice())?;
            Ok(id)
        })
    }

    /// Inserts or replaces a workspace.
    pub fn put_workspace(&self, ws: &WorkspaceRecord) -> Result<()> {
        self.kv.write(|w| {
            w.open_table(WORKSPACES)?
                .insert(be(ws.id).as_slice(), records::encode(ws).as_slice())?;
            w.open_table(WS_PATHS)?
                .insert(ws.path.as_slice(), be(ws.id).as_slice())?;
            Ok(())
        })
    }

    /// A workspace by id.
    pub fn workspace(&self, id: u64) -> Result<Option<WorkspaceRecord>> {
        self.kv.read(|r| {
            r.open_table(WORKSPACES)?
                .get(be(id).as_slice())?
                .map(|v| records::decode(v.value()))
                .transpose()
        })
    }

    /// A workspace by its absolute path.
    pub fn workspace_by_path(&self, path: &[u8]) -> Result<Option<WorkspaceRecord>> {
        self.kv.read(|r| {
            let Some(id) = r.open_table(WS_PATHS)?.get(path)? else {
                return Ok(None);
            };
            r.open_table(WORKSPACES)?
                .get(be(u64_at(id.value(), 0)).as_slice())?
                .map(|v| records::decode(v.value()))
                .transpose()
        })
    }

    /// Every workspace.
    pub fn workspaces(&self) -> Result<Vec<WorkspaceRecord>> {
        self.kv.read(|r| {
            let mut out = Vec::new();
            for kv in r.open_table(WORKSPACES)?.iter()? {
                out.push(records::decode(kv?.1.value())?);
            }
            Ok(out)
        })
    }

    // ---- snapshots

    /// Inserts or replaces a snapshot.
    pub fn put_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        self.kv.write(|w| {
            w.open_table(SNAPSHOTS)?
                .insert(be(s.id).as_slice(), records::encode(s).as_slice())?;
            w.open_table(WS_SNAPS)?
                .insert(ws_snap_key(s).as_slice(), [].as_slice())?;
            Ok(())
        })
    }

    /// A snapshot by id.
    pub fn snapshot(&self, id: u64) -> Result<Option<SnapshotRecord>> {
        self.kv.read(|r| {
            r.open_table(SNAPSHOTS)?
                .get(be(id).as_slice())?
                .map(|v| records::decode(v.value()))
                .transpose()
        })
    }

    /// Removes a snapshot's record (its data goes at the next garbage collection).
    pub fn remove_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        self.kv.write(|w| {
            w.open_table(WS_SNAPS)?.remove(ws_snap_key(s).as_slice())?;
            w.open_table(SNAPSHOTS)?.remove(be(s.id).as_slice())?;
            Ok(())
        })
    }

    /// (creation time in µs, snapshot id) of a workspace's snapshots created at or before
    /// `before_us`, newest first, at most `limit`.
    fn snapshot_keys(
        &self,
        ws: u64,
        before_us: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>> {
        let lo = snap_key(ws, 0, 0);
        let hi = snap_key(ws, before_us.unwrap_or(u64::MAX), u64::MAX);
        self.kv.read(|r| {
            let t = r.open_table(WS_SNAPS)?;
            let mut out = Vec::new();
            for kv in t.range(lo.as_slice()..=hi.as_slice())?.rev().take(limit) {
                let k = kv?.0;
                out.push((u64_at(k.value(), 8), u64_at(k.value(), 16)));
            }
            Ok(out)
        })
    }

    /// Snapshot ids of a workspace, newest first, created at or before `before_us`.
    pub fn snapshot_ids(
        &self,
        ws: u64,
        before_us: Option<u64>,
    ) -> impl Iterator<Item = Result<(u64, u64)>> + '_ {
        // Read at once: no transaction stays open while the caller reads each record.
        let (keys, err) = match self.snapshot_keys(ws, before_us, usize::MAX) {
            Ok(keys) => (keys, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        err.map(Err).into_iter().chain(keys.into_iter().map(Ok))
    }

    /// A workspace's snapshots, newest first.
    pub fn snapshots_of(
        &self,
        ws: u64,
        before_us: Option<u64>,
        limit: usize,
    ) -> Result<Vec<SnapshotRecord>> {
        let lo = snap_key(ws, 0, 0);
        let hi = snap_key(ws, before_us.unwrap_or(u64::MAX), u64::MAX);
        self.kv.read(|r| {
            let keys = r.open_table(WS_SNAPS)?;
            let snapshots = r.open_table(SNAPSHOTS)?;
            let mut out = Vec::new();
            for kv in keys.range(lo.as_slice()..=hi.as_slice())?.rev() {
                if out.len() >= limit {
                    break;
                }
                let k = kv?.0;
                if let Some(v) = snapshots.get(be(u64_at(k.value(), 16)).as_slice())? {
                    out.push(records::decode(v.value())?);
                }
            }
            Ok(out)
        })
    }

    /// A workspace's newest snapshot.
    pub fn latest(&self, ws: u64) -> Result<Option<SnapshotRecord>> {
        Ok(self.snapshots_of(ws, None, 1)?.pop())
    }

    /// Every snapshot in the store.
    pub fn all_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        self.kv.read(|r| {
            let mut out = Vec::new();
            for kv in r.open_table(SNAPSHOTS)?.iter()? {
                out.push(records::decode(kv?.1.value())?);
            }
            Ok(out)
        })
    }

    /// Snapshots of workspace `ws` whose hex id starts with `prefix` (at most `limit`).
    pub fn snapshots_with_prefix(
        &self,
        ws: u64,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<SnapshotRecord>> {
        self.prefix_scan(prefix, limit, |s| s.workspace == ws)
    }

    /// Snapshots of any workspace whose hex id starts with `prefix` (at most `limit`).
    pub fn snapshots_with_prefix_anywhere(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<SnapshotRecord>> {
        self.prefix_scan(prefix, limit, |_| true)
    }

    fn prefix_scan(
        &self,
        prefix: &str,
        limit: usize,
        keep: impl Fn(&SnapshotRecord) -> bool,
    ) -> Result<Vec<SnapshotRecord>> {
        if prefix.is_empty() || prefix.len() > 16 || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Ok(Vec::new());
        }
        let lo = u64::from_str_radix(&format!("{prefix:0<16}"), 16).unwrap_or(0);
        let hi = u64::from_str_radix(&format!("{prefix:f<16}"), 16).unwrap_or(u64::MAX);
        let (lo, hi) = (be(lo), be(hi));
        self.kv.read(|r| {
            let mut out = Vec::new();
            for kv in r
                .open_table(SNAPSHOTS)?
                .range(lo.as_slice()..=hi.as_slice())?
            {
                let s: SnapshotRecord = records::decode(kv?.1.value())?;
                if keep(&s) {
                    out.push(s);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    // ---- warm file index

    /// The persisted warm index of a workspace in path order, and the number of journal
    /// entries on top of its base.
    pub fn load_index(&self, ws: u64) -> Result<LoadedIndex> {
        let mut map: std::collections::BTreeMap<Vec<u8>, FileMeta> = Default::default();
        let mut journal = 0;
        let (lo, hi) = (index_key(ws, 0), index_key(ws, u64::MAX));
        self.kv.read(|r| {
            for kv in r
                .open_table(INDEX_SEGMENTS)?
                .range(lo.as_slice()..=hi.as_slice())?
            {
                let (base, changes) = decode_index_segment(kv?.1.value())?;
                if !base {
                    journal += changes.len();
                }
                for (path, meta) in changes {
                    match meta {
                        Some(m) => map.insert(path, m),
                        None => map.remove(&path),
                    };
                }
            }
            Ok(())
        })?;
        Ok((map.into_iter().collect(), journal))
    }

    /// Appends changes to a workspace's persisted warm index.
    pub fn append_index(&self, ws: u64, changes: &[IndexChange]) -> Result<()> {
        self.kv.write(|w| {
            let mut t = w.open_table(INDEX_SEGMENTS)?;
            let seqs = next_index_seq(&t, ws)?..;
            for (seq, chunk) in seqs.zip(changes.chunks(SEGMENT_ENTRIES)) {
                t.insert(
                    index_key(ws, seq).as_slice(),
                    index_segment(false, chunk).as_slice(),
                )?;
            }
            Ok(())
        })
    }

    /// Replaces a workspace's persisted warm index by `entries`, atomically.
    pub fn write_index_base(&self, ws: u64, entries: &[IndexChange]) -> Result<()> {
        self.kv
            .write(|w| put_index_base(&mut w.open_table(INDEX_SEGMENTS)?, ws, entries))
    }

    /// Content ids named by the persisted warm indexes (kept by garbage collection). Entries
    /// a later segment replaced name nothing.
    pub fn index_ids(&self) -> Result<HashSet<Id>> {
        let mut out = HashSet::new();
        let mut ws = None;
        let mut current: HashMap<Vec<u8>, Id> = HashMap::new();
        self.kv.read(|r| {
            for kv in r.open_table(INDEX_SEGMENTS)?.iter()? {
                let (k, v) = kv?;
                let seg_ws = u64_at(k.value(), 0);
                if ws != Some(seg_ws) {
                    out.extend(current.drain().map(|(_, id)| id));
                    ws = Some(seg_ws);
                }
                let (_, changes) = decode_index_segment(v.value())?;
                for (path, meta) in changes {
                    match meta.filter(|m| m.kind != Kind::Dir) {
                        Some(m) => current.insert(path, m.id),
                        None => current.remove(&path),
                    };
                }
            }
            Ok(())
        })?;
        out.extend(current.into_values());
        Ok(out)
    }
}

fn index_key(ws: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&be(ws));
    k[8..].copy_from_slice(&be(seq));
    k
}

fn next_index_seq(t: &Table<'_>, ws: u64) -> Result<u64> {
    let (lo, hi) = (index_key(ws, 0), index_key(ws, u64::MAX));
    let last = t
        .range(lo.as_slice()..=hi.as_slice())?
        .next_back()
        .transpose()?;
    Ok(last.map(|(k, _)| u64_at(k.value(), 8) + 1).unwrap_or(0))
}

fn put_index_base(t: &mut Table<'_>, ws: u64, entries: &[IndexChange]) -> Result<()> {
    let seqs = next_index_seq(t, ws)?..;
    let (lo, hi) = (index_key(ws, 0), index_key(ws, u64::MAX));
    t.retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)?;
    for (seq, chunk) in seqs.zip(entries.chunks(SEGMENT_ENTRIES)) {
        t.insert(
            index_key(ws, seq).as_slice(),
            index_segment(true, chunk).as_slice(),
        )?;
    }
    Ok(())
}

/// A blob index segment of the current version (format rule 6).
fn blob_segment(entries: &[(Id, Loc)]) -> Vec<u8> {
    let columns = BlobColumns {
        ids: entries.iter().map(|(id, _)| *id.as_bytes()).collect(),
        packs: entries.iter().map(|(_, l)| l.pack).collect(),
        offsets: entries.iter().map(|(_, l)| l.offset).collect(),
        lens: entries.iter().map(|(_, l)| l.len).collect(),
        raw_lens: entries.iter().map(|(_, l)| l.raw_len).collect(),
        flags: entries.iter().map(|(_, l)| l.flags).collect(),
    };
    let mut out = vec![SEGMENT_VERSION];
    out.extend_from_slice(&bitcode::encode(&columns));
    out
}

/// The entries of a blob index segment of any version (format rule 6).
fn decode_blob_segment(bytes: &[u8]) -> Result<Vec<(Id, Loc)>> {
    let malformed = || Error::Corrupt("a blob index segment is malformed".into());
    match bytes.split_first() {
        Some((&SEGMENT_V1, body)) if body.len() % BLOB_ENTRY == 0 => body
            .chunks_exact(BLOB_ENTRY)
            .map(|entry| {
                let (id, loc) = entry.split_at(16);
                match (<[u8; 16]>::try_from(id), Loc::decode(loc)) {
                    (Ok(id), Some(loc)) => Ok((Id::from_bytes(id), loc)),
                    _ => Err(Error::Corrupt("a blob index entry is malformed".into())),
                }
            })
            .collect(),
        Some((&SEGMENT_VERSION, body)) => {
            let c: BlobColumns = bitcode::decode(body).map_err(|_| malformed())?;
            let n = c.ids.len();
            if [
                c.packs.len(),
                c.offsets.len(),
                c.lens.len(),
                c.raw_lens.len(),
                c.flags.len(),
            ]
            .iter()
            .any(|&len| len != n)
            {
                return Err(malformed());
            }
            Ok((0..n)
                .map(|i| {
                    let loc = Loc {
                        pack: c.packs[i],
                        offset: c.offsets[i],
                        len: c.lens[i],
                        raw_len: c.raw_lens[i],
                        flags: c.flags[i],
                    };
                    (Id::from_bytes(c.ids[i]), loc)
                })
                .collect())
        }
        _ => Err(malformed()),
    }
}

/// A warm-index segment of the current version: the version byte, 1 for a base segment (0
/// for journal), the changes (format rule 6).
fn index_segment(base: bool, changes: &[IndexChange]) -> Vec<u8> {
    let mut out = vec![SEGMENT_VERSION, u8::from(base)];
    out.extend_from_slice(&lz4_flex::block::compress_prepend_size(&bitcode::encode(
        changes,
    )));
    out
}

/// A warm-index segment of any version (format rule 6).
fn decode_index_segment(bytes: &[u8]) -> Result<(bool, Vec<IndexChange>)> {
    let corrupt = |e: String| Error::Corrupt(format!("catalog warm index segment: {e}"));
    let (base, changes) = match bytes {
        [SEGMENT_V1, base @ (0 | 1), rest @ ..] => (
            *base,
            bitcode::decode(rest).map_err(|e| corrupt(e.to_string()))?,
        ),
        [SEGMENT_VERSION, base @ (0 | 1), rest @ ..] => {
            let claimed = rest
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map_or(usize::MAX, |b| u32::from_le_bytes(b) as usize);
            if claimed > MAX_INDEX_SEGMENT {
                return Err(corrupt(format!("claims {claimed} bytes")));
            }
            let plain = lz4_flex::block::decompress_size_prepended(rest)
                .map_err(|e| corrupt(e.to_string()))?;
            (
                *base,
                bitcode::decode(&plain).map_err(|e| corrupt(e.to_string()))?,
            )
        }
        _ => {
            return Err(Error::Corrupt(
                "catalog warm index segment has an unknown format version".into(),
            ));
        }
    };
    Ok((base == 1, changes))
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
    use super::*;

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

    fn changes(n: u64) -> Vec<IndexChange> {
        (0..n)
            .map(|i| {
                let path = format!("src/module_{}/file_{i}.rs", i / 25).into_bytes();
                (path, (!i.is_multiple_of(11)).then(|| meta(i)))
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
        let seg = index_segment(true, &c);
        assert_eq!(decode_index_segment(&seg).unwrap(), (true, c.clone()));
        let mut v1 = vec![SEGMENT_V1, 0];
        v1.extend_from_slice(&bitcode::encode(&c));
        assert!(seg.len() * 2 < v1.len(), "{} vs {}", seg.len(), v1.len());

        let b = blobs(8192);
        let seg = blob_segment(&b);
        assert_eq!(decode_blob_segment(&seg).unwrap(), b);
        assert!(seg.len() < 1 + b.len() * 30, "{} bytes", seg.len());
    }

    /// Segments written before version 2 (format rule 6) still read.
    #[test]
    fn version_1_segments_read() {
        let c = changes(300);
        let mut v1 = vec![SEGMENT_V1, 0];
        v1.extend_from_slice(&bitcode::encode(&c));
        assert_eq!(decode_index_segment(&v1).unwrap(), (false, c));

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
        let seg = index_segment(false, &changes(100));
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
