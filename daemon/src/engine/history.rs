//! History with content: diffs limited to paths and with patches, a snapshot against the one
//! before it, a path's log with each change's patch, lists of the snapshots that touched a path.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::Engine;
use crate::error::{Error, Result};
use crate::patch::{self, FilePatch};
use crate::store::catalog::{SnapshotRecord, WorkspaceRecord};
use crate::store::{Entry, Id, Kind, Store, Tree};
use crate::workspace::diff::{Change, DiffEntry, Differ, DirChanges, Side};

/// What a diff compares and what it makes.
#[derive(Debug, Default, Clone)]
pub struct DiffQuery {
    /// Older side's selector; empty = latest.
    pub from: String,
    /// Newer side's selector; empty = the working tree.
    pub to: String,
    /// Compare `to` with the snapshot before it.
    pub from_parent: bool,
    /// Only these paths (as the request gave them); empty = all.
    pub paths: Vec<Vec<u8>>,
    /// Make patches, so.
    pub patch: Option<patch::Options>,
}

/// A changed path and, when asked for, its patch.
#[derive(Debug, Clone)]
pub struct Patched {
    /// What changed.
    pub entry: DiffEntry,
    /// How the content changed.
    pub patch: Option<FilePatch>,
}

/// The answer to a [`DiffQuery`].
#[derive(Debug)]
pub struct DiffResult {
    /// The older snapshot; none for an empty tree (before the first snapshot).
    pub from: Option<SnapshotRecord>,
    /// The newer snapshot; none for the working tree.
    pub to: Option<SnapshotRecord>,
    /// Changed paths.
    pub entries: Vec<Patched>,
    /// Patches were left out when the response's budget ran out.
    pub truncated: bool,
}

/// One snapshot in which a path changed.
#[derive(Debug)]
pub struct LogItem {
    /// The snapshot.
    pub snapshot: SnapshotRecord,
    /// How the first changed path changed.
    pub change: Change,
    /// Its size after.
    pub size: u64,
    /// Its kind and mode after; none when it was deleted.
    pub after: Option<(Kind, u32)>,
    /// Everything that changed under the paths, when patches were asked for.
    pub changes: Vec<Patched>,
    /// Patches were left out when the response's budget ran out.
    pub truncated: bool,
}

/// Trees and blobs read while walking many snapshots: consecutive snapshots share most of
/// them. Blobs are kept up to a budget, trees always (they are small).
#[derive(Default)]
struct Reader {
    trees: HashMap<Id, Arc<Tree>>,
    blobs: HashMap<Id, Arc<Vec<u8>>>,
    blob_bytes: u64,
}

/// Blob bytes kept between patches of one request.
const BLOB_CACHE_BYTES: u64 = 64 << 20;

impl Reader {
    fn tree(&mut self, store: &Store, id: &Id) -> Result<Arc<Tree>> {
        if let Some(t) = self.trees.get(id) {
            return Ok(t.clone());
        }
        let t = Arc::new(store.tree(id)?);
        self.trees.insert(*id, t.clone());
        Ok(t)
    }

    fn blob(&mut self, store: &Store, id: &Id) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.blobs.get(id) {
            return Ok(b.clone());
        }
        let b = Arc::new(store.read_vec(id)?);
        if self.blob_bytes + b.len() as u64 > BLOB_CACHE_BYTES {
            self.blobs.clear();
            self.blob_bytes = 0;
        }
        self.blob_bytes += b.len() as u64;
        self.blobs.insert(*id, b.clone());
        Ok(b)
    }

    /// The entry at `path` under the tree `root` (the root itself for an empty path).
    fn lookup(&mut self, store: &Store, root: Id, path: &[u8]) -> Result<Option<Entry>> {
        if path.is_empty() {
            return Ok(Some(root_entry(root)));
        }
        let mut tree = self.tree(store, &root)?;
        let mut comps = path.split(|&b| b == b'/').peekable();
        while let Some(c) = comps.next() {
            let Some(e) = tree.get(c).cloned() else {
                return Ok(None);
            };
            if comps.peek().is_none() {
                return Ok(Some(e));
            }
            if e.kind != Kind::Dir {
                return Ok(None);
            }
            tree = self.tree(store, &e.id)?;
        }
        Ok(None)
    }
}

/// A side of a patch: the entry's kind and mode, and its content.
fn patch_side<'a>(s: Option<&Side>, content: Option<&'a Vec<u8>>) -> Option<patch::Side<'a>> {
    s.zip(content).map(|(s, c)| patch::Side {
        kind: s.kind,
        mode: s.mode,
        content: c.as_slice(),
    })
}

/// A directory entry standing for a whole tree.
fn root_entry(root: Id) -> Entry {
    Entry {
        name: Vec::new(),
        kind: Kind::Dir,
        mode: 0o755,
        size: 0,
        id: root,
    }
}

/// Paths sorted, those under another dropped (an empty path covers everything).
fn covering(mut paths: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    paths.sort();
    paths.dedup();
    let mut out: Vec<Vec<u8>> = Vec::new();
    for p in paths {
        let covered = out
            .iter()
            .any(|o| o.is_empty() || (p.starts_with(o) && p.get(o.len()) == Some(&b'/')));
        if !covered {
            out.push(p);
        }
    }
    out
}

impl Engine {
    /// Checked relative paths of a request; empty = the whole workspace.
    fn rel_paths(&self, record: &WorkspaceRecord, raw: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        let root = PathBuf::from(OsStr::from_bytes(&record.path));
        let rels = raw
            .iter()
            .map(|p| self.rel_path(&root, p))
            .collect::<Result<Vec<_>>>()?;
        Ok(if rels.is_empty() {
            vec![Vec::new()]
        } else {
            covering(rels)
        })
    }

    /// A diff: two snapshots, a snapshot and the working tree, or a snapshot and the one before
    /// it; limited to paths, with patches when asked.
    pub fn diff(&self, path: &str, q: &DiffQuery) -> Result<DiffResult> {
        let record = self.record_for(path)?;
        let paths = self.rel_paths(&record, &q.paths)?;
        let (from, to, a, b) = if q.from_parent {
            if q.to.is_empty() || !q.from.is_empty() {
                return Err(Error::InvalidArgument(
                    "comparing with the snapshot before needs the newer snapshot (`to`) and no `from`"
                        .into(),
                ));
            }
            let to = self.resolve(record.id, &q.to)?;
            let from = self.before(&to)?;
            let a = from.as_ref().map(|f| f.root);
            let root = to.root;
            (from, Some(to), a, Some(root))
        } else {
            let from = self.resolve(record.id, &q.from)?;
            let a = Some(from.root);
            if q.to.is_empty() {
                let h = self.handle_for(path)?;
                let current = self.working_tree(&h)?;
                (Some(from), None, a, Some(current))
            } else {
                let to = self.resolve(record.id, &q.to)?;
                let root = to.root;
                (Some(from), Some(to), a, Some(root))
            }
        };
        let mut reader = Reader::default();
        let entries = self.changes_under(&mut reader, &paths, a, b)?;
        let (entries, truncated) = self.with_patches(&mut reader, entries, q.patch.as_ref())?;
        Ok(DiffResult {
            from,
            to,
            entries,
            truncated,
        })
    }

    /// The snapshot a snapshot's own changes are counted against: its parent, else the newest
    /// older one; none for the first.
    fn before(&self, s: &SnapshotRecord) -> Result<Option<SnapshotRecord>> {
        if let Some(p) = s.parent
            && let Some(parent) = self.store.cat.snapshot(p)?
        {
            return Ok(Some(parent));
        }
        let older = s.created_us.checked_sub(1);
        match older {
            Some(t) => Ok(self.store.cat.snapshots_of(s.workspace, Some(t), 1)?.pop()),
            None => Ok(None),
        }
    }

    /// What differs under `paths` between the trees `a` and `b` (either may be empty).
    fn changes_under(
        &self,
        reader: &mut Reader,
        paths: &[Vec<u8>],
        a: Option<Id>,
        b: Option<Id>,
    ) -> Result<Vec<DiffEntry>> {
        let mut d = Differ::new(&self.store, DirChanges::Skip);
        for p in paths {
            let ea = match a {
                Some(root) => reader.lookup(&self.store, root, p)?,
                None => None,
            };
            let eb = match b {
                Some(root) => reader.lookup(&self.store, root, p)?,
                None => None,
            };
            if p.is_empty() {
                d.trees(b"", ea.map(|e| e.id), eb.map(|e| e.id))?;
            } else {
                d.entries(p, ea.as_ref(), eb.as_ref())?;
            }
        }
        Ok(d.finish())
    }

    /// Adds patches to changed paths when `opts` asks for them, within the response's budget.
    fn with_patches(
        &self,
        reader: &mut Reader,
        entries: Vec<DiffEntry>,
        opts: Option<&patch::Options>,
    ) -> Result<(Vec<Patched>, bool)> {
        let Some(opts) = opts else {
            return Ok((
                entries
                    .into_iter()
                    .map(|entry| Patched { entry, patch: None })
                    .collect(),
                false,
            ));
        };
        let mut budget = opts.max_total_bytes;
        let mut truncated = false;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let patch = self.patch_of(reader, &entry, opts, &mut budget)?;
            truncated |= patch.as_ref().is_some_and(|p| p.truncated && budget == 0);
            out.push(Patched { entry, patch });
        }
        Ok((out, truncated))
    }

    /// One path's patch; none when neither side is a file or symlink.
    fn patch_of(
        &self,
        reader: &mut Reader,
        e: &DiffEntry,
        opts: &patch::Options,
        budget: &mut u64,
    ) -> Result<Option<FilePatch>> {
        let content = |s: &Option<Side>| s.as_ref().filter(|s| s.kind != Kind::Dir).cloned();
        let (before, after) = (content(&e.before), content(&e.after));
        if before.is_none() && after.is_none() {
            return Ok(None);
        }
        let shape = |s: &Side| patch::Shape {
            kind: s.kind,
            mode: s.mode,
            size: s.size,
        };
        let shapes = (before.as_ref().map(shape), after.as_ref().map(shape));
        let largest = shapes
            .0
            .iter()
            .chain(shapes.1.iter())
            .map(|s| s.size)
            .max()
            .unwrap_or(0);
        if largest > opts.max_file_bytes {
            let why = format!(
                "larger than the {} limit",
                patch::human(opts.max_file_bytes)
            );
            return Ok(Some(patch::left_out(
                &e.path, shapes.0, shapes.1, &why, opts,
            )));
        }
        if *budget == 0 && !opts.stat_only {
            let why = format!(
                "this response's patches reached their {} limit",
                patch::human(opts.max_total_bytes)
            );
            return Ok(Some(patch::left_out(
                &e.path, shapes.0, shapes.1, &why, opts,
            )));
        }
        let old = match &before {
            Some(s) => Some(reader.blob(&self.store, &s.id)?),
            None => None,
        };
        let new = match &after {
            Some(s) => Some(reader.blob(&self.store, &s.id)?),
            None => None,
        };
        let p = patch::file_patch(
            &e.path,
            patch_side(before.as_ref(), old.as_deref()),
            patch_side(after.as_ref(), new.as_deref()),
            opts,
        );
        *budget = budget.saturating_sub(p.text.len() as u64);
        Ok(Some(p))
    }

    /// The snapshots in which any of `paths` changed, newest first, created at or before
    /// `before_us`; with `patches`, what changed in each (against the snapshot before it).
    fn touching(
        &self,
        record: &WorkspaceRecord,
        paths: &[Vec<u8>],
        before_us: Option<u64>,
        limit: usize,
        patches: Option<&patch::Options>,
    ) -> Result<Vec<LogItem>> {
        let mut reader = Reader::default();
        let mut out = Vec::new();
        let mut budget = patches.map_or(0, |o| o.max_total_bytes);
        let state = |reader: &mut Reader, s: &SnapshotRecord| -> Result<Vec<Option<Entry>>> {
            paths
                .iter()
                .map(|p| reader.lookup(&self.store, s.root, p))
                .collect()
        };
        // Newest first, one snapshot at a time: a limit reads only as far back as it needs.
        let mut newer: Option<(SnapshotRecord, Vec<Option<Entry>>)> = None;
        let mut ids = self.store.cat.snapshot_ids(record.id, before_us);
        loop {
            let older = match ids.next() {
                Some(item) => {
                    let (_, id) = item?;
                    let Some(s) = self.store.cat.snapshot(id)? else {
                        continue;
                    };
                    let st = state(&mut reader, &s)?;
                    Some((s, st))
                }
                None => None,
            };
            let Some((s, now)) = newer.take() else {
                match older {
                    Some(o) => {
                        newer = Some(o);
                        continue;
                    }
                    None => break,
                }
            };
            // The oldest snapshot is compared with nothing before it.
            let then = older
                .as_ref()
                .map_or_else(|| vec![None; paths.len()], |(_, st)| st.clone());
            let last = older.is_none();
            newer = older;
            if let Some(item) =
                self.log_item(&mut reader, paths, s, &now, &then, patches, &mut budget)?
            {
                out.push(item);
                if limit > 0 && out.len() >= limit {
                    break;
                }
            }
            if last {
                break;
            }
        }
        Ok(out)
    }

    /// The entry of the log for snapshot `s` whose paths are in state `now`, against `then`
    /// before it; none when none of them changed.
    #[allow(clippy::too_many_arguments)]
    fn log_item(
        &self,
        reader: &mut Reader,
        paths: &[Vec<u8>],
        s: SnapshotRecord,
        now: &[Option<Entry>],
        then: &[Option<Entry>],
        patches: Option<&patch::Options>,
        budget: &mut u64,
    ) -> Result<Option<LogItem>> {
        let same = |a: &Option<Entry>, b: &Option<Entry>| match (a, b) {
            (Some(a), Some(b)) => (a.kind, a.mode, a.id) == (b.kind, b.mode, b.id),
            (None, None) => true,
            _ => false,
        };
        let Some(first) = (0..paths.len()).find(|&k| !same(&now[k], &then[k])) else {
            return Ok(None);
        };
        let change = match (&now[first], &then[first]) {
            (Some(_), None) => Change::Added,
            (None, Some(_)) => Change::Deleted,
            (Some(a), Some(b)) if a.kind != b.kind => Change::TypeChanged,
            _ => Change::Modified,
        };
        let size = now[first].as_ref().map_or(0, |e| e.size);
        let after = now[first].as_ref().map(|e| (e.kind, e.mode));
        let (changes, truncated) = match patches {
            Some(opts) => {
                let mut d = Differ::new(&self.store, DirChanges::Skip);
                for (k, p) in paths.iter().enumerate() {
                    if p.is_empty() {
                        d.trees(
                            b"",
                            then[k].as_ref().map(|e| e.id),
                            now[k].as_ref().map(|e| e.id),
                        )?;
                    } else {
                        d.entries(p, then[k].as_ref(), now[k].as_ref())?;
                    }
                }
                let opts = patch::Options {
                    max_total_bytes: *budget,
                    ..*opts
                };
                let (changes, truncated) = self.with_patches(reader, d.finish(), Some(&opts))?;
                let used: u64 = changes
                    .iter()
                    .filter_map(|c| c.patch.as_ref())
                    .map(|p| p.text.len() as u64)
                    .sum();
                *budget = budget.saturating_sub(used);
                (changes, truncated)
            }
            None => (Vec::new(), false),
        };
        Ok(Some(LogItem {
            snapshot: s,
            change,
            size,
            after,
            changes,
            truncated,
        }))
    }

    /// The snapshots in which `file` (or any of `more`) changed, newest first.
    pub fn log(
        &self,
        path: &str,
        file: &[u8],
        more: &[Vec<u8>],
        limit: usize,
        patches: Option<&patch::Options>,
    ) -> Result<Vec<LogItem>> {
        let record = self.record_for(path)?;
        let mut raw = vec![file.to_vec()];
        raw.extend(more.iter().cloned());
        let root = PathBuf::from(OsStr::from_bytes(&record.path));
        // The paths in the order given: the first that changed names the entry's change.
        let mut paths = Vec::new();
        for p in &raw {
            let rel = self.rel_path(&root, p)?;
            if !paths.contains(&rel) {
                paths.push(rel);
            }
        }
        self.touching(&record, &paths, None, limit, patches)
    }

    /// Snapshots of one workspace in which one of `paths` changed, newest first, created at
    /// or before `before_us`, at most `limit`.
    pub fn list_touching(
        &self,
        path: &str,
        paths: &[Vec<u8>],
        before_us: Option<u64>,
        limit: usize,
    ) -> Result<Vec<SnapshotRecord>> {
        let record = self.record_for(path)?;
        let paths = self.rel_paths(&record, paths)?;
        Ok(self
            .touching(&record, &paths, before_us, limit, None)?
            .into_iter()
            .map(|i| i.snapshot)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::covering;

    #[test]
    fn covering_drops_paths_under_others() {
        let p = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            covering(vec![p("a/b"), p("a"), p("a-b"), p("a"), p("c/d")]),
            vec![p("a"), p("a-b"), p("c/d")]
        );
        assert_eq!(covering(vec![p("x"), p("")]), vec![p("")]);
    }
}
