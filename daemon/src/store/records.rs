//! The records the catalog persists (workspaces, snapshots, tripwires, retention policies) and
//! the one codec they are written with.
//!
//! # Format
//! 1. A record is one version byte, then its body.
//! 2. Version 2 (written today): the body is MessagePack with named fields (`rmp-serde`). A
//!    field added later is read as its default from older records; a field a newer chkptd
//!    wrote and this one does not know is ignored. Adding a field therefore needs no new
//!    version: give it a default (`#[serde(default)]` on every record type).
//! 3. Version 1 (chkpt up to the catalog's move here): the body is bitcode of the layouts frozen
//!    in [`v1`]; read, converted, and written back as version 2 the next time the record changes.
//! 4. Removing or renaming a field, or changing its meaning, needs a new version and a
//!    conversion here, and a fixture store of the old version under `daemon/tests/fixtures`
//!    that the format test opens, lists, restores and verifies.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Id, SnapshotId, WorkspaceId};
use crate::error::{Error, Result};

/// The version byte of records written today (format rule 2).
pub const RECORD_VERSION: u8 = 2;
/// The version byte of the bitcode records of format rule 3.
pub const RECORD_VERSION_1: u8 = 1;

/// Why a snapshot was taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// By the daemon after changes settled.
    #[default]
    Auto,
    /// Asked for by a person or a script.
    Manual,
    /// The state just before a restore, so the restore can be undone.
    PreRestore,
}

impl Trigger {
    /// The lower-case name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Auto => "auto",
            Trigger::Manual => "manual",
            Trigger::PreRestore => "pre-restore",
        }
    }
}

/// A snapshot: a root tree plus metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotRecord {
    /// Unique id (shown as 16 hex digits).
    pub id: SnapshotId,
    /// The workspace it belongs to.
    pub workspace: WorkspaceId,
    /// Creation time, µs since the Unix epoch; unique and increasing within a store.
    pub created_us: u64,
    /// The workspace's root tree.
    pub root: Id,
    /// The snapshot before it in the same workspace.
    pub parent: Option<SnapshotId>,
    /// Why it was taken.
    pub trigger: Trigger,
    /// A message from the user.
    pub message: String,
    /// Pinned snapshots are never removed by retention.
    pub pinned: bool,
    /// Files and symlinks in the tree.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Objects this snapshot added to the store.
    pub new_blobs: u64,
    /// Stored bytes this snapshot added.
    pub new_bytes: u64,
    /// Paths added since the parent.
    pub added: u64,
    /// Paths modified since the parent.
    pub modified: u64,
    /// Paths deleted since the parent.
    pub deleted: u64,
    /// Changes before it may have been seen only by a rescan (events lost, daemon down).
    pub rescan: bool,
    /// Problems met while saving (unreadable files skipped, …).
    pub warnings: Vec<String>,
    /// The git branch checked out (empty: none or detached).
    pub git_branch: String,
    /// The git HEAD commit (empty: not a git repository).
    pub git_head: String,
    /// `key=value` labels given with the save (an agent's session, tool, phase, …), in the
    /// order given.
    pub tags: Vec<Tag>,
    /// Later saves that found nothing changed since this snapshot: their messages and tags,
    /// kept here instead of as empty snapshots (see [`Note`]).
    pub notes: Vec<Note>,
    /// The files whose new versions added the most stored bytes in this snapshot, most
    /// first (at most [`MAX_COSTS`]).
    pub costs: Vec<FileCost>,
}

/// Files listed in a snapshot's [`SnapshotRecord::costs`], at most.
pub const MAX_COSTS: usize = 20;

/// What storing a file's new version cost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileCost {
    /// Its path, relative to the workspace.
    #[serde(with = "serde_bytes_vec")]
    pub path: Vec<u8>,
    /// Stored bytes it added (records and their headers).
    pub bytes: u64,
}

/// A `key=value` label on a snapshot or a note.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Tag {
    /// The key, e.g. `session`.
    pub key: String,
    /// The value, e.g. the agent's session id.
    pub value: String,
}

/// Saves that found the tree unchanged since the snapshot they were added to, with one set of
/// tags. Saves with the same tags share one note (a hook before every tool call would
/// otherwise grow the record by one note per call): the first time is kept, the message is
/// the last one given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Note {
    /// When the first of these saves happened, µs since the epoch.
    pub first_us: u64,
    /// When the last one happened.
    pub last_us: u64,
    /// How many saves the note stands for.
    pub count: u64,
    /// The last message given (empty: none).
    pub message: String,
    /// The tags given, in the order given.
    pub tags: Vec<Tag>,
}

/// The tag key naming the agent whose hook took a checkpoint (`chkptctl hook`).
pub const AGENT_TAG: &str = "agent";

/// Notes a snapshot keeps at most; past that the one last used longest ago goes.
pub const MAX_NOTES: usize = 200;

impl SnapshotRecord {
    /// Adds a save that found nothing changed: to the note with the same tags, else as a new
    /// one.
    pub fn add_note(&mut self, at_us: u64, message: &str, tags: &[Tag]) {
        let mut sorted = tags.to_vec();
        sorted.sort();
        let same = |n: &Note| {
            let mut t = n.tags.clone();
            t.sort();
            t == sorted
        };
        if let Some(n) = self.notes.iter_mut().find(|n| same(n)) {
            n.last_us = at_us;
            n.count += 1;
            if !message.is_empty() {
                n.message = message.to_owned();
            }
            return;
        }
        self.notes.push(Note {
            first_us: at_us,
            last_us: at_us,
            count: 1,
            message: message.to_owned(),
            tags: tags.to_vec(),
        });
        if self.notes.len() > MAX_NOTES
            && let Some(oldest) = (0..self.notes.len()).min_by_key(|&i| self.notes[i].last_us)
        {
            self.notes.remove(oldest);
        }
    }

    /// Whether a person or a script asked for this state to be kept: a manual save made it,
    /// or found it unchanged and left a note. Retention never removes such a snapshot. The
    /// checkpoints an agent's hooks take (tagged `agent=…`) are not counted: one per tool
    /// call would otherwise be kept forever; the policy thins them like automatic ones.
    pub fn saved_by_hand(&self) -> bool {
        let by_hand = |tags: &[Tag]| !tags.iter().any(|t| t.key == AGENT_TAG);
        (self.trigger == Trigger::Manual && by_hand(&self.tags))
            || self.notes.iter().any(|n| by_hand(&n.tags))
    }

    /// Whether the snapshot's own tags, or one note's, include every tag of `want`.
    pub fn has_tags(&self, want: &[Tag]) -> bool {
        let all_in = |set: &[Tag]| want.iter().all(|w| set.contains(w));
        all_in(&self.tags) || self.notes.iter().any(|n| all_in(&n.tags))
    }

    /// The id as shown to people: 16 lowercase hex digits.
    pub fn hex_id(&self) -> String {
        self.id.to_hex()
    }
}

/// A watched (or once watched) folder.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkspaceRecord {
    /// Unique id.
    pub id: WorkspaceId,
    /// Absolute, canonical path bytes.
    #[serde(with = "serde_bytes_vec")]
    pub path: Vec<u8>,
    /// Quiet period before an auto snapshot, ms.
    pub idle_ms: u64,
    /// Longest wait after the first unsaved change, ms.
    pub max_delay_ms: u64,
    /// Whether dependency and build folders are saved too.
    pub include_dependency_dirs: bool,
    /// Whether `.git` is saved too.
    pub include_git: bool,
    /// When it was first watched, µs since the epoch.
    pub created_us: u64,
    /// Whether the daemon watches it (re-watched after a restart).
    pub watched: bool,
    /// Which automatic snapshots are kept.
    pub retention: Policy,
    /// A fired mass-change tripwire nobody acknowledged yet.
    pub tripwire: Option<TripwireRecord>,
}

/// What a workspace saves beyond the default (see the workspace's exclusion rules).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Include {
    /// Dependency and build folders.
    pub dependency_dirs: bool,
    /// `.git`.
    pub git: bool,
}

impl WorkspaceRecord {
    /// What its snapshots save beyond the default.
    pub fn include(&self) -> Include {
        Include {
            dependency_dirs: self.include_dependency_dirs,
            git: self.include_git,
        }
    }
}

/// A fired mass-change tripwire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TripwireRecord {
    /// The snapshot taken just before the burst (pinned), if there was one.
    pub pinned: Option<SnapshotId>,
    /// Files deleted or rewritten when it fired.
    pub changed: u64,
    /// When it fired, µs since the epoch.
    pub fired_us: u64,
    /// What the burst looks like (what git could not give back).
    pub detail: String,
}

/// A retention policy. All zero means the defaults (see `retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Keep the newest N.
    pub keep_last: u32,
    /// Keep the newest in each of the last N hours that have one.
    pub keep_hourly: u32,
    /// Likewise per day.
    pub keep_daily: u32,
    /// Likewise per week.
    pub keep_weekly: u32,
    /// Keep everything younger than this, µs (counted from the newest snapshot).
    pub keep_within_us: u64,
    /// Then remove the oldest automatic snapshots while the bytes they added exceed this;
    /// 0 = no budget.
    pub max_store_bytes: u64,
}

/// A record type of this module, with how version 1 wrote it.
pub trait Record: Serialize + DeserializeOwned {
    /// What it is, for error messages.
    const WHAT: &'static str;
    /// Decodes a version-1 body (format rule 3).
    fn decode_v1(body: &[u8]) -> std::result::Result<Self, String>;
}

/// Encodes a record (format rule 2).
pub fn encode<T: Record>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    // Writing into a Vec fails only for types serde cannot represent, which ours are not.
    rmp_serde::encode::write_named(&mut out, value)
        .unwrap_or_else(|e| unreachable!("a {} record always encodes: {e}", T::WHAT));
    out
}

/// Decodes a record of any version this chkptd knows.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T> {
    let corrupt = |e: String| Error::Corrupt(format!("catalog {} record: {e}", T::WHAT));
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => {
            rmp_serde::from_slice(body).map_err(|e| corrupt(e.to_string()))
        }
        Some((&RECORD_VERSION_1, body)) => T::decode_v1(body).map_err(corrupt),
        Some((v, _)) => Err(corrupt(format!(
            "format version {v} is newer than this chkptd knows; upgrade chkptd"
        ))),
        None => Err(corrupt("empty".into())),
    }
}

impl Record for SnapshotRecord {
    const WHAT: &'static str = "snapshot";
    fn decode_v1(body: &[u8]) -> std::result::Result<Self, String> {
        v1::decode::<v1::SnapshotRecord>(body).map(Into::into)
    }
}

impl Record for WorkspaceRecord {
    const WHAT: &'static str = "workspace";
    fn decode_v1(body: &[u8]) -> std::result::Result<Self, String> {
        v1::decode::<v1::WorkspaceRecord>(body).map(Into::into)
    }
}

/// `Vec<u8>` as MessagePack bin (not an array of numbers).
mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(super::BytesVisitor)
    }
}

/// Accepts bytes, or a sequence of numbers.
pub(crate) struct BytesVisitor;

impl<'de> serde::de::Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> std::result::Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Vec<u8>, A::Error> {
        let mut out = Vec::new();
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// The layouts of format version 1, frozen: never change them (format rule 3).
pub mod v1 {
    use crate::store::{Id, SnapshotId, WorkspaceId};

    pub(super) fn decode<T: for<'a> bitcode::Decode<'a>>(body: &[u8]) -> Result<T, String> {
        bitcode::decode(body).map_err(|e| e.to_string())
    }

    /// Version 1 of [`super::Trigger`].
    #[derive(Clone, Copy, Debug, bitcode::Encode, bitcode::Decode)]
    #[allow(missing_docs)]
    pub enum Trigger {
        Auto,
        Manual,
        PreRestore,
    }

    /// Version 1 of [`super::SnapshotRecord`].
    #[derive(Clone, Debug, bitcode::Encode, bitcode::Decode)]
    #[allow(missing_docs)]
    pub struct SnapshotRecord {
        pub id: u64,
        pub workspace: u64,
        pub created_us: u64,
        pub root: Id,
        pub parent: Option<u64>,
        pub trigger: Trigger,
        pub message: String,
        pub pinned: bool,
        pub files: u64,
        pub bytes: u64,
        pub new_blobs: u64,
        pub new_bytes: u64,
        pub added: u64,
        pub modified: u64,
        pub deleted: u64,
        pub rescan: bool,
        pub warnings: Vec<String>,
        pub git_branch: String,
        pub git_head: String,
    }

    /// Version 1 of [`super::Policy`].
    #[derive(Clone, Copy, Debug, bitcode::Encode, bitcode::Decode)]
    #[allow(missing_docs)]
    pub struct Policy {
        pub keep_last: u32,
        pub keep_hourly: u32,
        pub keep_daily: u32,
        pub keep_weekly: u32,
        pub keep_within_us: u64,
        pub max_store_bytes: u64,
    }

    /// Version 1 of [`super::TripwireRecord`].
    #[derive(Clone, Copy, Debug, bitcode::Encode, bitcode::Decode)]
    #[allow(missing_docs)]
    pub struct TripwireRecord {
        pub pinned: Option<u64>,
        pub changed: u64,
        pub fired_us: u64,
    }

    /// Version 1 of [`super::WorkspaceRecord`].
    #[derive(Clone, Debug, bitcode::Encode, bitcode::Decode)]
    #[allow(missing_docs)]
    pub struct WorkspaceRecord {
        pub id: u64,
        pub path: Vec<u8>,
        pub idle_ms: u64,
        pub max_delay_ms: u64,
        pub include_dependency_dirs: bool,
        pub created_us: u64,
        pub watched: bool,
        pub retention: Policy,
        pub tripwire: Option<TripwireRecord>,
    }

    impl From<Trigger> for super::Trigger {
        fn from(t: Trigger) -> Self {
            match t {
                Trigger::Auto => super::Trigger::Auto,
                Trigger::Manual => super::Trigger::Manual,
                Trigger::PreRestore => super::Trigger::PreRestore,
            }
        }
    }

    impl From<SnapshotRecord> for super::SnapshotRecord {
        fn from(s: SnapshotRecord) -> Self {
            super::SnapshotRecord {
                id: SnapshotId::new(s.id),
                workspace: WorkspaceId::new(s.workspace),
                created_us: s.created_us,
                root: s.root,
                parent: s.parent.map(SnapshotId::new),
                trigger: s.trigger.into(),
                message: s.message,
                pinned: s.pinned,
                files: s.files,
                bytes: s.bytes,
                new_blobs: s.new_blobs,
                new_bytes: s.new_bytes,
                added: s.added,
                modified: s.modified,
                deleted: s.deleted,
                rescan: s.rescan,
                warnings: s.warnings,
                git_branch: s.git_branch,
                git_head: s.git_head,
                tags: Vec::new(),
                notes: Vec::new(),
                costs: Vec::new(),
            }
        }
    }

    impl From<Policy> for super::Policy {
        fn from(p: Policy) -> Self {
            super::Policy {
                keep_last: p.keep_last,
                keep_hourly: p.keep_hourly,
                keep_daily: p.keep_daily,
                keep_weekly: p.keep_weekly,
                keep_within_us: p.keep_within_us,
                max_store_bytes: p.max_store_bytes,
            }
        }
    }

    impl From<WorkspaceRecord> for super::WorkspaceRecord {
        fn from(w: WorkspaceRecord) -> Self {
            super::WorkspaceRecord {
                id: WorkspaceId::new(w.id),
                path: w.path,
                idle_ms: w.idle_ms,
                max_delay_ms: w.max_delay_ms,
                include_dependency_dirs: w.include_dependency_dirs,
                include_git: false,
                created_us: w.created_us,
                watched: w.watched,
                retention: w.retention.into(),
                tripwire: w.tripwire.map(|t| super::TripwireRecord {
                    pinned: t.pinned.map(SnapshotId::new),
                    changed: t.changed,
                    fired_us: t.fired_us,
                    detail: String::new(),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_missing_field_reads_as_its_default() {
        let s = SnapshotRecord {
            id: SnapshotId::new(7),
            root: Id::of(b"x"),
            message: "hello".into(),
            trigger: Trigger::PreRestore,
            warnings: vec!["w".into()],
            ..Default::default()
        };
        assert_eq!(decode::<SnapshotRecord>(&encode(&s)).unwrap(), s);
        // A record written by an older chkptd without `git_head` (and with a field a newer
        // one added): both are fine.
        #[derive(Serialize)]
        struct Older {
            id: u64,
            message: String,
            some_future_field: u32,
        }
        let mut bytes = vec![RECORD_VERSION];
        rmp_serde::encode::write_named(
            &mut bytes,
            &Older {
                id: 9,
                message: "m".into(),
                some_future_field: 3,
            },
        )
        .unwrap();
        let read: SnapshotRecord = decode(&bytes).unwrap();
        assert_eq!((read.id.get(), read.message.as_str()), (9, "m"));
        assert_eq!(read.git_head, "");
        assert!(read.tags.is_empty() && read.notes.is_empty());
    }

    #[test]
    fn tags_and_notes_round_trip_and_notes_with_the_same_tags_merge() {
        let tag = |k: &str, v: &str| Tag {
            key: k.into(),
            value: v.into(),
        };
        let mut s = SnapshotRecord {
            id: SnapshotId::new(1),
            tags: vec![tag("agent", "claude-code"), tag("session", "s1")],
            ..Default::default()
        };
        s.add_note(10, "first", &[tag("session", "s2"), tag("tool", "Bash")]);
        s.add_note(20, "", &[tag("tool", "Bash"), tag("session", "s2")]);
        s.add_note(30, "other", &[tag("session", "s2")]);
        assert_eq!(
            s.notes.len(),
            2,
            "the same tags in another order share a note"
        );
        assert_eq!(
            (s.notes[0].first_us, s.notes[0].last_us, s.notes[0].count),
            (10, 20, 2)
        );
        assert_eq!(
            s.notes[0].message, "first",
            "an empty message keeps the last one"
        );
        assert_eq!(decode::<SnapshotRecord>(&encode(&s)).unwrap(), s);
        assert!(s.has_tags(&[tag("session", "s1"), tag("agent", "claude-code")]));
        assert!(s.has_tags(&[tag("session", "s2"), tag("tool", "Bash")]));
        assert!(
            !s.has_tags(&[tag("session", "s1"), tag("tool", "Bash")]),
            "all tags from one set: the snapshot's or one note's"
        );
        for i in 0..MAX_NOTES as u64 + 5 {
            s.add_note(100 + i, "", &[tag("n", &i.to_string())]);
        }
        assert_eq!(s.notes.len(), MAX_NOTES);
        assert_eq!(
            s.notes[0].tags,
            vec![tag("n", "5")],
            "the oldest went first"
        );
    }

    #[test]
    fn version_1_records_still_read() {
        let old = v1::WorkspaceRecord {
            id: 3,
            path: b"/home/me/p".to_vec(),
            idle_ms: 5000,
            max_delay_ms: 60_000,
            include_dependency_dirs: true,
            created_us: 11,
            watched: true,
            retention: v1::Policy {
                keep_last: 2,
                keep_hourly: 0,
                keep_daily: 0,
                keep_weekly: 0,
                keep_within_us: 0,
                max_store_bytes: 99,
            },
            tripwire: Some(v1::TripwireRecord {
                pinned: Some(4),
                changed: 60,
                fired_us: 12,
            }),
        };
        let mut bytes = vec![RECORD_VERSION_1];
        bytes.extend_from_slice(&bitcode::encode(&old));
        let w: WorkspaceRecord = decode(&bytes).unwrap();
        assert_eq!(w.path, b"/home/me/p");
        assert_eq!(w.retention.keep_last, 2);
        assert_eq!(w.retention.max_store_bytes, 99);
        assert_eq!(w.tripwire.unwrap().changed, 60);
        assert!(matches!(
            decode::<WorkspaceRecord>(&[9, 1, 2]),
            Err(Error::Corrupt(m)) if m.contains("newer")
        ));
    }
}
