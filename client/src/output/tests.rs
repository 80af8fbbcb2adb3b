use chkpt_proto::v1::{self, ChangeKind, EntryKind, Snapshot, Trigger, WorkspaceState};
use serde_json::json;

use super::*;

const PLAIN: Palette = Palette { enabled: false };

fn snapshot() -> Snapshot {
    Snapshot {
        id: "0123456789abcdef".into(),
        workspace: "/home/u/project".into(),
        created_unix_ms: 1_000_000,
        created_at: "2026-11-24T10:00:00Z".into(),
        trigger: Trigger::PreRestore.into(),
        message: "before restore".into(),
        pinned: true,
        files: 10,
        bytes: 2048,
        added: 2,
        modified: 1,
        deleted: 0,
        ..Snapshot::default()
    }
}

#[test]
fn age_picks_the_largest_whole_unit() {
    let now = 100_000_000_000;
    assert_eq!(age(now, now), "0s ago");
    assert_eq!(age(now, now - 59_999), "59s ago");
    assert_eq!(age(now, now - 3 * 60_000), "3m ago");
    assert_eq!(age(now, now - 5 * 3_600_000), "5h ago");
    assert_eq!(age(now, now - 2 * 86_400_000), "2d ago");
    assert_eq!(age(now, now - 13 * 86_400_000), "13d ago");
    assert_eq!(age(now, now - 21 * 86_400_000), "3w ago");
    assert_eq!(age(now, now - 800 * 86_400_000), "2y ago");
}

#[test]
fn age_of_a_future_time_is_zero_not_a_panic() {
    assert_eq!(age(1_000, 5_000), "0s ago");
}

#[test]
fn sizes_use_binary_units() {
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(1023), "1023 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
}

#[test]
fn durations_are_short() {
    assert_eq!(duration_text(350), "350ms");
    assert_eq!(duration_text(2_000), "2s");
    assert_eq!(duration_text(65_000), "1m 5s");
    assert_eq!(duration_text(60_000), "1m");
    assert_eq!(duration_text(3_900_000), "1h 5m");
}

#[test]
fn short_id_is_eight_digits_and_tolerates_short_input() {
    assert_eq!(short_id("0123456789abcdef"), "01234567");
    assert_eq!(short_id("abc"), "abc");
}

#[test]
fn snapshot_json_has_the_contract_fields() {
    let value = snapshot_json(&snapshot());
    for (key, expected) in [
        ("id", json!("0123456789abcdef")),
        ("workspace", json!("/home/u/project")),
        ("created_at", json!("2026-11-24T10:00:00Z")),
        ("trigger", json!("pre-restore")),
        ("message", json!("before restore")),
        ("pinned", json!(true)),
        ("files", json!(10)),
        ("bytes", json!(2048)),
        ("added", json!(2)),
        ("modified", json!(1)),
        ("deleted", json!(0)),
        ("parent", json!(null)),
    ] {
        assert_eq!(value[key], expected, "field {key}");
    }
}

#[test]
fn trigger_names_are_stable() {
    assert_eq!(trigger_name(Trigger::Auto), "auto");
    assert_eq!(trigger_name(Trigger::Manual), "manual");
    assert_eq!(trigger_name(Trigger::PreRestore), "pre-restore");
}

#[test]
fn status_json_gives_last_snapshot_as_id_or_null() {
    let ws = |path: &str, last: Option<Snapshot>| v1::WorkspaceStatus {
        workspace: Some(v1::Workspace {
            path: path.into(),
            ..v1::Workspace::default()
        }),
        state: WorkspaceState::Watching.into(),
        pending_changes: 3,
        last_snapshot: last,
        ..v1::WorkspaceStatus::default()
    };
    let status = v1::StatusResponse {
        version: "0.1.0".into(),
        protocol: 1,
        workspaces: vec![ws("/a", Some(snapshot())), ws("/b", None)],
        store: Some(v1::StoreSpace {
            size_bytes: 10,
            budget_bytes: 20,
            free_bytes: 30,
            floor_bytes: 5,
            fs_bytes: 100,
            recompress_pending_bytes: 7,
        }),
        ..v1::StatusResponse::default()
    };
    let value = status_json(&status);
    assert_eq!(
        value["store"],
        json!({"size_bytes": 10, "budget_bytes": 20, "free_bytes": 30, "floor_bytes": 5, "fs_bytes": 100, "recompress_pending_bytes": 7})
    );
    assert_eq!(value["version"], json!("0.1.0"));
    assert_eq!(
        value["workspaces"][0],
        json!({
            "path": "/a",
            "state": "watching",
            "state_detail": "",
            "reconciling": false,
            "pending_changes": 3,
            "last_snapshot": "0123456789abcdef",
            "warnings": [],
            "tripwire": null,
            "top_files": [],
        })
    );
    assert_eq!(value["workspaces"][1]["last_snapshot"], json!(null));
}

#[test]
fn diff_json_is_an_array_with_lossy_paths() {
    let entries = [
        v1::DiffEntry {
            path: b"src/\xffname.rs".to_vec(),
            change: ChangeKind::Modified.into(),
            size_before: 10,
            size_after: 12,
            kind_before: EntryKind::File.into(),
            kind_after: EntryKind::File.into(),
            ..v1::DiffEntry::default()
        },
        v1::DiffEntry {
            path: b"link".to_vec(),
            change: ChangeKind::TypeChanged.into(),
            ..v1::DiffEntry::default()
        },
    ];
    let value = diff_json(&entries);
    assert_eq!(value[0]["path"], json!("src/\u{fffd}name.rs"));
    assert_eq!(value[0]["change"], json!("modified"));
    assert_eq!(value[0]["size_before"], json!(10));
    assert_eq!(value[0]["size_after"], json!(12));
    assert_eq!(value[1]["change"], json!("type-changed"));
    assert_eq!(value[1]["kind_before"], json!(null));
}

#[test]
fn restore_json_has_the_contract_fields() {
    let summary = v1::RestoreSummary {
        snapshot: "0123456789abcdef".into(),
        pre_restore_snapshot: String::new(),
        added: 1,
        modified: 2,
        deleted: 3,
        unchanged: 4,
        changed_paths: vec![b"a".to_vec()],
        changed_total: 1500,
        changes: vec![ChangeKind::Added.into()],
        changed_paths_text: vec!["a".into()],
    };
    let value = restore_json(&summary, Run::Done);
    assert_eq!(value["snapshot"], json!("0123456789abcdef"));
    assert_eq!(value["pre_restore_snapshot"], json!(null));
    assert_eq!(
        (
            &value["added"],
            &value["modified"],
            &value["deleted"],
            &value["unchanged"]
        ),
        (&json!(1), &json!(2), &json!(3), &json!(4))
    );
    assert_eq!(value["changed_paths"], json!(["a"]));
    assert_eq!(value["changed_total"], json!(1500));
    assert_eq!(value["changes"], json!(["added"]));
}

#[test]
fn table_aligns_columns_and_leaves_no_trailing_spaces() {
    let rows = vec![
        vec![
            Cell::plain("a"),
            Cell::plain("long value"),
            Cell::plain("x"),
        ],
        vec![Cell::plain("bbbb"), Cell::plain("v"), Cell::plain("")],
    ];
    assert_eq!(
        table(PLAIN, &["K", "VALUE", "NOTE"], &rows),
        "K     VALUE       NOTE\na     long value  x\nbbbb  v\n"
    );
}

#[test]
fn list_table_shows_short_id_age_trigger_and_changes() {
    let text = snapshot_table(
        PLAIN,
        1_000_000 + 180_000,
        &[snapshot()],
        WorkspaceColumn::Hidden,
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], "ID        AGE     TRIGGER      CHANGES   MESSAGE");
    assert_eq!(
        lines[1],
        "01234567  3m ago  pre-restore  +2 ~1 -0  [pinned] before restore"
    );
}

#[test]
fn colour_codes_appear_only_when_enabled() {
    assert_eq!(PLAIN.paint("x", Colour::Red), "x");
    assert_eq!(
        Palette { enabled: true }.paint("x", Colour::Red),
        "\x1b[31mx\x1b[0m"
    );
}

#[test]
fn details_list_every_field_and_the_warnings() {
    let mut s = snapshot();
    s.warnings = vec!["skipped unreadable file a.txt".into()];
    let text = snapshot_details(PLAIN, 1_000_000, &s);
    for needle in [
        "snapshot   0123456789abcdef",
        "trigger    pre-restore",
        "pinned     yes",
        "changes    +2 ~1 -0",
        "parent     (none)",
        "warning: skipped unreadable file a.txt",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[test]
fn list_marks_rescans_pins_and_git_state() {
    let mut s = snapshot();
    s.rescan = true;
    s.git_branch = "main".into();
    s.git_head = "0123456789abcdef0123".into();
    let text = snapshot_table(PLAIN, 2_000_000, &[s], WorkspaceColumn::Hidden);
    assert!(text.contains("[pinned]"), "{text}");
    assert!(text.contains("[rescan]"), "{text}");
    assert!(text.contains("[main 01234567]"), "{text}");
    let json = snapshot_json(&snapshot());
    assert_eq!(json["rescan"], serde_json::json!(false));
}

fn patched(path: &str, added: u64, deleted: u64, kind: v1::PatchKind) -> v1::DiffEntry {
    let mut patch = v1::FilePatch {
        lines_added: added,
        lines_deleted: deleted,
        ..v1::FilePatch::default()
    };
    patch.set_kind(kind);
    v1::DiffEntry {
        path: path.as_bytes().to_vec(),
        change: ChangeKind::Modified.into(),
        size_before: 100,
        size_after: 120,
        patch: Some(patch),
        ..v1::DiffEntry::default()
    }
}

#[test]
fn stat_lines_have_counts_bars_and_totals_like_git() {
    let entries = [
        patched("src/main.rs", 3, 2, v1::PatchKind::Text),
        patched("logo.png", 0, 0, v1::PatchKind::Binary),
        patched(
            "a/very/long/path/to/some/file.txt",
            1,
            0,
            v1::PatchKind::Text,
        ),
    ];
    let text = stat_text(PLAIN, &entries, 40);
    assert_eq!(
        text,
        " src/main.rs          | 5 +++--\n logo.png             | Bin 100 -> 120 bytes\n .../to/some/file.txt | 1 +\n 3 files changed, 4 insertions(+), 2 deletions(-)\n"
    );
    // Many changes: the bar is scaled to the width, every side keeps a mark.
    let entries = [patched("f", 1000, 1, v1::PatchKind::Text)];
    let text = stat_text(PLAIN, &entries, 40);
    let line = text.lines().next().unwrap();
    assert!(line.starts_with(" f | 1001 +"), "{line}");
    assert!(line.ends_with("+-"), "{line}");
    assert!(line.len() <= 40, "{line}");
}

#[test]
fn patch_colours_follow_the_hunk_not_the_look_of_a_line() {
    let on = Palette { enabled: true };
    let text = b"diff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1,2 +1 @@\n--- x\n keep\n\\ No newline at end of file\n";
    let out = String::from_utf8(patch::coloured_patch(on, text)).unwrap();
    assert_eq!(
        out,
        "\x1b[1mdiff --git a/f b/f\x1b[0m\n\x1b[1m--- a/f\x1b[0m\n\x1b[1m+++ b/f\x1b[0m\n\
         \x1b[36m@@ -1,2 +1 @@\x1b[0m\n\x1b[31m--- x\x1b[0m\n keep\n\x1b[2m\\ No newline at end of file\x1b[0m\n"
    );
    assert_eq!(patch::coloured_patch(PLAIN, text), text.to_vec());
}
