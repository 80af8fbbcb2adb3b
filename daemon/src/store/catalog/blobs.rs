//! The blob index segments and the packs' committed lengths (format rules 1, 2 and 6).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use redb::ReadableTable;

use super::{BLOB_SEGMENTS, Catalog, PACKS, SEGMENT_V1, SEGMENT_VERSION, Table, be};
use crate::error::{Error, Result};
use crate::store::Id;
use crate::store::pack::Loc;

/// A version 2 blob index segment (format rule 6): its entries' fields, column by column.
#[derive(Debug, bitcode::Encode, bitcode::Decode)]
pub(super) struct BlobColumns {
    ids: Vec<[u8; 16]>,
    packs: Vec<u32>,
    offsets: Vec<u64>,
    lens: Vec<u64>,
    raw_lens: Vec<u64>,
    flags: Vec<u8>,
}

/// Bytes of one blob index entry: id and [`Loc`].
const BLOB_ENTRY: usize = 16 + Loc::ENCODED;

impl Catalog {
    /// The committed blob index, without entries that reach past their pack's committed
    /// length (format rule 2), and how many such entries were left out.
    pub fn load_blob_index(&self) -> Result<(HashMap<Id, Loc>, u64)> {
        use rayon::prelude::*;
        let lengths: HashMap<u32, u64> = self.pack_lengths()?.into_iter().collect();
        // Copied out in one read and decoded in parallel (a restart waits for this); applied
        // in order, so that a later segment's entry for an id still wins.
        let raw: Vec<Vec<u8>> = self.kv.read(|r| {
            let mut out = Vec::new();
            for kv in r.open_table(BLOB_SEGMENTS)?.iter()? {
                out.push(kv?.1.value().to_vec());
            }
            Ok(out)
        })?;
        let segments: Vec<Vec<(Id, Loc)>> = raw
            .par_iter()
            .map(|bytes| decode_blob_segment(bytes))
            .collect::<Result<_>>()?;
        drop(raw);
        let mut index = HashMap::with_capacity(segments.iter().map(Vec::len).sum());
        let mut ignored = 0u64;
        for (id, loc) in segments.into_iter().flatten() {
            if lengths.get(&loc.pack).is_some_and(|&len| loc.end() <= len) {
                index.insert(id, loc);
            } else {
                ignored += 1;
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

    pub(super) fn put_blob_segments(&self, t: &mut Table<'_>, entries: &[(Id, Loc)]) -> Result<()> {
        for value in super::fitted(entries, blob_segment) {
            let seq = self.next_blob_segment.fetch_add(1, Ordering::SeqCst);
            t.insert(be(seq).as_slice(), value.as_slice())?;
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
}

/// A blob index segment of the current version (format rule 6).
pub(super) fn blob_segment(entries: &[(Id, Loc)]) -> Vec<u8> {
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
pub(super) fn decode_blob_segment(bytes: &[u8]) -> Result<Vec<(Id, Loc)>> {
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
