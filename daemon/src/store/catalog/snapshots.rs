//! Workspaces and their snapshots (format rules 3, 4 and 8).

use redb::ReadableTable;

use super::{
    Catalog, META, NEXT_ID, SNAPSHOTS, SnapshotRecord, WORKSPACES, WS_PATHS, WS_SNAPS,
    WorkspaceRecord, be, u64_at,
};
use crate::error::Result;
use crate::store::{SnapshotId, WorkspaceId, records};

/// A `ws_snaps` key (format rule 4).
pub(super) fn snap_key(ws: WorkspaceId, created_us: u64, id: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&be(ws.get()));
    key[8..16].copy_from_slice(&be(created_us));
    key[16..].copy_from_slice(&be(id));
    key
}

/// The `ws_snaps` key of a snapshot.
pub(super) fn ws_snap_key(s: &SnapshotRecord) -> [u8; 24] {
    snap_key(s.workspace, s.created_us, s.id.get())
}

impl Catalog {
    /// A new unique workspace id, larger than every id given out before (format rule 8).
    pub fn new_id(&self) -> Result<WorkspaceId> {
        self.kv.write(|w| {
            let mut t = w.open_table(META)?;
            let id = t
                .get(NEXT_ID)?
                .map(|v| u64_at(v.value(), 0))
                .unwrap_or(0)
                .max(1);
            t.insert(NEXT_ID, be(id + 1).as_slice())?;
            Ok(WorkspaceId::new(id))
        })
    }

    /// Inserts or replaces a workspace.
    pub fn put_workspace(&self, ws: &WorkspaceRecord) -> Result<()> {
        self.kv.write(|w| {
            w.open_table(WORKSPACES)?
                .insert(be(ws.id.get()).as_slice(), records::encode(ws).as_slice())?;
            w.open_table(WS_PATHS)?
                .insert(ws.path.as_slice(), be(ws.id.get()).as_slice())?;
            Ok(())
        })
    }

    /// A workspace by id.
    pub fn workspace(&self, id: WorkspaceId) -> Result<Option<WorkspaceRecord>> {
        self.kv.read(|r| {
            r.open_table(WORKSPACES)?
                .get(be(id.get()).as_slice())?
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
                .insert(be(s.id.get()).as_slice(), records::encode(s).as_slice())?;
            w.open_table(WS_SNAPS)?
                .insert(ws_snap_key(s).as_slice(), [].as_slice())?;
            Ok(())
        })
    }

    /// A snapshot by id.
    pub fn snapshot(&self, id: SnapshotId) -> Result<Option<SnapshotRecord>> {
        self.kv.read(|r| {
            r.open_table(SNAPSHOTS)?
                .get(be(id.get()).as_slice())?
                .map(|v| records::decode(v.value()))
                .transpose()
        })
    }

    /// Removes a snapshot's record (its data goes at the next garbage collection).
    pub fn remove_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        self.kv.write(|w| {
            w.open_table(WS_SNAPS)?.remove(ws_snap_key(s).as_slice())?;
            w.open_table(SNAPSHOTS)?.remove(be(s.id.get()).as_slice())?;
            Ok(())
        })
    }

    /// (creation time in µs, snapshot id) of a workspace's snapshots created at or before
    /// `before_us`, newest first, at most `limit`.
    fn snapshot_keys(
        &self,
        ws: WorkspaceId,
        before_us: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, SnapshotId)>> {
        let lo = snap_key(ws, 0, 0);
        let hi = snap_key(ws, before_us.unwrap_or(u64::MAX), u64::MAX);
        self.kv.read(|r| {
            let t = r.open_table(WS_SNAPS)?;
            let mut out = Vec::new();
            for kv in t.range(lo.as_slice()..=hi.as_slice())?.rev().take(limit) {
                let k = kv?.0;
                out.push((u64_at(k.value(), 8), SnapshotId::new(u64_at(k.value(), 16))));
            }
            Ok(out)
        })
    }

    /// Snapshot ids of a workspace, newest first, created at or before `before_us`.
    pub fn snapshot_ids(
        &self,
        ws: WorkspaceId,
        before_us: Option<u64>,
    ) -> impl Iterator<Item = Result<(u64, SnapshotId)>> + '_ {
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
        ws: WorkspaceId,
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
    pub fn latest(&self, ws: WorkspaceId) -> Result<Option<SnapshotRecord>> {
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
        ws: WorkspaceId,
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
}
