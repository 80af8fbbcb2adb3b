//! Reading: diffs, lists, a file in a snapshot, a file's history.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::Engine;
use super::registry::WsHandle;
use crate::error::{Error, Result};
use crate::store::catalog::{SnapshotRecord, WorkspaceRecord};
use crate::store::{Entry, Id, Kind};
use crate::workspace::diff::{self, DiffEntry, normalise, validate_rel};
use crate::workspace::{Changes, display_rel};

/// A path's state in one snapshot, to tell whether it changed between two.
type PathState = Option<(Kind, u32, Id, u64)>;

impl Engine {
    /// Turns a path from a request (relative to the workspace, or absolute inside it) into a
    /// checked relative path.
    pub fn rel_path(&self, root: &Path, raw: &[u8]) -> Result<Vec<u8>> {
        if raw.contains(&0) {
            return Err(Error::InvalidArgument("a path contains a NUL byte".into()));
        }
        let rel: &[u8] = if raw.starts_with(b"/") {
            let root_b = root.as_os_str().as_bytes();
            match raw.strip_prefix(root_b) {
                Some([]) => b"",
                Some(rest) if rest.starts_with(b"/") => &rest[1..],
                _ => {
                    return Err(Error::OutsideWorkspace {
                        path: display_rel(raw),
                        workspace: root.display().to_string(),
                    });
                }
            }
        } else {
            raw
        };
        let rel = normalise(rel);
        if !rel.is_empty() {
            validate_rel(&rel)?;
        }
        Ok(rel)
    }

    /// Differences between two snapshots, or a snapshot and the working tree (`to` empty).
    pub fn diff(
        &self,
        path: &str,
        from: &str,
        to: &str,
    ) -> Result<(SnapshotRecord, Option<SnapshotRecord>, Vec<DiffEntry>)> {
        let record = self.record_for(path)?;
        let a = self.resolve(record.id, from)?;
        if !to.is_empty() {
            let b = self.resolve(record.id, to)?;
            let entries = diff::diff(&self.store, Some(a.root), Some(b.root))?;
            return Ok((a, Some(b), entries));
        }
        let h = self.handle_for(path)?;
        let current = self.working_tree(&h)?;
        let entries = diff::diff(&self.store, Some(a.root), Some(current))?;
        Ok((a, None, entries))
    }

    /// The working tree's root id, with the reported changes applied to the index (they stay
    /// dirty, so the auto snapshot still comes).
    fn working_tree(&self, h: &WsHandle) -> Result<Id> {
        self.sync_events(h);
        let mut ws = h.workspace(&self.store);
        let changes = {
            let d = h.feed.dirty();
            if d.full {
                Changes::Full
            } else {
                Changes::Paths(d.paths.iter().cloned().collect())
            }
        };
        ws.working_tree(&self.store, &changes)
    }

    /// Snapshots of a workspace (or all), newest first, after the page token.
    pub fn list(
        &self,
        path: &str,
        all: bool,
        limit: usize,
        page_token: &str,
    ) -> Result<(Vec<SnapshotRecord>, String)> {
        let before = if page_token.is_empty() {
            None
        } else {
            Some(
                page_token
                    .parse::<u64>()
                    .map_err(|_| Error::InvalidArgument("invalid page token".into()))?
                    .saturating_sub(1),
            )
        };
        let limit = if limit == 0 { 100 } else { limit.min(10_000) };
        let mut out = if all {
            let mut v = Vec::new();
            for w in self.store.cat.workspaces()? {
                v.extend(self.store.cat.snapshots_of(w.id, before, limit)?);
            }
            v.sort_by_key(|s| std::cmp::Reverse(s.created_us));
            v.truncate(limit);
            v
        } else {
            let record = self.record_for(path)?;
            self.store.cat.snapshots_of(record.id, before, limit)?
        };
        let token = if out.len() == limit {
            out.last()
                .map(|s| s.created_us.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        out.truncate(limit);
        Ok((out, token))
    }

    /// The entry at a path in a snapshot, and the snapshot.
    pub fn entry_at(
        &self,
        path: &str,
        selector: &str,
        file: &[u8],
    ) -> Result<(SnapshotRecord, Entry)> {
        let record = self.record_for(path)?;
        let root = PathBuf::from(std::ffi::OsStr::from_bytes(&record.path));
        let rel = self.rel_path(&root, file)?;
        if rel.is_empty() {
            return Err(Error::InvalidArgument(
                "name a file inside the workspace".into(),
            ));
        }
        let snap = self.resolve(record.id, selector)?;
        let entry = diff::lookup(&self.store, snap.root, &rel)?.ok_or_else(|| {
            Error::PathNotInSnapshot {
                path: display_rel(&rel),
                snapshot: snap.hex_id(),
            }
        })?;
        if entry.kind == Kind::Dir {
            return Err(Error::InvalidArgument(format!(
                "{} is a directory",
                display_rel(&rel)
            )));
        }
        Ok((snap, entry))
    }

    /// The snapshots in which `file` changed, newest first: (snapshot, change, size).
    pub fn log(
        &self,
        path: &str,
        file: &[u8],
        limit: usize,
    ) -> Result<Vec<(SnapshotRecord, diff::Change, u64)>> {
        let record = self.record_for(path)?;
        let root = PathBuf::from(std::ffi::OsStr::from_bytes(&record.path));
        let rel = self.rel_path(&root, file)?;
        let mut cache: HashMap<Id, PathState> = HashMap::new();
        let mut state_of = |s: &SnapshotRecord| -> Result<PathState> {
            if let Some(st) = cache.get(&s.root) {
                return Ok(*st);
            }
            let st =
                diff::lookup(&self.store, s.root, &rel)?.map(|e| (e.kind, e.mode, e.id, e.size));
            cache.insert(s.root, st);
            Ok(st)
        };
        let change = |newer: &PathState, older: &PathState| match (newer, older) {
            (Some(_), None) => Some(diff::Change::Added),
            (None, Some(_)) => Some(diff::Change::Deleted),
            (Some(a), Some(b)) if a != b => Some(diff::Change::Modified),
            _ => None,
        };
        // Newest first, one snapshot at a time: a limit reads only as far back as it needs.
        let mut out = Vec::new();
        let mut newer: Option<(SnapshotRecord, PathState)> = None;
        for item in self.store.cat.snapshot_ids(record.id, None) {
            let (_, id) = item?;
            let Some(s) = self.store.cat.snapshot(id)? else {
                continue;
            };
            let state = state_of(&s)?;
            if let Some((n, n_state)) = newer.take()
                && let Some(c) = change(&n_state, &state)
            {
                out.push((n, c, n_state.map_or(0, |st| st.3)));
                if limit > 0 && out.len() >= limit {
                    return Ok(out);
                }
            }
            newer = Some((s, state));
        }
        // The oldest snapshot, against nothing before it.
        if let Some((n, n_state)) = newer
            && let Some(c) = change(&n_state, &None)
        {
            out.push((n, c, n_state.map_or(0, |st| st.3)));
        }
        Ok(out)
    }
}

impl Engine {
    /// Every workspace's path by id (snapshots outlive watching).
    pub fn workspace_paths(&self) -> Result<HashMap<u64, String>> {
        Ok(self
            .store
            .cat
            .workspaces()?
            .into_iter()
            .map(|w| (w.id, String::from_utf8_lossy(&w.path).into_owned()))
            .collect())
    }

    /// The path of workspace `id` (empty when unknown).
    pub fn workspace_path(&self, id: u64) -> Result<String> {
        Ok(self
            .store
            .cat
            .workspace(id)?
            .map(|w| String::from_utf8_lossy(&w.path).into_owned())
            .unwrap_or_default())
    }

    /// Workspace `id`'s record, as the catalog has it (with its tripwire).
    pub fn workspace_record(&self, id: u64) -> Result<Option<WorkspaceRecord>> {
        self.store.cat.workspace(id)
    }

    /// Workspace `id`'s newest snapshot.
    pub fn latest(&self, id: u64) -> Result<Option<SnapshotRecord>> {
        self.store.cat.latest(id)
    }

    /// Streams a stored file's content into `sink`, checked against its id.
    pub fn read_into(&self, entry: &Entry, sink: &mut dyn std::io::Write) -> Result<u64> {
        self.store.read_into(&entry.id, sink)
    }

    /// Checks every object the snapshots (of one workspace, or all) need.
    pub fn verify(&self, only: Option<u64>) -> Result<crate::store::gc::VerifyReport> {
        self.store.verify(only)
    }
}
