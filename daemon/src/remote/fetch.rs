//! Reading objects from a remote's packs: one at a time, or many at once in a few large range
//! reads.
//!
//! A pack holds its objects in the order a snapshot's walk met them, so the objects a restore
//! needs sit mostly side by side. [`plan`] groups them into runs: neighbours of one pack no
//! more than [`GAP`] apart, up to [`RUN_BYTES`] in all, each fetched with one request. The
//! Linux tree's 86,000 files then cost tens of requests instead of 86,000 (each of which pays a
//! round trip and a signature). Every object is still opened and checked against its id on its
//! own.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::RemoteError;
use super::backend::Connection;
use super::crypto::Key;
use super::format::{self, IndexEntry};
use crate::store::Id;

/// The most bytes one run reads.
pub const RUN_BYTES: u64 = 8 << 20;
/// The widest stretch of objects not needed that a run of file data reads through rather
/// than starting a new request: a round trip costs about what reading this much more does.
pub const GAP: u64 = 256 << 10;
/// The same for trees. They have packs of their own, but a remote written before that had
/// them between file data, which a level's runs would read again and again.
pub const TREE_GAP: u64 = 16 << 10;

/// Where each object is: its pack and entry.
pub type Locations = HashMap<Id, (Arc<str>, IndexEntry)>;

/// Reads every index of the remote.
pub async fn locations(
    conn: &Connection,
    key: &Key,
    parallel: usize,
) -> Result<Locations, RemoteError> {
    let names = conn.list("index").await?;
    let names = names.into_iter().map(|(name, _)| name).collect();
    let indexes = format::fetch_indexes(conn, key, names, parallel).await?;
    Ok(locations_of(&indexes))
}

/// Where each object of `indexes` is.
pub fn locations_of(indexes: &[(String, format::PackIndex)]) -> Locations {
    let mut out = HashMap::new();
    for (name, index) in indexes {
        let name: Arc<str> = name.as_str().into();
        for e in &index.entries {
            out.insert(e.id, (name.clone(), *e));
        }
    }
    out
}

/// Objects of one pack read with one request, each with what its caller wants done with it.
#[derive(Debug)]
pub struct Run<T> {
    pack: Arc<str>,
    range: Range<u64>,
    /// The objects, in pack order.
    pub members: Vec<(IndexEntry, T)>,
}

/// Groups objects into runs (see the module's documentation), reading through at most `gap`
/// bytes not wanted. An object wanted twice (two files with the same content) is read once
/// and handed to both.
pub fn plan<T>(mut wanted: Vec<(Arc<str>, IndexEntry, T)>, gap: u64) -> Vec<Run<T>> {
    wanted.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.offset.cmp(&b.1.offset)));
    let mut runs: Vec<Run<T>> = Vec::new();
    for (pack, e, t) in wanted {
        let end = e.offset + u64::from(e.len);
        if let Some(r) = runs.last_mut() {
            let joins = r.pack == pack
                && e.offset <= r.range.end.saturating_add(gap)
                && end.max(r.range.end) - r.range.start <= RUN_BYTES;
            if joins {
                r.range.end = r.range.end.max(end);
                r.members.push((e, t));
                continue;
            }
        }
        runs.push(Run {
            pack,
            range: e.offset..end,
            members: vec![(e, t)],
        });
    }
    runs
}

/// A run's bytes, from which its members are opened.
#[derive(Debug, Clone)]
pub struct Fetched {
    start: u64,
    bytes: Bytes,
}

impl Fetched {
    /// The object `e` (a member of the run), opened and checked against its id.
    pub fn open(&self, key: &Key, e: &IndexEntry) -> Result<Vec<u8>, String> {
        let at = usize::try_from(e.offset - self.start).map_err(|_| "offset".to_owned())?;
        let sealed = self
            .bytes
            .get(at..at + e.len as usize)
            .ok_or_else(|| format!("object {} is cut short in its pack", e.id))?;
        format::open_object(key, e, sealed)
    }
}

/// Reads objects from a remote's packs, checked against their ids.
#[derive(Debug)]
pub struct Fetcher<'a> {
    conn: &'a Connection,
    key: &'a Key,
    locs: &'a Locations,
    fetched: AtomicU64,
}

impl<'a> Fetcher<'a> {
    /// A reader of the objects `locs` places.
    pub fn new(conn: &'a Connection, key: &'a Key, locs: &'a Locations) -> Fetcher<'a> {
        Fetcher {
            conn,
            key,
            locs,
            fetched: AtomicU64::new(0),
        }
    }

    /// The key objects open with.
    pub fn key(&self) -> &'a Key {
        self.key
    }

    /// The connection it reads through.
    pub fn connection(&self) -> &'a Connection {
        self.conn
    }

    /// Bytes read from the remote so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// A damaged-remote error.
    pub fn damaged(&self, message: String) -> RemoteError {
        self.conn.damaged(message)
    }

    /// Where object `id` is, which must be of `kind` when given.
    pub fn entry(
        &self,
        id: &Id,
        kind: Option<u8>,
    ) -> Result<&'a (Arc<str>, IndexEntry), RemoteError> {
        let found = self.locs.get(id).ok_or_else(|| {
            self.conn
                .damaged(format!("object {id} is not on the remote"))
        })?;
        if kind.is_some_and(|k| k != found.1.kind) {
            return Err(self
                .conn
                .damaged(format!("object {id} is of the wrong kind")));
        }
        Ok(found)
    }

    /// The kind an index gives object `id`.
    pub fn kind(&self, id: &Id) -> Result<u8, RemoteError> {
        Ok(self.entry(id, None)?.1.kind)
    }

    /// Object `id`, which must be of `kind`, read on its own.
    pub async fn object(&self, id: &Id, kind: u8) -> Result<Vec<u8>, RemoteError> {
        let (pack, e) = self.entry(id, Some(kind))?;
        let sealed = self
            .conn
            .get_range(
                &format::pack_path(pack),
                e.offset..e.offset + u64::from(e.len),
            )
            .await?;
        self.fetched
            .fetch_add(sealed.len() as u64, Ordering::Relaxed);
        format::open_object(self.key, e, &sealed).map_err(|m| self.conn.damaged(m))
    }

    /// The bytes of run `r`, with one request.
    pub async fn run<T>(&self, r: &Run<T>) -> Result<Fetched, RemoteError> {
        let bytes = self
            .conn
            .get_range(&format::pack_path(&r.pack), r.range.clone())
            .await?;
        if bytes.len() as u64 != r.range.end - r.range.start {
            return Err(self
                .conn
                .damaged(format!("pack {} is shorter than its index says", r.pack)));
        }
        self.fetched
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(Fetched {
            start: r.range.start,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, offset: u64, len: u32) -> IndexEntry {
        IndexEntry {
            id: Id::of(&[n]),
            kind: format::KIND_BLOB,
            offset,
            len,
        }
    }

    #[test]
    fn neighbours_share_a_run_and_far_or_foreign_objects_do_not() {
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let wanted = vec![
            // More than `GAP` past the end of the one before it.
            (a.clone(), entry(3, 1000 + 2 * GAP + 1, 10), 3),
            (a.clone(), entry(1, 0, 100), 1),
            (b.clone(), entry(4, 100, 10), 4),
            (a.clone(), entry(2, 100 + GAP, 900), 2),
            // The same object again: read once, handed to both.
            (a.clone(), entry(1, 0, 100), 5),
        ];
        let runs = plan(wanted, GAP);
        let shape: Vec<(&str, Range<u64>, Vec<i32>)> = runs
            .iter()
            .map(|r| {
                (
                    r.pack.as_ref(),
                    r.range.clone(),
                    r.members.iter().map(|m| m.1).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("a", 0..1000 + GAP, vec![1, 5, 2]),
                ("a", 1000 + 2 * GAP + 1..1000 + 2 * GAP + 11, vec![3]),
                ("b", 100..110, vec![4]),
            ]
        );
    }

    #[test]
    fn a_run_stops_at_its_size() {
        let a: Arc<str> = "a".into();
        let len = 3 << 20;
        let wanted: Vec<_> = (0..4u8)
            .map(|i| (a.clone(), entry(i, u64::from(i) * u64::from(len), len), i))
            .collect();
        let runs = plan(wanted, GAP);
        let members: Vec<Vec<u8>> = runs
            .iter()
            .map(|r| r.members.iter().map(|m| m.1).collect())
            .collect();
        assert_eq!(members, vec![vec![0, 1], vec![2, 3]]);
        assert!(
            runs.iter()
                .all(|r| r.range.end - r.range.start <= RUN_BYTES)
        );
    }
}
