//! Tree objects: one per directory, the nodes of a snapshot's Merkle DAG.
//!
//! # Format
//! 1. A tree is the bitcode encoding of [`Tree`]; its id is the xxh3-128 of those bytes.
//! 2. Entries are sorted by name (bytewise) and names are unique within a tree.
//! 3. A name is one path component: non-empty, not `.` or `..`, without `/` or NUL. Names are raw
//!    bytes, so non-UTF-8 names survive byte for byte.
//! 4. A file entry's id is its content's blob id, a symlink's the blob of its target bytes, a
//!    directory's the id of its own tree. `size` is the file's length (the target's for symlinks,
//!    the number of entries for directories).

use super::Id;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, bitcode::Encode, bitcode::Decode)]
pub enum Kind {
    /// A regular file (executable or not: see the mode).
    File,
    /// A symbolic link, stored as its target, never followed.
    Symlink,
    /// A directory.
    Dir,
}

/// One entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
pub struct Entry {
    /// One path component, raw bytes.
    pub name: Vec<u8>,
    /// File, symlink or directory.
    pub kind: Kind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Length in bytes (entries for a directory).
    pub size: u64,
    /// Content, target or subtree id.
    pub id: Id,
}

impl Entry {
    /// Whether the owner may execute it.
    pub fn is_executable(&self) -> bool {
        self.kind == Kind::File && self.mode & 0o111 != 0
    }
}

/// A directory's entries, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
pub struct Tree {
    /// Sorted by name, unique.
    pub entries: Vec<Entry>,
}

impl Tree {
    /// Encodes to the stored form.
    pub fn encode(&self) -> Vec<u8> {
        bitcode::encode(self)
    }

    /// Decodes and checks rules 2 and 3, so a crafted tree cannot name a path outside its
    /// directory.
    pub fn decode(bytes: &[u8]) -> Result<Tree, String> {
        let tree: Tree = bitcode::decode(bytes).map_err(|e| format!("undecodable tree: {e}"))?;
        for (i, e) in tree.entries.iter().enumerate() {
            if !is_valid_name(&e.name) {
                return Err(format!(
                    "invalid entry name {:?}",
                    String::from_utf8_lossy(&e.name)
                ));
            }
            if i > 0 && tree.entries[i - 1].name >= e.name {
                return Err("entries not sorted or not unique".to_owned());
            }
        }
        Ok(tree)
    }

    /// The entry called `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// Whether `name` may be a path component in a tree (format rule 3).
pub fn is_valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &[u8]) -> Entry {
        Entry {
            name: name.to_vec(),
            kind: Kind::File,
            mode: 0o644,
            size: 1,
            id: Id::of(name),
        }
    }

    /// One entry of each kind, one name that is not UTF-8.
    fn sample() -> Tree {
        Tree {
            entries: vec![
                entry(b"a"),
                Entry {
                    name: b"b\xff".to_vec(),
                    kind: Kind::Dir,
                    mode: 0o755,
                    size: 2,
                    id: Id::of(b"subtree"),
                },
                Entry {
                    name: b"link".to_vec(),
                    kind: Kind::Symlink,
                    mode: 0o777,
                    size: 6,
                    id: Id::of(b"target"),
                },
                Entry {
                    name: b"run.sh".to_vec(),
                    kind: Kind::File,
                    mode: 0o4755,
                    size: u64::MAX,
                    id: Id::of(b"#!/bin/sh"),
                },
            ],
        }
    }

    /// The stored form of [`sample`], and its id, as this format writes them.
    const SAMPLE_BYTES: &str = concat!(
        "04022164006162ff6c696e6b72756e2e73680f02a401ed01ff01ed09000100000000000000020000",
        "00000000000600000000000000ffffffffffffffff001f4e961eb632c6e63468f15a70af6fa99816",
        "e9f4af32cfc55548061a396d0694952a9df77857d5bc7706b12d0d0cc0c0bf771844f82c16f57ae8",
        "f24048b26120"
    );
    const SAMPLE_ID: &str = "7c7b057034fb6866592479b02da79efc";

    #[test]
    fn decode_gives_back_what_was_encoded() {
        let t = sample();
        assert_eq!(Tree::decode(&t.encode()).unwrap(), t);
    }

    /// Rule 1 makes a tree's id the hash of its bytes, and the store finds an unchanged
    /// directory by that id: the same tree must encode to the same bytes in every build, or
    /// each new build would store every tree again, and snapshots taken before could not be
    /// read. These bytes were written by this format; a change here (a new bitcode, a field
    /// added or moved) is a format change and needs a migration.
    #[test]
    fn the_stored_form_is_pinned_byte_for_byte() {
        let bytes = sample().encode();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, SAMPLE_BYTES);
        assert_eq!(Id::of(&bytes).to_hex(), SAMPLE_ID);
        let stored: Vec<u8> = (0..SAMPLE_BYTES.len() / 2)
            .map(|i| u8::from_str_radix(&SAMPLE_BYTES[i * 2..i * 2 + 2], 16).unwrap())
            .collect();
        assert_eq!(Tree::decode(&stored).unwrap(), sample());
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [&b".."[..], b".", b"", b"a/b", b"/etc", b"a\0b"] {
            let t = Tree {
                entries: vec![entry(bad)],
            };
            assert!(Tree::decode(&t.encode()).is_err(), "{bad:?} accepted");
        }
        let unsorted = Tree {
            entries: vec![entry(b"b"), entry(b"a")],
        };
        assert!(Tree::decode(&unsorted.encode()).is_err());
    }
}
