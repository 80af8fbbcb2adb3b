//! Unified hunks of two texts: imara-diff finds the changed lines, then they are grouped as
//! git groups them (changes closer than twice the context share a hunk).

use imara_diff::{Diff, InternedInput, Token};

use super::{Hunk, Options};

/// The line-diff algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// git's histogram diff: readable hunks (the default).
    #[default]
    Histogram,
    /// Myers' diff: the shortest edit script (git's default).
    Myers,
}

/// The hunks of a line diff and its counts.
#[derive(Debug, Default)]
pub struct LineDiff {
    /// The hunks (none when only counting).
    pub hunks: Vec<Hunk>,
    /// Lines added.
    pub added: u64,
    /// Lines deleted.
    pub deleted: u64,
}

/// The line diff of `old` and `new` with `opts.context` lines around each change; with
/// `opts.stat_only` it only counts.
pub fn diff(old: &[u8], new: &[u8], opts: &Options) -> LineDiff {
    let context = opts.context;
    let input = InternedInput::new(old, new);
    let algorithm = match opts.algorithm {
        Algorithm::Histogram => imara_diff::Algorithm::Histogram,
        Algorithm::Myers => imara_diff::Algorithm::Myers,
    };
    let mut diff = Diff::compute(algorithm, &input);
    let mut out = LineDiff {
        hunks: Vec::new(),
        added: u64::from(diff.count_additions()),
        deleted: u64::from(diff.count_removals()),
    };
    if opts.stat_only {
        return out;
    }
    // Slides ambiguous hunks to where a person would put them (indentation heuristic).
    diff.postprocess_lines(&input);
    let changes: Vec<imara_diff::Hunk> = diff.hunks().collect();
    let mut i = 0;
    while i < changes.len() {
        // Changes at most 2 × context unchanged lines apart share one hunk.
        let mut j = i;
        while j + 1 < changes.len()
            && changes[j + 1].before.start - changes[j].before.end <= 2 * context
        {
            j += 1;
        }
        out.hunks.push(hunk(&input, &changes[i..=j], context));
        i = j + 1;
    }
    out
}

/// One hunk over a group of changes.
fn hunk(input: &InternedInput<&[u8]>, group: &[imara_diff::Hunk], context: u32) -> Hunk {
    let (first, last) = (&group[0], &group[group.len() - 1]);
    let old_len = input.before.len() as u32;
    let old_from = first.before.start.saturating_sub(context);
    let old_to = (last.before.end + context).min(old_len);
    // Unchanged lines are the same on both sides, so the context shifts both alike.
    let new_from = first.after.start - (first.before.start - old_from);
    let new_to = last.after.end + (old_to - last.before.end);
    let (old_lines, new_lines) = (old_to - old_from, new_to - new_from);
    let mut text = format!(
        "@@ -{} +{} @@\n",
        range(old_from, old_lines),
        range(new_from, new_lines)
    )
    .into_bytes();
    let mut pos = old_from;
    for c in group {
        lines(
            &mut text,
            b' ',
            input,
            &input.before[pos as usize..c.before.start as usize],
        );
        lines(
            &mut text,
            b'-',
            input,
            &input.before[c.before.start as usize..c.before.end as usize],
        );
        lines(
            &mut text,
            b'+',
            input,
            &input.after[c.after.start as usize..c.after.end as usize],
        );
        pos = c.before.end;
    }
    lines(
        &mut text,
        b' ',
        input,
        &input.before[pos as usize..old_to as usize],
    );
    Hunk {
        old_start: if old_lines == 0 {
            old_from
        } else {
            old_from + 1
        },
        old_lines,
        new_start: if new_lines == 0 {
            new_from
        } else {
            new_from + 1
        },
        new_lines,
        text,
    }
}

/// A hunk header's range as git writes it: `5` for one line, `5,3`, or `4,0` when empty
/// (the line after which it applies).
fn range(from: u32, len: u32) -> String {
    match len {
        0 => format!("{from},0"),
        1 => format!("{}", from + 1),
        n => format!("{},{n}", from + 1),
    }
}

fn lines(out: &mut Vec<u8>, mark: u8, input: &InternedInput<&[u8]>, tokens: &[Token]) {
    for &t in tokens {
        let line: &[u8] = input.interner[t];
        out.push(mark);
        out.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            out.extend_from_slice(b"\n\\ No newline at end of file\n");
        }
    }
}
