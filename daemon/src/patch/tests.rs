use super::*;

fn file(content: &[u8]) -> Side<'_> {
    Side {
        kind: Kind::File,
        mode: 0o644,
        content,
    }
}

fn text(p: &FilePatch) -> String {
    String::from_utf8(p.text.clone()).unwrap()
}

#[test]
fn modified_file_is_a_git_patch_with_three_lines_of_context() {
    let old = b"1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
    let new = b"1\n2\n3\n4\nfive\n6\n7\n8\n9\n10\n";
    let p = file_patch(
        b"src/a.txt",
        Some(file(old)),
        Some(file(new)),
        &Options::default(),
    );
    assert_eq!(p.kind, PatchKind::Text);
    assert_eq!((p.added, p.deleted), (1, 1));
    assert_eq!(
        text(&p),
        "diff --git a/src/a.txt b/src/a.txt\n--- a/src/a.txt\n+++ b/src/a.txt\n\
         @@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
    );
    assert_eq!(p.hunks.len(), 1);
    assert_eq!(
        (
            p.hunks[0].old_start,
            p.hunks[0].old_lines,
            p.hunks[0].new_start,
            p.hunks[0].new_lines
        ),
        (2, 7, 2, 7)
    );
}

#[test]
fn changes_far_apart_are_two_hunks_and_near_ones_one() {
    let old: Vec<u8> = (1..=30)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let far = String::from_utf8(old.clone())
        .unwrap()
        .replace("\n3\n", "\nx\n")
        .replace("\n25\n", "\ny\n");
    let p = file_patch(
        b"f",
        Some(file(&old)),
        Some(file(far.as_bytes())),
        &Options::default(),
    );
    assert_eq!(p.hunks.len(), 2, "{}", text(&p));
    // 6 unchanged lines between two changes: still one hunk with 3 lines of context.
    let near = String::from_utf8(old.clone())
        .unwrap()
        .replace("\n3\n", "\nx\n")
        .replace("\n10\n", "\ny\n");
    let p = file_patch(
        b"f",
        Some(file(&old)),
        Some(file(near.as_bytes())),
        &Options::default(),
    );
    assert_eq!(p.hunks.len(), 1, "{}", text(&p));
    let opts = Options {
        context: 0,
        ..Options::default()
    };
    let p = file_patch(b"f", Some(file(&old)), Some(file(near.as_bytes())), &opts);
    assert_eq!(p.hunks.len(), 2);
    assert!(text(&p).contains("@@ -3 +3 @@\n-3\n+x\n"), "{}", text(&p));
}

#[test]
fn added_deleted_and_empty_files() {
    let p = file_patch(b"new", None, Some(file(b"a\nb")), &Options::default());
    assert_eq!(
        text(&p),
        "diff --git a/new b/new\nnew file mode 100644\n--- /dev/null\n+++ b/new\n\
         @@ -0,0 +1,2 @@\n+a\n+b\n\\ No newline at end of file\n"
    );
    let p = file_patch(b"old", Some(file(b"x\n")), None, &Options::default());
    assert_eq!(
        text(&p),
        "diff --git a/old b/old\ndeleted file mode 100644\n--- a/old\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n"
    );
    // An empty file has a header and nothing else, as git prints it.
    let p = file_patch(b"empty", None, Some(file(b"")), &Options::default());
    assert_eq!(
        text(&p),
        "diff --git a/empty b/empty\nnew file mode 100644\n"
    );
}

#[test]
fn mode_changes_and_permission_bits_git_does_not_know() {
    let exec = Side {
        mode: 0o755,
        ..file(b"#!/bin/sh\n")
    };
    let p = file_patch(
        b"run",
        Some(file(b"#!/bin/sh\n")),
        Some(exec),
        &Options::default(),
    );
    assert_eq!(p.kind, PatchKind::NoContent);
    assert_eq!(
        text(&p),
        "diff --git a/run b/run\nold mode 100644\nnew mode 100755\n"
    );
    let private = Side {
        mode: 0o600,
        ..file(b"x")
    };
    let p = file_patch(b"f", Some(file(b"x")), Some(private), &Options::default());
    assert_eq!(p.kind, PatchKind::NoContent);
    assert!(p.text.is_empty());
    assert_eq!(p.note, "permissions 0644 -> 0600");
}

#[test]
fn binary_files_say_so_with_both_sizes() {
    let p = file_patch(
        b"img",
        Some(file(b"\0\x01")),
        Some(file(b"\0\x02\x03")),
        &Options::default(),
    );
    assert_eq!(p.kind, PatchKind::Binary);
    assert_eq!(
        text(&p),
        "diff --git a/img b/img\nBinary files a/img and b/img differ (2 B -> 3 B)\n"
    );
    assert!(p.hunks.is_empty());
}

#[test]
fn names_are_quoted_as_git_quotes_them() {
    let p = file_patch(
        "tést\t\"q\"".as_bytes(),
        None,
        Some(file(b"x\n")),
        &Options::default(),
    );
    assert!(
        text(&p).starts_with(
            "diff --git \"a/t\\303\\251st\\t\\\"q\\\"\" \"b/t\\303\\251st\\t\\\"q\\\"\"\n"
        ),
        "{}",
        text(&p)
    );
    // A space is not quoted, but the ---/+++ lines end in a tab as git writes them.
    let p = file_patch(
        b"a b",
        Some(file(b"1\n")),
        Some(file(b"2\n")),
        &Options::default(),
    );
    assert!(
        text(&p).contains("--- a/a b\t\n+++ b/a b\t\n"),
        "{}",
        text(&p)
    );
}

#[test]
fn a_file_that_became_a_symlink_is_deleted_then_created() {
    let link = Side {
        kind: Kind::Symlink,
        mode: 0o777,
        content: b"target",
    };
    let p = file_patch(b"l", Some(file(b"x\n")), Some(link), &Options::default());
    let t = text(&p);
    assert!(
        t.starts_with("diff --git a/l b/l\ndeleted file mode 100644\n"),
        "{t}"
    );
    assert!(
        t.ends_with(
            "diff --git a/l b/l\nnew file mode 120000\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+target\n\\ No newline at end of file\n"
        ),
        "{t}"
    );
    assert_eq!((p.added, p.deleted), (1, 1));
}

#[test]
fn stat_only_counts_without_text() {
    let opts = Options {
        stat_only: true,
        ..Options::default()
    };
    let p = file_patch(
        b"f",
        Some(file(b"a\nb\nc\n")),
        Some(file(b"a\nc\nd\ne\n")),
        &opts,
    );
    assert_eq!((p.added, p.deleted), (2, 1));
    assert!(p.text.is_empty() && p.hunks.is_empty());
}

#[test]
fn left_out_patches_say_why() {
    let shape = Shape {
        kind: Kind::File,
        mode: 0o644,
        size: 9 << 20,
    };
    let p = left_out(
        b"big",
        Some(shape),
        Some(shape),
        "larger than the 8.0 MiB limit",
        &Options::default(),
    );
    assert!(p.truncated);
    assert_eq!(p.kind, PatchKind::TooLarge);
    assert_eq!(
        text(&p),
        "diff --git a/big b/big\nPatch of a/big and b/big left out: larger than the 8.0 MiB limit (9.0 MiB -> 9.0 MiB)\n"
    );
}

#[test]
fn myers_and_histogram_both_reproduce_the_new_side() {
    let old = b"a\nb\nc\na\nb\nc\n";
    let new = b"b\na\nc\nb\nx\nc\n";
    for algorithm in [Algorithm::Histogram, Algorithm::Myers] {
        let opts = Options {
            algorithm,
            ..Options::default()
        };
        let p = file_patch(b"f", Some(file(old)), Some(file(new)), &opts);
        // Rebuild the new side from the single hunk (context covers the whole file).
        let body: Vec<&[u8]> = p.hunks[0].text.split(|&b| b == b'\n').skip(1).collect();
        let rebuilt: Vec<u8> = body
            .iter()
            .filter(|l| l.first().is_some_and(|&c| c == b' ' || c == b'+'))
            .flat_map(|l| [&l[1..], b"\n"].concat())
            .collect();
        assert_eq!(rebuilt, new, "{algorithm:?}");
    }
}
