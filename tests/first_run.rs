//! A new user's first minutes (issue 20): the README's one command from a fresh clone, the
//! progress `watch` shows on a terminal (and nowhere else), the hints that follow a typo or a
//! snapshot of another workspace, and paths in the history commands given as in `cat`.
//! Real `chkptd`, real `chkptctl`, real socket; a real pseudo-terminal (`script`).

#![allow(clippy::unwrap_used)]

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::Daemon;
use util::cli::{fails_in, json_in, ok_in, project, save};

/// The repository's root (the clone the README's command runs in).
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The README's first command: the first line of the first `sh` block under "Two commands".
fn readme_first_command() -> String {
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("\n## Two commands")
        .nth(1)
        .expect("README.md has a `## Two commands` section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .expect("the section has an sh block");
    block.lines().next().unwrap().trim().to_owned()
}

/// Runs `line` in `sh` as a new user would: a home of its own (where `~` goes, the daemon's
/// data and socket), a `PATH` with only the toolchain and the system on it besides
/// `~/.cargo/bin` (where rustup users have `cargo install` put binaries).
fn user_shell(home: &Path, cwd: &Path, line: &str) -> std::process::Output {
    let cargo = PathBuf::from(std::env::var_os("CARGO").expect("run by cargo"));
    let toolchain = cargo.parent().unwrap();
    let path = format!(
        "{}:{}:/usr/local/bin:/usr/bin:/bin",
        home.join(".cargo/bin").display(),
        toolchain.display()
    );
    // The real cargo home keeps the downloaded crates; installs go to the user's.
    let cargo_home = std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"),
        PathBuf::from,
    );
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(line)
        .current_dir(cwd)
        .env_clear()
        .env("HOME", home)
        .env("PATH", path)
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env("CARGO_HOME", cargo_home)
        .env("CARGO_INSTALL_ROOT", home.join(".cargo"))
        .env("CARGO", &cargo)
        .stdin(Stdio::null());
    // The build settings of this run too, so that the install can reuse its build.
    for keep in [
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "TMPDIR",
        "CARGO_INCREMENTAL",
        "RUSTFLAGS",
    ] {
        if let Some(v) = std::env::var_os(keep) {
            c.env(keep, v);
        }
    }
    c.output().unwrap()
}

/// Stops the daemon the README's command started, however the test ends.
struct StopDaemon<'a>(&'a Path);

impl Drop for StopDaemon<'_> {
    fn drop(&mut self) {
        let _ = user_shell(self.0, self.0, "chkptctl daemon stop");
    }
}

/// The README's command, from the clone, leaves a daemon watching the folder it names, and
/// `chkptctl` works on the next line. The only change to the command is `--debug` on `cargo
/// install`, with the target directory this test run was built in: the same sources build
/// the same way, but a release build would take minutes and gigabytes more; cargo then only
/// copies the binaries the run already built (offline: it has nothing to download).
#[test]
fn the_readmes_first_command_leaves_a_daemon_watching_the_named_folder() {
    let line = readme_first_command();
    let parts: Vec<&str> = line.split(" && ").collect();
    let installs: Vec<usize> = (0..parts.len())
        .filter(|&i| parts[i].starts_with("cargo install "))
        .collect();
    assert_eq!(
        installs.len(),
        1,
        "the README's first command changed ({line}): it should still install with `cargo install`"
    );
    let watched = parts
        .last()
        .and_then(|p| p.strip_prefix("chkptctl watch "))
        .unwrap_or_else(|| {
            panic!("the README's first command ends in `chkptctl watch DIR`: {line}")
        })
        .trim()
        .to_owned();
    let mut run: Vec<String> = parts.iter().map(|p| (*p).to_owned()).collect();
    run[installs[0]].push_str(" --debug");
    let run = run.join(" && ");

    // A temp home in memory where there is one: the install copies two large debug binaries.
    let home = memory_tempdir();
    let h = home.path();
    fs::create_dir_all(h.join("run")).unwrap();
    // The folder the user names, with their files in it.
    let folder = PathBuf::from(watched.replacen('~', &h.display().to_string(), 1));
    fs::create_dir_all(folder.join("src")).unwrap();
    fs::write(folder.join("src/lib.rs"), b"pub fn mine() {}\n").unwrap();
    let _stop = StopDaemon(h);

    let target = Path::new(env!("CARGO_BIN_EXE_chkptd"))
        .parent()
        .and_then(Path::parent)
        .unwrap();
    let t = Instant::now();
    let out = user_shell(
        h,
        repo(),
        &format!(
            "export CARGO_TARGET_DIR={} CARGO_NET_OFFLINE=true; {run}",
            target.display()
        ),
    );
    assert!(
        out.status.success(),
        "the README's command failed: {run}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("watching "), "{said}");
    // Whether the install reused this run's build, from what cargo says, not from how long it
    // took (a loaded machine is slow either way). Without the tests' dev-dependencies some
    // crates get other features and are built again (tempfile, the proto build tools,
    // ratatui), and so are ours; the large ones must come from this run's build.
    let told = String::from_utf8_lossy(&out.stderr);
    for heavy in ["tokio", "tonic", "redb", "object_store"] {
        assert!(
            !told.contains(&format!("Compiling {heavy} ")),
            "the install rebuilt {heavy} instead of reusing this run's build (took {:?}):\n{told}",
            t.elapsed()
        );
    }

    // The next line: the installed chkptctl, on PATH, finds the daemon and the snapshot.
    let next = |line: &str| {
        let out = user_shell(h, &folder, line);
        assert!(
            out.status.success(),
            "`{line}` on the next line failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let list: serde_json::Value = serde_json::from_slice(&next("chkptctl --json list")).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["message"], "baseline", "{list}");
    assert_eq!(
        next("chkptctl cat latest src/lib.rs"),
        b"pub fn mine() {}\n"
    );
    let which = user_shell(h, h, "command -v chkptctl");
    assert_eq!(
        String::from_utf8_lossy(&which.stdout).trim(),
        h.join(".cargo/bin/chkptctl").display().to_string()
    );
}

/// A tree of `n` small files in folders of 200.
fn tree(root: &Path, n: usize) {
    for i in 0..n {
        let dir = root.join(format!("d{}", i / 200));
        if i % 200 == 0 {
            fs::create_dir_all(&dir).unwrap();
        }
        fs::write(
            dir.join(format!("f{i}.txt")),
            format!("file {i}\n").repeat(8),
        )
        .unwrap();
    }
}

/// Runs `chkptctl --socket S args…` on a pseudo-terminal (stdin, stdout and stderr all on
/// it, as in a terminal window); returns everything written to the terminal and how long the
/// run took.
fn on_a_terminal(d: &Daemon, args: &[&str]) -> (String, Duration) {
    let log = d.dir.path().join(format!("tty-{}.log", args.len()));
    let mut cmd = format!(
        "'{}' --socket '{}'",
        env!("CARGO_BIN_EXE_chkptctl"),
        d.socket.display()
    );
    for a in args {
        cmd.push_str(&format!(" '{a}'"));
    }
    let t = Instant::now();
    let status = Command::new("script")
        .args(["-q", "-e", "-c", &cmd])
        .arg(&log)
        .env("TERM", "xterm")
        .env_remove("CHKPT_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("script (bsdutils) runs");
    let took = t.elapsed();
    assert!(status.success(), "chkptctl {args:?} failed on a terminal");
    let text = String::from_utf8_lossy(&fs::read(&log).unwrap()).into_owned();
    // `script`'s own first and last lines.
    let body: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("Script started") && !l.starts_with("Script done"))
        .collect();
    (body.join("\n"), took)
}

/// How long `watch` waits before it draws a spinner (`QUIET_FOR` in the client).
const QUIET_FOR: Duration = Duration::from_millis(500);
/// How long the baseline must take for the spinner to show the counters: it waits
/// `QUIET_FOR`, then asks for them at once and every quarter of a second.
const SPINNER_DUE: Duration = Duration::from_millis(900);

/// A temp dir in memory where there is one (`/dev/shm`): many small files are made quickly
/// there, and a large copy costs no disk.
fn memory_tempdir() -> tempfile::TempDir {
    match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm").unwrap(),
        false => tempfile::tempdir().unwrap(),
    }
}

#[test]
fn watch_shows_files_walked_and_bytes_stored_on_a_terminal_and_nothing_in_a_pipe_or_json() {
    let d = Daemon::start(&[]);
    let trees = memory_tempdir();
    // Big enough that the baseline outlasts the spinner's delay: grown until it does.
    let mut n = 15_000;
    let (tty, took) = loop {
        let dir = trees.path().join(format!("tty{n}"));
        tree(&dir, n);
        let (tty, took) = on_a_terminal(&d, &["watch", dir.to_str().unwrap()]);
        if took >= SPINNER_DUE || n >= 120_000 {
            break (tty, took);
        }
        n *= 2;
    };
    assert!(
        took >= SPINNER_DUE,
        "even {n} files took only {took:?}: no baseline long enough to show progress"
    );
    assert!(tty.contains("watching "), "{tty}");
    // A progress line with numbers in it, read from the daemon while the walk ran.
    let walked: Vec<u64> = tty
        .split(" files walked, ")
        .filter_map(|before| before.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        walked.iter().any(|&w| w > 0),
        "no `N files walked` on the terminal in {took:?}:\n{tty}"
    );
    assert!(tty.contains(" stored,"), "{tty}");

    // The same in a pipe: the report only, no progress, nothing on stderr. (Twice the files:
    // the run must last past the moment a terminal would have had a spinner.)
    let dir = trees.path().join("pipe");
    tree(&dir, 2 * n);
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_chkptctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["watch", dir.to_str().unwrap()])
        .env_remove("CHKPT_SOCKET")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(t.elapsed() > QUIET_FOR, "{:?}", t.elapsed());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("watching "), "{stdout}");
    assert!(!stdout.contains("walked"), "{stdout}");

    // --json on a terminal: the document only.
    let dir = trees.path().join("json");
    tree(&dir, 2 * n);
    let (tty, took) = on_a_terminal(&d, &["--json", "watch", dir.to_str().unwrap()]);
    assert!(took > QUIET_FOR, "{took:?}");
    assert!(!tty.contains("walked"), "{tty}");
    let doc: serde_json::Value = serde_json::from_str(tty.trim()).unwrap_or_else(|e| {
        panic!("not one JSON document on the terminal ({e}):\n{tty}");
    });
    assert_eq!(doc["baseline"]["files"], 2 * n as u64, "{doc}");
}

#[test]
fn watch_of_a_missing_folder_names_the_nearest_one_or_where_to_look() {
    let d = Daemon::start(&[]);
    let home = tempfile::tempdir().unwrap();
    let h = home.path().canonicalize().unwrap();
    fs::create_dir_all(h.join("src/project")).unwrap();
    let typo = h.join("src/projcet");
    let out = fails_in(&d, &h, &["watch", typo.to_str().unwrap()]);
    assert!(
        out.stderr.contains(&format!(
            "did you mean {}?",
            h.join("src/project").display()
        )),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("chkptctl list"), "{}", out.stderr);
    // A deeper path through the typo keeps its tail.
    let out = fails_in(&d, &h, &["watch", h.join("srcc/project").to_str().unwrap()]);
    assert!(
        out.stderr.contains(&format!(
            "did you mean {}?",
            h.join("src/project").display()
        )),
        "{}",
        out.stderr
    );
    // Nothing close: where to look instead.
    let out = fails_in(&d, &h, &["watch", h.join("unrelated").to_str().unwrap()]);
    assert!(
        out.stderr.contains(&format!(
            "{} holds no folder named like unrelated: `ls {}`",
            h.display(),
            h.display()
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn cat_of_a_missing_path_names_the_nearest_one_or_the_log_to_read() {
    let d = Daemon::start(&[]);
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path().canonicalize().unwrap();
    fs::create_dir_all(w.join("src")).unwrap();
    fs::write(w.join("README.md"), b"read me\n").unwrap();
    fs::write(w.join("src/main.rs"), b"fn main() {}\n").unwrap();
    ok_in(
        &d,
        &w,
        &[
            "watch",
            w.to_str().unwrap(),
            "--idle",
            "1h",
            "--max-delay",
            "1h",
        ],
    );

    // A typo, and a file in another folder: the snapshot's nearest path, from the daemon.
    let src = w.join("src");
    for (cwd, args, hint) in [
        (
            &w,
            ["cat", "latest", "src/mian.rs"],
            "did you mean src/main.rs?",
        ),
        (
            &w,
            ["cat", "latest", "main.rs"],
            "did you mean src/main.rs?",
        ),
        (
            &src,
            ["cat", "latest", "../READM.md"],
            "did you mean README.md?",
        ),
        (
            &w,
            ["restore", "latest", "READNE.md"],
            "did you mean README.md?",
        ),
    ] {
        let out = fails_in(&d, cwd, &args);
        assert!(out.stderr.contains(hint), "{args:?}: {}", out.stderr);
    }

    // Nothing close: the log of that path, typed as from where the user is.
    let out = fails_in(&d, &w, &["cat", "latest", "nosuch.txt"]);
    assert!(
        out.stderr
            .contains("`chkptctl log nosuch.txt` lists the snapshots that held it"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("`chkptctl diff --name-status`"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("chkptctl list"), "{}", out.stderr);
    let out = fails_in(&d, &w.join("src"), &["cat", "latest", "nosuch.txt"]);
    assert!(
        out.stderr.contains("`chkptctl log nosuch.txt`"),
        "{}",
        out.stderr
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let wd = w.display().to_string();
    let out = fails_in(
        &d,
        elsewhere.path(),
        &["-w", &wd, "cat", "latest", "nosuch.txt"],
    );
    assert!(
        out.stderr
            .contains(&format!("`chkptctl -w {wd} log nosuch.txt`")),
        "{}",
        out.stderr
    );
    // That hint works as given.
    let out = ok_in(&d, elsewhere.path(), &["-w", &wd, "log", "nosuch.txt"]);
    assert_eq!(out.text(), "no snapshot has held this path\n");
}

/// The history commands (`log -p`, `show -p`, `diff --`, `list --`) take paths as `cat` does:
/// `..` from a subfolder, and `-w DIR`'s own relative paths when run from elsewhere.
#[test]
fn history_commands_take_dot_dot_and_w_paths_too() {
    let d = Daemon::start(&[]);
    let ws = project(&d);
    let w = ws.path();
    let wd = w.display().to_string();
    let one = save(&d, w, "one");
    fs::write(w.join("README.md"), b"read me again\n").unwrap();
    let two = save(&d, w, "two");
    let src = w.join("src");
    let elsewhere = tempfile::tempdir().unwrap();
    let e = elsewhere.path();
    let changed = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["path"].as_str().unwrap().to_owned())
            .collect()
    };
    for (cwd, pre, path) in [
        (src.as_path(), vec![], "../README.md"),
        (e, vec!["-w", wd.as_str()], "README.md"),
    ] {
        let with = |args: &[&str]| -> Vec<String> {
            let mut all: Vec<String> = pre.iter().map(|s| (*s).to_owned()).collect();
            all.extend(args.iter().map(|s| (*s).to_owned()));
            all
        };
        let run = |args: &[&str]| {
            let all = with(args);
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            json_in(&d, cwd, &refs)
        };
        let log = run(&["log", "-p", path]);
        assert_eq!(log[0]["snapshot"]["id"], two.as_str(), "{log}");
        assert_eq!(changed(&log[0]["changes"]), ["README.md"], "{log}");
        let show = run(&["show", "-p", &two, "--", path]);
        assert_eq!(changed(&show["changes"]), ["README.md"], "{show}");
        let diff = run(&["diff", &one, &two, "--", path]);
        assert_eq!(changed(&diff), ["README.md"], "{diff}");
        let list = run(&["list", "--", path]);
        let ids: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        // README.md came with the first snapshot and changed in the second.
        assert_eq!(ids, [two.as_str(), one.as_str()], "{list}");
    }
}

#[test]
fn a_snapshot_of_another_workspace_names_the_workspace_it_belongs_to() {
    let d = Daemon::start(&[]);
    let a = project(&d);
    let b = project(&d);
    fs::write(a.path().join("README.md"), b"only in a\n").unwrap();
    let of_a = save(&d, a.path(), "a's");
    let out = fails_in(&d, b.path(), &["cat", &of_a, "README.md"]);
    let ad = a.path().display().to_string();
    assert!(
        out.stderr
            .contains(&format!("belongs to the workspace {ad}")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("pass `-w {ad}`")),
        "{}",
        out.stderr
    );
    // The hint works as given.
    let out = ok_in(&d, b.path(), &["-w", &ad, "cat", &of_a, "README.md"]);
    assert_eq!(out.stdout, b"only in a\n");
}
