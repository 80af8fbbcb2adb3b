//! The persisted warm file index of each workspace (format rules 5 and 6).

use std::collections::{HashMap, HashSet};

use redb::ReadableTable;

use super::{
    Catalog, FileMeta, INDEX_SEGMENTS, MAX_INDEX_SEGMENT, META, SEGMENT_V1, SEGMENT_VERSION, Table,
    be, u64_at,
};
use crate::error::{Error, Result};
use crate::store::{Id, Kind, WorkspaceId};

/// A warm-index change. Persisted: its encoding is the one of the pair `(path, meta)` it
/// once was (bitcode encodes a struct's fields as it does a tuple's), and must stay so.
#[derive(Debug, Clone, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
pub struct IndexChange {
    /// Relative path.
    pub path: Vec<u8>,
    /// The path's new entry, or `None` when it is gone.
    pub meta: Option<FileMeta>,
}

/// A persisted warm index, as loaded.
#[derive(Debug, Clone, Default)]
pub struct LoadedIndex {
    /// (relative path, entry): the base's in the order it was written, then what the journal
    /// added. A directory's `id` is its tree's as last encoded, or zero when not known
    /// (format rule 5).
    pub entries: Vec<(Vec<u8>, FileMeta)>,
    /// How many journal entries it was rebuilt from on top of its base.
    pub journal: usize,
}

/// Which kind of warm-index segment: part of a base, or of the journal on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Segment {
    /// Part of a base: the whole index as it was, from nothing.
    Base,
    /// Changes since the base.
    Journal,
}

impl Catalog {
    /// A workspace's persisted warm index: its base with the journal applied, and how many
    /// journal entries on top of its base. The segments are copied out in one read and
    /// decoded in parallel; a base's entries are taken in the order they were written (each
    /// path once), and only the journal's paths are looked up.
    pub fn load_index(&self, ws: WorkspaceId) -> Result<LoadedIndex> {
        use rayon::prelude::*;
        let (lo, hi) = (index_key(ws, 0), index_key(ws, u64::MAX));
        // The sequence number of the first segment, and the one of the base written with tree
        // ids: they differ once a version without tree ids rewrote the base.
        let (raw, first, with_trees) = self.kv.read(|r| {
            let mut out = Vec::new();
            let mut first = None;
            for kv in r
                .open_table(INDEX_SEGMENTS)?
                .range(lo.as_slice()..=hi.as_slice())?
            {
                let (k, v) = kv?;
                first.get_or_insert(u64_at(k.value(), 8));
                out.push(v.value().to_vec());
            }
            let with_trees = r
                .open_table(META)?
                .get(trees_key(ws).as_slice())?
                .map(|v| u64_at(v.value(), 0));
            Ok((out, first, with_trees))
        })?;
        let trusted = first.is_some() && first == with_trees;
        let segments: Vec<(Segment, Vec<IndexChange>)> = raw
            .par_iter()
            .map(|bytes| decode_index_segment(bytes))
            .collect::<Result<_>>()?;
        drop(raw);
        let mut base: Vec<(Vec<u8>, FileMeta)> = Vec::new();
        // The journal's last change of each path, in order.
        let mut journal_changes: std::collections::BTreeMap<Vec<u8>, Option<FileMeta>> =
            Default::default();
        let mut journal = 0;
        for (kind, changes) in segments {
            match kind {
                Segment::Base if journal_changes.is_empty() => {
                    base.extend(changes.into_iter().filter_map(|c| {
                        let mut meta = c.meta?;
                        if !trusted && meta.kind == Kind::Dir {
                            meta.id = Id::default();
                        }
                        Some((c.path, meta))
                    }));
                }
                // A base after journal segments (not written so): applied as a journal is (its
                // directories' tree ids unknown).
                Segment::Base => {
                    for IndexChange { path, meta } in changes {
                        journal_changes.insert(path, meta);
                    }
                }
                Segment::Journal => {
                    journal += changes.len();
                    for IndexChange { path, meta } in changes {
                        journal_changes.insert(path, meta);
                    }
                }
            }
        }
        if journal_changes.is_empty() {
            return Ok(LoadedIndex {
                entries: base,
                journal,
            });
        }
        // The directories above a change (and a changed directory itself) no longer have
        // the tree the base recorded.
        let mut stale: HashSet<&[u8]> = HashSet::new();
        for path in journal_changes.keys() {
            let mut end = Some(path.len());
            while let Some(e) = end {
                if !stale.insert(&path[..e]) {
                    break;
                }
                end = path[..e]
                    .iter()
                    .rposition(|&b| b == b'/')
                    .or((e > 0).then_some(0));
            }
        }
        let mut entries = Vec::with_capacity(base.len() + journal_changes.len());
        let mut replaced: HashSet<&[u8]> = HashSet::new();
        for (path, meta) in base {
            let meta = match journal_changes.get_key_value(&path) {
                Some((key, change)) => {
                    replaced.insert(key.as_slice());
                    match change {
                        Some(m) => *m,
                        None => continue,
                    }
                }
                None => meta,
            };
            entries.push((path, meta));
        }
        for (path, change) in &journal_changes {
            if let Some(m) = change
                && !replaced.contains(path.as_slice())
            {
                entries.push((path.clone(), *m));
            }
        }
        for (path, meta) in &mut entries {
            if meta.kind == Kind::Dir && stale.contains(path.as_slice()) {
                meta.id = Id::default();
            }
        }
        Ok(LoadedIndex { entries, journal })
    }

    /// Appends changes to a workspace's persisted warm index.
    pub fn append_index(&self, ws: WorkspaceId, changes: &[IndexChange]) -> Result<()> {
        self.kv.write(|w| {
            let mut t = w.open_table(INDEX_SEGMENTS)?;
            let seqs = next_index_seq(&t, ws)?..;
            let values = super::fitted(changes, |c| index_segment(Segment::Journal, c));
            for (seq, value) in seqs.zip(values) {
                t.insert(index_key(ws, seq).as_slice(), value.as_slice())?;
            }
            Ok(())
        })
    }

    /// Replaces a workspace's persisted warm index by `entries`, atomically. A directory's
    /// entry holds its tree's id, or zero (format rule 5).
    pub fn write_index_base(&self, ws: WorkspaceId, entries: &[IndexChange]) -> Result<()> {
        self.kv.write(|w| {
            let mut t = w.open_table(INDEX_SEGMENTS)?;
            let first = next_index_seq(&t, ws)?;
            put_index_base(&mut t, ws, entries)?;
            drop(t);
            let mut meta = w.open_table(META)?;
            meta.insert(trees_key(ws).as_slice(), be(first).as_slice())?;
            Ok(())
        })
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
                for IndexChange { path, meta } in changes {
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

/// The `meta` key naming the first segment of the workspace's base whose directories hold
/// their tree ids (format rule 5).
fn trees_key(ws: WorkspaceId) -> Vec<u8> {
    [b"index_trees/".as_slice(), &be(ws.get())].concat()
}

pub(super) fn index_key(ws: WorkspaceId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&be(ws.get()));
    k[8..].copy_from_slice(&be(seq));
    k
}

pub(super) fn next_index_seq(t: &Table<'_>, ws: WorkspaceId) -> Result<u64> {
    let (lo, hi) = (index_key(ws, 0), index_key(ws, u64::MAX));
    let last = t
        .range(lo.as_slice()..=hi.as_slice())?
        .next_back()
        .transpose()?;
    Ok(last.map(|(k, _)| u64_at(k.value(), 8) + 1).unwrap_or(0))
}

pub(super) fn put_index_base(
    t: &mut Table<'_>,
    ws: WorkspaceId,
    entries: &[IndexChange],
) -> Result<()> {
    let seqs = next_index_seq(t, ws)?..;
    let (lo, hi) = (index_key(ws, 0), index_key(ws, u64::MAX));
    t.retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)?;
    for (seq, value) in seqs.zip(super::fitted(entries, |c| index_segment(Segment::Base, c))) {
        t.insert(index_key(ws, seq).as_slice(), value.as_slice())?;
    }
    Ok(())
}

/// A warm-index segment of the current version: the version byte, 1 for a base segment (0
/// for journal), the changes (format rule 6).
pub(super) fn index_segment(kind: Segment, changes: &[IndexChange]) -> Vec<u8> {
    let mut out = vec![SEGMENT_VERSION, u8::from(kind == Segment::Base)];
    out.extend_from_slice(&lz4_flex::block::compress_prepend_size(&bitcode::encode(
        changes,
    )));
    out
}

/// A warm-index segment of any version (format rule 6).
pub(super) fn decode_index_segment(bytes: &[u8]) -> Result<(Segment, Vec<IndexChange>)> {
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
    let kind = if base == 1 {
        Segment::Base
    } else {
        Segment::Journal
    };
    Ok((kind, changes))
}
