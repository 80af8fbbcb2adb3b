//! Turning daemon answers into text: JSON documents with stable field names
//! for scripts, aligned tables and short forms (ages, sizes, ids) for people.
//!
//! Everything here is pure: callers pass the current time and whether to use
//! colour, and get a `String` or a `serde_json::Value` back.

mod human;
mod json;
mod patch;

use chkpt_proto::v1::{ChangeKind, Trigger, WorkspaceState};

pub use human::{
    change_letter, diff_lines, log_table, prune_text, restore_text, snapshot_details,
    snapshot_table, status_text, workspaces_text,
};
pub use json::{
    SnapshotOut, diff_json, log_json, prune_json, restore_json, snapshot_json, status_json,
    tripwire_json, verify_json, workspace_json,
};
pub use patch::{LineKind, LogForm, STAT_WIDTH, diff_patch, log_patches, patch_lines, stat_text};

/// Whether a restore or a prune changed things, or only said what it would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// `--dry-run`: nothing was changed.
    DryRun,
    /// Done.
    Done,
}

impl Run {
    /// [`Run::DryRun`] when `dry_run`.
    pub fn dry_if(dry_run: bool) -> Run {
        if dry_run { Run::DryRun } else { Run::Done }
    }
}

/// Whether the `list` table has a column for each snapshot's workspace (`list --all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceColumn {
    /// One column more, for snapshots of several workspaces.
    Shown,
    /// Snapshots of one workspace.
    Hidden,
}

/// Whether a path's log in JSON carries each entry's changes (`log -p`, `log --stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryChanges {
    /// With `changes` and `truncated`.
    Listed,
    /// Without.
    Omitted,
}

/// Paths travel as raw bytes; JSON and terminals get them as lossy UTF-8.
pub fn path_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The first 8 hex digits of a snapshot id, as shown in tables.
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// `Trigger` as its stable JSON name.
pub fn trigger_name(trigger: Trigger) -> &'static str {
    match trigger {
        Trigger::Auto => "auto",
        Trigger::Manual => "manual",
        Trigger::PreRestore => "pre-restore",
        Trigger::Unspecified => "unknown",
    }
}

/// `WorkspaceState` as its stable JSON name.
pub fn state_name(state: WorkspaceState) -> &'static str {
    match state {
        WorkspaceState::Watching => "watching",
        WorkspaceState::Rescanning => "rescanning",
        WorkspaceState::Polling => "polling",
        WorkspaceState::Error => "error",
        WorkspaceState::Paused => "paused",
        WorkspaceState::Missing => "missing",
        WorkspaceState::Unspecified => "unknown",
    }
}

/// `ChangeKind` as its stable JSON name.
pub fn change_name(change: ChangeKind) -> &'static str {
    match change {
        ChangeKind::Added => "added",
        ChangeKind::Modified => "modified",
        ChangeKind::Deleted => "deleted",
        ChangeKind::TypeChanged => "type-changed",
        ChangeKind::Unspecified => "unknown",
    }
}

/// How long ago `then_ms` was, at `now_ms` (both Unix epoch milliseconds):
/// "12s ago", "3m ago", "5h ago", "2d ago", "6w ago", "1y ago".
pub fn age(now_ms: u64, then_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    const MIN: u64 = 60;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    const WEEK: u64 = 7 * DAY;
    const YEAR: u64 = 365 * DAY;
    match secs {
        s if s < MIN => format!("{s}s ago"),
        s if s < HOUR => format!("{}m ago", s / MIN),
        s if s < DAY => format!("{}h ago", s / HOUR),
        s if s < 2 * WEEK => format!("{}d ago", s / DAY),
        s if s < YEAR => format!("{}w ago", s / WEEK),
        s => format!("{}y ago", s / YEAR),
    }
}

/// A duration in milliseconds, short: "1h 5m", "42s", "350ms".
pub fn duration_text(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => two_units(s / 60, "m", s % 60, "s"),
        s if s < 86_400 => two_units(s / 3600, "h", s % 3600 / 60, "m"),
        s => two_units(s / 86_400, "d", s % 86_400 / 3600, "h"),
    }
}

/// "1m 5s", or "1m" when the smaller unit is zero.
fn two_units(big: u64, big_unit: &str, small: u64, small_unit: &str) -> String {
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit} {small}{small_unit}")
    }
}

/// A byte count in binary units: "512 B", "1.5 KiB", "3.2 GiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss)] // one decimal is all that is shown
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// What changed in a snapshot or restore: "+2 ~1 -0".
pub fn counts(added: u64, modified: u64, deleted: u64) -> String {
    format!("+{added} ~{modified} -{deleted}")
}

/// A terminal colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    /// Added paths, healthy states.
    Green,
    /// Snapshot ids, modified paths.
    Yellow,
    /// Deleted paths, errors.
    Red,
    /// Type changes, pins.
    Cyan,
    /// Less important text.
    Dim,
    /// Patch headers.
    Bold,
}

/// Paints text when colour is on (stdout is a terminal and `NO_COLOR` is unset).
#[derive(Debug, Clone, Copy)]
pub struct Palette {
    /// Whether to emit ANSI colour codes.
    pub enabled: bool,
}

impl Palette {
    /// `text` wrapped in the colour's escape codes, or as is when colour is off.
    pub fn paint(self, text: &str, colour: Colour) -> String {
        if !self.enabled {
            return text.to_owned();
        }
        let code = match colour {
            Colour::Green => "32",
            Colour::Yellow => "33",
            Colour::Red => "31",
            Colour::Cyan => "36",
            Colour::Dim => "2",
            Colour::Bold => "1",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// One table cell: its text and an optional colour.
#[derive(Debug, Clone)]
pub struct Cell {
    text: String,
    colour: Option<Colour>,
}

impl Cell {
    /// A plain cell.
    pub fn plain(text: impl Into<String>) -> Self {
        Cell {
            text: text.into(),
            colour: None,
        }
    }

    /// A coloured cell.
    pub fn coloured(text: impl Into<String>, colour: Colour) -> Self {
        Cell {
            text: text.into(),
            colour: Some(colour),
        }
    }
}

/// Renders rows under a header with columns padded to a common width.
/// The last column is never padded, so long messages do not leave trailing
/// spaces. Each line ends with a newline.
pub fn table(palette: Palette, header: &[&str], rows: &[Vec<Cell>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.text.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<Cell> = header
        .iter()
        .map(|h| Cell::coloured(*h, Colour::Dim))
        .collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(columns) {
            let text = match cell.colour {
                Some(colour) => palette.paint(&cell.text, colour),
                None => cell.text.clone(),
            };
            line.push_str(&text);
            if i + 1 < row.len().min(columns) {
                let pad = widths[i] - cell.text.chars().count();
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
