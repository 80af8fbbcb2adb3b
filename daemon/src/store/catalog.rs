//! The catalog: sled trees for the blob index, packs, workspaces, snapshots and warm file
//! indexes.
//!
//! # Format
//! 1. `blobs`: 16-byte id → [`Loc`](super::Loc) (29 bytes).
//! 2. `packs`: pack number (4 bytes big-endian) → committed length (8 bytes little-endian).
//! 3. `workspaces`: workspace id (8 bytes BE) → bitcode [`WorkspaceRecord`]; `ws_paths`: the
//!    workspace's absolute path bytes → its id.
//! 4. `snapshots`: snapshot id (8 bytes BE) → bitcode [`SnapshotRecord`]; `ws_snaps`: workspace
//!    id, creation time in µs and snapshot id (8 bytes BE each) → empty, so a workspace's
//!    snapshots list in time order by a prefix scan.
//! 5. `files`: workspace id (8 bytes BE) then the relative path bytes → bitcode [`FileMeta`]:
//!    the persisted warm index.
//! 6. Records start with a one-byte format version ([`RECORD_VERSION`]).

use std::collections::HashMap;

use super::{Id, Kind};
use crate::error::{Error, Result};

/// The version byte in front of every bitcode record.
pub const RECORD_VERSION: u8 = 1;

/// Why a snapshot was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
pub enum Trigger {
    /// By the daemon after changes settled.
    Auto,
    /// Asked for by a person or a script.
    Manual,
    /// The state just before a restore, so the restore can be undone.
    PreRestore,
}

impl Trigger {
    /// The lower-case name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Auto => "auto",
            Trigger::Manual => "manual",
            Trigger::PreRestore => "pre-restore",
        }
    }
}

/// A snapshot: a root tree plus metadata.
#[derive(Clone, Debug, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
pub struct SnapshotRecord {
    /// Unique id (shown as 16 hex digits).
    pub id: u64,
    /// The workspace it belongs to.
    pub workspace: u64,
    /// Creation time, µs since the Unix epoch; unique and increasing within a store.
    pub created_us: u64,
    /// The workspace's root tree.
    pub root: Id,
    /// The snapshot before it in the same workspace.
    pub parent: Option<u64>,
    /// Why it was taken.
    pub trigger: Trigger,
    /// A message from the user.
    pub message: String,
    /// Pinned snapshots are never removed by retention.
    pub pinned: bool,
    /// Files and symlinks in the tree.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Objects this snapshot added to the store.
    pub new_blobs: u64,
    /// Stored bytes this snapshot added.
    pub new_bytes: u64,
    /// Paths added since the parent.
    pub added: u64,
    /// Paths modified since the parent.
    pub modified: u64,
    /// Paths deleted since the parent.
    pub deleted: u64,
    /// Changes before it may have been seen only by a rescan (events lost, daemon down).
    pub rescan: bool,
    /// Problems met while saving (unreadable files skipped, …).
    pub warnings: Vec<String>,
    /// The git branch checked out (empty: none or detached).
    pub git_branch: String,
    /// The git HEAD commit (empty: not a git repository).
    pub git_head: String,
}

impl SnapshotRecord {
    /// The id as shown to people: 16 lowercase hex digits.
    pub fn hex_id(&self) -> String {
        format!("{:016x}", self.id)
    }
}

/// A watched (or once watched) folder.
#[derive(Clone, Debug, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
pub struct WorkspaceRecord {
    /// Unique id.
    pub id: u64,
    /// Absolute, canonical path bytes.
    pub path: Vec<u8>,
    /// Quiet period before an auto snapshot, ms.
    pub idle_ms: u64,
    /// Longest wait after the first unsaved change, ms.
    pub max_delay_ms: u64,
    /// Whether dependency and build folders are saved too.
    pub include_dependency_dirs: bool,
    /// When it was first watched, µs since the epoch.
    pub created_us: u64,
    /// Whether the daemon watches it (re-watched after a restart).
    pub watched: bool,
    /// Which automatic snapshots are kept.
    pub retention: crate::retention::Policy,
    /// A fired mass-change tripwire nobody acknowledged yet.
    pub tripwire: Option<TripwireRecord>,
}

/// A fired mass-change tripwire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
pub struct TripwireRecord {
    /// The snapshot taken just before the burst (pinned), if there was one.
    pub pinned: Option<u64>,
    /// Files deleted or rewritten when it fired.
    pub changed: u64,
    /// When it fired, µs since the epoch.
    pub fired_us: u64,
}

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

fn encode<T: bitcode::Encode>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    out.extend_from_slice(&bitcode::encode(value));
    out
}

fn decode<T: for<'a> bitcode::Decode<'a>>(what: &str, bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, rest)) => {
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

/// The catalog's trees.
#[derive(Debug, Clone)]
pub struct Catalog {
    db: sled::Db,
    /// id → Loc.
    pub blobs: sled::Tree,
    packs: sled::Tree,
    workspaces: sled::Tree,
    ws_paths: sled::Tree,
    snapshots: sled::Tree,
    ws_snaps: sled::Tree,
    /// Warm file indexes.
    pub files: sled::Tree,
}

impl Catalog {
    /// Opens the trees.
    pub fn open(db: &sled::Db) -> Result<Catalog> {
        Ok(Catalog {
            db: db.clone(),
            blobs: db.open_tree("blobs")?,
            packs: db.open_tree("packs")?,
            workspaces: db.open_tree("workspaces")?,
            ws_paths: db.open_tree("ws_paths")?,
            snapshots: db.open_tree("snapshots")?,
            ws_snaps: db.open_tree("ws_snaps")?,
            files: db.open_tree("files")?,
        })
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
        self.workspaces.insert(be(ws.id), encode(ws))?;
        self.ws_paths.insert(&ws.path, &be(ws.id))?;
        Ok(())
    }

    /// A workspace by id.
    pub fn workspace(&self, id: u64) -> Result<Option<WorkspaceRecord>> {
        self.workspaces
            .get(be(id))?
            .map(|v| decode("workspace", &v))
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
            .map(|v| decode("workspace", &v?))
            .collect()
    }

    // ---- snapshots

    /// Inserts or replaces a snapshot.
    pub fn put_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        self.snapshots.insert(be(s.id), encode(s))?;
        self.ws_snaps.insert(ws_snap_key(s), &[])?;
        Ok(())
    }

    /// A snapshot by id.
    pub fn snapshot(&self, id: u64) -> Result<Option<SnapshotRecord>> {
        self.snapshots
            .get(be(id))?
            .map(|v| decode("snapshot", &v))
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
            .map(|v| decode("snapshot", &v?))
            .collect()
    }

    /// Snapshots whose hex id starts with `prefix` (at most `limit`).
    pub fn snapshots_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<SnapshotRecord>> {
        if prefix.is_empty() || prefix.len() > 16 || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Ok(Vec::new());
        }
        let lo = u64::from_str_radix(&format!("{prefix:0<16}"), 16).unwrap_or(0);
        let hi = u64::from_str_radix(&format!("{prefix:f<16}"), 16).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for v in self.snapshots.range(be(lo)..=be(hi)).values().take(limit) {
            out.push(decode("snapshot", &v?)?);
        }
        Ok(out)
    }

    // ---- warm file index

    fn file_key(ws: u64, path: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(8 + path.len());
        k.extend_from_slice(&be(ws));
        k.extend_from_slice(path);
        k
    }

    /// The persisted warm index of a workspace: (relative path, meta), in path order.
    pub fn files_of(&self, ws: u64) -> impl Iterator<Item = Result<(Vec<u8>, FileMeta)>> + '_ {
        self.files.scan_prefix(be(ws)).map(|kv| {
            let (k, v) = kv?;
            Ok((k[8..].to_vec(), decode("file", &v)?))
        })
    }

    /// Applies changes to a workspace's persisted warm index.
    pub fn update_files(&self, ws: u64, changes: &[(Vec<u8>, Option<FileMeta>)]) -> Result<()> {
        for chunk in changes.chunks(super::CATALOG_CHUNK) {
            let mut batch = sled::Batch::default();
            for (path, meta) in chunk {
                let key = Self::file_key(ws, path);
                match meta {
                    Some(m) => batch.insert(key, encode(m)),
                    None => batch.remove(key),
                }
            }
            self.files.apply_batch(batch)?;
        }
        Ok(())
    }

    /// Removes a workspace's persisted warm index.
    pub fn clear_files(&self, ws: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        for k in self.files.scan_prefix(be(ws)).keys() {
            batch.remove(k?);
        }
        self.files.apply_batch(batch)?;
        Ok(())
    }
}
