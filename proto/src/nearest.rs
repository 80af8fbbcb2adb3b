//! The nearest name to one that was not found, for "did you mean …?" hints: the daemon's over
//! a snapshot's paths, the client's over a folder's entries.

/// Levenshtein distance between two byte strings (insert, delete, substitute: 1 each).
pub fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == cb {
                diag
            } else {
                1 + diag.min(above).min(row[j])
            };
            diag = above;
        }
    }
    row[b.len()]
}

/// How far a name may be from what was asked to count as meant: a typo or two, more for long
/// names (a third of the length), never a different word.
pub fn close_enough(wanted: &[u8], distance: usize) -> bool {
    distance <= (wanted.len() / 3).max(1)
}

/// The candidate nearest to `wanted` (`/`-separated paths): by the whole path, or by the last
/// component alone (`main.rs` finds `src/main.rs`), whichever is nearer; none when no
/// candidate is [`close_enough`]. Ties go to the shorter path, then the first.
pub fn nearest<'a, I>(wanted: &[u8], candidates: I) -> Option<&'a [u8]>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let base = |p: &'a [u8]| -> &'a [u8] { p.rsplit(|&b| b == b'/').next().unwrap_or(p) };
    let wanted_base = wanted.rsplit(|&b| b == b'/').next().unwrap_or(wanted);
    let mut best: Option<(usize, usize, &'a [u8])> = None;
    for c in candidates {
        // Lengths alone bound the distance: skip what cannot be close.
        let whole = if c.len().abs_diff(wanted.len()) <= wanted.len() / 3 + 1 {
            close(wanted, c)
        } else {
            None
        };
        let by_base = close(wanted_base, base(c));
        let Some(d) = whole.into_iter().chain(by_base).min() else {
            continue;
        };
        if best.is_none_or(|(bd, bl, _)| (d, c.len()) < (bd, bl)) {
            best = Some((d, c.len(), c));
        }
    }
    best.map(|(_, _, c)| c)
}

fn close(wanted: &[u8], c: &[u8]) -> Option<usize> {
    let d = edit_distance(wanted, c);
    close_enough(wanted, d).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_and_moved_files_are_found_other_words_are_not() {
        assert_eq!(edit_distance(b"kitten", b"sitting"), 3);
        assert_eq!(edit_distance(b"", b"abc"), 3);
        let paths: Vec<&[u8]> = vec![b"README.md", b"src", b"src/main.rs", b"src/lib.rs"];
        let n = |w: &str| nearest(w.as_bytes(), paths.iter().copied()).map(|p| p.to_vec());
        assert_eq!(n("READM.md"), Some(b"README.md".to_vec()));
        assert_eq!(n("src/mian.rs"), Some(b"src/main.rs".to_vec()));
        assert_eq!(n("main.rs"), Some(b"src/main.rs".to_vec()));
        assert_eq!(n("nosuch.txt"), None);
        assert_eq!(n("x"), None);
    }
}
