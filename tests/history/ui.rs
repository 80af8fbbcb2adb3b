//! `chkptctl ui` in a real terminal: tmux runs it against a real daemon, the test types keys
//! and reads the screen with `capture-pane`.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cli::{json, ok, run, save, setup};
use crate::util::Daemon;

/// A tmux server of the test's own, killed when dropped (with whatever runs in it).
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Runs `command` in a new `width`×`height` session.
    pub fn start(command: &str, width: u16, height: u16) -> Tmux {
        let t = Tmux {
            socket: format!("chkpt-test-{}-{}", std::process::id(), crate::unique()),
        };
        let out = t
            .tmux()
            .args([
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
            ])
            .arg(command)
            .output()
            .expect("run tmux (`.ci/run` installs it)");
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"])
            .env("TERM", "xterm-256color");
        c
    }

    /// Types keys (tmux key names: `Down`, `Tab`, `Enter`, or text).
    pub fn keys(&self, keys: &[&str]) {
        let out = self
            .tmux()
            .args(["send-keys", "-t", "t"])
            .args(keys)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "send-keys: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The screen as text.
    pub fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", "t"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows every one of `texts`; returns the screen.
    pub fn wait_for(&self, texts: &[&str], d: &Daemon) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if texts.iter().all(|t| s.contains(t)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {texts:?}:\n{s}\ndaemon log:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").output();
    }
}

/// The command line that runs `chkptctl ui` and then says how it ended.
pub fn ui_command(d: &Daemon, w: &Path) -> String {
    format!(
        "{} --socket {} -w {} ui; echo EXITED $?; sleep 60",
        env!("CARGO_BIN_EXE_chkptctl"),
        d.socket.display(),
        w.display()
    )
}

/// The 8-digit id after `marker` on the screen.
fn id_after(screen: &str, marker: &str) -> String {
    let at = screen
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not on:\n{screen}"));
    screen[at + marker.len()..].chars().take(8).collect()
}

#[test]
fn ui_in_tmux_shows_a_patch_restores_a_file_undoes_follows_and_pins() {
    let (d, ws) = setup();
    let w = ws.path();
    fs::write(w.join("notes.md"), b"one\n").unwrap();
    save(&d, w, "first");
    fs::write(w.join("notes.md"), b"one\ntwo\n").unwrap();
    let second = save(&d, w, "second");
    fs::write(w.join("notes.md"), b"garbage\n").unwrap();
    // In no snapshot: restoring one file must leave it alone.
    fs::write(w.join("unsaved.txt"), b"keep me\n").unwrap();

    let t = Tmux::start(&ui_command(&d, w), 160, 48);
    // The timeline (the watch's baseline and two saves), the newest's files and its patch.
    t.wait_for(&["3 snapshots", "second", "first", "notes.md +1 -0"], &d);
    t.wait_for(&["Patch of notes.md", "@@ -1 +1,2 @@", "+two"], &d);

    // Restore the file from the selected snapshot: asked first, then on disk.
    t.keys(&["Tab", "r"]);
    t.wait_for(&["restore notes.md as it was in", "y/n"], &d);
    assert_eq!(
        fs::read(w.join("notes.md")).unwrap(),
        b"garbage\n",
        "restored before the y"
    );
    t.keys(&["y"]);
    let s = t.wait_for(&["u undoes"], &d);
    assert_eq!(fs::read(w.join("notes.md")).unwrap(), b"one\ntwo\n");
    assert_eq!(
        fs::read(w.join("unsaved.txt")).unwrap(),
        b"keep me\n",
        "more than the file was restored"
    );
    let pre = id_after(&s, "the state before is snapshot ");
    let listed = json(&d, w, &["list"]);
    let pre_snap = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"].as_str().unwrap().starts_with(&pre))
        .unwrap_or_else(|| panic!("{pre} not listed: {listed}"));
    assert_eq!(pre_snap["trigger"], "pre-restore");
    // The pre-restore snapshot came in through the Events stream.
    t.wait_for(&["4 snapshots", "pre-restore"], &d);

    // u takes the restore back.
    t.keys(&["u"]);
    t.wait_for(&["undo the last restore", "y/n"], &d);
    t.keys(&["y"]);
    t.wait_for(&["undid: restored notes.md"], &d);
    assert_eq!(fs::read(w.join("notes.md")).unwrap(), b"garbage\n");

    // A snapshot taken elsewhere appears live.
    ok(&d, w, &["save", "-m", "saved from outside"]);
    t.wait_for(&["saved from outside"], &d);

    // The selection stayed on `second`: pin it.
    t.keys(&["Escape", "p"]);
    t.wait_for(&["pinned"], &d);
    assert_eq!(json(&d, w, &["show", &second])["pinned"], true);

    // Search, help, quit.
    t.keys(&["/", "first", "Enter"]);
    t.wait_for(&["/first:"], &d);
    t.keys(&["?"]);
    t.wait_for(&["Keys (any key closes)"], &d);
    t.keys(&["x", "q"]);
    t.wait_for(&["EXITED 0"], &d);
}

#[test]
fn ui_without_a_terminal_says_so() {
    let (d, ws) = setup();
    let out = run(&d, ws.path(), &["ui"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("needs a terminal"), "{}", out.stderr);
}
