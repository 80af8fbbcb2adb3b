//! Tree objects: one per directory (a large directory: a few), the nodes of a snapshot's
//! Merkle DAG.
//!
//! # Format (version 2)
//! 1. A tree is the bitcode encoding of [`Tree`]; its id is the xxh3-128 of those bytes.
//! 2. Entries are sorted by name (bytewise) and names are unique within a tree.
//! 3. A name is one path component: non-empty, not `.` or `..`, without `/` or NUL. Names are raw
//!    bytes, so non-UTF-8 names survive byte for byte.
//! 4. A file entry's id is its content's blob id, a symlink's the blob of its target bytes, a
//!    directory's the id of its own tree. `size` is the file's length (the target's for symlinks,
//!    the number of entries for directories).
//! 5. (Version 2.) A directory of more than [`SPLIT_MIN`] entries is stored split: its entries,
//!    in order, are cut into runs called parts, each stored as a tree of rules 1–4, and the
//!    directory's id is that of a *split tree* naming the parts in order. A split tree's
//!    entries are directories whose name is a NUL byte followed by the part's first name,
//!    mode 0, size the part's number of entries, id the part's tree id; it has at least two.
//!    A part is never itself split, is not empty, and every name in it sorts after the names
//!    of the part before it. The NUL makes a split tree unreadable as a directory by rule 3,
//!    so it can be told apart and a version-1 reader refuses it instead of misreading it.
//! 6. (Version 2.) Parts end after an entry whose name's xxh3-64 is 0 modulo [`PART_AVG`]
//!    (content-defined, as bup's and prolly trees' split points: a change to one entry, or an
//!    entry added or removed, changes only its own part, so the others keep their ids and
//!    are neither stored again nor compared again), and after [`PART_MAX`] entries whatever
//!    the names. Writers must cut this way for equal directories to get equal ids; readers
//!    accept any cut that keeps rule 5.
//!
//! Version 1 (rules 1–4, every directory one tree) is what a directory of at most
//! [`SPLIT_MIN`] entries still is, byte for byte: stores written before version 2 read, and
//! their trees keep their ids.

use std::ops::Range;

use super::Id;

/// Directories of more entries than this are split (format rule 5).
pub const SPLIT_MIN: usize = 4096;
/// Entries of a part on average (format rule 6).
pub const PART_AVG: u64 = 512;
/// Most entries of a part (format rule 6).
pub const PART_MAX: usize = 4 * PART_AVG as usize;

/// The first byte of a split tree's entry names (format rule 5).
const PART_MARK: u8 = 0;

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

    /// Decodes and checks rules 2 and 3 (rule 5 for a split tree), so a crafted tree cannot
    /// name a path outside its directory. A split tree is returned as it is stored: see
    /// [`Tree::is_split`].
    pub fn decode(bytes: &[u8]) -> Result<Tree, String> {
        let tree: Tree = bitcode::decode(bytes).map_err(|e| format!("undecodable tree: {e}"))?;
        let split = tree.entries.first().is_some_and(is_part_entry);
        if split && tree.entries.len() < 2 {
            return Err("a split tree of one part".to_owned());
        }
        for (i, e) in tree.entries.iter().enumerate() {
            if split && !is_part_entry(e) {
                return Err(format!(
                    "a split tree names {:?}, not a part",
                    String::from_utf8_lossy(&e.name)
                ));
            }
            let name = if split { &e.name[1..] } else { &e.name[..] };
            if !is_valid_name(name) {
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

    /// Whether this is a split tree, whose entries name parts (format rule 5).
    pub fn is_split(&self) -> bool {
        self.entries.first().is_some_and(is_part_entry)
    }

    /// The split tree naming `parts` (format rule 5).
    pub fn split_of(parts: &[PartRef]) -> Tree {
        let entries = parts
            .iter()
            .map(|p| {
                let mut name = Vec::with_capacity(1 + p.first.len());
                name.push(PART_MARK);
                name.extend_from_slice(&p.first);
                Entry {
                    name,
                    kind: Kind::Dir,
                    mode: 0,
                    size: p.len as u64,
                    id: p.id,
                }
            })
            .collect();
        Tree { entries }
    }

    /// The entry called `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// A part of a split directory as its split tree names it (format rule 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRef {
    /// The part's tree id.
    pub id: Id,
    /// The name of its first entry.
    pub first: Vec<u8>,
    /// Its number of entries.
    pub len: usize,
}

/// Whether a part ends after the entry `name`, the `n`-th of its part counting from 0 (format
/// rule 6).
pub fn ends_part(name: &[u8], n: usize) -> bool {
    xxhash_rust::xxh3::xxh3_64(name).is_multiple_of(PART_AVG) || n + 1 >= PART_MAX
}

/// Where a directory's entries are cut into parts (format rule 6); `None` when it is stored
/// whole (rule 5). `entries` are sorted.
pub fn parts(entries: &[Entry]) -> Option<Vec<Range<usize>>> {
    if entries.len() <= SPLIT_MIN {
        return None;
    }
    let mut out = Vec::with_capacity(entries.len() / PART_AVG as usize + 1);
    let mut start = 0;
    for (i, e) in entries.iter().enumerate() {
        if ends_part(&e.name, i - start) {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < entries.len() {
        out.push(start..entries.len());
    }
    Some(out)
}

/// Whether `e` names a part of a split tree (format rule 5).
fn is_part_entry(e: &Entry) -> bool {
    e.kind == Kind::Dir && e.mode == 0 && e.name.first() == Some(&PART_MARK)
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

    fn big(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| entry(format!("file{i:07}.json").as_bytes()))
            .collect()
    }

    /// The names of each part's entries.
    fn cut(entries: &[Entry]) -> Vec<Vec<Vec<u8>>> {
        parts(entries)
            .unwrap()
            .into_iter()
            .map(|r| entries[r].iter().map(|e| e.name.clone()).collect())
            .collect()
    }

    #[test]
    fn a_directory_of_split_min_entries_is_one_tree_as_in_version_1() {
        assert_eq!(parts(&big(SPLIT_MIN)), None);
        let n = SPLIT_MIN + 1;
        let cuts = parts(&big(n)).unwrap();
        assert!(cuts.len() >= 3, "{} parts", cuts.len());
        assert_eq!(cuts.first().unwrap().start, 0);
        assert_eq!(cuts.last().unwrap().end, n);
        assert!(cuts.windows(2).all(|w| w[0].end == w[1].start));
        assert!(cuts.iter().all(|r| !r.is_empty() && r.len() <= PART_MAX));
    }

    /// Rule 6: an entry changed, added or removed changes only its own part (and, added or
    /// removed where a cut falls, the one beside it); every other part stays equal.
    #[test]
    fn a_change_leaves_every_other_part_equal() {
        let before = big(200_000);
        let parts_before = cut(&before);
        let avg = before.len() / parts_before.len();
        assert!((256..=1024).contains(&avg), "{avg} entries a part");
        let mut changed = before.clone();
        changed[100_000].id = Id::of(b"new content");
        assert_eq!(cut(&changed), parts_before, "same cuts");
        let mut added = before.clone();
        added.insert(150_001, entry(b"file0150000.json~"));
        added.remove(30_000);
        let parts_after = cut(&added);
        let kept = parts_after
            .iter()
            .filter(|p| parts_before.contains(p))
            .count();
        assert!(
            kept + 4 >= parts_before.len(),
            "{kept} of {} parts kept",
            parts_before.len()
        );
    }

    /// Rule 6 pinned: equal directories get equal ids only while every build cuts them
    /// alike, so a change to the cut (the hash, [`PART_AVG`], [`PART_MAX`]) is a format change.
    #[test]
    fn the_cuts_are_pinned() {
        let cuts = parts(&big(20_000)).unwrap();
        let ends: Vec<usize> = cuts.iter().take(6).map(|r| r.end).collect();
        assert_eq!((cuts.len(), ends), (PINNED_PARTS, PINNED_ENDS.to_vec()));
    }
    const PINNED_PARTS: usize = 40;
    const PINNED_ENDS: [usize; 6] = [1545, 1842, 1913, 3277, 4338, 4659];

    #[test]
    fn a_split_tree_decodes_as_stored_and_must_name_only_parts() {
        let entries = big(5000);
        let cuts = parts(&entries).unwrap();
        let named: Vec<PartRef> = cuts
            .iter()
            .map(|r| PartRef {
                id: Id::of(&r.start.to_le_bytes()),
                first: entries[r.start].name.clone(),
                len: r.len(),
            })
            .collect();
        let split = Tree::split_of(&named);
        assert!(split.is_split() && !Tree { entries: big(3) }.is_split());
        assert_eq!(Tree::decode(&split.encode()).unwrap(), split);
        let mut mixed = split.clone();
        mixed.entries.push(entry(b"zzz"));
        assert!(
            Tree::decode(&mixed.encode()).is_err(),
            "a name beside parts"
        );
        let one = Tree {
            entries: split.entries[..1].to_vec(),
        };
        assert!(Tree::decode(&one.encode()).is_err(), "one part");
        let mut escape = split.clone();
        escape.entries[0].name = b"\0..".to_vec();
        assert!(Tree::decode(&escape.encode()).is_err(), "a part named ..");
        let mut nul = Tree { entries: big(2) };
        nul.entries[0].name = b"\0a".to_vec();
        assert!(
            Tree::decode(&nul.encode()).is_err(),
            "a file entry named with a NUL"
        );
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
