//! The catalog: sled trees for the blob index, packs, workspaces, snapshots and warm file
//! indexes.
//!
//! # Format
//! 1. `blob_segments`: sequence number (8 bytes big-endian) → a version byte, then entries of
//!    a 16-byte id followed by its 29-byte [`Loc`]. One segment per committed chunk of objects;
//!    a later segment's entry for an id wins. The whole index is loaded into memory when the
//!    store opens: looking an id up never touches sled, and a cold save writes a few large
//!    values instead of one sled entry per object.
//! 2. `packs`: pack number (4 bytes big-endian) → committed length (8 bytes little-endian).
//!    Blob index entries that reach past their pack's committed length are the remains of an
//!    interrupted commit and are ignored.
//! 3. `workspaces`: workspace id (8 bytes BE) → bitcode [`WorkspaceRecord`]; `ws_paths`: the
//!    workspace's absolute path bytes → its id.
//! 4. `snapshots`: snapshot id (8 bytes BE) → bitcode [`SnapshotRecord`]; `ws_snaps`: workspace
//!    id, creation time in µs and snapshot id (8 bytes BE each) → empty, so a workspace's
//!    snapshots list in time order by a prefix scan.
//! 5. `index_segments`: workspace id (8 bytes BE), a sequence number (8 bytes BE) → bitcode
//!    list of (relative path, [`FileMeta`] or none for a removed path): the persisted warm
//!    index, as a base of whole-index segments followed by journal segments, each applied in
//!    order. When the journal outgrows a quarter of the base, it is folded into a new base.
//! 6. Workspace and snapshot records are encoded as `records` says (a version byte, then
//!    the body). Blob and warm-index segments start with [`SEGMENT_VERSION`].
//! 7. Stores written before segments existed keep one `blobs` entry per object and one `files`
//!    entry per path; opening such a store moves them into segments once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use super::pack::Loc;
use super::records;
use super::{Id, Kind};
use crate::error::{Error, Result};

/// The version byte in front of blob and warm-index segments (format rule 6).
pub const SEGMENT_VERSION: u8 = 1;

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
        Some((&SEGMENT_VERSION, rest)) => {
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

/// The `ws_snaps` key of a snapshot (format rule 4).
fn ws_snap_key(s: &SnapshotRecord) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&be(s.workspace));
    key[8..16].copy_from_slice(&be(s.created_us));
    key[16..].copy_from_slice(&be(s.id));
    key
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

/// The catalog's trees.
#[derive(Debug)]
pub struct Catalog {
    db: sled::Db,
    blob_segments: sled::Tree,
    next_blob_segment: AtomicU64,
    packs: sled::Tree,
    workspaces: sled::Tree,
    ws_paths: sled::Tree,
    snapshots: sled::Tree,
    ws_snaps: sled::Tree,
    index_segments: sled::Tree,
}

impl Catalog {
    /// Opens the trees, moving a store of the per-entry format into segments (format rule 7).
    pub fn open(db: &sled::Db) -> Result<Catalog> {
        let blob_segments = db.open_tree("blob_segments")?;
        let next = blob_segments
            .last()?
            .map(|(k, _)| u64_at(&k, 0) + 1)
            .unwrap_or(0);
        let cat = Catalog {
            db: db.clone(),
            blob_segments,
            next_blob_segment: AtomicU64::new(next),
            packs: db.open_tree("packs")?,
            workspaces: db.open_tree("workspaces")?,
            ws_paths: db.open_tree("ws_paths")?,
            snapshots: db.open_tree("snapshots")?,
            ws_snaps: db.open_tree("ws_snaps")?,
            index_segments: db.open_tree("index_segments")?,
        };
        cat.migrate_per_entry_trees()?;
        Ok(cat)
    }

    fn migrate_per_entry_trees(&self) -> Result<()> {
        let names = self.db.tree_names();
        if names.iter().any(|n| n.as_ref() == b"blobs") {
            let old = self.db.open_tree("blobs")?;
            let mut entries = Vec::new();
            for kv in old.iter() {
                let (k, v) = kv?;
                if let (Ok(raw), Some(loc)) = (<[u8; 16]>::try_from(k.as_ref()), Loc::decode(&v)) {
                    entries.push((Id::from_bytes(raw), loc));
                }
            }
            tracing::info!(
                objects = entries.len(),
                "moving the blob index into segments"
            );
            self.append_blob_segments(&entries)?;
            self.db.flush()?;
            self.db.drop_tree("blobs")?;
        }
        if names.iter().any(|n| n.as_ref() == b"files") {
            let old = self.db.open_tree("files")?;
            let mut per_ws: HashMap<u64, Vec<IndexChange>> = HashMap::new();
            for kv in old.iter() {
                let (k, v) = kv?;
                // A bad record only costs that file a re-read.
                match decode_v1::<FileMeta>("file", &v) {
                    Ok(meta) if k.len() >= 8 => per_ws
                        .entry(u64_at(&k, 0))
                        .or_default()
                        .push((k[8..].to_vec(), Some(meta))),
                    _ => tracing::warn!("skipping a malformed warm index record"),
                }
            }
            for (ws, entries) in per_ws {
                self.write_index_base(ws, &entries)?;
            }
            self.db.flush()?;
            self.db.drop_tree("files")?;
        }
        Ok(())
    }

    // ---- blob index

    /// The committed blob index, without entries that reach past their pack's committed
    /// length (format rule 2), and how many such entries were left out.
    pub fn load_blob_index(&self) -> Result<(HashMap<Id, Loc>, u64)> {
        let lengths: HashMap<u32, u64> = self.pack_lengths()?.into_iter().collect();
        let mut index = HashMap::new();
        let mut ignored = 0u64;
        for kv in self.blob_segments.iter() {
            let (_, v) = kv?;
            let body = match v.split_first() {
                Some((&SEGMENT_VERSION, body)) if body.len() % BLOB_ENTRY == 0 => body,
                _ => return Err(Error::Corrupt("a blob index segment is malformed".into())),
            };
            for entry in body.chunks_exact(BLOB_ENTRY) {
                let (id, loc) = entry.split_at(16);
                let (Ok(id), Some(loc)) = (<[u8; 16]>::try_from(id), Loc::decode(loc)) else {
                    return Err(Error::Corrupt("a blob index entry is malformed".into()));
                };
                if lengths.get(&loc.pack).is_some_and(|&len| loc.end() <= len) {
                    index.insert(Id::from_bytes(id), loc);
                } else {
                    ignored += 1;
                }
            }
        }
        if ignored > 0 {
            tracing::info!(
                ignored,
                "blob index entries of an interrupted commit ignored"
            );
        }
        Ok((index, ignored))
    }

    /// Appends entries to the blob index (visible once their packs' lengths are raised).
    pub fn append_blob_segments(&self, entries: &[(Id, Loc)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for chunk in entries.chunks(SEGMENT_ENTRIES) {
            let seq = self.next_blob_segment.fetch_add(1, Ordering::SeqCst);
            batch.insert(&be(seq), blob_segment(chunk));
        }
        self.blob_segments.apply_batch(batch)?;
        Ok(())
    }

    /// Replaces the whole blob index by `entries`, atomically.
    pub fn rewrite_blob_index(&self, entries: &[(Id, Loc)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for k in self.blob_segments.iter().keys() {
            batch.remove(k?);
        }
        for chunk in entries.chunks(SEGMENT_ENTRIES) {
            let seq = self.next_blob_segment.fetch_add(1, Ordering::SeqCst);
            batch.insert(&be(seq), blob_segment(chunk));
        }
        self.blob_segments.apply_batch(batch)?;
        Ok(())
    }

    // ---- packs

    /// (pack, committed length) of every pack.
    pub fn pack_lengths(&self) -> Result<Vec<(u32, u64)>> {
        let mut out = Vec::new();
        for kv in self.packs.iter() {
            let (k, v) = kv?;
            let no = k
                .as_ref()
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| Error::Corrupt("pack key".into()))?;
            let len = v
                .as_ref()
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| Error::Corrupt("pack length".into()))?;
            out.push((no, len));
        }
        Ok(out)
    }

    /// Raises packs' committed lengths (never lowers them: commits may race).
    pub fn raise_pack_lengths(&self, ends: &HashMap<u32, u64>) -> Result<()> {
        for (no, end) in ends {
            self.packs.fetch_and_update(no.to_be_bytes(), |old| {
                let old = old
                    .and_then(|o| o.try_into().ok())
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                Some(old.max(*end).to_le_bytes().to_vec())
            })?;
        }
        Ok(())
    }

    /// Sets a pack's committed length exactly (after it was rewritten).
    pub fn set_pack_length(&self, no: u32, len: u64) -> Result<()> {
        self.packs.insert(no.to_be_bytes(), &len.to_le_bytes())?;
        Ok(())
    }

    /// Forgets a pack.
    pub fn remove_pack(&self, no: u32) -> Result<()> {
        self.packs.remove(no.to_be_bytes())?;
        Ok(())
    }

    // ---- workspaces

    /// A new unique id.
    pub fn new_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()? + 1)
    }

    /// Inserts or replaces a workspace.
    pub fn put_workspace(&self, ws: &WorkspaceRecord) -> Result<()> {
        self.workspaces.insert(be(ws.id), records::encode(ws))?;
        self.ws_paths.insert(&ws.path, &be(ws.id))?;
        Ok(())
    }

    /// A workspace by id.
    pub fn workspace(&self, id: u64) -> Result<Option<WorkspaceRecord>> {
        self.workspaces
            .get(be(id))?
            .map(|v| records::decode(&v))
            .transpose()
    }

    /// A workspace by its absolute path.
    pub fn workspace_by_path(&self, path: &[u8]) -> Result<Option<WorkspaceRecord>> {
        match self.ws_paths.get(path)? {
            Some(id) => self.workspace(u64_at(&id, 0)),
            None => Ok(None),
        }
    }

    /// Every workspace.
    pub fn workspaces(&self) -> Result<Vec<WorkspaceRecord>> {
        self.workspaces
            .iter()
            .values()
            .map(|v| records::decode(&v?))
            .collect()
    }

    // ---- snapshots

    /// Inserts or replaces a snapshot.
    pub fn put_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        self.snapshots.insert(be(s.id), records::encode(s))?;
        self.ws_snaps.insert(ws_snap_key(s), &[])?;
        Ok(())
    }

    /// A snapshot by id.
    pub fn snapshot(&self, id: u64) -> Result<Option<SnapshotRecord>> {
        self.snapshots
            .get(be(id))?
            .map(|v| records::decode(&v))
            .transpose()
    }

    /// Removes a snapshot's record (its data goes at the next garbage collection).
    pub fn remove_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        self.ws_snaps.remove(ws_snap_key(s))?;
        self.snapshots.remove(be(s.id))?;
        Ok(())
    }

    /// Snapshot ids of a workspace, newest first, created at or before `before_us`.
    pub fn snapshot_ids(
        &self,
        ws: u64,
        before_us: Option<u64>,
    ) -> impl Iterator<Item = Result<(u64, u64)>> + '_ {
        let mut end = be(ws).to_vec();
        match before_us {
            Some(t) => end.extend_from_slice(&be(t.saturating_add(1))),
            None => end.extend_from_slice(&[0xff; 16]),
        }
        self.ws_snaps.range(be(ws).to_vec()..end).rev().map(|kv| {
            let (k, _) = kv?;
            Ok((u64_at(&k, 8), u64_at(&k, 16)))
        })
    }

    /// A workspace's snapshots, newest first.
    pub fn snapshots_of(
        &self,
        ws: u64,
        before_us: Option<u64>,
        limit: usize,
    ) -> Result<Vec<SnapshotRecord>> {
        let mut out = Vec::new();
        for item in self.snapshot_ids(ws, before_us).take(limit) {
            let (_, id) = item?;
            if let Some(s) = self.snapshot(id)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// A workspace's newest snapshot.
    pub fn latest(&self, ws: u64) -> Result<Option<SnapshotRecord>> {
        Ok(self.snapshots_of(ws, None, 1)?.pop())
    }

    /// Every snapshot in the store.
    pub fn all_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        self.snapshots
            .iter()
            .values()
            .map(|v| records::decode(&v?))
            .collect()
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
        let mut out = Vec::new();
        for v in self.snapshots.range(be(lo)..=be(hi)).values() {
            let s: SnapshotRecord = records::decode(&v?)?;
            if keep(&s) {
                out.push(s);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    // ---- warm file index

    fn index_key(ws: u64, seq: u64) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&be(ws));
        k[8..].copy_from_slice(&be(seq));
        k
    }

    /// The persisted warm index of a workspace in path order, and the number of journal
    /// entries on top of its base.
    pub fn load_index(&self, ws: u64) -> Result<LoadedIndex> {
        let mut map: std::collections::BTreeMap<Vec<u8>, FileMeta> = Default::default();
        let mut journal = 0;
        for kv in self.index_segments.scan_prefix(be(ws)) {
            let (_, v) = kv?;
            let (base, changes) = decode_index_segment(&v)?;
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
        Ok((map.into_iter().collect(), journal))
    }

    /// Appends changes to a workspace's persisted warm index.
    pub fn append_index(&self, ws: u64, changes: &[IndexChange]) -> Result<()> {
        let mut batch = sled::Batch::default();
        let seqs = self.next_index_seq(ws)?..;
        for (seq, chunk) in seqs.zip(changes.chunks(SEGMENT_ENTRIES)) {
            batch.insert(&Self::index_key(ws, seq), index_segment(false, chunk));
        }
        self.index_segments.apply_batch(batch)?;
        Ok(())
    }

    /// Replaces a workspace's persisted warm index by `entries`, atomically.
    pub fn write_index_base(&self, ws: u64, entries: &[IndexChange]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for k in self.index_segments.scan_prefix(be(ws)).keys() {
            batch.remove(k?);
        }
        let seqs = self.next_index_seq(ws)?..;
        for (seq, chunk) in seqs.zip(entries.chunks(SEGMENT_ENTRIES)) {
            batch.insert(&Self::index_key(ws, seq), index_segment(true, chunk));
        }
        self.index_segments.apply_batch(batch)?;
        Ok(())
    }

    fn next_index_seq(&self, ws: u64) -> Result<u64> {
        Ok(self
            .index_segments
            .scan_prefix(be(ws))
            .keys()
            .next_back()
            .transpose()?
            .map(|k| u64_at(&k, 8) + 1)
            .unwrap_or(0))
    }

    /// Content ids named by the persisted warm indexes (kept by garbage collection). Entries
    /// a later segment replaced name nothing.
    pub fn index_ids(&self) -> Result<HashSet<Id>> {
        let mut out = HashSet::new();
        let mut ws = None;
        let mut current: HashMap<Vec<u8>, Id> = HashMap::new();
        for kv in self.index_segments.iter() {
            let (k, v) = kv?;
            let seg_ws = u64_at(&k, 0);
            if ws != Some(seg_ws) {
                out.extend(current.drain().map(|(_, id)| id));
                ws = Some(seg_ws);
            }
            let (_, changes) = decode_index_segment(&v)?;
            for (path, meta) in changes {
                match meta.filter(|m| m.kind != Kind::Dir) {
                    Some(m) => current.insert(path, m.id),
                    None => current.remove(&path),
                };
            }
        }
        out.extend(current.into_values());
        Ok(out)
    }
}

fn blob_segment(entries: &[(Id, Loc)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + entries.len() * BLOB_ENTRY);
    out.push(SEGMENT_VERSION);
    for (id, loc) in entries {
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&loc.encode());
    }
    out
}

/// A warm-index segment: the version byte, 1 for a base segment (0 for journal), the changes.
fn index_segment(base: bool, changes: &[IndexChange]) -> Vec<u8> {
    let mut out = vec![SEGMENT_VERSION, u8::from(base)];
    out.extend_from_slice(&bitcode::encode(changes));
    out
}

fn decode_index_segment(bytes: &[u8]) -> Result<(bool, Vec<IndexChange>)> {
    match bytes {
        [SEGMENT_VERSION, base @ (0 | 1), rest @ ..] => bitcode::decode(rest)
            .map(|changes| (*base == 1, changes))
            .map_err(|e| Error::Corrupt(format!("catalog warm index segment: {e}"))),
        _ => Err(Error::Corrupt(
            "catalog warm index segment has an unknown format version".into(),
        )),
    }
}
