//! Text for people: tables, details and summaries.

use chkpt_proto::v1::{self, ChangeKind, EntryKind, Snapshot, WorkspaceState};

use super::{
    Cell, Colour, Palette, Run, WorkspaceColumn, age, change_name, counts, duration_text,
    human_bytes, path_text, short_id, state_name, table, trigger_name,
};

/// The `list` table: short id, age, trigger, what changed, (workspace,) message.
pub fn snapshot_table(
    palette: Palette,
    now_ms: u64,
    snapshots: &[Snapshot],
    workspace: WorkspaceColumn,
) -> String {
    let with_workspace = workspace == WorkspaceColumn::Shown;
    let mut header = vec!["ID", "AGE", "TRIGGER", "CHANGES"];
    if with_workspace {
        header.push("WORKSPACE");
    }
    header.push("MESSAGE");
    let rows: Vec<Vec<Cell>> = snapshots
        .iter()
        .map(|s| {
            let mut row = vec![
                Cell::coloured(short_id(&s.id), Colour::Yellow),
                Cell::plain(age(now_ms, s.created_unix_ms)),
                Cell::plain(trigger_name(s.trigger())),
                Cell::plain(counts(s.added, s.modified, s.deleted)),
            ];
            if with_workspace {
                row.push(Cell::plain(s.workspace.clone()));
            }
            let mut message = String::new();
            if s.pinned {
                message.push_str(&palette.paint("[pinned] ", Colour::Cyan));
            }
            if s.rescan {
                // A coverage gap: changes before it were seen only by a stat-walk.
                message.push_str(&palette.paint("[rescan] ", Colour::Dim));
            }
            if !s.git_head.is_empty() {
                let branch = if s.git_branch.is_empty() {
                    "(detached)"
                } else {
                    s.git_branch.as_str()
                };
                let head: String = s.git_head.chars().take(8).collect();
                message.push_str(&palette.paint(&format!("[{branch} {head}] "), Colour::Dim));
            }
            message.push_str(&s.message);
            let tags = tags_text(&s.tags);
            if !tags.is_empty() {
                if !s.message.is_empty() {
                    message.push(' ');
                }
                message.push_str(&palette.paint(&tags, Colour::Dim));
            }
            if !s.notes.is_empty() {
                let saves: u64 = s.notes.iter().map(|n| n.count).sum();
                message.push_str(&palette.paint(
                    &format!(
                        " (+{saves} unchanged save{})",
                        if saves == 1 { "" } else { "s" }
                    ),
                    Colour::Dim,
                ));
            }
            row.push(Cell::plain(message));
            row
        })
        .collect();
    table(palette, &header, &rows)
}

/// Every field of one snapshot, one per line, then its warnings.
pub fn snapshot_details(palette: Palette, now_ms: u64, s: &Snapshot) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let parent = if s.parent.is_empty() {
        "(none)"
    } else {
        s.parent.as_str()
    };
    let fields = [
        ("snapshot", palette.paint(&s.id, Colour::Yellow)),
        ("workspace", s.workspace.clone()),
        (
            "created",
            format!("{} ({})", s.created_at, age(now_ms, s.created_unix_ms)),
        ),
        ("trigger", trigger_name(s.trigger()).to_owned()),
        ("message", s.message.clone()),
        ("pinned", yes_no(s.pinned).to_owned()),
        ("files", format!("{} ({})", s.files, human_bytes(s.bytes))),
        ("changes", counts(s.added, s.modified, s.deleted)),
        (
            "new data",
            format!("{} blobs, {}", s.new_blobs, human_bytes(s.new_bytes)),
        ),
        ("parent", parent.to_owned()),
        ("root tree", s.root_tree.clone()),
        ("rescan", yes_no(s.rescan).to_owned()),
        ("git", git_text(&s.git_branch, &s.git_head)),
    ];
    let mut out = String::new();
    for (name, value) in fields {
        out.push_str(format!("{name:<10} {value}").trim_end());
        out.push('\n');
    }
    if !s.tags.is_empty() {
        out.push_str(&format!("{:<10} {}\n", "tags", tags_text(&s.tags)));
    }
    for n in &s.notes {
        // A save that found nothing changed since this snapshot.
        let times = if n.count == 1 {
            age(now_ms, n.first_unix_ms)
        } else {
            format!(
                "{} saves, {} to {}",
                n.count,
                age(now_ms, n.first_unix_ms),
                age(now_ms, n.last_unix_ms)
            )
        };
        let mut line = format!("{:<10} unchanged save {times}", "note");
        if !n.message.is_empty() {
            line.push_str(&format!(": {}", n.message));
        }
        if !n.tags.is_empty() {
            line.push_str(&format!(" {}", tags_text(&n.tags)));
        }
        out.push_str(&line);
        out.push('\n');
    }
    for w in &s.warnings {
        out.push_str(&format!("{} {w}\n", palette.paint("warning:", Colour::Red)));
    }
    out
}

/// Tags as `key=value key=value`.
pub fn tags_text(tags: &[v1::Tag]) -> String {
    tags.iter()
        .map(|t| format!("{}={}", t.key, t.value))
        .collect::<Vec<_>>()
        .join(" ")
}

fn git_text(branch: &str, head: &str) -> String {
    match (branch.is_empty(), head.is_empty()) {
        (_, true) if branch.is_empty() => "(not a git repository)".to_owned(),
        (true, _) => format!("detached at {head}"),
        (false, true) => format!("{branch} (no commit yet)"),
        (false, false) => format!("{branch} at {head}"),
    }
}

/// The one-letter mark of a change, as `diff` and `restore` print it (git's letters).
fn change_mark(change: ChangeKind) -> (&'static str, Colour) {
    match change {
        ChangeKind::Added => ("A", Colour::Green),
        ChangeKind::Deleted => ("D", Colour::Red),
        ChangeKind::TypeChanged => ("T", Colour::Cyan),
        ChangeKind::Modified => ("M", Colour::Yellow),
        ChangeKind::Unspecified => (" ", Colour::Dim),
    }
}

/// The one-letter mark of a change, uncoloured (for the MCP server's text).
pub fn change_letter(change: ChangeKind) -> &'static str {
    change_mark(change).0
}

/// One diff line per changed path: "A  path  (12 B)", "M  path  (1.0 KiB -> 2.0 KiB)"; "no
/// changes" when there are none.
pub fn diff_lines(palette: Palette, entries: &[v1::DiffEntry]) -> String {
    if entries.is_empty() {
        return "no changes\n".to_owned();
    }
    let mut out = String::new();
    for e in entries {
        let (mark, colour, sizes) = match e.change() {
            ChangeKind::Added => ("A", Colour::Green, human_bytes(e.size_after)),
            ChangeKind::Deleted => ("D", Colour::Red, human_bytes(e.size_before)),
            ChangeKind::TypeChanged => (
                "T",
                Colour::Cyan,
                format!(
                    "{} -> {}",
                    kind_text(e.kind_before()),
                    kind_text(e.kind_after())
                ),
            ),
            ChangeKind::Modified | ChangeKind::Unspecified => (
                "M",
                Colour::Yellow,
                format!(
                    "{} -> {}",
                    human_bytes(e.size_before),
                    human_bytes(e.size_after)
                ),
            ),
        };
        let sizes = palette.paint(&format!("({sizes})"), Colour::Dim);
        out.push_str(&format!(
            "{}  {}  {sizes}\n",
            palette.paint(mark, colour),
            path_text(&e.path)
        ));
    }
    out
}

/// The `status` report: the daemon, then one row per workspace, then details.
pub fn status_text(palette: Palette, now_ms: u64, s: &v1::StatusResponse) -> String {
    let mut out = format!(
        "chkptd {} (protocol {}), pid {}, up {}\nsocket {}\ndata   {}\n",
        s.version,
        s.protocol,
        s.pid,
        duration_text(s.uptime_ms),
        s.socket,
        s.data_dir
    );
    if let Some(st) = &s.store {
        out.push_str(&store_line(st));
    }
    if s.workspaces.is_empty() {
        out.push_str("no workspaces watched: start with `chkptctl watch PATH`\n");
        return out;
    }
    out.push('\n');
    let rows: Vec<Vec<Cell>> = s
        .workspaces
        .iter()
        .map(|w| {
            let state = w.state();
            let colour = match state {
                WorkspaceState::Watching => Colour::Green,
                WorkspaceState::Error | WorkspaceState::Missing => Colour::Red,
                WorkspaceState::Paused | WorkspaceState::Unspecified => Colour::Dim,
                WorkspaceState::Rescanning | WorkspaceState::Polling => Colour::Yellow,
            };
            let last = w.last_snapshot.as_ref().map_or_else(
                || "(none)".to_owned(),
                |l| format!("{} {}", short_id(&l.id), age(now_ms, l.created_unix_ms)),
            );
            vec![
                Cell::plain(
                    w.workspace
                        .as_ref()
                        .map(|w| w.path.clone())
                        .unwrap_or_default(),
                ),
                Cell::coloured(state_name(state), colour),
                Cell::plain(w.pending_changes.to_string()),
                Cell::plain(last),
            ]
        })
        .collect();
    out.push_str(&table(
        palette,
        &["WORKSPACE", "STATE", "PENDING", "LAST SNAPSHOT"],
        &rows,
    ));
    for w in &s.workspaces {
        let path = w
            .workspace
            .as_ref()
            .map(|w| w.path.as_str())
            .unwrap_or_default();
        if !w.state_detail.is_empty() {
            out.push_str(&format!("{path}: {}\n", w.state_detail));
        }
        if w.reconciling {
            out.push_str(&format!(
                "{path}: reconciling: looking for changes made while chkptd was not running (changes from now on are recorded)\n"
            ));
        }
        if let Some(t) = &w.tripwire {
            let pinned = if t.pinned_snapshot.is_empty() {
                "(none)"
            } else {
                t.pinned_snapshot.as_str()
            };
            let detail = if t.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", t.detail)
            };
            out.push_str(&format!(
                "{path}: {} {} files deleted or rewritten {}{detail}; snapshot {pinned} from just before is pinned: \
                 `chkptctl restore {pinned}` brings it back, `chkptctl ack` clears this line\n",
                palette.paint("mass-change tripwire:", Colour::Red),
                t.changed_files,
                age(now_ms, t.fired_unix_ms),
            ));
        }
        for warning in &w.warnings {
            out.push_str(&format!(
                "{path}: {} {warning}\n",
                palette.paint("warning:", Colour::Red)
            ));
        }
        if !w.top_files.is_empty() {
            out.push_str(&format!(
                "{path}: stored most in the last day (what need not be kept belongs in .chkptignore):\n"
            ));
            for f in w.top_files.iter().take(TOP_FILES_SHOWN) {
                let n = f.snapshots;
                out.push_str(&format!(
                    "  {:>10}  {} ({n} snapshot{})\n",
                    human_bytes(f.bytes_added),
                    path_text(&f.path),
                    if n == 1 { "" } else { "s" }
                ));
            }
        }
    }
    out
}

/// Files listed under "stored most" (`--json` has them all).
const TOP_FILES_SHOWN: usize = 5;

/// The store's line of `status`: its size against its budget, and the disk's free space.
fn store_line(st: &v1::StoreSpace) -> String {
    let budget = if st.budget_bytes == 0 {
        "no budget".to_owned()
    } else {
        format!("of a {} budget", human_bytes(st.budget_bytes))
    };
    let floor = if st.floor_bytes == 0 {
        String::new()
    } else {
        format!(
            " (automatic snapshots pause below {})",
            human_bytes(st.floor_bytes)
        )
    };
    let pending = if st.recompress_pending_bytes == 0 {
        String::new()
    } else {
        format!(
            "; {} to compress again once idle",
            human_bytes(st.recompress_pending_bytes)
        )
    };
    format!(
        "store  {} {budget}; {} free on its disk{floor}{pending}\n",
        human_bytes(st.size_bytes),
        human_bytes(st.free_bytes)
    )
}

/// The `workspaces` table, plus the folders each one excludes.
pub fn workspaces_text(palette: Palette, now_ms: u64, workspaces: &[v1::Workspace]) -> String {
    if workspaces.is_empty() {
        return "no workspaces watched: start with `chkptctl watch PATH`\n".to_owned();
    }
    let rows: Vec<Vec<Cell>> = workspaces
        .iter()
        .map(|w| {
            vec![
                Cell::plain(w.path.clone()),
                Cell::plain(duration_text(w.idle_ms)),
                Cell::plain(duration_text(w.max_delay_ms)),
                Cell::plain(if w.include_dependency_dirs {
                    "included"
                } else {
                    "excluded"
                }),
                Cell::plain(age(now_ms, w.created_unix_ms)),
            ]
        })
        .collect();
    let mut out = table(
        palette,
        &["WORKSPACE", "IDLE", "MAX DELAY", "DEPS", "SINCE"],
        &rows,
    );
    for w in workspaces {
        for e in &w.excluded {
            out.push_str(&format!(
                "{}: excludes {} ({})\n",
                w.path,
                path_text(&e.path),
                e.reason
            ));
        }
    }
    out
}

/// The `log` table: one row per snapshot in which the path changed.
pub fn log_table(palette: Palette, now_ms: u64, entries: &[v1::LogEntry]) -> String {
    if entries.is_empty() {
        // Not a bare header: a typo'd path is the usual cause.
        return "no snapshot has held this path\n".to_owned();
    }
    let rows: Vec<Vec<Cell>> = entries
        .iter()
        .map(|e| {
            let s = e.snapshot.clone().unwrap_or_default();
            vec![
                Cell::coloured(short_id(&s.id), Colour::Yellow),
                Cell::plain(age(now_ms, s.created_unix_ms)),
                Cell::plain(change_name(e.change())),
                Cell::plain(match e.kind() {
                    EntryKind::Directory => "-".to_owned(),
                    _ => human_bytes(e.size),
                }),
                Cell::plain(s.message),
            ]
        })
        .collect();
    table(palette, &["ID", "AGE", "CHANGE", "SIZE", "MESSAGE"], &rows)
}

/// The `prune` decisions and what they freed.
pub fn prune_text(palette: Palette, now_ms: u64, p: &v1::PruneResponse, run: Run) -> String {
    let dry_run = run == Run::DryRun;
    let rows: Vec<Vec<Cell>> = p
        .decisions
        .iter()
        .map(|d| {
            let s = d.snapshot.clone().unwrap_or_default();
            vec![
                if d.keep {
                    Cell::coloured("keep", Colour::Green)
                } else {
                    Cell::coloured("remove", Colour::Red)
                },
                Cell::coloured(short_id(&s.id), Colour::Yellow),
                Cell::plain(age(now_ms, s.created_unix_ms)),
                Cell::plain(trigger_name(s.trigger())),
                Cell::plain(d.reason.clone()),
            ]
        })
        .collect();
    let mut out = table(
        palette,
        &["ACTION", "ID", "AGE", "TRIGGER", "REASON"],
        &rows,
    );
    let removing = p.decisions.iter().filter(|d| !d.keep).count();
    if dry_run {
        out.push_str(&format!(
            "would remove {removing} snapshots, freeing {} (dry run)\n",
            human_bytes(p.reclaimed_bytes)
        ));
    } else {
        out.push_str(&format!(
            "removed {} snapshots, freed {}\n",
            p.removed,
            human_bytes(p.reclaimed_bytes)
        ));
    }
    out
}

/// A restore's result; for dry runs, the paths that would change.
pub fn restore_text(palette: Palette, r: &v1::RestoreSummary, run: Run) -> String {
    let dry_run = run == Run::DryRun;
    let verb = if dry_run { "would restore" } else { "restored" };
    let mut out = format!(
        "{verb} {}: {}, {} unchanged\n",
        palette.paint(&r.snapshot, Colour::Yellow),
        counts(r.added, r.modified, r.deleted),
        r.unchanged
    );
    // A dry run lists every path; a real restore the first few (the rest is in --json). The
    // total is the daemon's: it sends a real restore's first thousand paths only.
    let shown = if dry_run { r.changed_paths.len() } else { 20 };
    for (i, path) in r.changed_paths.iter().take(shown).enumerate() {
        let change = r
            .changes
            .get(i)
            .and_then(|c| ChangeKind::try_from(*c).ok())
            .unwrap_or(ChangeKind::Unspecified);
        let (mark, colour) = change_mark(change);
        out.push_str(&format!(
            "{} {}\n",
            palette.paint(mark, colour),
            path_text(path)
        ));
    }
    let total = r.changed_total.max(r.changed_paths.len() as u64);
    let listed = r.changed_paths.len().min(shown) as u64;
    if total > listed {
        out.push_str(&format!("  … and {} more\n", total - listed));
    }
    if !r.pre_restore_snapshot.is_empty() {
        out.push_str(&format!(
            "the state before was saved as {}: `chkptctl undo` brings it back\n",
            palette.paint(&r.pre_restore_snapshot, Colour::Yellow)
        ));
    }
    out
}

fn kind_text(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Executable => "executable",
        EntryKind::Symlink => "symlink",
        EntryKind::Directory => "directory",
        EntryKind::Unspecified => "nothing",
    }
}
