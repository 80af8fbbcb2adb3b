//! Conversions from engine types to wire types, and the one mapping of errors to status codes.

use std::collections::HashMap;

use chkpt_proto::v1 as pb;
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;
use crate::patch::{self, FilePatch, PatchKind};
use crate::retention::Policy;
use crate::store::Kind;
use crate::store::catalog::{Note, SnapshotRecord, Tag, Trigger, TripwireRecord, WorkspaceRecord};
use crate::store::gc::VerifyReport;
use crate::workspace::diff::{Change, DiffEntry, Side};
use crate::workspace::restore::RestoreSummary;

/// Longest status message sent.
const MAX_MESSAGE: usize = 2048;

/// The one place engine errors become gRPC statuses. Each carries a `google.rpc.ErrorInfo`
/// (reason, domain [`ERROR_DOMAIN`] and what the error is about) in its details, which clients
/// read instead of the message's text.
pub fn status(e: Error) -> tonic::Status {
    use tonic::Code;
    let code = match &e {
        Error::NoSuchPath { .. }
        | Error::WorkspaceNotFound { .. }
        | Error::SnapshotNotFound { .. }
        | Error::PathNotInSnapshot { .. } => Code::NotFound,
        Error::InvalidArgument(_)
        | Error::BadSelector { .. }
        | Error::AmbiguousPrefix { .. }
        | Error::OutsideWorkspace { .. }
        | Error::SnapshotOfOtherWorkspace { .. } => Code::InvalidArgument,
        Error::FailedPrecondition(_)
        | Error::Locked { .. }
        | Error::WorkspaceGone { .. }
        | Error::NestedWorkspace { .. } => Code::FailedPrecondition,
        Error::Corrupt(_) => Code::DataLoss,
        Error::DiskFull { .. } => Code::ResourceExhausted,
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            Code::PermissionDenied
        }
        Error::Io { .. } | Error::Catalog(_) => Code::Internal,
    };
    // Messages quote what was asked; a huge field must not make a status too large for
    // HTTP/2's headers (the client's connection would be reset).
    let metadata: HashMap<String, String> = e
        .metadata()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), truncate(v, MAX_METADATA)))
        .collect();
    let details = ErrorDetails::with_error_info(e.reason(), ERROR_DOMAIN, metadata);
    tonic::Status::with_error_details(code, truncate(e.to_string(), MAX_MESSAGE), details)
}

/// The `ErrorInfo` domain of chkptd's errors.
pub const ERROR_DOMAIN: &str = "chkpt.dev";
/// Longest metadata value sent.
const MAX_METADATA: usize = 512;

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("… (truncated)");
    }
    text
}

/// RFC 3339 (UTC) from µs since the epoch.
pub fn rfc3339(us: u64) -> String {
    let secs = (us / 1_000_000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        (us % 1_000_000) / 1000
    )
}

fn trigger(t: Trigger) -> pb::Trigger {
    match t {
        Trigger::Auto => pb::Trigger::Auto,
        Trigger::Manual => pb::Trigger::Manual,
        Trigger::PreRestore => pb::Trigger::PreRestore,
    }
}

/// A snapshot on the wire.
pub fn snapshot(s: &SnapshotRecord, workspace_path: &str) -> pb::Snapshot {
    let mut out = pb::Snapshot {
        id: s.hex_id(),
        workspace: workspace_path.to_owned(),
        created_unix_ms: s.created_us / 1000,
        created_at: rfc3339(s.created_us),
        trigger: 0,
        message: s.message.clone(),
        pinned: s.pinned,
        files: s.files,
        bytes: s.bytes,
        added: s.added,
        modified: s.modified,
        deleted: s.deleted,
        new_blobs: s.new_blobs,
        new_bytes: s.new_bytes,
        parent: s.parent.map(|p| format!("{p:016x}")).unwrap_or_default(),
        root_tree: s.root.to_hex(),
        rescan: s.rescan,
        warnings: s.warnings.clone(),
        git_branch: s.git_branch.clone(),
        git_head: s.git_head.clone(),
        tags: s.tags.iter().map(tag).collect(),
        notes: s.notes.iter().map(note).collect(),
    };
    out.set_trigger(trigger(s.trigger));
    out
}

/// A tag on the wire.
pub fn tag(t: &Tag) -> pb::Tag {
    pb::Tag {
        key: t.key.clone(),
        value: t.value.clone(),
    }
}

/// A tag from the wire.
pub fn tag_from(t: pb::Tag) -> Tag {
    Tag {
        key: t.key,
        value: t.value,
    }
}

/// A note on the wire.
fn note(n: &Note) -> pb::Note {
    pb::Note {
        first_unix_ms: n.first_us / 1000,
        last_unix_ms: n.last_us / 1000,
        count: n.count,
        message: n.message.clone(),
        tags: n.tags.iter().map(tag).collect(),
    }
}

/// A path a workspace's scan left out, and why.
#[derive(Debug, Clone)]
pub struct Excluded {
    /// Relative path.
    pub path: Vec<u8>,
    /// Why, for people.
    pub reason: String,
}

/// A workspace on the wire.
pub fn workspace(w: &WorkspaceRecord, excluded: &[Excluded], git_dir_bytes: u64) -> pb::Workspace {
    pb::Workspace {
        path: String::from_utf8_lossy(&w.path).into_owned(),
        id: w.id.get(),
        idle_ms: w.idle_ms,
        max_delay_ms: w.max_delay_ms,
        include_dependency_dirs: w.include_dependency_dirs,
        created_unix_ms: w.created_us / 1000,
        excluded: excluded
            .iter()
            .map(|x| pb::ExcludedDir {
                path: x.path.clone(),
                reason: x.reason.clone(),
                path_text: String::from_utf8_lossy(&x.path).into_owned(),
            })
            .collect(),
        retention: Some(policy_to_wire(&w.retention.or_default())),
        include_git: w.include_git,
        git_dir_bytes,
    }
}

/// A retention policy on the wire.
pub fn policy_to_wire(p: &Policy) -> pb::RetentionPolicy {
    pb::RetentionPolicy {
        keep_last: p.keep_last,
        keep_hourly: p.keep_hourly,
        keep_daily: p.keep_daily,
        keep_weekly: p.keep_weekly,
        keep_within_secs: p.keep_within_us / 1_000_000,
        max_store_bytes: p.max_store_bytes,
    }
}

/// A retention policy from the wire.
pub fn policy_from_wire(p: &pb::RetentionPolicy) -> Policy {
    Policy {
        keep_last: p.keep_last,
        keep_hourly: p.keep_hourly,
        keep_daily: p.keep_daily,
        keep_weekly: p.keep_weekly,
        keep_within_us: p.keep_within_secs.saturating_mul(1_000_000),
        max_store_bytes: p.max_store_bytes,
    }
}

/// A fired tripwire on the wire.
pub fn tripwire(t: &TripwireRecord) -> pb::Tripwire {
    pb::Tripwire {
        pinned_snapshot: t.pinned.map(|p| format!("{p:016x}")).unwrap_or_default(),
        changed_files: t.changed,
        fired_unix_ms: t.fired_us / 1000,
        detail: t.detail.clone(),
    }
}

/// A change kind on the wire.
pub fn change(c: Change) -> pb::ChangeKind {
    match c {
        Change::Added => pb::ChangeKind::Added,
        Change::Modified => pb::ChangeKind::Modified,
        Change::Deleted => pb::ChangeKind::Deleted,
        Change::TypeChanged => pb::ChangeKind::TypeChanged,
    }
}

fn kind(s: Option<&Side>) -> pb::EntryKind {
    s.map_or(pb::EntryKind::Unspecified, |s| entry_kind(s.kind, s.mode))
}

/// An entry's kind on the wire.
pub fn entry_kind(kind: Kind, mode: u32) -> pb::EntryKind {
    match kind {
        Kind::Dir => pb::EntryKind::Directory,
        Kind::Symlink => pb::EntryKind::Symlink,
        Kind::File if mode & 0o111 != 0 => pb::EntryKind::Executable,
        Kind::File => pb::EntryKind::File,
    }
}

/// A directory entry of a snapshot on the wire.
pub fn tree_entry(e: &crate::store::Entry, target: &[u8]) -> pb::TreeEntry {
    let side = Side::from(e);
    let mut out = pb::TreeEntry {
        name: e.name.clone(),
        kind: 0,
        mode: e.mode,
        size: e.size,
        symlink_target: target.to_vec(),
        name_text: String::from_utf8_lossy(&e.name).into_owned(),
        symlink_target_text: String::from_utf8_lossy(target).into_owned(),
    };
    out.set_kind(kind(Some(&side)));
    out
}

/// A diff entry on the wire, with its patch when one was made.
pub fn diff_entry(e: &DiffEntry, patch: Option<&FilePatch>) -> pb::DiffEntry {
    let mut out = pb::DiffEntry {
        path: e.path.clone(),
        change: 0,
        size_before: e.before.as_ref().map(|s| s.size).unwrap_or(0),
        size_after: e.after.as_ref().map(|s| s.size).unwrap_or(0),
        kind_before: 0,
        kind_after: 0,
        patch: patch.map(file_patch),
        path_text: String::from_utf8_lossy(&e.path).into_owned(),
    };
    out.set_change(change(e.change));
    out.set_kind_before(kind(e.before.as_ref()));
    out.set_kind_after(kind(e.after.as_ref()));
    out
}

/// A patch on the wire.
pub fn file_patch(p: &FilePatch) -> pb::FilePatch {
    let kind = match p.kind {
        PatchKind::Text => pb::PatchKind::Text,
        PatchKind::Binary => pb::PatchKind::Binary,
        PatchKind::TooLarge => pb::PatchKind::TooLarge,
        PatchKind::NoContent => pb::PatchKind::NoContent,
    };
    let mut out = pb::FilePatch {
        kind: 0,
        text: p.text.clone(),
        hunks: p
            .hunks
            .iter()
            .map(|h| pb::Hunk {
                old_start: h.old_start,
                old_lines: h.old_lines,
                new_start: h.new_start,
                new_lines: h.new_lines,
                text: h.text.clone(),
            })
            .collect(),
        lines_added: p.added,
        lines_deleted: p.deleted,
        truncated: p.truncated,
        note: p.note.clone(),
    };
    out.set_kind(kind);
    out
}

/// Patch options from the wire; the defaults where a field is zero or unset.
pub fn patch_options(o: &pb::PatchOptions) -> patch::Options {
    let d = patch::Options::default();
    patch::Options {
        context: o.context_lines.unwrap_or(d.context),
        stat_only: o.stat_only,
        max_file_bytes: if o.max_file_bytes == 0 {
            d.max_file_bytes
        } else {
            o.max_file_bytes
        },
        max_total_bytes: if o.max_total_bytes == 0 {
            d.max_total_bytes
        } else {
            o.max_total_bytes
        },
        algorithm: match o.algorithm() {
            pb::DiffAlgorithm::Myers => patch::Algorithm::Myers,
            pb::DiffAlgorithm::Histogram | pb::DiffAlgorithm::Unspecified => {
                patch::Algorithm::Histogram
            }
        },
    }
}

/// A restore summary on the wire.
pub fn restore_summary(s: &RestoreSummary) -> pb::RestoreSummary {
    pb::RestoreSummary {
        snapshot: format!("{:016x}", s.snapshot),
        pre_restore_snapshot: s
            .pre_restore_snapshot
            .map(|p| format!("{p:016x}"))
            .unwrap_or_default(),
        added: s.added,
        modified: s.modified,
        deleted: s.deleted,
        unchanged: s.unchanged,
        changed_paths: s.changed_paths.iter().map(|(p, _)| p.clone()).collect(),
        changed_total: s.changed_total,
        changes: s
            .changed_paths
            .iter()
            .map(|(_, c)| change(*c) as i32)
            .collect(),
        changed_paths_text: s
            .changed_paths
            .iter()
            .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
            .collect(),
    }
}

/// The answer to Verify.
pub fn verify_response(report: &VerifyReport) -> pb::VerifyResponse {
    pb::VerifyResponse {
        blobs_checked: report.objects_checked,
        trees_checked: report.trees_checked,
        bytes_checked: report.bytes_checked,
        ok: report.problems.is_empty(),
        problems: report
            .problems
            .iter()
            .map(|p| pb::VerifyProblem {
                object_id: p.object.to_hex(),
                snapshot: p.snapshot.map(|s| format!("{s:016x}")).unwrap_or_default(),
                path: p.path.clone(),
                problem: p.problem.clone(),
                path_text: String::from_utf8_lossy(&p.path).into_owned(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123_456), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
    }
}
