//! Content diffs: patches `git apply` accepts, `--stat`, `--name-status`, paths, binary and
//! large files, `show -p`, `log -p`, `list -- PATH`.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use crate::cli::{git, json, ok, run, save, setup};
use crate::util::{Daemon, listing};

/// A tree with what a patch has to express: edits in the middle and at a last line without a
/// newline, files added and deleted (one empty), an executable bit, a symlink retargeted and a
/// file that becomes a symlink, names with a space and with non-ASCII bytes.
fn before(w: &Path) {
    let lines: String = (1..=40).map(|i| format!("line {i}\n")).collect();
    fs::create_dir_all(w.join("src/deep")).unwrap();
    fs::write(w.join("src/main.rs"), &lines).unwrap();
    fs::write(w.join("src/deep/no-eol.txt"), b"a\nb\nc").unwrap();
    fs::write(w.join("gone.txt"), b"bye\n").unwrap();
    fs::write(w.join("gone-empty"), b"").unwrap();
    fs::write(w.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    symlink("src/main.rs", w.join("link")).unwrap();
    fs::write(w.join("becomes-link"), b"plain\n").unwrap();
    fs::write(w.join("with space.txt"), b"one\n").unwrap();
    fs::write(w.join("t\u{e9}st.txt"), b"caf\xc3\xa9\n").unwrap();
}

fn after(w: &Path) {
    let lines: String = (1..=40)
        .map(|i| match i {
            3 => "line three\n".to_owned(),
            30 => "line thirty\nand one more\n".to_owned(),
            _ => format!("line {i}\n"),
        })
        .collect();
    fs::write(w.join("src/main.rs"), lines).unwrap();
    fs::write(w.join("src/deep/no-eol.txt"), b"a\nB\nc").unwrap();
    fs::remove_file(w.join("gone.txt")).unwrap();
    fs::remove_file(w.join("gone-empty")).unwrap();
    fs::write(w.join("new.txt"), b"fresh\nfile\n").unwrap();
    fs::write(w.join("new-empty"), b"").unwrap();
    fs::set_permissions(w.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(w.join("link")).unwrap();
    symlink("README", w.join("link")).unwrap();
    fs::remove_file(w.join("becomes-link")).unwrap();
    symlink("new.txt", w.join("becomes-link")).unwrap();
    fs::write(w.join("with space.txt"), b"two\n").unwrap();
    fs::write(w.join("t\u{e9}st.txt"), b"caf\xc3\xa9 cr\xc3\xa8me\n").unwrap();
}

/// A git repository holding `snap` as restored by chkptd.
fn repo_of(d: &Daemon, w: &Path, snap: &str, at: &Path) {
    ok(d, w, &["restore", snap, "--to", at.to_str().unwrap()]);
    git(at, &["init", "-q"]);
}

#[test]
fn the_patch_applies_with_git_and_gives_the_newer_tree() {
    let (d, ws) = setup();
    let w = ws.path();
    before(w);
    let a = save(&d, w, "before");
    after(w);
    let b = save(&d, w, "after");
    let scratch = tempfile::tempdir().unwrap();
    let expected = scratch.path().join("expected");
    ok(&d, w, &["restore", &b, "--to", expected.to_str().unwrap()]);

    // Both forms: snapshot against snapshot, and snapshot against the working tree.
    for (name, args) in [
        ("snapshots", vec!["diff", &a, &b]),
        ("working", vec!["diff", &a]),
    ] {
        let patch = ok(&d, w, &args).stdout;
        assert!(!patch.is_empty(), "{name}: empty patch");
        let file = scratch.path().join(format!("{name}.patch"));
        fs::write(&file, &patch).unwrap();
        let repo = scratch.path().join(name);
        repo_of(&d, w, &a, &repo);
        git(&repo, &["apply", "--check", file.to_str().unwrap()]);
        git(&repo, &["apply", file.to_str().unwrap()]);
        fs::remove_dir_all(repo.join(".git")).unwrap();
        assert_eq!(
            listing(&repo),
            listing(&expected),
            "{name}: applying gave another tree"
        );
        let exec = fs::metadata(repo.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            exec & 0o111,
            0o111,
            "{name}: the executable bit did not apply"
        );
        assert_eq!(
            fs::read_link(repo.join("becomes-link")).unwrap(),
            Path::new("new.txt"),
            "{name}"
        );
    }

    // The text is git's, line for line where both print the same thing.
    let text = ok(&d, w, &["diff", &a, &b]).text();
    for want in [
        "diff --git a/src/main.rs b/src/main.rs\n--- a/src/main.rs\n+++ b/src/main.rs\n@@ -1,6 +1,6 @@\n",
        "-line 3\n+line three\n",
        "diff --git a/run.sh b/run.sh\nold mode 100644\nnew mode 100755\n",
        "diff --git a/gone-empty b/gone-empty\ndeleted file mode 100644\n",
        "diff --git a/new-empty b/new-empty\nnew file mode 100644\n",
        "-b\n+B\n c\n\\ No newline at end of file\n",
        "--- a/with space.txt\t\n",
        "diff --git \"a/t\\303\\251st.txt\" \"b/t\\303\\251st.txt\"\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn stat_name_status_context_and_paths() {
    let (d, ws) = setup();
    let w = ws.path();
    before(w);
    let a = save(&d, w, "before");
    after(w);

    let stat = ok(&d, w, &["diff", &a, "--stat"]).text();
    assert!(
        stat.lines()
            .any(|l| l.starts_with(" src/main.rs") && l.ends_with("| 5 +++--")),
        "{stat}"
    );
    assert!(
        stat.contains(" 11 files changed, 10 insertions(+), 8 deletions(-)\n"),
        "{stat}"
    );

    let names = ok(&d, w, &["diff", &a, "--name-status"]).text();
    assert!(names.contains("M  src/main.rs  ("), "{names}");
    assert!(names.contains("D  gone.txt"), "{names}");
    assert!(!names.contains("@@"), "{names}");

    // -U0: the hunks hold the changed lines only.
    let tight = ok(&d, w, &["diff", &a, "-U", "0", "--", "src/main.rs"]).text();
    assert!(
        tight.contains("@@ -3 +3 @@\n-line 3\n+line three\n@@ -30 +30,2 @@\n"),
        "{tight}"
    );

    // Paths limit every form, absolute ones too.
    let only = json(&d, w, &["diff", &a, "--", "src"]);
    let paths: Vec<&str> = only
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["src/deep/no-eol.txt", "src/main.rs"]);
    let abs = w.join("gone.txt").display().to_string();
    let only = json(
        &d,
        w,
        &["diff", &a, "--name-status", "--", &abs, "src/deep"],
    );
    assert_eq!(only.as_array().unwrap().len(), 2, "{only}");
    let outside = run(&d, w, &["diff", &a, "--", "/etc/passwd"]);
    assert_eq!(outside.code, 1);
    assert!(
        outside.stderr.contains("outside the workspace"),
        "{}",
        outside.stderr
    );
}

#[test]
fn json_has_hunks_binary_and_large_files_are_summarised() {
    let (d, ws) = setup();
    let w = ws.path();
    fs::write(w.join("img.bin"), [0u8, 1, 2, 3]).unwrap();
    let big: String = (0..3000).map(|i| format!("row {i}\n")).collect();
    fs::write(w.join("big.txt"), &big).unwrap();
    fs::write(w.join("small.txt"), b"x\ny\n").unwrap();
    let a = save(&d, w, "a");
    fs::write(w.join("img.bin"), [0u8, 9, 9, 9, 9, 9]).unwrap();
    fs::write(w.join("big.txt"), big.replace("row 1500\n", "row 1500!\n")).unwrap();
    fs::write(w.join("small.txt"), b"x\nz\n").unwrap();

    let text = ok(&d, w, &["diff", &a, "--max-file-size", "16K"]).text();
    assert!(
        text.contains("Binary files a/img.bin and b/img.bin differ (4 B -> 6 B)\n"),
        "{text}"
    );
    assert!(
        text.contains("Patch of a/big.txt and b/big.txt left out: larger than the 16.0 KiB limit"),
        "{text}"
    );
    // Asked for: the whole patch (0 = no limit).
    let text = ok(
        &d,
        w,
        &["diff", &a, "--max-file-size", "0", "--", "big.txt"],
    )
    .text();
    assert!(text.contains("-row 1500\n+row 1500!\n"), "{text}");

    let entries = json(&d, w, &["diff", &a, "--max-file-size", "16K"]);
    let find = |p: &str| {
        entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == p)
            .unwrap_or_else(|| panic!("{p}: {entries}"))
            .clone()
    };
    let small = find("small.txt");
    assert_eq!(small["change"], "modified", "the old fields stay");
    let patch = &small["patch"];
    assert_eq!(patch["kind"], "text");
    assert_eq!(
        (
            patch["lines_added"].as_u64(),
            patch["lines_deleted"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let hunk = &patch["hunks"][0];
    assert_eq!(hunk["header"], "@@ -1,2 +1,2 @@");
    assert_eq!(hunk["lines"], serde_json::json!([" x", "-y", "+z"]));
    assert_eq!(find("img.bin")["patch"]["kind"], "binary");
    let big = find("big.txt");
    assert_eq!(big["patch"]["kind"], "too-large");
    assert_eq!(big["patch"]["truncated"], true);
    assert!(
        big["patch"]["note"].as_str().unwrap().contains("16.0 KiB"),
        "{big}"
    );

    // --name-status --json is the old document: no patches made.
    let names = json(&d, w, &["diff", &a, "--name-status"]);
    assert!(names[0].get("patch").is_none(), "{names}");
}

#[test]
fn show_p_log_p_log_stat_and_list_by_path() {
    let (d, ws) = setup();
    let w = ws.path();
    fs::write(w.join("notes.md"), b"one\n").unwrap();
    let first = save(&d, w, "first");
    fs::write(w.join("notes.md"), b"one\ntwo\n").unwrap();
    let second = save(&d, w, "second");
    fs::write(w.join("other.txt"), b"unrelated\n").unwrap();
    let third = save(&d, w, "third");
    fs::write(w.join("notes.md"), b"two\n").unwrap();
    let fourth = save(&d, w, "fourth");

    // show -p: the snapshot against the one before it.
    let shown = ok(&d, w, &["show", &second, "-p"]).text();
    assert!(shown.contains(&second), "{shown}");
    assert!(
        shown.contains("diff --git a/notes.md b/notes.md\n--- a/notes.md\n+++ b/notes.md\n@@ -1 +1,2 @@\n one\n+two\n"),
        "{shown}"
    );
    assert!(!shown.contains("other.txt"), "{shown}");
    let shown = json(&d, w, &["show", &third, "--stat"]);
    assert_eq!(shown["id"], third.as_str());
    assert_eq!(shown["compared_with"], second.as_str());
    assert_eq!(shown["changes"][0]["path"], "other.txt");
    assert_eq!(shown["changes"][0]["patch"]["lines_added"], 1);
    // The oldest snapshot against nothing: everything is added.
    let oldest = json(&d, w, &["list"]).as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = json(&d, w, &["show", &oldest, "-p"]);
    assert!(shown["compared_with"].is_null(), "{shown}");
    assert!(
        shown["changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["change"] == "added"),
        "{shown}"
    );

    // log -p: each change of the path with its patch, newest first.
    let log = ok(&d, w, &["log", "-p", "notes.md"]).text();
    let pos = |id: &str| {
        log.find(&format!("snapshot {id}"))
            .unwrap_or_else(|| panic!("{id} missing:\n{log}"))
    };
    assert!(
        pos(&fourth) < pos(&second) && pos(&second) < pos(&first),
        "{log}"
    );
    assert!(!log.contains(&third), "{log}");
    assert!(log.contains("-one\n two\n"), "{log}");
    assert!(
        log.contains("new file mode 100644\n--- /dev/null\n+++ b/notes.md\n@@ -0,0 +1 @@\n+one\n"),
        "{log}"
    );
    let stat = ok(&d, w, &["log", "--stat", "notes.md"]).text();
    assert!(
        stat.contains(" notes.md | 1 -\n 1 file changed, 1 deletion(-)\n"),
        "{stat}"
    );
    let entries = json(
        &d,
        w,
        &["log", "-p", "-n", "1", "--", "notes.md", "other.txt"],
    );
    assert_eq!(entries.as_array().unwrap().len(), 1);
    assert_eq!(entries[0]["snapshot"]["id"], fourth.as_str());
    assert_eq!(entries[0]["changes"][0]["patch"]["kind"], "text");

    // list -- PATH: only the snapshots that changed it.
    let listed: Vec<String> = json(&d, w, &["list", "--", "other.txt"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, [third]);
}

#[test]
fn colour_and_pager_on_a_terminal_plain_text_into_a_pipe() {
    let (d, ws) = setup();
    let w = ws.path();
    fs::write(w.join("f.txt"), b"old\n").unwrap();
    let a = save(&d, w, "a");
    fs::write(w.join("f.txt"), b"new\n").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let paged = scratch.path().join("paged");
    // `script` gives chkptctl a terminal; the pager writes what it gets to a file.
    let on_tty = |extra: &str, env: &[(&str, &str)]| {
        let _ = fs::remove_file(&paged);
        let line = format!(
            "{} --socket {} -w {} diff {a} {extra}",
            env!("CARGO_BIN_EXE_chkptctl"),
            d.socket.display(),
            w.display()
        );
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &line, "/dev/null"])
            .env("PAGER", format!("cat > {}", paged.display()))
            .env_remove("NO_COLOR")
            .env("TERM", "xterm");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("run script (util-linux)");
        assert!(out.status.success(), "{out:?}");
        fs::read_to_string(&paged).unwrap_or_default()
    };
    let coloured = on_tty("", &[]);
    assert!(
        coloured.contains("\x1b[31m-old\x1b[0m\n\x1b[32m+new\x1b[0m\n"),
        "{coloured:?}"
    );
    assert!(
        coloured.contains("\x1b[1mdiff --git a/f.txt b/f.txt\x1b[0m"),
        "{coloured:?}"
    );
    assert!(
        coloured.contains("\x1b[36m@@ -1 +1 @@\x1b[0m"),
        "{coloured:?}"
    );
    let plain = on_tty("", &[("NO_COLOR", "1")]);
    assert!(
        plain.contains("-old\n+new\n") && !plain.contains('\x1b'),
        "{plain:?}"
    );
    let plain = on_tty("--color never", &[]);
    assert!(
        plain.contains("-old\n+new\n") && !plain.contains('\x1b'),
        "{plain:?}"
    );

    // Into a pipe: no pager (it would have swallowed the text) and no colour, unless asked.
    let piped = crate::cli::command(&d, w)
        .args(["diff", &a])
        .env("PAGER", "false")
        .output()
        .unwrap();
    let text = String::from_utf8(piped.stdout).unwrap();
    assert!(
        text.contains("-old\n+new\n") && !text.contains('\x1b'),
        "{text:?}"
    );
    let forced = ok(&d, w, &["diff", &a, "--color", "always"]).text();
    assert!(forced.contains("\x1b[32m+new\x1b[0m"), "{forced:?}");
}
