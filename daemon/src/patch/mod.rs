//! Patches: what changed inside a file, as `git diff` prints it.
//!
//! The daemon makes every patch, so each client (the CLI, the terminal UI, an MCP server) shows
//! the same text. The text is git's format, and `git apply` accepts it: the `diff --git` line,
//! mode lines, `---`/`+++` and the hunks, file names C-quoted as git quotes them.
//!
//! # Layout
//! - [`unified`]: the hunks of two texts (imara-diff's histogram or Myers line diff, then
//!   git's grouping with context lines).
//! - `git`: the headers, modes and name quoting of git's patch format.

mod git;
pub mod unified;

use crate::store::Kind;
pub use git::human;
pub use unified::Algorithm;

/// Git looks for a NUL byte in this many leading bytes to call a file binary.
const BINARY_PROBE: usize = 8000;

/// The default of [`Options::max_file_bytes`]: larger files are summarised.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 8 << 20;
/// The default budget of patch text in one response.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 64 << 20;

/// How patches are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Context lines around each change.
    pub context: u32,
    /// Count lines only: no text, no hunks.
    pub stat_only: bool,
    /// Largest side a patch is made of.
    pub max_file_bytes: u64,
    /// Largest total of patch text in one response.
    pub max_total_bytes: u64,
    /// The line diff.
    pub algorithm: Algorithm,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            context: 3,
            stat_only: false,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            algorithm: Algorithm::Histogram,
        }
    }
}

/// What a patch holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// Hunks of text.
    Text,
    /// A side is binary.
    Binary,
    /// Left out: too large, or past the response's budget.
    TooLarge,
    /// Same content, other mode.
    NoContent,
}

/// One hunk, with its place on both sides and its lines as they stand in the patch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hunk {
    /// First old line (1-based; the line before when `old_lines` is 0).
    pub old_start: u32,
    /// Old lines in the hunk.
    pub old_lines: u32,
    /// First new line.
    pub new_start: u32,
    /// New lines in the hunk.
    pub new_lines: u32,
    /// The `@@` line and the hunk's lines.
    pub text: Vec<u8>,
}

/// The patch of one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePatch {
    /// What it holds.
    pub kind: PatchKind,
    /// git's text of it (empty when counting only).
    pub text: Vec<u8>,
    /// Its hunks (empty when counting only).
    pub hunks: Vec<Hunk>,
    /// Lines added.
    pub added: u64,
    /// Lines deleted.
    pub deleted: u64,
    /// The content was left out.
    pub truncated: bool,
    /// Why content is not shown, in words.
    pub note: String,
}

/// One side of a path: what it is and its content (a symlink's is its target).
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    /// File or symlink (directories have no patch side).
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// The bytes.
    pub content: &'a [u8],
}

/// One side of a path whose content is not read: for summaries.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// File or symlink.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Its length.
    pub size: u64,
}

impl Side<'_> {
    fn shape(&self) -> Shape {
        Shape {
            kind: self.kind,
            mode: self.mode,
            size: self.content.len() as u64,
        }
    }
}

/// Whether git would call `content` binary.
pub fn is_binary(content: &[u8]) -> bool {
    content[..content.len().min(BINARY_PROBE)].contains(&0)
}

/// The patch that turns `before` into `after` at `path` (either may be absent, not both).
pub fn file_patch(
    path: &[u8],
    before: Option<Side<'_>>,
    after: Option<Side<'_>>,
    opts: &Options,
) -> FilePatch {
    let git_type = |s: &Side<'_>| s.kind == Kind::Symlink;
    if let (Some(b), Some(a)) = (before, after)
        && git_type(&b) != git_type(&a)
    {
        // git has no patch from a file to a symlink: the old one goes, the new one comes.
        let mut gone = file_patch(path, Some(b), None, opts);
        let came = file_patch(path, None, Some(a), opts);
        gone.text.extend_from_slice(&came.text);
        gone.hunks.extend(came.hunks);
        gone.added += came.added;
        gone.deleted += came.deleted;
        gone.kind = gone.kind.max_kind(came.kind);
        if gone.note.is_empty() {
            gone.note = came.note;
        }
        return gone;
    }
    let mut text = Vec::new();
    let shapes = (before.map(|s| s.shape()), after.map(|s| s.shape()));
    git::header(&mut text, path, shapes.0.as_ref(), shapes.1.as_ref());
    let old = before.map_or(&[][..], |s| s.content);
    let new = after.map_or(&[][..], |s| s.content);
    let same_content = before.is_some() && after.is_some() && old == new;
    if same_content {
        let git_modes = git::mode_lines(shapes.0.as_ref(), shapes.1.as_ref());
        let note = if git_modes {
            String::new()
        } else {
            // Permission bits git does not track (0644 -> 0600): nothing to print.
            text.clear();
            format!(
                "permissions {:04o} -> {:04o}",
                before.map_or(0, |s| s.mode),
                after.map_or(0, |s| s.mode)
            )
        };
        return FilePatch {
            kind: PatchKind::NoContent,
            text: if opts.stat_only { Vec::new() } else { text },
            hunks: Vec::new(),
            added: 0,
            deleted: 0,
            truncated: false,
            note,
        };
    }
    if is_binary(old) || is_binary(new) {
        git::binary_line(&mut text, path, shapes.0.as_ref(), shapes.1.as_ref());
        return FilePatch {
            kind: PatchKind::Binary,
            text: if opts.stat_only { Vec::new() } else { text },
            hunks: Vec::new(),
            added: 0,
            deleted: 0,
            truncated: false,
            note: format!(
                "binary file ({})",
                git::sizes(shapes.0.as_ref(), shapes.1.as_ref())
            ),
        };
    }
    let diff = unified::diff(old, new, opts);
    if !opts.stat_only && !diff.hunks.is_empty() {
        git::file_lines(&mut text, path, shapes.0.as_ref(), shapes.1.as_ref());
        for h in &diff.hunks {
            text.extend_from_slice(&h.text);
        }
    }
    FilePatch {
        kind: PatchKind::Text,
        text: if opts.stat_only { Vec::new() } else { text },
        hunks: diff.hunks,
        added: diff.added,
        deleted: diff.deleted,
        truncated: false,
        note: String::new(),
    }
}

/// The summary of a patch left out: the header and one line saying why, no content read.
pub fn left_out(
    path: &[u8],
    before: Option<Shape>,
    after: Option<Shape>,
    why: &str,
    opts: &Options,
) -> FilePatch {
    let mut text = Vec::new();
    if !opts.stat_only {
        git::header(&mut text, path, before.as_ref(), after.as_ref());
        git::left_out_line(&mut text, path, before.as_ref(), after.as_ref(), why);
    }
    FilePatch {
        kind: PatchKind::TooLarge,
        text,
        hunks: Vec::new(),
        added: 0,
        deleted: 0,
        truncated: true,
        note: format!(
            "patch left out: {why} ({})",
            git::sizes(before.as_ref(), after.as_ref())
        ),
    }
}

impl PatchKind {
    /// The less complete of two kinds, for a path made of two sections.
    fn max_kind(self, other: PatchKind) -> PatchKind {
        let rank = |k: PatchKind| match k {
            PatchKind::NoContent => 0,
            PatchKind::Text => 1,
            PatchKind::Binary => 2,
            PatchKind::TooLarge => 3,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests;
