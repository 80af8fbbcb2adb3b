//! Ids: content ids (the xxh3-128 digest of an object's bytes), and the ids of snapshots and
//! workspaces in the catalog.

use std::fmt;
use std::io::{self, Read};

use xxhash_rust::xxh3::{Xxh3, xxh3_128};

/// The id of a stored object (a file's content, a symlink's target or an encoded tree):
/// the xxh3-128 digest of its uncompressed bytes, little-endian.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, bitcode::Encode, bitcode::Decode,
)]
pub struct Id([u8; 16]);

impl Id {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> Id {
        Id(xxh3_128(data).to_le_bytes())
    }

    /// The id of everything `reader` yields, read in chunks (never whole into memory).
    pub fn of_reader(mut reader: impl Read) -> io::Result<(Id, u64)> {
        let mut hasher = Hasher::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finish())
    }

    /// An id from its 16 bytes (as stored in packs and the catalog).
    pub const fn from_bytes(bytes: [u8; 16]) -> Id {
        Id(bytes)
    }

    /// Its 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Lowercase hex, 32 digits.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(32);
        for b in self.0 {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 0xf)] as char);
        }
        s
    }

    /// Parses the 32-digit hex form.
    pub fn from_hex(s: &str) -> Option<Id> {
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
        }
        Some(Id(out))
    }
}

/// Declares a catalog id: a `u64` that is only ever an id of its kind. It persists as the bare
/// number (`serde(transparent)`, and bitcode's encoding of a one-field struct is its field's),
/// so records and journals written with bare `u64`s read back unchanged.
macro_rules! catalog_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone,
            Copy,
            Default,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            serde::Serialize,
            serde::Deserialize,
            bitcode::Encode,
            bitcode::Decode,
        )]
        #[serde(transparent)]
        pub struct $name(u64);

        impl $name {
            /// The id with this number (as stored in the catalog's keys, or parsed from hex).
            pub const fn new(n: u64) -> $name {
                $name(n)
            }

            /// Its number.
            pub const fn get(self) -> u64 {
                self.0
            }

            /// Lowercase hex, 16 digits: the form users see and type.
            pub fn to_hex(self) -> String {
                format!("{:016x}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:016x})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:016x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

catalog_id!(
    /// A snapshot's id: unique in a store, never given out twice.
    SnapshotId
);

catalog_id!(
    /// A workspace's id: unique in a store, each larger than the ones before.
    WorkspaceId
);

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let bytes = d.deserialize_byte_buf(super::records::BytesVisitor)?;
        <[u8; 16]>::try_from(bytes.as_slice())
            .map(Id)
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"16 bytes"))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", &self.to_hex()[..12])
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A streaming hasher that yields the same [`Id`] as [`Id::of`] on the concatenated input.
#[derive(Clone)]
pub struct Hasher {
    inner: Xxh3,
    len: u64,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher {
            inner: Xxh3::new(),
            len: 0,
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher").field("len", &self.len).finish()
    }
}

impl Hasher {
    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }

    /// The id and the number of bytes fed.
    pub fn finish(&self) -> (Id, u64) {
        (Id(self.inner.digest128().to_le_bytes()), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records and journals written when the ids were bare `u64`s must read back, and new ones
    /// be readable by a chkptd of then: the ids encode as the numbers themselves.
    #[test]
    fn catalog_ids_encode_as_their_bare_numbers() {
        for n in [0, 1, 0xdead_beef, u64::MAX] {
            let (s, w) = (SnapshotId::new(n), WorkspaceId::new(n));
            assert_eq!(bitcode::encode(&s), bitcode::encode(&n));
            assert_eq!(bitcode::encode(&Some(w)), bitcode::encode(&Some(n)));
            assert_eq!(
                bitcode::decode::<SnapshotId>(&bitcode::encode(&n)).unwrap(),
                s
            );
            assert_eq!(msgpack(&s), msgpack(&n));
            assert_eq!(msgpack(&Some(w)), msgpack(&Some(n)));
            assert_eq!(
                rmp_serde::from_slice::<WorkspaceId>(&msgpack(&n)).unwrap(),
                w
            );
            assert_eq!(s.to_hex(), format!("{n:016x}"));
            assert_eq!(format!("{s:016x}"), format!("{n:016x}"));
        }
    }

    /// MessagePack of a value, as the records codec writes it.
    fn msgpack<T: serde::Serialize>(value: &T) -> Vec<u8> {
        rmp_serde::to_vec_named(value).unwrap()
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = Hasher::default();
        for chunk in data.chunks(4097) {
            h.update(chunk);
        }
        assert_eq!(h.finish(), (Id::of(&data), data.len() as u64));
        assert_eq!(
            Id::of_reader(&data[..]).unwrap(),
            (Id::of(&data), data.len() as u64)
        );
    }

    #[test]
    fn hex_round_trip() {
        let id = Id::of(b"hello");
        assert_eq!(Id::from_hex(&id.to_hex()), Some(id));
        let bytes: String = id.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(id.to_hex(), bytes, "two lowercase digits a byte, in order");
        assert_eq!(Id([0xab; 16]).to_hex(), "ab".repeat(16));
        assert_eq!(Id::from_hex("zz"), None);
    }
}
