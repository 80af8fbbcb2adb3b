//! git's patch format: headers, modes, and file names quoted as git quotes them.

use super::Shape;
use crate::store::Kind;

/// git's mode of an entry: it knows regular, executable and symlink, nothing finer.
pub(super) fn git_mode(s: &Shape) -> u32 {
    match s.kind {
        Kind::Symlink => 0o120000,
        Kind::File if s.mode & 0o111 != 0 => 0o100755,
        _ => 0o100644,
    }
}

/// Whether a name must be quoted, as git's `quote_c_style` with `core.quotePath` on decides.
fn needs_quoting(name: &[u8]) -> bool {
    name.iter()
        .any(|&b| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\')
}

/// `prefix` + `name`, C-quoted when git would quote it (`"a/t\303\251st"`).
pub(super) fn quoted(prefix: &str, name: &[u8]) -> Vec<u8> {
    let mut raw = prefix.as_bytes().to_vec();
    raw.extend_from_slice(name);
    if !needs_quoting(name) {
        return raw;
    }
    let mut out = vec![b'"'];
    for &b in &raw {
        match b {
            0x07 => out.extend_from_slice(b"\\a"),
            0x08 => out.extend_from_slice(b"\\b"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0x0b => out.extend_from_slice(b"\\v"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b if !(0x20..0x7f).contains(&b) => {
                out.extend_from_slice(format!("\\{b:03o}").as_bytes())
            }
            b => out.push(b),
        }
    }
    out.push(b'"');
    out
}

/// The `diff --git` line and the mode lines of a path.
pub(super) fn header(
    out: &mut Vec<u8>,
    path: &[u8],
    before: Option<&Shape>,
    after: Option<&Shape>,
) {
    out.extend_from_slice(b"diff --git ");
    out.extend_from_slice(&quoted("a/", path));
    out.push(b' ');
    out.extend_from_slice(&quoted("b/", path));
    out.push(b'\n');
    match (before, after) {
        (None, Some(a)) => {
            out.extend_from_slice(format!("new file mode {:o}\n", git_mode(a)).as_bytes())
        }
        (Some(b), None) => {
            out.extend_from_slice(format!("deleted file mode {:o}\n", git_mode(b)).as_bytes())
        }
        (Some(b), Some(a)) if git_mode(b) != git_mode(a) => out.extend_from_slice(
            format!("old mode {:o}\nnew mode {:o}\n", git_mode(b), git_mode(a)).as_bytes(),
        ),
        _ => {}
    }
}

/// Whether the header of a same-content change has mode lines (git can express it).
pub(super) fn mode_lines(before: Option<&Shape>, after: Option<&Shape>) -> bool {
    matches!((before, after), (Some(b), Some(a)) if git_mode(b) != git_mode(a))
}

/// One of the `---`/`+++` lines; git adds a tab after a name with a space, as GNU patch
/// wants.
fn file_line(out: &mut Vec<u8>, marker: &str, name: Option<Vec<u8>>) {
    out.extend_from_slice(marker.as_bytes());
    match name {
        Some(n) => {
            let space = n.contains(&b' ');
            out.extend_from_slice(&n);
            if space {
                out.push(b'\t');
            }
        }
        None => out.extend_from_slice(b"/dev/null"),
    }
    out.push(b'\n');
}

/// The `---` and `+++` lines before the hunks.
pub(super) fn file_lines(
    out: &mut Vec<u8>,
    path: &[u8],
    before: Option<&Shape>,
    after: Option<&Shape>,
) {
    file_line(out, "--- ", before.map(|_| quoted("a/", path)));
    file_line(out, "+++ ", after.map(|_| quoted("b/", path)));
}

fn names(path: &[u8], before: Option<&Shape>, after: Option<&Shape>) -> (Vec<u8>, Vec<u8>) {
    let a = if before.is_some() {
        quoted("a/", path)
    } else {
        b"/dev/null".to_vec()
    };
    let b = if after.is_some() {
        quoted("b/", path)
    } else {
        b"/dev/null".to_vec()
    };
    (a, b)
}

/// Both sizes in words: "1.2 KiB -> 3.4 KiB", "new, 12 B", "deleted, 5 B".
pub(super) fn sizes(before: Option<&Shape>, after: Option<&Shape>) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!("{} -> {}", human(b.size), human(a.size)),
        (None, Some(a)) => format!("new, {}", human(a.size)),
        (Some(b), None) => format!("deleted, {}", human(b.size)),
        (None, None) => String::new(),
    }
}

/// git's line for binary files (git apply needs a full index to apply them, so it refuses
/// such a patch rather than skip it), with both sizes.
pub(super) fn binary_line(
    out: &mut Vec<u8>,
    path: &[u8],
    before: Option<&Shape>,
    after: Option<&Shape>,
) {
    let (a, b) = names(path, before, after);
    out.extend_from_slice(b"Binary files ");
    out.extend_from_slice(&a);
    out.extend_from_slice(b" and ");
    out.extend_from_slice(&b);
    out.extend_from_slice(format!(" differ ({})\n", sizes(before, after)).as_bytes());
}

/// The line that stands for a patch left out.
pub(super) fn left_out_line(
    out: &mut Vec<u8>,
    path: &[u8],
    before: Option<&Shape>,
    after: Option<&Shape>,
    why: &str,
) {
    let (a, b) = names(path, before, after);
    out.extend_from_slice(b"Patch of ");
    out.extend_from_slice(&a);
    out.extend_from_slice(b" and ");
    out.extend_from_slice(&b);
    out.extend_from_slice(format!(" left out: {why} ({})\n", sizes(before, after)).as_bytes());
}

/// Bytes in binary units, as the client shows them.
pub fn human(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
