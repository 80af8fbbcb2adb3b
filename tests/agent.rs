//! Agent-native checkpoints, black-box against the real `chkptd`: saves that find nothing
//! changed, tags, `chkptctl hook`, `session:ID^`, and `chkptctl mcp` driven by the official
//! Python MCP SDK.

#![allow(clippy::unwrap_used)]

mod util;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use util::Daemon;

/// What one `chkptctl` run produced.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", self.stdout))
    }
}

/// Runs `chkptctl --socket SOCKET args...` in `cwd`, with `stdin` on its standard input.
fn run_in(socket: &Path, cwd: &Path, args: &[&str], stdin: &str) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chkptctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .current_dir(cwd)
        .env_remove("CHKPT_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chkptctl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(d: &Daemon, ws: &Path, args: &[&str]) -> Out {
    let out = run_in(&d.socket, ws, args, "");
    assert_eq!(
        out.code,
        0,
        "chkptctl {args:?} failed:\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
        out.stdout,
        out.stderr,
        d.log()
    );
    out
}

fn json(d: &Daemon, ws: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    ok(d, ws, &all).json()
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A daemon watching a folder with `README` and `src/main.rs`, without automatic snapshots
/// (only the test's own saves, hooks and restores make snapshots).
fn setup() -> (Daemon, tempfile::TempDir) {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    fs::create_dir_all(ws.path().join("src")).unwrap();
    fs::write(ws.path().join("README"), b"hello\n").unwrap();
    fs::write(ws.path().join("src/main.rs"), b"fn main() {}\n").unwrap();
    let dir = ws.path().display().to_string();
    ok(
        &d,
        ws.path(),
        &["watch", &dir, "--idle", "3600", "--max-delay", "3600"],
    );
    (d, ws)
}

#[test]
fn a_save_with_nothing_changed_returns_the_latest_and_keeps_its_message_as_a_note() {
    let (d, ws) = setup();
    let w = ws.path();
    fs::write(w.join("README"), b"hello, changed\n").unwrap();
    let first = json(&d, w, &["save", "-m", "one"]);
    assert_eq!(first["created"], true);
    assert_eq!(first["unchanged"], false);
    let id = first["id"].as_str().unwrap().to_owned();
    let rows = ids(&json(&d, w, &["list"])).len();

    let again = json(&d, w, &["save", "-m", "again", "--tag", "k=v"]);
    assert_eq!(again["id"], id.as_str(), "the latest snapshot comes back");
    assert_eq!(
        (again["created"].clone(), again["unchanged"].clone()),
        (false.into(), true.into())
    );
    let text = ok(&d, w, &["save", "-m", "and again"]);
    assert_eq!(text.stdout.trim(), id);
    assert!(
        text.stderr.contains("nothing changed since snapshot"),
        "{}",
        text.stderr
    );
    assert_eq!(ids(&json(&d, w, &["list"])).len(), rows, "no empty rows");

    let shown = json(&d, w, &["show", &id]);
    assert_eq!(shown["message"], "one", "the snapshot's own message stays");
    let notes = shown["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert_eq!(notes[0]["message"], "again");
    assert_eq!(notes[0]["tags"], serde_json::json!(["k=v"]));
    assert_eq!(notes[1]["message"], "and again");
    let human = ok(&d, w, &["show", &id]).stdout;
    assert!(
        human.contains("unchanged save") && human.contains("k=v"),
        "{human}"
    );

    // A pin asked for lands on the latest snapshot.
    let pinned = json(&d, w, &["save", "--pin"]);
    assert_eq!(
        (pinned["id"].as_str(), pinned["pinned"].clone()),
        (Some(id.as_str()), true.into())
    );

    // --allow-empty records one anyway, sharing the tree.
    let forced = json(&d, w, &["save", "--allow-empty", "-m", "forced"]);
    assert_eq!(forced["created"], true);
    assert_ne!(forced["id"], id.as_str());
    assert_eq!(forced["root_tree"], shown["root_tree"]);
    assert_eq!(
        (
            forced["added"].clone(),
            forced["modified"].clone(),
            forced["deleted"].clone()
        ),
        (0.into(), 0.into(), 0.into())
    );
    assert_eq!(ids(&json(&d, w, &["list"])).len(), rows + 1);

    // A change is a new snapshot again.
    fs::write(w.join("src/main.rs"), b"fn main() { run() }\n").unwrap();
    let next = json(&d, w, &["save", "-m", "changed"]);
    assert_eq!(
        (next["created"].clone(), next["modified"].clone()),
        (true.into(), 1.into())
    );
}

#[test]
fn tags_are_shown_and_filter_the_list() {
    let (d, ws) = setup();
    let w = ws.path();
    fs::write(w.join("a.txt"), b"a").unwrap();
    let a = json(
        &d,
        w,
        &["save", "--tag", "agent=codex", "--tag", "task=x y"],
    );
    fs::write(w.join("b.txt"), b"b").unwrap();
    let b = json(&d, w, &["save", "--tag", "task=other"]);
    assert_eq!(a["tags"], serde_json::json!(["agent=codex", "task=x y"]));
    let by_task = ids(&json(&d, w, &["list", "--tag", "task=x y"]));
    assert_eq!(by_task, [a["id"].as_str().unwrap()]);
    let both = ids(&json(
        &d,
        w,
        &["list", "--tag", "agent=codex", "--tag", "task=x y"],
    ));
    assert_eq!(both, [a["id"].as_str().unwrap()]);
    assert!(
        ids(&json(
            &d,
            w,
            &["list", "--tag", "agent=codex", "--tag", "task=other"]
        ))
        .is_empty()
    );
    assert_eq!(
        ids(&json(&d, w, &["list", "--tag", "task=other"])),
        [b["id"].as_str().unwrap()]
    );
    let table = ok(&d, w, &["list"]).stdout;
    assert!(table.contains("agent=codex task=x y"), "{table}");
    // Bad tags are refused with the reason, before anything is saved.
    let bad = run_in(&d.socket, w, &["save", "--tag", "novalue"], "");
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    let bad = run_in(&d.socket, w, &["save", "--tag", "bad key=v"], "");
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("a key is letters"), "{}", bad.stderr);
}

