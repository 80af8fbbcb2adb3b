//! The objects a remote holds (see the layout in [`super`]).
//!
//! # Pack entries (format version 1)
//! 1. A pack is its entries one after another, nothing else; an index says where each is.
//! 2. An entry is one object sealed with [`Purpose::Object`]. Its plaintext is the kind byte
//!    ([`KIND_BLOB`], [`KIND_TREE`], [`KIND_CHUNKS`]), a compression byte (0: raw, 1: one LZ4
//!    block), the object's length (8 bytes little-endian) and its bytes.
//! 3. A blob (a file's content, a symlink's target, a chunk of a large file) and a tree are
//!    stored under their local ids, and a reader checks that the bytes hash to it. A chunk
//!    list ([`crate::store::chunked`]'s format) is stored under its file's id; its chunks are
//!    blobs of their own.
//! 4. An index is the sealed ([`Purpose::Index`]) bitcode of [`PackIndex`].
//! 5. A snapshot object is the sealed ([`Purpose::Snapshot`]) bitcode of [`SnapshotObject`]:
//!    the local catalog's snapshot record (its own versioned format) and the workspace path.

use serde::{Deserialize, Serialize};

use super::RemoteError;
use super::backend::Connection;
use super::crypto::{self, KdfParams, Key, Purpose};
use crate::store::Id;

/// The format version of a remote.
pub const FORMAT: u32 = 1;
/// A file's content, a symlink's target, or a chunk.
pub const KIND_BLOB: u8 = 0;
/// A tree (a directory, a part of one, or a split tree).
pub const KIND_TREE: u8 = 1;
/// The chunk list of a large file.
pub const KIND_CHUNKS: u8 = 2;
const CHECK_TEXT: &[u8] = b"chkpt remote key check";
const HEADER: usize = 1 + 1 + 8;

/// The `config` object (JSON, not encrypted).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteConfigObject {
    /// [`FORMAT`].
    pub chkpt_remote: u32,
    /// Present when the key comes from a passphrase.
    #[serde(default)]
    pub kdf: Option<Kdf>,
    /// [`CHECK_TEXT`] sealed with the key, hex.
    pub check: String,
}

/// How a passphrase becomes the key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kdf {
    /// Always "argon2id".
    pub algorithm: String,
    /// Its costs.
    #[serde(flatten)]
    pub params: KdfParams,
    /// The salt, hex.
    pub salt: String,
}

impl RemoteConfigObject {
    /// A new remote's configuration, for `key`.
    pub fn new(key: &Key, kdf: Option<Kdf>) -> Result<RemoteConfigObject, RemoteError> {
        Ok(RemoteConfigObject {
            chkpt_remote: FORMAT,
            kdf,
            check: crypto::hex(&key.seal(Purpose::Check, CHECK_TEXT)?),
        })
    }

    /// Whether `key` is this remote's.
    pub fn opens_with(&self, key: &Key) -> bool {
        crypto::unhex(&self.check)
            .and_then(|sealed| key.open(Purpose::Check, &sealed))
            .is_some_and(|plain| plain == CHECK_TEXT)
    }
}

/// One object's place in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
pub struct IndexEntry {
    /// The object's id.
    pub id: Id,
    /// [`KIND_BLOB`], [`KIND_TREE`] or [`KIND_CHUNKS`].
    pub kind: u8,
    /// Where its sealed entry starts.
    pub offset: u64,
    /// Its sealed entry's length.
    pub len: u32,
}

/// A pack's index.
#[derive(Clone, Debug, Default, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
pub struct PackIndex {
    /// Its entries, in pack order.
    pub entries: Vec<IndexEntry>,
}

/// A snapshot as the remote keeps it.
#[derive(Clone, Debug, bitcode::Encode, bitcode::Decode)]
pub struct SnapshotObject {
    /// The local catalog's record ([`crate::store::records::encode`]).
    pub record: Vec<u8>,
    /// The workspace's path, bytes.
    pub workspace: Vec<u8>,
}

/// A pack being filled.
#[derive(Debug)]
pub struct PackBuilder {
    /// Its name: its origin (the data directory's, see `upload::snapshot_name`), `-`, and
    /// 32 random hex digits.
    pub name: String,
    /// Its bytes so far.
    pub bytes: Vec<u8>,
    /// Its index so far.
    pub index: PackIndex,
    /// Plain (uncompressed) bytes of the objects in it.
    pub raw_bytes: u64,
}

impl PackBuilder {
    /// An empty pack with a new name, written by data directory `origin`.
    pub fn new(origin: &str) -> Result<PackBuilder, RemoteError> {
        Ok(PackBuilder {
            name: format!("{origin}-{}", crypto::hex(&crypto::random_bytes::<16>()?)),
            bytes: Vec::new(),
            index: PackIndex::default(),
            raw_bytes: 0,
        })
    }

    /// Appends object `id` of `kind`.
    pub fn add(&mut self, key: &Key, id: Id, kind: u8, data: &[u8]) -> Result<(), RemoteError> {
        let mut plain = Vec::with_capacity(HEADER + data.len());
        plain.push(kind);
        let mut scratch = Vec::new();
        match (data.len() >= 64)
            .then(|| crate::store::lz4_block(data, &mut scratch))
            .flatten()
        {
            Some(n) => {
                plain.push(1);
                plain.extend_from_slice(&(data.len() as u64).to_le_bytes());
                plain.extend_from_slice(&scratch[..n]);
            }
            None => {
                plain.push(0);
                plain.extend_from_slice(&(data.len() as u64).to_le_bytes());
                plain.extend_from_slice(data);
            }
        }
        let sealed = key.seal(Purpose::Object, &plain)?;
        let len = u32::try_from(sealed.len())
            .map_err(|_| RemoteError::Config(format!("object {id} is too large for a pack")))?;
        self.index.entries.push(IndexEntry {
            id,
            kind,
            offset: self.bytes.len() as u64,
            len,
        });
        self.bytes.extend_from_slice(&sealed);
        self.raw_bytes += data.len() as u64;
        Ok(())
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.index.entries.is_empty()
    }
}

/// Opens a pack entry: its kind and bytes, checked against `entry` (rule 3). The error is a
/// line for [`super::backend::Connection::damaged`].
pub fn open_object(key: &Key, entry: &IndexEntry, sealed: &[u8]) -> Result<Vec<u8>, String> {
    let plain = key
        .open(Purpose::Object, sealed)
        .ok_or_else(|| format!("object {} does not open with the key", entry.id))?;
    if plain.len() < HEADER || plain[0] != entry.kind {
        return Err(format!("object {} has a bad header", entry.id));
    }
    let raw_len = u64::from_le_bytes(plain[2..HEADER].try_into().unwrap_or_default());
    let raw_len =
        usize::try_from(raw_len).map_err(|_| format!("object {} is too large", entry.id))?;
    let body = &plain[HEADER..];
    let data = match plain[1] {
        0 => body.to_vec(),
        1 => lz4_flex::block::decompress(body, raw_len)
            .map_err(|e| format!("object {} does not decompress: {e}", entry.id))?,
        c => return Err(format!("object {} has unknown compression {c}", entry.id)),
    };
    if data.len() != raw_len {
        return Err(format!("object {} has the wrong length", entry.id));
    }
    if entry.kind != KIND_CHUNKS && Id::of(&data) != entry.id {
        return Err(format!("object {} does not match its id", entry.id));
    }
    Ok(data)
}

/// Seals an index.
pub fn seal_index(key: &Key, index: &PackIndex) -> Result<Vec<u8>, RemoteError> {
    key.seal(Purpose::Index, &bitcode::encode(index))
}

/// Opens an index.
pub fn open_index(key: &Key, sealed: &[u8]) -> Result<PackIndex, String> {
    let plain = key
        .open(Purpose::Index, sealed)
        .ok_or("an index does not open with the key")?;
    bitcode::decode(&plain).map_err(|e| format!("an index does not decode: {e}"))
}

/// Seals a snapshot object.
pub fn seal_snapshot(key: &Key, s: &SnapshotObject) -> Result<Vec<u8>, RemoteError> {
    key.seal(Purpose::Snapshot, &bitcode::encode(s))
}

/// Opens a snapshot object.
pub fn open_snapshot(key: &Key, sealed: &[u8]) -> Result<SnapshotObject, String> {
    let plain = key
        .open(Purpose::Snapshot, sealed)
        .ok_or("a snapshot record does not open with the key")?;
    bitcode::decode(&plain).map_err(|e| format!("a snapshot record does not decode: {e}"))
}

/// The indexes called `names` on `conn`, read `parallel` at a time and opened with `key`.
pub async fn fetch_indexes(
    conn: &Connection,
    key: &Key,
    names: Vec<String>,
    parallel: usize,
) -> Result<Vec<(String, PackIndex)>, RemoteError> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(names)
        .map(|name| async move {
            let bytes = conn
                .get(&index_path(&name))
                .await?
                .ok_or_else(|| conn.damaged(format!("index {name} vanished")))?;
            let index = open_index(key, &bytes).map_err(|e| conn.damaged(e))?;
            Ok::<_, RemoteError>((name, index))
        })
        .buffer_unordered(parallel)
        .try_collect()
        .await
}

/// The object name of pack or index `name`, and of snapshot `id`.
pub fn pack_path(name: &str) -> String {
    format!("packs/{name}")
}
/// See [`pack_path`].
pub fn index_path(name: &str) -> String {
    format!("index/{name}")
}
/// See [`pack_path`].
pub fn snapshot_path(id: u64) -> String {
    format!("snapshots/{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_through_a_pack_and_tampering_is_caught() {
        let key = Key::from_bytes(&[3; 32]);
        let mut pack = PackBuilder::new("0123456789abcdef").unwrap();
        let text = b"compressible ".repeat(200);
        let noise = chkpt_testkit::noise(5000, 1);
        pack.add(&key, Id::of(&text), KIND_BLOB, &text).unwrap();
        pack.add(&key, Id::of(&noise), KIND_TREE, &noise).unwrap();
        assert!(
            pack.bytes.len() < text.len() + noise.len(),
            "text is compressed"
        );
        for (entry, want) in pack.index.entries.iter().zip([&text[..], &noise[..]]) {
            let at = entry.offset as usize..entry.offset as usize + entry.len as usize;
            assert_eq!(
                open_object(&key, entry, &pack.bytes[at.clone()]).unwrap(),
                want
            );
            let mut bad = pack.bytes[at].to_vec();
            bad[40] ^= 1;
            assert!(open_object(&key, entry, &bad).is_err());
        }
        let sealed = seal_index(&key, &pack.index).unwrap();
        assert_eq!(open_index(&key, &sealed).unwrap(), pack.index);
        assert!(open_index(&Key::from_bytes(&[4; 32]), &sealed).is_err());
        let cfg = RemoteConfigObject::new(&key, None).unwrap();
        assert!(cfg.opens_with(&key) && !cfg.opens_with(&Key::from_bytes(&[4; 32])));
    }
}
