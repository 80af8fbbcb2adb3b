//! Patches for people: the daemon's patch text, coloured line by line; git's `--stat`; and
//! the history of a path, one snapshot header and its changes after another.

use chkpt_proto::v1::{self, PatchKind, Snapshot};

use super::{Colour, Palette, age, path_text, trigger_name};

/// What a line of a patch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// `diff --git`, mode lines, `---`/`+++`, "Binary files ... differ".
    Header,
    /// An `@@` line.
    HunkHeader,
    /// A deleted line.
    Deleted,
    /// An added line.
    Added,
    /// A context line.
    Context,
    /// `\ No newline at end of file`.
    NoNewline,
}

/// Where a line of a patch stands: in a header, or inside a hunk with lines left on each side.
#[derive(Clone, Copy)]
enum At {
    Header,
    Hunk { old: u32, new: u32 },
}

/// The old and new line counts of an `@@ -a,b +c,d @@` line.
fn hunk_counts(line: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.strip_prefix("@@ -")?.split(' ');
    let count = |range: &str| -> Option<u32> {
        match range.split_once(',') {
            Some((_, n)) => n.parse().ok(),
            None => Some(1),
        }
    };
    let old = count(parts.next()?)?;
    let new = count(parts.next()?.strip_prefix('+')?)?;
    Some((old, new))
}

/// The lines of a patch (without their newline) and what each is. Lines are told apart by
/// position (a deleted line may read `--- x`), not by look.
pub fn patch_lines(text: &[u8]) -> Vec<(LineKind, &[u8])> {
    let mut out = Vec::new();
    let mut at = At::Header;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let kind = match at {
            At::Hunk { old, new } if old > 0 || new > 0 || body.starts_with(b"\\") => {
                match body.first() {
                    Some(b'-') => {
                        at = At::Hunk {
                            old: old.saturating_sub(1),
                            new,
                        };
                        LineKind::Deleted
                    }
                    Some(b'+') => {
                        at = At::Hunk {
                            old,
                            new: new.saturating_sub(1),
                        };
                        LineKind::Added
                    }
                    Some(b'\\') => LineKind::NoNewline,
                    _ => {
                        at = At::Hunk {
                            old: old.saturating_sub(1),
                            new: new.saturating_sub(1),
                        };
                        LineKind::Context
                    }
                }
            }
            _ => match body
                .starts_with(b"@@ ")
                .then(|| hunk_counts(body))
                .flatten()
            {
                Some((old, new)) => {
                    at = At::Hunk { old, new };
                    LineKind::HunkHeader
                }
                None => {
                    at = At::Header;
                    LineKind::Header
                }
            },
        };
        out.push((kind, body));
    }
    out
}

/// The colour git gives a kind of line.
pub fn line_colour(kind: LineKind) -> Option<Colour> {
    match kind {
        LineKind::Header => Some(Colour::Bold),
        LineKind::HunkHeader => Some(Colour::Cyan),
        LineKind::Deleted => Some(Colour::Red),
        LineKind::Added => Some(Colour::Green),
        LineKind::NoNewline => Some(Colour::Dim),
        LineKind::Context => None,
    }
}

/// A patch's text with git's colours: headers bold, `@@` lines cyan, deletions red, additions
/// green.
pub fn coloured_patch(palette: Palette, text: &[u8]) -> Vec<u8> {
    if !palette.enabled {
        return text.to_vec();
    }
    let mut out = Vec::with_capacity(text.len() + text.len() / 4);
    for (kind, body) in patch_lines(text) {
        match line_colour(kind) {
            Some(c) => {
                out.extend_from_slice(palette.paint(&String::from_utf8_lossy(body), c).as_bytes())
            }
            None => out.extend_from_slice(body),
        }
        out.push(b'\n');
    }
    // The last line of a text without a final newline keeps it missing.
    if !text.ends_with(b"\n") && !text.is_empty() {
        out.pop();
    }
    out
}

/// The patch of a diff: every entry's text, in order.
pub fn diff_patch(palette: Palette, entries: &[v1::DiffEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if let Some(p) = &e.patch {
            out.extend_from_slice(&coloured_patch(palette, &p.text));
        }
    }
    out
}

/// Width of a `--stat` when the terminal's is unknown (git's default).
pub const STAT_WIDTH: usize = 80;

/// git's `--stat`: one line per path with its added and deleted lines and a bar, then the
/// totals.
pub fn stat_text(palette: Palette, entries: &[v1::DiffEntry], width: usize) -> String {
    let rows: Vec<(String, Option<&v1::FilePatch>)> = entries
        .iter()
        .map(|e| (path_text(&e.path), e.patch.as_ref()))
        .collect();
    let name_width = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0)
        .min(width / 2);
    let changes = |p: Option<&v1::FilePatch>| p.map_or(0, |p| p.lines_added + p.lines_deleted);
    let most = rows.iter().map(|(_, p)| changes(*p)).max().unwrap_or(0);
    let count_width = most.to_string().len();
    let bar_room = width.saturating_sub(name_width + count_width + 5).max(10) as u64;
    let mut out = String::new();
    let (mut added, mut deleted) = (0, 0);
    for (name, p) in &rows {
        let shown = shorten(name, name_width);
        let pad = name_width.saturating_sub(shown.chars().count());
        out.push_str(&format!(" {shown}{} | ", " ".repeat(pad)));
        match p {
            Some(p) if p.kind() == PatchKind::Binary || p.kind() == PatchKind::TooLarge => {
                let (before, after) = sizes(entries, name);
                let what = if p.kind() == PatchKind::Binary {
                    "Bin"
                } else {
                    "Left out"
                };
                out.push_str(&format!("{what} {before} -> {after} bytes"));
            }
            _ => {
                let (a, d) = p.map_or((0, 0), |p| (p.lines_added, p.lines_deleted));
                added += a;
                deleted += d;
                let total = a + d;
                let (mut plus, mut minus) = (a, d);
                if most > bar_room {
                    // Scaled as git scales: every change shows at least one mark.
                    let scale = |n: u64| {
                        if n == 0 {
                            0
                        } else {
                            (n * bar_room / most).max(1)
                        }
                    };
                    plus = scale(a);
                    minus = scale(d);
                }
                out.push_str(&format!("{total:>count_width$}"));
                if plus + minus > 0 {
                    out.push(' ');
                    out.push_str(&palette.paint(&"+".repeat(plus as usize), Colour::Green));
                    out.push_str(&palette.paint(&"-".repeat(minus as usize), Colour::Red));
                }
            }
        }
        out.push('\n');
    }
    let files = rows.len();
    let mut summary = format!(" {files} file{} changed", if files == 1 { "" } else { "s" });
    if added > 0 || files == 0 {
        summary.push_str(&format!(
            ", {added} insertion{}(+)",
            if added == 1 { "" } else { "s" }
        ));
    }
    if deleted > 0 {
        summary.push_str(&format!(
            ", {deleted} deletion{}(-)",
            if deleted == 1 { "" } else { "s" }
        ));
    }
    out.push_str(&summary);
    out.push('\n');
    out
}

fn sizes(entries: &[v1::DiffEntry], name: &str) -> (u64, u64) {
    entries
        .iter()
        .find(|e| path_text(&e.path) == name)
        .map_or((0, 0), |e| (e.size_before, e.size_after))
}

/// A name cut to `width` characters from the left, as git does (`.../deep/file.rs`).
fn shorten(name: &str, width: usize) -> String {
    let n = name.chars().count();
    if n <= width || width < 4 {
        return name.to_owned();
    }
    let tail: String = name.chars().skip(n - (width - 3)).collect();
    format!("...{tail}")
}

/// The line that opens one snapshot in `show -p` and `log -p`.
pub fn snapshot_line(palette: Palette, now_ms: u64, s: &Snapshot) -> String {
    let mut line = format!(
        "{} ({}, {})",
        palette.paint(&format!("snapshot {}", s.id), Colour::Yellow),
        age(now_ms, s.created_unix_ms),
        trigger_name(s.trigger())
    );
    if s.pinned {
        line.push_str(&palette.paint(" [pinned]", Colour::Cyan));
    }
    if !s.message.is_empty() {
        line.push(' ');
        line.push_str(&s.message);
    }
    line.push('\n');
    line
}

/// How `log` shows each snapshot's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogForm {
    /// The patch.
    Patch,
    /// The `--stat`.
    Stat,
}

/// `log -p` / `log --stat`: each snapshot's line, then its changes, then a blank line.
pub fn log_patches(
    palette: Palette,
    now_ms: u64,
    entries: &[v1::LogEntry],
    form: LogForm,
    width: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        let s = e.snapshot.clone().unwrap_or_default();
        out.extend_from_slice(snapshot_line(palette, now_ms, &s).as_bytes());
        match form {
            LogForm::Patch => out.extend_from_slice(&diff_patch(palette, &e.changes)),
            LogForm::Stat => {
                out.extend_from_slice(stat_text(palette, &e.changes, width).as_bytes())
            }
        }
    }
    out
}
