//! Agent-native checkpoints, black-box against the real `chkptd`: saves that find nothing
//! changed, tags, `chkptctl hook`, `session:ID^`, and `chkptctl mcp` driven by the official
//! Python MCP SDK.

#![allow(clippy::unwrap_used)]

mod util;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::cli::{Out, json_in, ok_in, run_with_input};
use util::{Daemon, listing};

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
    ok_in(
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
    let first = json_in(&d, w, &["save", "-m", "one"]);
    assert_eq!(first["created"], true);
    assert_eq!(first["unchanged"], false);
    let id = first["id"].as_str().unwrap().to_owned();
    let rows = ids(&json_in(&d, w, &["list"])).len();

    let again = json_in(&d, w, &["save", "-m", "again", "--tag", "k=v"]);
    assert_eq!(again["id"], id.as_str(), "the latest snapshot comes back");
    assert_eq!(
        (again["created"].clone(), again["unchanged"].clone()),
        (false.into(), true.into())
    );
    let text = ok_in(&d, w, &["save", "-m", "and again"]);
    assert_eq!(text.text().trim(), id);
    assert!(
        text.stderr.contains("nothing changed since snapshot"),
        "{}",
        text.stderr
    );
    assert_eq!(ids(&json_in(&d, w, &["list"])).len(), rows, "no empty rows");

    let shown = json_in(&d, w, &["show", &id]);
    assert_eq!(shown["message"], "one", "the snapshot's own message stays");
    let notes = shown["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert_eq!(notes[0]["message"], "again");
    assert_eq!(notes[0]["tags"], serde_json::json!(["k=v"]));
    assert_eq!(notes[1]["message"], "and again");
    let human = ok_in(&d, w, &["show", &id]).text();
    assert!(
        human.contains("unchanged save") && human.contains("k=v"),
        "{human}"
    );

    // A pin asked for lands on the latest snapshot.
    let pinned = json_in(&d, w, &["save", "--pin"]);
    assert_eq!(
        (pinned["id"].as_str(), pinned["pinned"].clone()),
        (Some(id.as_str()), true.into())
    );

    // --allow-empty records one anyway, sharing the tree.
    let forced = json_in(&d, w, &["save", "--allow-empty", "-m", "forced"]);
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
    assert_eq!(ids(&json_in(&d, w, &["list"])).len(), rows + 1);

    // A change is a new snapshot again.
    fs::write(w.join("src/main.rs"), b"fn main() { run() }\n").unwrap();
    let next = json_in(&d, w, &["save", "-m", "changed"]);
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
    let a = json_in(
        &d,
        w,
        &["save", "--tag", "agent=codex", "--tag", "task=x y"],
    );
    fs::write(w.join("b.txt"), b"b").unwrap();
    let b = json_in(&d, w, &["save", "--tag", "task=other"]);
    assert_eq!(a["tags"], serde_json::json!(["agent=codex", "task=x y"]));
    let by_task = ids(&json_in(&d, w, &["list", "--tag", "task=x y"]));
    assert_eq!(by_task, [a["id"].as_str().unwrap()]);
    let both = ids(&json_in(
        &d,
        w,
        &["list", "--tag", "agent=codex", "--tag", "task=x y"],
    ));
    assert_eq!(both, [a["id"].as_str().unwrap()]);
    assert!(
        ids(&json_in(
            &d,
            w,
            &["list", "--tag", "agent=codex", "--tag", "task=other"]
        ))
        .is_empty()
    );
    assert_eq!(
        ids(&json_in(&d, w, &["list", "--tag", "task=other"])),
        [b["id"].as_str().unwrap()]
    );
    let table = ok_in(&d, w, &["list"]).text();
    assert!(table.contains("agent=codex task=x y"), "{table}");
    // Bad tags are refused with the reason, before anything is saved.
    let bad = run_with_input(&d.socket, w, &["save", "--tag", "novalue"], "");
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    let bad = run_with_input(&d.socket, w, &["save", "--tag", "bad key=v"], "");
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("a key is letters"), "{}", bad.stderr);
}

/// One Claude Code hook call with this JSON on stdin; it must exit 0 and print nothing on
/// stdout.
fn claude_hook(d: &Daemon, cwd: &Path, input: &Value) -> Out {
    let out = run_with_input(&d.socket, cwd, &["hook", "claude-code"], &input.to_string());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.text(), "", "a hook prints nothing on stdout");
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

    let session = json_in(&d, w, &["list", "--session", "sess-1"]);
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
        ids(&json_in(&d, w, &["list", "--tag", "phase=pre-tool"])),
        [rows[1]["id"].as_str().unwrap()]
    );
    assert_eq!(
        ids(&json_in(&d, w, &["list", "--tag", "agent=claude-code"])).len(),
        2
    );
    assert_eq!(
        json_in(&d, w, &["show", "session:sess-1"])["id"],
        rows[0]["id"]
    );
    assert_eq!(
        json_in(&d, w, &["show", "session:sess-1^"])["id"],
        rows[1]["id"]
    );

    // One command takes the whole session back out.
    ok_in(&d, w, &["restore", "session:sess-1^"]);
    assert_eq!(listing(w), before, "the state just before the session");
    ok_in(&d, w, &["undo"]);
    assert_eq!(listing(w), after);

    // The generic hook takes the same facts as flags.
    fs::write(w.join("c.txt"), b"codex was here\n").unwrap();
    let out = run_with_input(
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
    assert_eq!((out.code, out.text().as_str()), (0, ""), "{}", out.stderr);
    let codex = json_in(&d, w, &["list", "--tag", "agent=codex"]);
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
        assert_eq!(out.text(), "");
        assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);
        assert!(out.stderr.contains(needle), "{:?}", out.stderr);
    };
    // No daemon.
    let gone = dir.path().join("no.sock");
    one_line(
        &run_with_input(&gone, dir.path(), &["hook", "claude-code"], &input),
        "not running",
    );
    // Input that is not JSON.
    one_line(
        &run_with_input(&gone, dir.path(), &["hook", "claude-code"], "{oops"),
        "not JSON",
    );
    // A daemon that accepts the connection and never answers: the wait is bounded.
    let hung = dir.path().join("hung.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&hung).unwrap();
    let t = Instant::now();
    let out = run_with_input(
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
        &run_with_input(&d.socket, dir.path(), &["hook", "claude-code"], &input),
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
    ok_in(&d, w, &["save", "-m", "start"]);
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
    let shown = json_in(&d, w, &["show", pre]);
    assert_eq!(shown["trigger"], "pre-restore");
    assert_eq!(fs::read(w.join("a.txt")).unwrap(), b"two\n");
    assert_eq!(fs::read(w.join("b.txt")).unwrap(), b"new file\n");
}

/// The plugin's JSON files, checked field by field against the documented schemas (Claude
/// Code's plugin reference: the marketplace manifest, the plugin manifest, `.mcp.json`, and
/// the hooks file, which has the settings' hook format).
mod plugin {
    use std::path::{Path, PathBuf};

    use serde_json::{Map, Value};

    /// Hook events the hooks reference names.
    const EVENTS: &[&str] = &[
        "PreToolUse",
        "PostToolUse",
        "PostToolUseFailure",
        "Notification",
        "UserPromptSubmit",
        "SessionStart",
        "SessionEnd",
        "Stop",
        "SubagentStart",
        "SubagentStop",
        "PreCompact",
        "PostCompact",
        "PermissionRequest",
    ];
    /// Top-level fields of plugin.json.
    const PLUGIN_FIELDS: &[&str] = &[
        "$schema",
        "name",
        "version",
        "description",
        "author",
        "homepage",
        "repository",
        "license",
        "keywords",
        "commands",
        "agents",
        "skills",
        "hooks",
        "mcpServers",
        "outputStyles",
        "lspServers",
    ];

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn read(path: &Path) -> Value {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
        v.as_object()
            .ok_or_else(|| format!("{what} must be an object"))
    }

    fn string<'a>(v: &'a Map<String, Value>, key: &str, what: &str) -> Result<&'a str, String> {
        match v.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            Some(_) => Err(format!("{what}.{key} must be a non-empty string")),
            None => Err(format!("{what}.{key} is required")),
        }
    }

    fn optional_string(v: &Map<String, Value>, key: &str, what: &str) -> Result<(), String> {
        match v.get(key) {
            None | Some(Value::String(_)) => Ok(()),
            Some(_) => Err(format!("{what}.{key} must be a string")),
        }
    }

    /// "Use kebab-case, no spaces" (plugin and marketplace names).
    fn kebab(name: &str, what: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        ok.then_some(())
            .ok_or_else(|| format!("{what} {name:?} must be kebab-case"))
    }

    fn author(v: &Map<String, Value>, what: &str) -> Result<(), String> {
        match v.get("author") {
            None => Ok(()),
            Some(a) => {
                let a = object(a, &format!("{what}.author"))?;
                string(a, "name", &format!("{what}.author")).map(drop)
            }
        }
    }

    fn semver(v: &Map<String, Value>, what: &str) -> Result<(), String> {
        let Some(version) = v.get("version") else {
            return Ok(());
        };
        let s = version
            .as_str()
            .ok_or_else(|| format!("{what}.version must be a string"))?;
        let parts: Vec<&str> = s.split('-').next().unwrap_or("").split('.').collect();
        (parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        .then_some(())
        .ok_or_else(|| format!("{what}.version {s:?} is not MAJOR.MINOR.PATCH"))
    }

    fn keywords(v: &Map<String, Value>, what: &str) -> Result<(), String> {
        match v.get("keywords") {
            None => Ok(()),
            Some(Value::Array(k)) if k.iter().all(Value::is_string) => Ok(()),
            Some(_) => Err(format!("{what}.keywords must be an array of strings")),
        }
    }

    /// `.claude-plugin/marketplace.json`: name, owner.name and plugins are required; each
    /// plugin entry needs a name and a source.
    pub fn marketplace(v: &Value) -> Result<Vec<(String, String)>, String> {
        let m = object(v, "marketplace")?;
        kebab(string(m, "name", "marketplace")?, "marketplace name")?;
        let owner = object(
            m.get("owner").ok_or("marketplace.owner is required")?,
            "marketplace.owner",
        )?;
        string(owner, "name", "marketplace.owner")?;
        optional_string(owner, "email", "marketplace.owner")?;
        let plugins = m
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or("marketplace.plugins must be an array")?;
        if plugins.is_empty() {
            return Err("marketplace.plugins is empty".into());
        }
        let mut out = Vec::new();
        for (i, p) in plugins.iter().enumerate() {
            let what = format!("marketplace.plugins[{i}]");
            let p = object(p, &what)?;
            let name = string(p, "name", &what)?;
            kebab(name, &format!("{what}.name"))?;
            let source = match p.get("source") {
                Some(Value::String(s)) if s.starts_with("./") => s.clone(),
                Some(Value::String(s)) => {
                    return Err(format!(
                        "{what}.source {s:?}: a relative path starts with ./"
                    ));
                }
                Some(Value::Object(o)) if o.contains_key("source") => {
                    return Err(format!("{what}: this repository's plugin is a local path"));
                }
                _ => return Err(format!("{what}.source is required")),
            };
            for key in [
                "description",
                "license",
                "category",
                "homepage",
                "repository",
            ] {
                optional_string(p, key, &what)?;
            }
            semver(p, &what)?;
            author(p, &what)?;
            keywords(p, &what)?;
            out.push((name.to_owned(), source));
        }
        Ok(out)
    }

    /// `.claude-plugin/plugin.json`: name is required (kebab-case); only documented fields.
    pub fn manifest(v: &Value) -> Result<String, String> {
        let m = object(v, "plugin.json")?;
        let name = string(m, "name", "plugin.json")?;
        kebab(name, "plugin name")?;
        if let Some(k) = m.keys().find(|k| !PLUGIN_FIELDS.contains(&k.as_str())) {
            return Err(format!("plugin.json has an undocumented field {k:?}"));
        }
        for key in ["description", "homepage", "repository", "license"] {
            optional_string(m, key, "plugin.json")?;
        }
        semver(m, "plugin.json")?;
        author(m, "plugin.json")?;
        keywords(m, "plugin.json")?;
        Ok(name.to_owned())
    }

    /// `.mcp.json`: `mcpServers`, each a command with string args (and an env of strings).
    pub fn mcp(v: &Value) -> Result<Vec<(String, Vec<String>)>, String> {
        let m = object(v, ".mcp.json")?;
        let servers = object(
            m.get("mcpServers")
                .ok_or(".mcp.json: mcpServers is required")?,
            ".mcp.json mcpServers",
        )?;
        let mut out = Vec::new();
        for (name, s) in servers {
            let what = format!("mcpServers.{name}");
            let s = object(s, &what)?;
            let command = string(s, "command", &what)?;
            let args = match s.get("args") {
                None => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| x.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| format!("{what}.args must be strings"))?,
                Some(_) => return Err(format!("{what}.args must be an array")),
            };
            if let Some(env) = s.get("env") {
                let env = object(env, &format!("{what}.env"))?;
                if !env.values().all(Value::is_string) {
                    return Err(format!("{what}.env values must be strings"));
                }
            }
            out.push((command.to_owned(), args));
        }
        Ok(out)
    }

    /// `hooks/hooks.json`: an optional description, and `hooks`: event name → matcher groups,
    /// each with an optional string matcher and a non-empty list of hooks; a command hook has
    /// `type: "command"`, a non-empty `command` and an optional positive `timeout` (seconds).
    pub fn hooks(v: &Value) -> Result<Vec<(String, String)>, String> {
        let m = object(v, "hooks.json")?;
        if let Some(k) = m
            .keys()
            .find(|k| !["description", "hooks"].contains(&k.as_str()))
        {
            return Err(format!("hooks.json has an undocumented field {k:?}"));
        }
        optional_string(m, "description", "hooks.json")?;
        let events = object(
            m.get("hooks").ok_or("hooks.json: hooks is required")?,
            "hooks",
        )?;
        let mut out = Vec::new();
        for (event, groups) in events {
            if !EVENTS.contains(&event.as_str()) {
                return Err(format!("hooks: {event:?} is not a hook event"));
            }
            let groups = groups
                .as_array()
                .ok_or_else(|| format!("hooks.{event} must be an array"))?;
            for (i, g) in groups.iter().enumerate() {
                let what = format!("hooks.{event}[{i}]");
                let g = object(g, &what)?;
                optional_string(g, "matcher", &what)?;
                let list = g
                    .get("hooks")
                    .and_then(Value::as_array)
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| format!("{what}.hooks must be a non-empty array"))?;
                for (j, h) in list.iter().enumerate() {
                    let what = format!("{what}.hooks[{j}]");
                    let h = object(h, &what)?;
                    if h.get("type").and_then(Value::as_str) != Some("command") {
                        return Err(format!("{what}.type must be \"command\""));
                    }
                    let command = string(h, "command", &what)?;
                    if let Some(t) = h.get("timeout")
                        && !t.as_f64().is_some_and(|t| t > 0.0)
                    {
                        return Err(format!("{what}.timeout must be a positive number"));
                    }
                    out.push((event.clone(), command.to_owned()));
                }
            }
        }
        Ok(out)
    }

    /// The repository's marketplace, its plugin, the MCP server and the hooks it registers.
    pub fn check_repository(root: &Path) -> Result<(), String> {
        let plugins = marketplace(&read(&root.join(".claude-plugin/marketplace.json")))?;
        let [(name, source)] = plugins.as_slice() else {
            return Err(format!("one plugin expected: {plugins:?}"));
        };
        let dir = root.join(source);
        let manifest_name = manifest(&read(&dir.join(".claude-plugin/plugin.json")))?;
        if &manifest_name != name {
            return Err(format!(
                "marketplace names {name:?}, plugin.json {manifest_name:?}"
            ));
        }
        let servers = mcp(&read(&dir.join(".mcp.json")))?;
        if servers != [("chkptctl".to_owned(), vec!["mcp".to_owned()])] {
            return Err(format!(
                ".mcp.json must register `chkptctl mcp`: {servers:?}"
            ));
        }
        let hooks = hooks(&read(&dir.join("hooks/hooks.json")))?;
        for event in ["UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop"] {
            if !hooks
                .iter()
                .any(|(e, c)| e == event && c == "chkptctl hook claude-code")
            {
                return Err(format!(
                    "no `chkptctl hook claude-code` on {event}: {hooks:?}"
                ));
            }
        }
        Ok(())
    }

    #[test]
    fn the_claude_code_plugin_matches_the_documented_schemas() {
        check_repository(&root()).unwrap();
        // And the checks refuse what the schemas refuse.
        let bad = |v: Value| v;
        assert!(
            marketplace(&bad(
                serde_json::json!({"name": "x", "plugins": [{"name": "a", "source": "./a"}]})
            ))
            .is_err(),
            "owner is required"
        );
        assert!(
            marketplace(&bad(
                serde_json::json!({"name": "x", "owner": {"name": "o"}, "plugins": [{"name": "a"}]})
            ))
            .is_err(),
            "source is required"
        );
        assert!(marketplace(&bad(serde_json::json!({"name": "My Market", "owner": {"name": "o"}, "plugins": [{"name": "a", "source": "./a"}]}))).is_err(), "kebab-case");
        assert!(
            manifest(&bad(serde_json::json!({"version": "1.0.0"}))).is_err(),
            "name is required"
        );
        assert!(manifest(&bad(serde_json::json!({"name": "a", "version": "one"}))).is_err());
        assert!(
            mcp(&bad(
                serde_json::json!({"mcpServers": {"a": {"args": ["x"]}}})
            ))
            .is_err(),
            "command is required"
        );
        assert!(
            hooks(&bad(serde_json::json!({"hooks": {"BeforeTool": []}}))).is_err(),
            "unknown event"
        );
        assert!(
            hooks(&bad(
                serde_json::json!({"hooks": {"Stop": [{"hooks": [{"type": "command"}]}]}})
            ))
            .is_err(),
            "command is required"
        );
        assert!(hooks(&bad(serde_json::json!({"hooks": {"Stop": [{"hooks": [{"type": "command", "command": "x", "timeout": 0}]}]}}))).is_err());
    }
}
