//! JSON documents for `--json`: stable field names, paths as lossy UTF-8,
//! absent ids as `null`. Fields beyond the documented ones may be added,
//! never renamed.

use chkpt_proto::v1::{self, EntryKind, PatchKind, Snapshot};
use serde_json::{Value, json};

use super::{EntryChanges, Run, change_name, path_text, state_name, trigger_name};

/// `EntryKind` as its JSON name; `null` when the entry is absent.
fn entry_kind_json(kind: EntryKind) -> Value {
    match kind {
        EntryKind::File => "file".into(),
        EntryKind::Executable => "executable".into(),
        EntryKind::Symlink => "symlink".into(),
        EntryKind::Directory => "directory".into(),
        EntryKind::Unspecified => Value::Null,
    }
}

/// An id that may be empty, as JSON: the id or `null`.
fn optional_id(id: &str) -> Value {
    if id.is_empty() {
        Value::Null
    } else {
        id.into()
    }
}

/// A snapshot as its JSON document is written: a struct serialised in place rather than a map
/// built per snapshot, so that `list` of thousands costs the bytes it prints. Fields in name
/// order, the order a JSON map has them.
#[derive(serde::Serialize)]
pub struct SnapshotOut<'a> {
    added: u64,
    bytes: u64,
    created_at: &'a str,
    created_unix_ms: u64,
    deleted: u64,
    files: u64,
    git_branch: &'a str,
    git_head: &'a str,
    id: &'a str,
    message: &'a str,
    modified: u64,
    new_blobs: u64,
    new_bytes: u64,
    notes: Vec<NoteOut<'a>>,
    parent: Option<&'a str>,
    pinned: bool,
    rescan: bool,
    root_tree: &'a str,
    tags: Vec<String>,
    trigger: &'static str,
    warnings: &'a [String],
    workspace: &'a str,
}

/// A note of a snapshot, as [`SnapshotOut`] writes it.
#[derive(serde::Serialize)]
struct NoteOut<'a> {
    count: u64,
    first_unix_ms: u64,
    last_unix_ms: u64,
    message: &'a str,
    tags: Vec<String>,
}

fn tag_texts(tags: &[v1::Tag]) -> Vec<String> {
    tags.iter()
        .map(|t| format!("{}={}", t.key, t.value))
        .collect()
}

impl<'a> SnapshotOut<'a> {
    pub fn of(s: &'a Snapshot) -> SnapshotOut<'a> {
        SnapshotOut {
            added: s.added,
            bytes: s.bytes,
            created_at: &s.created_at,
            created_unix_ms: s.created_unix_ms,
            deleted: s.deleted,
            files: s.files,
            git_branch: &s.git_branch,
            git_head: &s.git_head,
            id: &s.id,
            message: &s.message,
            modified: s.modified,
            new_blobs: s.new_blobs,
            new_bytes: s.new_bytes,
            notes: s
                .notes
                .iter()
                .map(|n| NoteOut {
                    count: n.count,
                    first_unix_ms: n.first_unix_ms,
                    last_unix_ms: n.last_unix_ms,
                    message: &n.message,
                    tags: tag_texts(&n.tags),
                })
                .collect(),
            parent: Some(s.parent.as_str()).filter(|p| !p.is_empty()),
            pinned: s.pinned,
            rescan: s.rescan,
            root_tree: &s.root_tree,
            tags: tag_texts(&s.tags),
            trigger: trigger_name(s.trigger()),
            warnings: &s.warnings,
            workspace: &s.workspace,
        }
    }
}

/// A snapshot as JSON (the document [`SnapshotOut`] writes).
pub fn snapshot_json(s: &Snapshot) -> Value {
    // Plain fields and strings: serialising them into a value cannot fail.
    serde_json::to_value(SnapshotOut::of(s)).unwrap_or(Value::Null)
}

/// A fired mass-change tripwire as JSON.
pub fn tripwire_json(t: &v1::Tripwire) -> Value {
    json!({
        "pinned_snapshot": optional_id(&t.pinned_snapshot),
        "changed_files": t.changed_files,
        "fired_unix_ms": t.fired_unix_ms,
        "detail": t.detail,
    })
}

/// A watched workspace as JSON.
pub fn workspace_json(w: &v1::Workspace) -> Value {
    let excluded: Vec<Value> = w
        .excluded
        .iter()
        .map(|e| json!({ "path": path_text(&e.path), "reason": e.reason }))
        .collect();
    json!({
        "path": w.path,
        "id": w.id,
        "idle_ms": w.idle_ms,
        "max_delay_ms": w.max_delay_ms,
        "include_dependency_dirs": w.include_dependency_dirs,
        "created_unix_ms": w.created_unix_ms,
        "excluded": excluded,
        "retention": w.retention.as_ref().map(|r| json!({
            "keep_last": r.keep_last,
            "keep_hourly": r.keep_hourly,
            "keep_daily": r.keep_daily,
            "keep_weekly": r.keep_weekly,
            "keep_within_secs": r.keep_within_secs,
            "max_store_bytes": r.max_store_bytes,
        })),
    })
}

/// The answer of `Status` as JSON.
pub fn status_json(s: &v1::StatusResponse) -> Value {
    let workspaces: Vec<Value> = s
        .workspaces
        .iter()
        .map(|w| {
            json!({
                "path": w.workspace.as_ref().map(|w| w.path.as_str()).unwrap_or_default(),
                "state": state_name(w.state()),
                "state_detail": w.state_detail,
                "reconciling": w.reconciling,
                "pending_changes": w.pending_changes,
                "last_snapshot": w.last_snapshot.as_ref().map(|s| s.id.as_str()),
                "warnings": w.warnings,
                "tripwire": w.tripwire.as_ref().map(tripwire_json),
                "top_files": w.top_files.iter().map(|f| json!({
                    "path": path_text(&f.path),
                    "bytes_added": f.bytes_added,
                    "snapshots": f.snapshots,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "version": s.version,
        "protocol": s.protocol,
        "pid": s.pid,
        "uptime_ms": s.uptime_ms,
        "socket": s.socket,
        "data_dir": s.data_dir,
        "workspaces": workspaces,
        "store": s.store.as_ref().map(|st| json!({
            "size_bytes": st.size_bytes,
            "budget_bytes": st.budget_bytes,
            "free_bytes": st.free_bytes,
            "floor_bytes": st.floor_bytes,
            "fs_bytes": st.fs_bytes,
            "recompress_pending_bytes": st.recompress_pending_bytes,
        })),
    })
}

/// The changed paths of a diff as a JSON array; each with its `patch` when one was made.
pub fn diff_json(entries: &[v1::DiffEntry]) -> Value {
    entries
        .iter()
        .map(|e| {
            let mut v = json!({
                "path": path_text(&e.path),
                "change": change_name(e.change()),
                "size_before": e.size_before,
                "size_after": e.size_after,
                "kind_before": entry_kind_json(e.kind_before()),
                "kind_after": entry_kind_json(e.kind_after()),
            });
            if let Some(p) = &e.patch {
                v["patch"] = patch_json(p);
            }
            v
        })
        .collect()
}

/// `PatchKind` as its stable JSON name.
fn patch_kind_name(kind: PatchKind) -> &'static str {
    match kind {
        PatchKind::Text => "text",
        PatchKind::Binary => "binary",
        PatchKind::TooLarge => "too-large",
        PatchKind::NoContent => "no-content",
        PatchKind::Unspecified => "unknown",
    }
}

/// One file's patch as JSON: its kind, counts, git's text, and the hunks with their lines
/// (each line keeps its ' ', '-' or '+' mark; no newline).
fn patch_json(p: &v1::FilePatch) -> Value {
    let hunks: Vec<Value> = p
        .hunks
        .iter()
        .map(|h| {
            let text = path_text(&h.text);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or_default().to_owned();
            json!({
                "old_start": h.old_start,
                "old_lines": h.old_lines,
                "new_start": h.new_start,
                "new_lines": h.new_lines,
                "header": header,
                "lines": lines.collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "kind": patch_kind_name(p.kind()),
        "lines_added": p.lines_added,
        "lines_deleted": p.lines_deleted,
        "truncated": p.truncated,
        "note": p.note,
        "text": path_text(&p.text),
        "hunks": hunks,
    })
}

/// A restore's result as JSON.
pub fn restore_json(r: &v1::RestoreSummary, run: Run) -> Value {
    let dry_run = run == Run::DryRun;
    let changed: Vec<String> = r.changed_paths.iter().map(|p| path_text(p)).collect();
    json!({
        "snapshot": r.snapshot,
        "pre_restore_snapshot": optional_id(&r.pre_restore_snapshot),
        "added": r.added,
        "modified": r.modified,
        "deleted": r.deleted,
        "unchanged": r.unchanged,
        "dry_run": dry_run,
        "changed_paths": changed,
        "changed_total": r.changed_total.max(r.changed_paths.len() as u64),
        "changes": r.changes.iter().map(|c| change_name(v1::ChangeKind::try_from(*c).unwrap_or_default())).collect::<Vec<_>>(),
    })
}

/// The history of one path as a JSON array, newest first; with `-p` or `--stat`, each entry's
/// `changes` (as in `diff`).
pub fn log_json(entries: &[v1::LogEntry], changes: EntryChanges) -> Value {
    entries
        .iter()
        .map(|e| {
            let mut v = json!({
                "change": change_name(e.change()),
                "size": e.size,
                "kind": entry_kind_json(e.kind()),
                "snapshot": e.snapshot.as_ref().map(snapshot_json),
            });
            if changes == EntryChanges::Listed {
                v["changes"] = diff_json(&e.changes);
                v["truncated"] = e.truncated.into();
            }
            v
        })
        .collect()
}

/// A prune's decisions and totals as JSON.
pub fn prune_json(p: &v1::PruneResponse, run: Run) -> Value {
    let dry_run = run == Run::DryRun;
    let decisions: Vec<Value> = p
        .decisions
        .iter()
        .map(|d| {
            json!({
                "snapshot": d.snapshot.as_ref().map(snapshot_json),
                "keep": d.keep,
                "reason": d.reason,
            })
        })
        .collect();
    json!({
        "dry_run": dry_run,
        "decisions": decisions,
        "removed": p.removed,
        "reclaimed_bytes": p.reclaimed_bytes,
    })
}

/// A verification report as JSON.
pub fn verify_json(v: &v1::VerifyResponse) -> Value {
    let problems: Vec<Value> = v
        .problems
        .iter()
        .map(|p| {
            json!({
                "object_id": p.object_id,
                "snapshot": optional_id(&p.snapshot),
                "path": if p.path.is_empty() { Value::Null } else { path_text(&p.path).into() },
                "problem": p.problem,
            })
        })
        .collect();
    json!({
        "ok": v.ok,
        "blobs_checked": v.blobs_checked,
        "trees_checked": v.trees_checked,
        "bytes_checked": v.bytes_checked,
        "problems": problems,
    })
}
