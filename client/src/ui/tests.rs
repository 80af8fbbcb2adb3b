//! The UI drawn into ratatui's `TestBackend`: what a person sees after each key.

#![allow(clippy::unwrap_used)]

use chkpt_proto::v1::{self, ChangeKind, PatchKind, Snapshot, Trigger};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::{Action, App, Focus, Pending, Want};
use super::view;

const NOW: u64 = 10_000_000;

fn snap(id: &str, ago_s: u64, message: &str) -> Snapshot {
    Snapshot {
        id: id.into(),
        created_unix_ms: NOW - ago_s * 1000,
        trigger: Trigger::Auto.into(),
        message: message.into(),
        added: 1,
        modified: 2,
        ..Snapshot::default()
    }
}

fn app() -> App {
    let mut pinned = snap("bbbbbbbb00000000", 600, "before the agent");
    pinned.pinned = true;
    pinned.trigger = Trigger::Manual.into();
    let mut rescan = snap("cccccccc00000000", 3600, "");
    rescan.rescan = true;
    App::new(
        "/home/u/project".into(),
        vec![snap("aaaaaaaa00000000", 30, "latest edit"), pinned, rescan],
    )
}

fn screen(app: &App) -> String {
    let mut t = Terminal::new(TestBackend::new(120, 40)).unwrap();
    t.draw(|f| view::draw(f, app, NOW)).unwrap();
    format!("{}", t.backend())
}

fn key(app: &mut App, code: KeyCode) -> Option<Action> {
    app.key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn patched_file(path: &str) -> v1::DiffEntry {
    let mut patch = v1::FilePatch {
        lines_added: 1,
        lines_deleted: 1,
        ..v1::FilePatch::default()
    };
    patch.set_kind(PatchKind::Text);
    v1::DiffEntry {
        path: path.as_bytes().to_vec(),
        change: ChangeKind::Modified.into(),
        patch: Some(patch),
        ..v1::DiffEntry::default()
    }
}

#[test]
fn the_timeline_shows_ages_triggers_counts_marks_and_messages() {
    let mut a = app();
    a.tripwire = Some("bbbbbbbb00000000".into());
    let s = screen(&a);
    assert!(s.contains("/home/u/project · 3 snapshots"), "{s}");
    assert!(
        s.contains("aaaaaaaa  30s ago auto        +1 ~2 -0 latest edit"),
        "{s}"
    );
    assert!(
        s.contains("bbbbbbbb  10m ago manual      +1 ~2 -0 [pin] [tripwire] before the age"),
        "{s}"
    );
    assert!(
        s.contains("cccccccc   1h ago auto        +1 ~2 -0 [rescan]"),
        "{s}"
    );
    assert!(s.contains("changes over time"), "{s}");
    assert!(s.contains("Files (loading…)"), "{s}");
}

#[test]
fn selecting_loads_files_then_the_patch_which_is_shown_and_scrolls() {
    let mut a = app();
    assert_eq!(a.wants(), Some(Want::Files("aaaaaaaa00000000".into())));
    key(&mut a, KeyCode::Down);
    assert_eq!(a.wants(), Some(Want::Files("bbbbbbbb00000000".into())));
    a.set_files(
        "bbbbbbbb00000000".into(),
        vec![patched_file("src/main.rs"), patched_file("README")],
    );
    assert_eq!(
        a.wants(),
        Some(Want::Patch(
            "bbbbbbbb00000000".into(),
            b"src/main.rs".to_vec()
        ))
    );
    key(&mut a, KeyCode::Tab);
    assert_eq!(a.focus, Focus::Files);
    key(&mut a, KeyCode::Down);
    assert_eq!(
        a.wants(),
        Some(Want::Patch("bbbbbbbb00000000".into(), b"README".to_vec()))
    );
    let text =
        b"diff --git a/README b/README\n--- a/README\n+++ b/README\n@@ -1 +1 @@\n-old\n+new\n"
            .to_vec();
    a.set_patch("bbbbbbbb00000000".into(), b"README".to_vec(), text);
    assert_eq!(a.wants(), None);
    let s = screen(&a);
    assert!(s.contains("Files changed in bbbbbbbb (2)"), "{s}");
    assert!(s.contains("M src/main.rs +1 -1"), "{s}");
    assert!(s.contains("Patch of README"), "{s}");
    assert!(s.contains("@@ -1 +1 @@"), "{s}");
    assert!(s.contains("-old") && s.contains("+new"), "{s}");
    key(&mut a, KeyCode::Tab);
    key(&mut a, KeyCode::Down);
    key(&mut a, KeyCode::Down);
    let s = screen(&a);
    assert!(
        !s.contains("diff --git a/README"),
        "scrolled past the header:\n{s}"
    );
    assert!(s.contains("+++ b/README"), "{s}");
}

#[test]
fn restore_asks_first_and_undo_takes_it_back() {
    let mut a = app();
    a.set_files("aaaaaaaa00000000".into(), vec![patched_file("src/main.rs")]);
    assert_eq!(key(&mut a, KeyCode::Char('r')), None);
    assert!(
        a.status
            .contains("restore src/main.rs as it was in aaaaaaaa? y/n"),
        "{}",
        a.status
    );
    assert!(screen(&a).contains("y/n"));
    let Some(Action::Restore(p)) = key(&mut a, KeyCode::Char('y')) else {
        panic!("no restore after y");
    };
    assert_eq!(
        p,
        Pending {
            snapshot: "aaaaaaaa00000000".into(),
            paths: vec![b"src/main.rs".to_vec()],
            undo: false
        }
    );
    let summary = v1::RestoreSummary {
        modified: 1,
        pre_restore_snapshot: "dddddddd00000000".into(),
        ..v1::RestoreSummary::default()
    };
    a.restored(&p, &summary);
    assert!(
        a.status
            .contains("the state before is snapshot dddddddd: u undoes"),
        "{}",
        a.status
    );
    key(&mut a, KeyCode::Char('u'));
    let Some(Action::Restore(undo)) = key(&mut a, KeyCode::Char('y')) else {
        panic!("no undo after y");
    };
    assert_eq!(undo.snapshot, "dddddddd00000000");
    assert_eq!(undo.paths, vec![b"src/main.rs".to_vec()]);
    assert!(undo.undo);
    // Any key but y cancels; R asks for the whole workspace.
    key(&mut a, KeyCode::Char('R'));
    assert!(a.status.contains("whole workspace"), "{}", a.status);
    assert_eq!(key(&mut a, KeyCode::Char('n')), None);
    assert_eq!(a.status, "restore cancelled");
}

#[test]
fn search_jump_filter_pin_help_and_quit() {
    let mut a = app();
    key(&mut a, KeyCode::Char('/'));
    for c in "AGENT".chars() {
        key(&mut a, KeyCode::Char(c));
    }
    assert!(screen(&a).contains("/AGENT"));
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.selected, 1, "the search is case-blind");
    assert_eq!(
        key(&mut a, KeyCode::Char('p')),
        Some(Action::Pin("bbbbbbbb00000000".into(), false))
    );
    key(&mut a, KeyCode::Char('@'));
    for c in "10m".chars() {
        key(&mut a, KeyCode::Char(c));
    }
    assert_eq!(
        key(&mut a, KeyCode::Enter),
        Some(Action::Jump("@10m".into()))
    );
    key(&mut a, KeyCode::Char('f'));
    for c in "src/".chars() {
        key(&mut a, KeyCode::Char(c));
    }
    assert_eq!(
        key(&mut a, KeyCode::Enter),
        Some(Action::Filter("src/".into()))
    );
    key(&mut a, KeyCode::Char('?'));
    let s = screen(&a);
    assert!(
        s.contains("Keys (any key closes)") && s.contains("undo the last restore"),
        "{s}"
    );
    key(&mut a, KeyCode::Char('x'));
    assert!(!a.help);
    key(&mut a, KeyCode::Char('q'));
    assert!(a.quit);
}

#[test]
fn a_new_snapshot_goes_on_top_and_the_selection_stays() {
    let mut a = app();
    key(&mut a, KeyCode::Down);
    a.snapshot_taken(snap("eeeeeeee00000000", 0, "just now"));
    assert_eq!(a.snapshots[0].id, "eeeeeeee00000000");
    assert_eq!(a.current().unwrap().id, "bbbbbbbb00000000");
    assert!(screen(&a).contains("4 snapshots"));
}

#[test]
fn volume_buckets_changes_over_the_span() {
    let a = app();
    let v = view::volume(&a.snapshots, 4);
    assert_eq!(v.iter().sum::<u64>(), 9);
    assert_eq!(
        v,
        [3, 0, 3, 3],
        "the oldest on the left, the newest on the right"
    );
}
