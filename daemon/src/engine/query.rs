//! Reading: diffs, lists, a file in a snapshot, a file's history.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::Engine;
use super::registry::WsHandle;
use crate::error::{Error, Result};
use crate::store::WorkspaceId;
use crate::store::catalog::{SnapshotRecord, Tag, WorkspaceRecord};
use crate::store::{Entry, Id, Kind};
use crate::workspace::diff::{self, validate_rel};
use crate::workspace::{Changes, display_rel};

/// An entry of a directory in a snapshot.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The entry.
    pub entry: Entry,
    /// A symlink's target (empty for other kinds).
    pub target: Vec<u8>,
}

/// Which snapshots [`Engine::list`] lists.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Every workspace's, not only the named one's.
    pub all: bool,
    /// At most this many (0: 100; never more than 10,000).
    pub limit: usize,
    /// Where the previous page ended (empty: from the newest).
    pub page_token: String,
    /// Only those that changed one of these paths.
    pub paths: Vec<Vec<u8>>,
    /// Only those carrying all these tags (by themselves or in one note).
    pub tags: Vec<Tag>,
}

/// One page of [`Engine::list`].
#[derive(Debug, Clone)]
pub struct SnapshotPage {
    /// Newest first.
    pub snapshots: Vec<SnapshotRecord>,
    /// Where the next page starts (empty: this is the last).
    pub next_page_token: String,
}

impl Engine {
    /// Turns a path from a request (relative to the workspace, or absolute inside it) into a
    /// checked relative path. `.` and `..` are resolved lexically (as the shell does with `cd
    /// -L`): `src/../README.md` is `README.md`; only a path whose `..` climbs out of the
    /// workspace is refused.
    pub fn rel_path(&self, root: &Path, raw: &[u8]) -> Result<Vec<u8>> {
        if raw.contains(&0) {
            return Err(Error::InvalidArgument("a path contains a NUL byte".into()));
        }
        let outside = || Error::OutsideWorkspace {
            path: display_rel(raw),
            workspace: root.display().to_string(),
        };
        let rel = if raw.starts_with(b"/") {
            let path = lexical(raw).ok_or_else(outside)?;
            let root_b = root.as_os_str().as_bytes();
            match path.strip_prefix(root_b) {
                Some([]) => Vec::new(),
                Some(rest) if rest.starts_with(b"/") => rest[1..].to_vec(),
                // The root itself may be given lexically different (`/a/./b`).
                _ => return Err(outside()),
            }
        } else {
            lexical(raw).ok_or_else(outside)?
        };
        if !rel.is_empty() {
            validate_rel(&rel)?;
        }
        Ok(rel)
    }

    /// The working tree's root id, with the reported changes applied to the index (they stay
    /// dirty, so the auto snapshot still comes).
    pub(super) fn working_tree(&self, h: &WsHandle) -> Result<Id> {
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

    /// Snapshots of the workspace at `path` (or of all), newest first, as `q` asks.
    pub fn list(&self, path: &str, q: &ListQuery) -> Result<SnapshotPage> {
        let ListQuery {
            all,
            limit,
            ref page_token,
            ref paths,
            ref tags,
        } = *q;
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
        if !paths.is_empty() && all {
            return Err(Error::InvalidArgument(
                "paths belong to one workspace: list them without `all`".into(),
            ));
        }
        let mut out = if tags.is_empty() {
            self.list_page(path, all, paths, before, limit)?
        } else {
            // Tagged snapshots may be few among many: read pages until enough match.
            const PAGE: usize = 500;
            let mut out = Vec::new();
            let mut cursor = before;
            loop {
                let page = self.list_page(path, all, paths, cursor, PAGE)?;
                let more = page.len() == PAGE;
                cursor = page.last().map(|s| s.created_us.saturating_sub(1));
                out.extend(page.into_iter().filter(|s| s.has_tags(tags)));
                if out.len() >= limit || !more || cursor.is_none() {
                    break;
                }
            }
            out
        };
        let token = if out.len() >= limit {
            out.get(limit - 1)
                .map(|s| s.created_us.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        out.truncate(limit);
        Ok(SnapshotPage {
            snapshots: out,
            next_page_token: token,
        })
    }

    /// One page of [`Engine::list`] before the tag filter.
    fn list_page(
        &self,
        path: &str,
        all: bool,
        paths: &[Vec<u8>],
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<SnapshotRecord>> {
        if !paths.is_empty() {
            self.list_touching(path, paths, before, limit)
        } else if all {
            let mut v = Vec::new();
            for w in self.store.cat.workspaces()? {
                v.extend(self.store.cat.snapshots_of(w.id, before, limit)?);
            }
            v.sort_by_key(|s| std::cmp::Reverse(s.created_us));
            v.truncate(limit);
            Ok(v)
        } else {
            let record = self.record_for(path)?;
            self.store.cat.snapshots_of(record.id, before, limit)
        }
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
                nearest: diff::nearest_path(&self.store, snap.root, &rel),
                workspace: root.display().to_string(),
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
}

/// `path` with `.`, `..` and empty components resolved lexically, keeping a leading `/`;
/// `None` when a `..` climbs above its start (the root, for an absolute path).
fn lexical(path: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    if path.starts_with(b"/") {
        out.push(b'/');
    }
    out.extend_from_slice(&parts.join(&b'/'));
    Some(out)
}

impl Engine {
    /// Every workspace's path by id (snapshots outlive watching).
    pub fn workspace_paths(&self) -> Result<HashMap<WorkspaceId, String>> {
        Ok(self
            .store
            .cat
            .workspaces()?
            .into_iter()
            .map(|w| (w.id, String::from_utf8_lossy(&w.path).into_owned()))
            .collect())
    }

    /// The path of workspace `id` (empty when unknown).
    pub fn workspace_path(&self, id: WorkspaceId) -> Result<String> {
        Ok(self
            .store
            .cat
            .workspace(id)?
            .map(|w| String::from_utf8_lossy(&w.path).into_owned())
            .unwrap_or_default())
    }

    /// Workspace `id`'s record, as the catalog has it (with its tripwire).
    pub fn workspace_record(&self, id: WorkspaceId) -> Result<Option<WorkspaceRecord>> {
        self.store.cat.workspace(id)
    }

    /// Workspace `id`'s newest snapshot.
    pub fn latest(&self, id: WorkspaceId) -> Result<Option<SnapshotRecord>> {
        self.store.cat.latest(id)
    }

    /// Streams a stored file's content into `sink`, checked against its id.
    pub fn read_into(&self, entry: &Entry, sink: &mut dyn std::io::Write) -> Result<u64> {
        self.store.read_into(&entry.id, sink)
    }

    /// Streams `len` bytes (0 = to the end) of a stored file from `offset` into `sink` (see
    /// [`Store::read_range_into`](crate::store::Store::read_range_into) for what is checked).
    pub fn read_range_into(
        &self,
        entry: &Entry,
        offset: u64,
        len: u64,
        sink: &mut dyn std::io::Write,
    ) -> Result<u64> {
        if offset == 0 && len == 0 {
            return self.store.read_into(&entry.id, sink);
        }
        self.store.read_range_into(&entry.id, offset, len, sink)
    }

    /// The entries of the directory `dir` in a snapshot, with each symlink's target, and the
    /// snapshot.
    pub fn list_dir(
        &self,
        path: &str,
        selector: &str,
        dir: &[u8],
    ) -> Result<(SnapshotRecord, Vec<DirEntry>)> {
        let record = self.record_for(path)?;
        let root = PathBuf::from(std::ffi::OsStr::from_bytes(&record.path));
        let rel = self.rel_path(&root, dir)?;
        let snap = self.resolve(record.id, selector)?;
        let tree_id = if rel.is_empty() {
            snap.root
        } else {
            match diff::lookup(&self.store, snap.root, &rel)? {
                Some(e) if e.kind == Kind::Dir => e.id,
                Some(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "{} is not a directory",
                        display_rel(&rel)
                    )));
                }
                None => {
                    return Err(Error::PathNotInSnapshot {
                        path: display_rel(&rel),
                        snapshot: snap.hex_id(),
                        nearest: diff::nearest_path(&self.store, snap.root, &rel),
                        workspace: root.display().to_string(),
                    });
                }
            }
        };
        let tree = self.store.tree(&tree_id)?;
        let mut out = Vec::with_capacity(tree.entries.len());
        for entry in tree.entries {
            let target = if entry.kind == Kind::Symlink {
                self.store.read_vec(&entry.id)?
            } else {
                Vec::new()
            };
            out.push(DirEntry { entry, target });
        }
        Ok((snap, out))
    }

    /// Checks every object the snapshots (of one workspace, or all) need.
    pub fn verify(&self, only: Option<WorkspaceId>) -> Result<crate::store::gc::VerifyReport> {
        self.store.verify(only)
    }
}

#[cfg(test)]
mod tests {
    use super::lexical;

    #[test]
    fn dot_dot_is_resolved_lexically_and_may_not_climb_out() {
        let l = |p: &str| lexical(p.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(l("src/../README.md").as_deref(), Some("README.md"));
        assert_eq!(l("./a//b/./c/").as_deref(), Some("a/b/c"));
        assert_eq!(l("/ws/src/../x").as_deref(), Some("/ws/x"));
        assert_eq!(l("a/b/../..").as_deref(), Some(""));
        assert_eq!(l("../x"), None);
        assert_eq!(l("a/../../x"), None);
        assert_eq!(l("/.."), None);
    }
}
