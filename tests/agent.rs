//! Agent-native checkpoints, black-box against the real `chkptd`: saves that find nothing
//! changed, tags, `chkptctl hook`, `session:ID^`, and `chkptctl mcp` driven by the official
//! Python MCP SDK.

#![allow(clippy::unwrap_used)]

mod util;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{Daemon, listing};

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

/// One Claude Code hook call with this JSON on stdin; it must exit 0 and print nothing on
/// stdout.
fn claude_hook(d: &Daemon, cwd: &Path, input: &Value) -> Out {
    let out = run_in(&d.socket, cwd, &["hook", "claude-code"], &input.to_string());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "", "a hook prints nothing on stdout");
    out
}

#[test]
fn hooks_tag_a_session_and_session_caret_restores_what_was_before_it() {
    let (d, ws) = setup();
    let w = ws.path();
    let cwd = w.display().to_string();
    let event = |name: &str, extra: Value| {
        let mut v = serde_json::json!({
            "session_id": "sess-1",
            "transcript_path": "/tmp/t.jsonl",
            "cwd": cwd,
            "hook_event_name": name,
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    // The user's own edit before the session: part of "before".
    fs::write(w.join("README"), b"edited by the user\n").unwrap();
    let before = listing(w);
    claude_hook(
        &d,
        w,
        &event(
            "UserPromptSubmit",
            serde_json::json!({"prompt": "Refactor main\nand more details"}),
        ),
    );
    claude_hook(
        &d,
        w,
        &event(
            "PreToolUse",
            serde_json::json!({"tool_name": "Bash", "tool_input": {"command": "x"}}),
        ),
    );
    // The tool runs: edits chkpt sees only on disk.
    fs::write(w.join("src/main.rs"), b"fn main() { refactored() }\n").unwrap();
    fs::write(w.join("new.rs"), b"pub fn refactored() {}\n").unwrap();
    claude_hook(
        &d,
        w,
        &event(
            "PostToolUse",
            serde_json::json!({"tool_name": "Bash", "tool_response": {"stdout": ""}}),
        ),
    );
    claude_hook(&d, w, &event("Stop", serde_json::json!({})));
    let after = listing(w);

    let session = json(&d, w, &["list", "--session", "sess-1"]);
    let rows = session.as_array().unwrap();
    assert_eq!(
        rows.len(),
        2,
        "the prompt's and the tool's checkpoints: {session:#}"
    );
    assert_eq!(rows[0]["message"], "after Bash");
    assert_eq!(
        rows[0]["tags"],
        serde_json::json!([
            "agent=claude-code",
            "session=sess-1",
            "phase=post-tool",
            "tool=Bash"
        ])
    );
    assert_eq!(rows[1]["message"], "prompt: Refactor main");
    // The PreToolUse hook found nothing changed: a note on the prompt's checkpoint, which the
    // tag filter finds.
    assert_eq!(
        ids(&json(&d, w, &["list", "--tag", "phase=pre-tool"])),
        [rows[1]["id"].as_str().unwrap()]
    );
    assert_eq!(
        ids(&json(&d, w, &["list", "--tag", "agent=claude-code"])).len(),
        2
    );
    assert_eq!(
        json(&d, w, &["show", "session:sess-1"])["id"],
        rows[0]["id"]
    );
    assert_eq!(
        json(&d, w, &["show", "session:sess-1^"])["id"],
        rows[1]["id"]
    );

    // One command takes the whole session back out.
    ok(&d, w, &["restore", "session:sess-1^"]);
    assert_eq!(listing(w), before, "the state just before the session");
    ok(&d, w, &["undo"]);
    assert_eq!(listing(w), after);

    // The generic hook takes the same facts as flags.
    fs::write(w.join("c.txt"), b"codex was here\n").unwrap();
    let out = run_in(
        &d.socket,
        w,
        &[
            "hook",
            "generic",
            "--agent",
            "codex",
            "--session",
            "c-9",
            "--phase",
            "post-tool",
            "--tool",
            "shell",
        ],
        "",
    );
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{}", out.stderr);
    let codex = json(&d, w, &["list", "--tag", "agent=codex"]);
    assert_eq!(codex[0]["message"], "after shell");
    assert_eq!(
        codex[0]["tags"],
        serde_json::json!([
            "agent=codex",
            "session=c-9",
            "phase=post-tool",
            "tool=shell"
        ])
    );
}

#[test]
fn a_hook_never_fails_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let input = serde_json::json!({
        "session_id": "s", "cwd": dir.path(), "hook_event_name": "PreToolUse", "tool_name": "Edit"
    })
    .to_string();
    let one_line = |out: &Out, needle: &str| {
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.stdout, "");
        assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);
        assert!(out.stderr.contains(needle), "{:?}", out.stderr);
    };
    // No daemon.
    let gone = dir.path().join("no.sock");
    one_line(
        &run_in(&gone, dir.path(), &["hook", "claude-code"], &input),
        "not running",
    );
    // Input that is not JSON.
    one_line(
        &run_in(&gone, dir.path(), &["hook", "claude-code"], "{oops"),
        "not JSON",
    );
    // A daemon that accepts the connection and never answers: the wait is bounded.
    let hung = dir.path().join("hung.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&hung).unwrap();
    let t = Instant::now();
    let out = run_in(
        &hung,
        dir.path(),
        &["hook", "claude-code", "--timeout-ms", "300"],
        &input,
    );
    one_line(&out, "did not answer within 300 ms");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // A folder nobody watches.
    let d = Daemon::start(&[]);
    one_line(
        &run_in(&d.socket, dir.path(), &["hook", "claude-code"], &input),
        "no checkpoint taken",
    );
}

#[test]
fn the_mcp_server_serves_a_real_python_client_over_stdio() {
    let python = util::python_with("test-python-mcp", "import mcp", &["mcp"], false);
    let (d, ws) = setup();
    let w = ws.path();
    // Only a.txt, so the script knows the whole folder.
    fs::remove_dir_all(w.join("src")).unwrap();
    fs::remove_file(w.join("README")).unwrap();
    fs::write(w.join("a.txt"), b"one\n").unwrap();
    ok(&d, w, &["save", "-m", "start"]);
    // The server's own working directory is not the workspace: it must use the client's root.
    let elsewhere = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/mcp_client.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_chkptctl"))
        .arg(&d.socket)
        .arg(w)
        .arg(elsewhere.path())
        .env_remove("CHKPT_SOCKET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python MCP client failed:\nstdout: {stdout}\nstderr: {}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["server"], "chkpt");
    // What the client did is what the daemon has: the restore's pre-restore checkpoint, and
    // the working tree as the undo left it.
    let pre = summary["pre_restore"].as_str().unwrap();
    let shown = json(&d, w, &["show", pre]);
    assert_eq!(shown["trigger"], "pre-restore");
    assert_eq!(fs::read(w.join("a.txt")).unwrap(), b"two\n");
    assert_eq!(fs::read(w.join("b.txt")).unwrap(), b"new file\n");
}

