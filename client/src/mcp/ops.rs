//! What each MCP tool does: its arguments (their doc comments are the schema's
//! descriptions the agent reads), the calls to chkptd, and the answer as text for the model
//! plus the same facts as structured JSON (the `--json` shapes).

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use chkpt_proto::v1::{self, Trigger, restore_event};
use rmcp::schemars::{self, JsonSchema};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::connect::{Client, Error};
use crate::output::{self, EntryChanges, Run, counts, path_text, trigger_name};

/// The most patch text `diff` returns, in bytes; the rest is named, not shown.
pub const DIFF_LIMIT: usize = 60_000;
/// The most file text `read_file_at` returns, in bytes.
pub const READ_LIMIT: usize = 100_000;

/// A tool's answer: text for the model, and the same as data.
#[derive(Debug)]
pub struct Answer {
    /// What the model reads.
    pub text: String,
    /// `structuredContent`.
    pub data: Value,
}

/// Arguments of `checkpoint`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointArgs {
    /// What the checkpoint is for, e.g. "before refactoring the parser".
    #[serde(default)]
    pub message: Option<String>,
    /// Labels to attach, e.g. {"task": "parser"}. Keys are letters, digits, '_', '-', '.',
    /// '/'.
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
}

/// Arguments of `list_checkpoints`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// At most this many checkpoints (default 20).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Only checkpoints newer than this: a duration back from now ("30m", "2h", "1d") or a
    /// local time ("2026-11-24T10:00").
    #[serde(default)]
    pub since: Option<String>,
    /// Only checkpoints in which this file or folder changed (relative to the workspace).
    #[serde(default)]
    pub path: Option<String>,
    /// Only checkpoints carrying this tag, "key=value" (e.g. "session=abc").
    #[serde(default)]
    pub tag: Option<String>,
}

/// Arguments of `diff`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffArgs {
    /// The older side: a checkpoint id, a unique id prefix, "latest", "latest~N", "@10m",
    /// "@2026-11-24T10:00" or "session:ID^". Default: the latest checkpoint.
    #[serde(default)]
    pub from: Option<String>,
    /// The newer side, in the same forms. Default: the working tree as it is now.
    #[serde(default)]
    pub to: Option<String>,
    /// Only these files or folders (relative to the workspace). Default: everything.
    #[serde(default)]
    pub paths: Option<Vec<String>>,
}

/// Arguments of `read_file_at`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileArgs {
    /// The checkpoint: an id, a unique id prefix, "latest", "latest~N", "@10m", ….
    pub snapshot: String,
    /// The file, relative to the workspace.
    pub path: String,
    /// First line to return, 1-based (default 1).
    #[serde(default)]
    pub start_line: Option<u64>,
    /// Last line to return, inclusive (default: the last line).
    #[serde(default)]
    pub end_line: Option<u64>,
}

/// Arguments of `file_history`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileHistoryArgs {
    /// The file or folder, relative to the workspace.
    pub path: String,
    /// At most this many entries (default 20).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Arguments of `restore`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreArgs {
    /// The checkpoint to go back to: an id, a unique id prefix, "latest~1", "@10m",
    /// "session:ID^" (the state before an agent session began), ….
    pub snapshot: String,
    /// Only these files or folders (relative to the workspace). Default: everything.
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    /// Only list what would change (default true). Set false to restore for real.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// A tool argument's path as the daemon takes it: absolute, relative ones under the workspace.
fn path_arg(ws: &Path, p: &str) -> Vec<u8> {
    let p = Path::new(p);
    let abs: PathBuf = if p.is_absolute() {
        p.to_path_buf()
    } else {
        ws.join(p)
    };
    abs.as_os_str().as_bytes().to_vec()
}

fn ws_text(ws: &Path) -> String {
    ws.to_string_lossy().into_owned()
}

/// One checkpoint as a line: id, time, trigger, counts, message, tags.
fn snapshot_line(s: &v1::Snapshot) -> String {
    let mut line = format!(
        "{} {} {} {}",
        s.id,
        s.created_at,
        trigger_name(s.trigger()),
        counts(s.added, s.modified, s.deleted)
    );
    if s.pinned {
        line.push_str(" [pinned]");
    }
    if !s.message.is_empty() {
        line.push_str(&format!(" {:?}", s.message));
    }
    if !s.tags.is_empty() {
        let tags: Vec<String> = s
            .tags
            .iter()
            .map(|t| format!("{}={}", t.key, t.value))
            .collect();
        line.push_str(&format!(" [{}]", tags.join(" ")));
    }
    if !s.notes.is_empty() {
        let saves: u64 = s.notes.iter().map(|n| n.count).sum();
        line.push_str(&format!(" (+{saves} unchanged saves noted)"));
    }
    line
}

/// `checkpoint`.
pub async fn checkpoint(mut c: Client, ws: PathBuf, args: CheckpointArgs) -> Result<Answer, Error> {
    let req = v1::SaveRequest {
        workspace: ws_text(&ws),
        message: args.message.unwrap_or_default(),
        pin: false,
        tags: args
            .tags
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| v1::Tag { key, value })
            .collect(),
        allow_empty: false,
    };
    let saved = c.save(req).await?;
    let snap = saved.snapshot.unwrap_or_default();
    let mut data = output::snapshot_json(&snap);
    data["created"] = saved.created.into();
    data["unchanged"] = saved.unchanged.into();
    if saved.unchanged {
        let text = format!(
            "Nothing changed since checkpoint {}: no new checkpoint was recorded (the message \
             and tags were kept on it as a note).\n{}",
            snap.id,
            snapshot_line(&snap)
        );
        return Ok(Answer { text, data });
    }
    // What changed: this checkpoint against the one before it.
    let d = c
        .diff(v1::DiffRequest {
            workspace: ws_text(&ws),
            to: snap.id.clone(),
            from_parent: true,
            ..v1::DiffRequest::default()
        })
        .await?;
    data["changes"] = output::diff_json(&d.entries);
    let mut text = format!("Checkpoint {} taken.\n{}\n", snap.id, snapshot_line(&snap));
    text.push_str(&output::diff_lines(
        output::Palette { enabled: false },
        &d.entries,
    ));
    Ok(Answer { text, data })
}

/// `list_checkpoints`.
pub async fn list(mut c: Client, ws: PathBuf, args: ListArgs) -> Result<Answer, Error> {
    let limit = args.limit.unwrap_or(20).clamp(1, 1000) as usize;
    let tags = match args.tag.as_deref() {
        Some(t) => vec![crate::cli::parse_tag(t).map_err(Error::Usage)?],
        None => Vec::new(),
    };
    let paths = args.path.iter().map(|p| path_arg(&ws, p)).collect();
    // `since` in the daemon's selector grammar: the newest checkpoint at or before then.
    let after_ms = match args.since.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(since) => {
            let sel = if since.starts_with('@') {
                since.to_owned()
            } else {
                format!("@{since}")
            };
            match c.get(ws_text(&ws), sel).await {
                Ok(s) => Some(s.created_unix_ms),
                // Nothing that old: every checkpoint is newer.
                Err(Error::Rpc(status)) if status.code() == tonic::Code::NotFound => Some(0),
                Err(e) => return Err(e),
            }
        }
    };
    let mut snaps = c
        .list_filtered(ws_text(&ws), false, Some(limit), paths, tags)
        .await?;
    if let Some(after) = after_ms {
        snaps.retain(|s| s.created_unix_ms > after);
    }
    // structuredContent is an object, never a bare array.
    let data =
        json!({ "checkpoints": snaps.iter().map(output::snapshot_json).collect::<Vec<_>>() });
    let text = if snaps.is_empty() {
        "No checkpoints match.".to_owned()
    } else {
        let mut t = format!("{} checkpoints, newest first:\n", snaps.len());
        for s in &snaps {
            t.push_str(&snapshot_line(s));
            t.push('\n');
        }
        t
    };
    Ok(Answer { text, data })
}

/// `diff`.
pub async fn diff(mut c: Client, ws: PathBuf, args: DiffArgs) -> Result<Answer, Error> {
    let paths: Vec<Vec<u8>> = args
        .paths
        .unwrap_or_default()
        .iter()
        .map(|p| path_arg(&ws, p))
        .collect();
    let req = v1::DiffRequest {
        workspace: ws_text(&ws),
        from: args.from.clone().unwrap_or_default(),
        to: args.to.clone().unwrap_or_default(),
        paths,
        patch: Some(v1::PatchOptions {
            // The daemon summarises what is past twice the limit; the cut below is exact.
            max_total_bytes: (DIFF_LIMIT * 2) as u64,
            ..v1::PatchOptions::default()
        }),
        from_parent: false,
    };
    let d = c.diff(req).await?;
    let to = if d.to_snapshot.is_empty() {
        "the working tree".to_owned()
    } else {
        d.to_snapshot.clone()
    };
    let mut text = format!(
        "Changes from checkpoint {} to {}: {} paths.\n",
        d.from_snapshot,
        to,
        d.entries.len()
    );
    let mut left_out: Vec<String> = Vec::new();
    let mut shown = 0usize;
    for e in &d.entries {
        let Some(p) = &e.patch else { continue };
        let body = String::from_utf8_lossy(&p.text);
        if !left_out.is_empty() || shown + body.len() > DIFF_LIMIT {
            left_out.push(path_text(&e.path));
            continue;
        }
        shown += body.len();
        text.push_str(&body);
        if p.truncated && !p.note.is_empty() {
            text.push_str(&format!("# {}: {}\n", path_text(&e.path), p.note));
        }
    }
    if !left_out.is_empty() {
        text.push_str(&format!(
            "\n[diff cut at {DIFF_LIMIT} bytes: {} more changed paths not shown: {}. Call diff \
             again with paths set to some of them to see their patches.]\n",
            left_out.len(),
            left_out.join(", ")
        ));
    }
    let data = json!({
        "from": d.from_snapshot,
        "to": if d.to_snapshot.is_empty() { Value::Null } else { d.to_snapshot.clone().into() },
        "entries": d.entries.iter().map(|e| json!({
            "path": path_text(&e.path),
            "change": output::change_name(e.change()),
            "lines_added": e.patch.as_ref().map_or(0, |p| p.lines_added),
            "lines_deleted": e.patch.as_ref().map_or(0, |p| p.lines_deleted),
        })).collect::<Vec<_>>(),
        "cut": !left_out.is_empty(),
        "not_shown": left_out,
    });
    Ok(Answer { text, data })
}

/// `read_file_at`.
pub async fn read_file_at(mut c: Client, ws: PathBuf, args: ReadFileArgs) -> Result<Answer, Error> {
    if args.start_line == Some(0) || args.end_line == Some(0) {
        return Err(Error::Usage("lines are numbered from 1".into()));
    }
    let first = args.start_line.unwrap_or(1);
    if args.end_line.is_some_and(|end| end < first) {
        return Err(Error::Usage(format!(
            "end_line {} is before start_line {first}",
            args.end_line.unwrap_or(0)
        )));
    }
    let snap = c.get(ws_text(&ws), args.snapshot.clone()).await?;
    let mut stream = c
        .read_file(v1::ReadFileRequest {
            workspace: ws_text(&ws),
            snapshot: snap.id.clone(),
            path: path_arg(&ws, &args.path),
            ..v1::ReadFileRequest::default()
        })
        .await?;
    // Streamed: only the lines asked for are kept (a file may be a 4 GiB image), and the
    // rest is only counted.
    let wanted = |n: u64| n >= first && args.end_line.is_none_or(|e| n <= e);
    let mut probe: Vec<u8> = Vec::with_capacity(8000);
    let mut total = 0;
    let (mut line_no, mut in_line) = (1u64, false);
    let mut cur: Vec<u8> = Vec::new();
    let mut body = String::new();
    let mut cut = false;
    let take_line = |cur: &mut Vec<u8>, body: &mut String, cut: &mut bool| {
        let line = String::from_utf8_lossy(cur);
        if body.len() + line.len() > READ_LIMIT {
            *cut = true;
        } else {
            body.push_str(&line);
        }
        cur.clear();
    };
    while let Some(chunk) = stream.next().await? {
        total = chunk.total_size;
        if probe.len() < 8000 {
            let n = (8000 - probe.len()).min(chunk.data.len());
            probe.extend_from_slice(&chunk.data[..n]);
            if probe.contains(&0) {
                break;
            }
        }
        for piece in chunk.data.split_inclusive(|&b| b == b'\n') {
            let ends = piece.last() == Some(&b'\n');
            if wanted(line_no) && !cut && cur.len() <= READ_LIMIT {
                cur.extend_from_slice(piece);
            }
            in_line = !ends;
            if ends {
                if wanted(line_no) && !cut {
                    take_line(&mut cur, &mut body, &mut cut);
                }
                line_no += 1;
            }
        }
    }
    if probe.contains(&0) {
        let text = format!(
            "{} in checkpoint {} is a binary file of {total} bytes.",
            args.path, snap.id
        );
        let data = json!({ "snapshot": snap.id, "path": args.path, "binary": true, "size": total });
        return Ok(Answer { text, data });
    }
    // A last line without its newline.
    if in_line {
        if wanted(line_no) && !cut {
            take_line(&mut cur, &mut body, &mut cut);
        }
        line_no += 1;
    }
    let total_lines = line_no - 1;
    let shown_last = first.saturating_sub(1) + body.split_inclusive('\n').count() as u64;
    let mut text = format!(
        "{} in checkpoint {} (lines {first}-{shown_last} of {total_lines}):\n{body}",
        args.path, snap.id,
    );
    if cut {
        text.push_str(&format!(
            "\n[cut at {READ_LIMIT} bytes: ask again with start_line {} for the rest]\n",
            shown_last + 1
        ));
    }
    let data = json!({
        "snapshot": snap.id,
        "path": args.path,
        "start_line": first,
        "end_line": shown_last,
        "total_lines": total_lines,
        "content": body,
        "cut": cut,
    });
    Ok(Answer { text, data })
}

/// `file_history`.
pub async fn file_history(
    mut c: Client,
    ws: PathBuf,
    args: FileHistoryArgs,
) -> Result<Answer, Error> {
    let entries = c
        .log(v1::LogRequest {
            workspace: ws_text(&ws),
            path: path_arg(&ws, &args.path),
            limit: args.limit.unwrap_or(20).clamp(1, 1000),
            ..v1::LogRequest::default()
        })
        .await?;
    let mut text = if entries.is_empty() {
        format!("No checkpoint changed {}.\n", args.path)
    } else {
        format!(
            "{} changed in {} checkpoints, newest first:\n",
            args.path,
            entries.len()
        )
    };
    for e in &entries {
        let s = e.snapshot.clone().unwrap_or_default();
        // A folder's size says nothing; a deleted path has none.
        let size = match e.kind() {
            v1::EntryKind::Directory | v1::EntryKind::Unspecified => String::new(),
            _ => format!(" ({} bytes after)", e.size),
        };
        text.push_str(&format!(
            "{} {}{size}: {}\n",
            output::change_name(e.change()),
            s.id,
            snapshot_line(&s)
        ));
    }
    Ok(Answer {
        text,
        data: json!({ "entries": output::log_json(&entries, EntryChanges::Omitted) }),
    })
}

/// A restore through the stream, to its summary.
async fn run_restore(c: &mut Client, req: v1::RestoreRequest) -> Result<v1::RestoreSummary, Error> {
    let mut stream = c.restore(req).await?;
    while let Some(event) = stream.next().await? {
        if let Some(restore_event::Event::Summary(s)) = event.event {
            return Ok(s);
        }
    }
    Err(Error::Failed(
        "chkptd ended the restore without a summary: diff against the latest checkpoint to see \
         the working tree's state"
            .into(),
    ))
}

fn restore_answer(s: &v1::RestoreSummary, dry_run: bool, what: &str) -> Answer {
    // The daemon caps the list; its total counts every path.
    let total = s.changed_total.max(s.changed_paths.len() as u64);
    let mut text = if dry_run {
        format!(
            "Dry run: restoring checkpoint {} would change {total} paths ({}); nothing was \
             written. Call restore with dry_run false to do it.\n",
            s.snapshot,
            counts(s.added, s.modified, s.deleted)
        )
    } else {
        format!(
            "{what} checkpoint {}: {}, {} already matched. The state before it is checkpoint \
             {} (undo_restore goes back to it).\n",
            s.snapshot,
            counts(s.added, s.modified, s.deleted),
            s.unchanged,
            s.pre_restore_snapshot
        )
    };
    for (i, p) in s.changed_paths.iter().enumerate() {
        let change = s
            .changes
            .get(i)
            .and_then(|c| v1::ChangeKind::try_from(*c).ok())
            .unwrap_or_default();
        text.push_str(&format!(
            "{} {}\n",
            output::change_letter(change),
            path_text(p)
        ));
    }
    let listed = s.changed_paths.len() as u64;
    if total > listed {
        text.push_str(&format!("… and {} more\n", total - listed));
    }
    Answer {
        text,
        data: output::restore_json(s, Run::dry_if(dry_run)),
    }
}

/// `restore`.
pub async fn restore(mut c: Client, ws: PathBuf, args: RestoreArgs) -> Result<Answer, Error> {
    let dry_run = args.dry_run.unwrap_or(true);
    let req = v1::RestoreRequest {
        workspace: ws_text(&ws),
        snapshot: args.snapshot,
        paths: args
            .paths
            .unwrap_or_default()
            .iter()
            .map(|p| path_arg(&ws, p))
            .collect(),
        dry_run,
        ..v1::RestoreRequest::default()
    };
    let s = run_restore(&mut c, req).await?;
    Ok(restore_answer(&s, dry_run, "Restored"))
}

/// `undo_restore`.
pub async fn undo_restore(mut c: Client, ws: PathBuf) -> Result<Answer, Error> {
    let snaps = c.list(ws_text(&ws), false, None).await?;
    let Some(before) = snaps.iter().find(|s| s.trigger() == Trigger::PreRestore) else {
        return Err(Error::Failed(format!(
            "no pre-restore checkpoint in {}: there is no restore to undo",
            ws.display()
        )));
    };
    let req = v1::RestoreRequest {
        workspace: ws_text(&ws),
        snapshot: before.id.clone(),
        ..v1::RestoreRequest::default()
    };
    let s = run_restore(&mut c, req).await?;
    Ok(restore_answer(&s, false, "Undid the last restore: back to"))
}
