//! The snapshot-selector grammar, and resolving a selector within a workspace.
//!
//! # Forms
//! 1. `latest` (or nothing): the newest snapshot; `latest~N`: the one N before it.
//! 2. 16 hex digits: a snapshot id; 1 to 15: a unique prefix of one (case does not matter).
//! 3. `@` and a duration (`@30s`, `@10m`, `@2h`, `@1d`, `@1w`, `@1h30m`; humantime's units):
//!    the newest snapshot at or before that long ago.
//! 4. `@` and a local date and time, `YYYY-MM-DDTHH:MM[:SS]` (a space for the `T` works too):
//!    the newest snapshot at or before the end of that second, in the daemon's time zone. A
//!    time that a daylight-saving change skips is taken as the instant after the gap (as
//!    RFC 5545 and Temporal do); a time it repeats, as the later of the two (at or before
//!    either).
//! 5. `@` and an RFC 3339 time with an offset (`@2026-11-24T10:00:00+01:00`, `…Z`): the same,
//!    at that instant.
//! 6. `session:ID`: the newest snapshot an agent session `ID` tagged (`session=ID`, on the
//!    snapshot itself or in a note a save that found nothing changed left on it).
//! 7. `session:ID^`: the state just before that session began: the session's first checkpoint
//!    when it was taken before the agent acted (the hooks before a prompt or a tool call, or a
//!    save that found nothing changed), else (its first checkpoint was taken after a tool,
//!    `phase=post-tool` or `phase=stop`) the snapshot before that one.
//! 8. Anything else is a [`Error::BadSelector`]; an impossible date (`@2026-02-30T10:00`) too.

use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};

use super::Engine;
use crate::error::{Error, Result};
use crate::store::catalog::{SnapshotRecord, Tag};
use crate::store::{SnapshotId, WorkspaceId};
use crate::workspace::now_us;

/// What every selector error suggests.
const FORMS: &str = "use latest, latest~N, an id or unique id prefix, @10m, @2h, @1d, \
                     @2026-11-24T10:00 (local time), @2026-11-24T10:00:00+01:00, session:ID \
                     or session:ID^";

/// The tag key of an agent session's id.
pub const SESSION_TAG: &str = "session";
/// The tag key of the hook phase a checkpoint was taken in.
pub const PHASE_TAG: &str = "phase";
/// Phases whose checkpoint is taken after the agent acted.
pub const AFTER_PHASES: [&str; 2] = ["post-tool", "stop"];

/// A parsed snapshot selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The newest snapshot but `n`.
    Latest(usize),
    /// The newest at or before this long before now.
    Ago(Duration),
    /// The newest at or before this instant, µs since the epoch.
    At(u64),
    /// This snapshot id.
    Id(SnapshotId),
    /// The one snapshot whose id starts with these lowercase hex digits (1 to 15).
    Prefix(String),
    /// An agent session's newest checkpoint, or (`before`) the state before it began.
    Session {
        /// The session's id, as tagged.
        id: String,
        /// The state just before the session began.
        before: bool,
    },
}

impl Selector {
    /// Parses a selector, reading local times in the system's time zone.
    pub fn parse(text: &str) -> Result<Selector> {
        Selector::parse_in(text, &TimeZone::system())
    }

    /// Parses a selector, reading local times in `tz`.
    pub fn parse_in(text: &str, tz: &TimeZone) -> Result<Selector> {
        let sel = text.trim();
        let bad = |help: &str| Error::BadSelector {
            selector: sel.to_owned(),
            help: help.to_owned(),
        };
        if sel.is_empty() || sel == "latest" {
            return Ok(Selector::Latest(0));
        }
        if let Some(n) = sel.strip_prefix("latest~") {
            return n
                .parse()
                .map(Selector::Latest)
                .map_err(|_| bad("expected latest~N with N a number"));
        }
        if let Some(rest) = sel.strip_prefix("session:") {
            let (id, before) = match rest.strip_suffix('^') {
                Some(id) => (id, true),
                None => (rest, false),
            };
            if id.is_empty() || id.contains('^') || id.chars().any(char::is_whitespace) {
                return Err(bad(
                    "expected session:ID or session:ID^ with the session's id",
                ));
            }
            return Ok(Selector::Session {
                id: id.to_owned(),
                before,
            });
        }
        if let Some(when) = sel.strip_prefix('@') {
            return parse_when(when, tz).ok_or_else(|| bad(FORMS));
        }
        if sel.is_empty() || sel.len() > 16 || !sel.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(FORMS));
        }
        let lower = sel.to_ascii_lowercase();
        if lower.len() == 16 {
            return u64::from_str_radix(&lower, 16)
                .map(|n| Selector::Id(SnapshotId::new(n)))
                .map_err(|_| bad(FORMS));
        }
        Ok(Selector::Prefix(lower))
    }
}

/// The part after `@`.
fn parse_when(when: &str, tz: &TimeZone) -> Option<Selector> {
    if when.starts_with(|c: char| c.is_ascii_digit())
        && when.ends_with(|c: char| c.is_ascii_alphabetic())
        && !when.contains(['-', ':'])
    {
        return humantime::parse_duration(when).ok().map(Selector::Ago);
    }
    if let Ok(t) = when.parse::<Timestamp>() {
        // Carries its own offset.
        return Some(Selector::At(end_of_second(t)));
    }
    // A date alone is refused: "the start of that day" and "the end of it" are both likely.
    let when = when.replacen(' ', "T", 1);
    if !when.contains('T') {
        return None;
    }
    let dt: DateTime = when.parse().ok()?;
    let ambiguous = tz.to_ambiguous_timestamp(dt);
    let t = match ambiguous.offset() {
        AmbiguousOffset::Fold { .. } => ambiguous.later(),
        AmbiguousOffset::Unambiguous { .. } | AmbiguousOffset::Gap { .. } => ambiguous.compatible(),
    }
    .ok()?;
    Some(Selector::At(end_of_second(t)))
}

/// The last µs of the second `t` falls in: "at or before 10:00" includes 10:00:00.5.
fn end_of_second(t: Timestamp) -> u64 {
    let us = u64::try_from(t.as_microsecond()).unwrap_or(0);
    us - us % 1_000_000 + 999_999
}

/// Prefix matches looked at, at most, to say how ambiguous a prefix is.
const PREFIX_MATCHES: usize = 10;

impl Engine {
    /// Resolves a snapshot selector (see the module's forms) within workspace `ws`.
    pub fn resolve(&self, ws: WorkspaceId, selector: &str) -> Result<SnapshotRecord> {
        let sel = selector.trim();
        let not_found = |detail: String| Error::SnapshotNotFound {
            selector: sel.to_owned(),
            detail,
        };
        let cat = &self.store.cat;
        match Selector::parse(sel)? {
            Selector::Latest(0) => cat
                .latest(ws)?
                .ok_or_else(|| not_found("this workspace has no snapshot yet".into())),
            Selector::Latest(n) => {
                let want = n.saturating_add(1);
                let mut list = cat.snapshots_of(ws, None, want)?;
                if list.len() == want {
                    list.pop().ok_or_else(|| not_found(sel.into()))
                } else {
                    Err(not_found(format!(
                        "{sel}: the workspace has only {} snapshots",
                        list.len()
                    )))
                }
            }
            Selector::Ago(d) => {
                // Further back than the epoch simply means "before everything".
                let back = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
                self.at_or_before(ws, sel, now_us().saturating_sub(back))
            }
            Selector::At(us) => self.at_or_before(ws, sel, us),
            Selector::Id(id) => match cat.snapshot(id)? {
                Some(s) if s.workspace == ws => Ok(s),
                Some(s) => Err(self.other_workspace(sel, ws, s.workspace)),
                None => Err(not_found(format!("no snapshot {sel} in this workspace"))),
            },
            Selector::Session { id, before } => self.resolve_session(ws, sel, &id, before),
            Selector::Prefix(prefix) => {
                let mut hits = cat.snapshots_with_prefix(ws, &prefix, PREFIX_MATCHES)?;
                match hits.len() {
                    1 => Ok(hits.remove(0)),
                    0 => {
                        // Said precisely when the prefix is another workspace's snapshot.
                        let elsewhere = cat.snapshots_with_prefix_anywhere(&prefix, 2)?;
                        match elsewhere.as_slice() {
                            [one] => Err(self.other_workspace(sel, ws, one.workspace)),
                            _ => Err(not_found(format!("no snapshot {sel} in this workspace"))),
                        }
                    }
                    matches => Err(Error::AmbiguousPrefix { prefix, matches }),
                }
            }
        }
    }

    /// Selector forms 6 and 7.
    fn resolve_session(
        &self,
        ws: WorkspaceId,
        sel: &str,
        session: &str,
        before: bool,
    ) -> Result<SnapshotRecord> {
        let not_found = |detail: String| Error::SnapshotNotFound {
            selector: sel.to_owned(),
            detail,
        };
        let want = [Tag {
            key: SESSION_TAG.into(),
            value: session.into(),
        }];
        // (when, taken after the agent acted, the snapshot) of the session's first and newest
        // checkpoint: a snapshot's own tags date from its creation, a note's from its saves.
        let mut first: Option<(u64, bool, SnapshotRecord)> = None;
        let mut newest: Option<(u64, SnapshotRecord)> = None;
        for item in self.store.cat.snapshot_ids(ws, None) {
            let (_, id) = item?;
            let Some(s) = self.store.cat.snapshot(id)? else {
                continue;
            };
            let mut seen = |first_us: u64, last_us: u64, after: bool| {
                if first.as_ref().is_none_or(|(t, ..)| first_us < *t) {
                    first = Some((first_us, after, s.clone()));
                }
                if newest.as_ref().is_none_or(|(t, _)| last_us > *t) {
                    newest = Some((last_us, s.clone()));
                }
            };
            if want.iter().all(|w| s.tags.contains(w)) {
                let after = s
                    .tags
                    .iter()
                    .any(|t| t.key == PHASE_TAG && AFTER_PHASES.contains(&t.value.as_str()));
                seen(s.created_us, s.created_us, after);
            }
            for n in s
                .notes
                .iter()
                .filter(|n| want.iter().all(|w| n.tags.contains(w)))
            {
                // The tree did not change for that save: it is the state before it, whatever
                // the phase.
                seen(n.first_us, n.last_us, false);
            }
        }
        let none = || {
            not_found(format!(
                "no snapshot of this workspace is tagged session={session}"
            ))
        };
        if !before {
            return newest.map(|(_, s)| s).ok_or_else(none);
        }
        let (_, after, s) = first.ok_or_else(none)?;
        if !after {
            return Ok(s);
        }
        self.store
            .cat
            .snapshots_of(ws, Some(s.created_us.saturating_sub(1)), 1)?
            .pop()
            .ok_or_else(|| {
                not_found(format!(
                    "the session's first checkpoint {} was taken after its first tool ran, and \
                     no snapshot is older",
                    s.hex_id()
                ))
            })
    }

    fn at_or_before(&self, ws: WorkspaceId, sel: &str, us: u64) -> Result<SnapshotRecord> {
        self.store
            .cat
            .snapshots_of(ws, Some(us), 1)?
            .pop()
            .ok_or_else(|| Error::SnapshotNotFound {
                selector: sel.to_owned(),
                detail: format!("no snapshot at or before {sel}"),
            })
    }

    fn other_workspace(&self, sel: &str, asked: WorkspaceId, owner: WorkspaceId) -> Error {
        let path_of = |id: WorkspaceId| {
            self.store
                .cat
                .workspace(id)
                .ok()
                .flatten()
                .map(|w| String::from_utf8_lossy(&w.path).into_owned())
                .unwrap_or_else(|| format!("#{}", id.get()))
        };
        Error::SnapshotOfOtherWorkspace {
            selector: sel.to_owned(),
            workspace: path_of(owner),
            asked: path_of(asked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> TimeZone {
        TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap()
    }

    fn at(s: &str) -> u64 {
        match Selector::parse_in(s, &berlin()).unwrap() {
            Selector::At(us) => us,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn is_bad(s: &str) -> bool {
        matches!(
            Selector::parse_in(s, &berlin()),
            Err(Error::BadSelector { .. })
        )
    }

    #[test]
    fn latest_and_back_n() {
        let tz = berlin();
        assert_eq!(Selector::parse_in("", &tz).unwrap(), Selector::Latest(0));
        assert_eq!(
            Selector::parse_in("latest", &tz).unwrap(),
            Selector::Latest(0)
        );
        assert_eq!(
            Selector::parse_in(" latest~3 ", &tz).unwrap(),
            Selector::Latest(3)
        );
        assert!(is_bad("latest~"));
        assert!(is_bad("latest~x"));
        assert!(is_bad("latest~-1"));
        assert!(is_bad("latest~99999999999999999999999"));
    }

    #[test]
    fn ids_and_prefixes() {
        let tz = berlin();
        assert_eq!(
            Selector::parse_in("00000000000000fF", &tz).unwrap(),
            Selector::Id(SnapshotId::new(255))
        );
        assert_eq!(
            Selector::parse_in("AbC", &tz).unwrap(),
            Selector::Prefix("abc".into())
        );
        assert!(is_bad("0123456789abcdef0"), "17 digits");
        assert!(is_bad("xyz"));
        assert!(is_bad("12 34"));
    }

    #[test]
    fn durations_back_from_now() {
        let tz = berlin();
        let ago = |s: &str| match Selector::parse_in(s, &tz).unwrap() {
            Selector::Ago(d) => d.as_secs(),
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(ago("@30s"), 30);
        assert_eq!(ago("@10m"), 600);
        assert_eq!(ago("@2h"), 7200);
        assert_eq!(ago("@1d"), 86_400);
        assert_eq!(ago("@1w"), 604_800);
        assert_eq!(ago("@1h30m"), 5400);
        assert!(is_bad("@10"));
        assert!(is_bad("@10x"));
        assert!(is_bad("@m"));
        assert!(is_bad("@"));
    }

    #[test]
    fn local_times_are_read_in_the_zone_to_the_end_of_the_second() {
        // 2026-11-24 10:00 in Berlin (CET, +01:00) is 09:00 UTC.
        let nine_utc = 1_795_510_800_000_000;
        assert_eq!(at("@2026-11-24T10:00"), nine_utc + 999_999);
        assert_eq!(at("@2026-11-24 10:00"), nine_utc + 999_999);
        assert_eq!(at("@2026-11-24T10:00:05"), nine_utc + 5_999_999);
        // Summer time (CEST, +02:00).
        assert_eq!(at("@2026-07-01T12:00"), 1_782_900_000_000_000 + 999_999);
    }

    #[test]
    fn rfc3339_times_carry_their_offset() {
        let nine_utc = 1_795_510_800_000_000;
        assert_eq!(at("@2026-11-24T10:00:00+01:00"), nine_utc + 999_999);
        assert_eq!(at("@2026-11-24T09:00:00Z"), nine_utc + 999_999);
        assert_eq!(at("@2026-11-24T09:00Z"), nine_utc + 999_999);
    }

    #[test]
    fn impossible_dates_are_refused_not_rolled_over() {
        assert!(is_bad("@2026-02-30T10:00"), "no 30 February");
        assert!(is_bad("@2026-13-01T10:00"));
        assert!(is_bad("@2026-11-24T25:00"));
        assert!(is_bad("@2026-11-24T10:61"));
        assert!(is_bad("@2026-11-24"));
        assert!(is_bad("@yesterday"));
    }

    #[test]
    fn daylight_saving_gaps_and_folds() {
        // 2026-03-29 02:30 does not exist in Berlin (02:00 → 03:00): the instant after the
        // gap, 03:30 CEST = 01:30 UTC.
        assert_eq!(at("@2026-03-29T02:30"), 1_774_747_800_000_000 + 999_999);
        // 2026-10-25 02:30 happens twice (CEST, then CET): the later one, 01:30 UTC.
        assert_eq!(at("@2026-10-25T02:30"), 1_792_891_800_000_000 + 999_999);
        // Either side of the fold, unambiguous.
        assert_eq!(at("@2026-10-25T01:30"), 1_792_884_600_000_000 + 999_999);
        assert_eq!(at("@2026-10-25T03:30"), 1_792_895_400_000_000 + 999_999);
    }

    /// An engine over a fresh store with two workspaces: `a` with snapshots at the given ages
    /// (seconds before now) and ids, `b` with one snapshot.
    fn engine_with(
        snaps: &[(u64, u64)],
    ) -> (
        tempfile::TempDir,
        std::sync::Arc<Engine>,
        WorkspaceId,
        WorkspaceId,
    ) {
        use crate::store::Store;
        use crate::store::catalog::{SnapshotRecord, Trigger};
        use crate::workspace::{WatchOptions, register};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("data")).unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let wa = register(&store, &a, WatchOptions::default()).unwrap().id;
        let wb = register(&store, &b, WatchOptions::default()).unwrap().id;
        let now = now_us();
        let record = |id: u64, workspace: WorkspaceId, age_s: u64| SnapshotRecord {
            id: SnapshotId::new(id),
            workspace,
            created_us: now - age_s * 1_000_000,
            trigger: Trigger::Auto,
            message: format!("{age_s}s ago"),
            ..Default::default()
        };
        for &(id, age) in snaps {
            store.cat.put_snapshot(&record(id, wa, age)).unwrap();
        }
        store
            .cat
            .put_snapshot(&record(0xbbbb_0000_0000_0001, wb, 5))
            .unwrap();
        let engine = Engine::new(
            store,
            WatchOptions::default(),
            Duration::from_secs(60),
            dir.path().join("sock"),
        );
        (dir, engine, wa, wb)
    }

    #[test]
    fn resolve_picks_the_newest_at_or_before_a_time() {
        let (_d, e, a, _) = engine_with(&[
            (0xaaaa_0000_0000_0001, 3600), // an hour ago
            (0xaaaa_0000_0000_0002, 900),  // 15 minutes ago
            (0xaaaa_0000_0000_0003, 300),  // 5 minutes ago
            (0xaaaa_0000_0000_0004, 10),   // just now
        ]);
        let id = |sel: &str| e.resolve(a, sel).map(|s| s.id.get());
        assert_eq!(id("latest").unwrap(), 0xaaaa_0000_0000_0004);
        assert_eq!(id("latest~2").unwrap(), 0xaaaa_0000_0000_0002);
        assert_eq!(id("@5s").unwrap(), 0xaaaa_0000_0000_0004);
        assert_eq!(id("@1m").unwrap(), 0xaaaa_0000_0000_0003);
        assert_eq!(id("@10m").unwrap(), 0xaaaa_0000_0000_0002);
        assert_eq!(id("@20m").unwrap(), 0xaaaa_0000_0000_0001);
        assert!(matches!(id("@2h"), Err(Error::SnapshotNotFound { .. })));
        assert!(matches!(
            id("latest~4"),
            Err(Error::SnapshotNotFound { .. })
        ));
        // Far beyond the epoch is "before everything", not an overflow.
        assert!(matches!(
            id("@99999999999999999w"),
            Err(Error::SnapshotNotFound { .. }) | Err(Error::BadSelector { .. })
        ));
    }

    #[test]
    fn resolve_prefixes_within_the_workspace() {
        let (_d, e, a, b) = engine_with(&[
            (0xabc1_0000_0000_0001, 30),
            (0xabc2_0000_0000_0002, 20),
            (0xbbbb_1000_0000_0000, 10),
        ]);
        let id = |sel: &str| e.resolve(a, sel).map(|s| s.id.get());
        assert_eq!(id("abc1").unwrap(), 0xabc1_0000_0000_0001);
        assert_eq!(id("ABC2").unwrap(), 0xabc2_0000_0000_0002);
        assert_eq!(id("abc2000000000002").unwrap(), 0xabc2_0000_0000_0002);
        match id("abc") {
            Err(Error::AmbiguousPrefix { prefix, matches }) => {
                assert_eq!((prefix.as_str(), matches), ("abc", 2));
            }
            other => panic!("{other:?}"),
        }
        // "bbbb" matches one snapshot here and one in the other workspace: unique here.
        assert_eq!(id("bbbb").unwrap(), 0xbbbb_1000_0000_0000);
        // Another workspace's snapshot is named as such, by id or by prefix.
        assert!(matches!(
            id("bbbb000000000001"),
            Err(Error::SnapshotOfOtherWorkspace { .. })
        ));
        assert!(matches!(
            id("bbbb0"),
            Err(Error::SnapshotOfOtherWorkspace { .. })
        ));
        assert!(matches!(id("fff"), Err(Error::SnapshotNotFound { .. })));
        assert_eq!(
            e.resolve(b, "bbbb0").unwrap().id.get(),
            0xbbbb_0000_0000_0001
        );
    }

    #[test]
    fn resolve_finds_a_prefix_among_many_snapshots_of_other_workspaces() {
        // Regression: the prefix scan took the first 1,000 matches across all workspaces
        // before keeping this workspace's, so a valid prefix could answer NotFound.
        let (_d, e, a, b) = engine_with(&[]);
        let store = &e.store;
        let mut other = store.cat.latest(b).unwrap().unwrap();
        for i in 0..1500u64 {
            other.id = SnapshotId::new(0xcc00_0000_0000_0000 + i);
            store.cat.put_snapshot(&other).unwrap();
        }
        let mut mine = other.clone();
        mine.workspace = a;
        mine.id = SnapshotId::new(0xcc00_ffff_0000_0000);
        store.cat.put_snapshot(&mine).unwrap();
        assert_eq!(e.resolve(a, "cc").unwrap().id, mine.id);
    }

    #[test]
    fn session_forms_parse() {
        let tz = berlin();
        assert_eq!(
            Selector::parse_in("session:abc-123", &tz).unwrap(),
            Selector::Session {
                id: "abc-123".into(),
                before: false
            }
        );
        assert_eq!(
            Selector::parse_in(" session:abc-123^ ", &tz).unwrap(),
            Selector::Session {
                id: "abc-123".into(),
                before: true
            }
        );
        assert!(is_bad("session:"));
        assert!(is_bad("session:^"));
        assert!(is_bad("session:a^^"));
        assert!(is_bad("session:a b"));
    }

    #[test]
    fn resolve_sessions_by_their_tags_and_notes() {
        use crate::store::catalog::{SnapshotRecord, Tag};
        let tag = |k: &str, v: &str| Tag {
            key: k.into(),
            value: v.into(),
        };
        // Oldest first: 1 untagged, 2 session s1 before a tool, 3 s1 after it, 4 untagged,
        // 5 session s2's first checkpoint taken after a tool, 6 noted by session s3, then
        // by s1 again.
        let (_d, e, a, b) = engine_with(&[
            (0xaaaa_0000_0000_0001, 600),
            (0xaaaa_0000_0000_0002, 500),
            (0xaaaa_0000_0000_0003, 400),
            (0xaaaa_0000_0000_0004, 300),
            (0xaaaa_0000_0000_0005, 200),
            (0xaaaa_0000_0000_0006, 100),
        ]);
        let store = &e.store;
        let edit = |id: u64, f: &dyn Fn(&mut SnapshotRecord)| {
            let mut s = store.cat.snapshot(SnapshotId::new(id)).unwrap().unwrap();
            f(&mut s);
            store.cat.put_snapshot(&s).unwrap();
        };
        edit(0xaaaa_0000_0000_0002, &|s| {
            s.tags = vec![tag("session", "s1"), tag("phase", "pre-tool")];
        });
        edit(0xaaaa_0000_0000_0003, &|s| {
            s.tags = vec![tag("session", "s1"), tag("phase", "post-tool")];
        });
        edit(0xaaaa_0000_0000_0005, &|s| {
            s.tags = vec![tag("phase", "post-tool"), tag("session", "s2")];
        });
        let now = now_us();
        edit(0xaaaa_0000_0000_0006, &|s| {
            s.add_note(
                now - 50_000_000,
                "",
                &[tag("session", "s3"), tag("phase", "post-tool")],
            );
            s.add_note(
                now - 10_000_000,
                "",
                &[tag("session", "s1"), tag("phase", "stop")],
            );
        });
        let id = |sel: &str| e.resolve(a, sel).map(|s| s.id.get());
        // s1: its first checkpoint was before a tool ran: that state; newest: the note.
        assert_eq!(id("session:s1^").unwrap(), 0xaaaa_0000_0000_0002);
        assert_eq!(id("session:s1").unwrap(), 0xaaaa_0000_0000_0006);
        // s2 began with a checkpoint after its first tool: the snapshot before it.
        assert_eq!(id("session:s2^").unwrap(), 0xaaaa_0000_0000_0004);
        assert_eq!(id("session:s2").unwrap(), 0xaaaa_0000_0000_0005);
        // s3 only left a note: nothing had changed, so that snapshot is the state before it.
        assert_eq!(id("session:s3^").unwrap(), 0xaaaa_0000_0000_0006);
        assert!(matches!(
            id("session:nobody"),
            Err(Error::SnapshotNotFound { .. })
        ));
        // Another workspace's sessions are not this one's.
        assert!(matches!(
            e.resolve(b, "session:s1"),
            Err(Error::SnapshotNotFound { .. })
        ));
    }
}
