//! The user-service files and systemd's socket activation, with the real binaries:
//! `systemd-analyze verify` on the units `chkptctl service install` writes, the LaunchAgent
//! through Python's `plistlib`, `chkptd` serving a socket passed the way systemd passes it,
//! and `chkptctl service` in a home directory of its own.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const CHKPTD: &str = env!("CARGO_BIN_EXE_chkptd");
const CHKPTCTL: &str = env!("CARGO_BIN_EXE_chkptctl");

/// What one run produced.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// A home directory of its own, and a runtime directory where no daemon runs.
struct Home {
    home: tempfile::TempDir,
    runtime: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            home: tempfile::tempdir().unwrap(),
            runtime: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.home.path()
    }

    /// Runs `exe` (a chkptctl) with `args` in this home. The user manager and session bus are
    /// pointed at nothing, so that no test reaches the real user's systemd.
    fn run_with(&self, exe: &Path, args: &[&str]) -> Out {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env("HOME", self.home.path())
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                format!("unix:path={}/no-bus", self.runtime.path().display()),
            )
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("CHKPT_SOCKET");
        output_within(cmd, 60)
    }

    fn chkptctl(&self, args: &[&str]) -> Out {
        self.run_with(Path::new(CHKPTCTL), args)
    }

    /// The files `service install --dry-run --json` would write, by name, run from `exe`.
    fn planned_files(&self, exe: &Path) -> Vec<(String, String)> {
        let out = self.run_with(exe, &["--json", "service", "install", "--dry-run"]);
        assert_eq!(out.code, Some(0), "{out:?}");
        let plan: Value = serde_json::from_str(&out.stdout).unwrap();
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|step| {
                let path = Path::new(step["write"].as_str()?);
                let name = path.file_name()?.to_str()?.to_owned();
                Some((name, step["contents"].as_str()?.to_owned()))
            })
            .collect()
    }
}

/// Runs `cmd` to the end, killing it after `secs`.
fn output_within(mut cmd: Command, secs: u64) -> Out {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    // Read both pipes on threads so a chatty child never blocks on a full pipe.
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

#[test]
fn install_dry_run_names_the_per_user_files_and_changes_nothing() {
    let home = Home::new();
    let out = home.chkptctl(&["service", "install", "--dry-run"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let h = home.path().display();
    let expected = if cfg!(target_os = "macos") {
        vec![
            format!("{h}/Library/LaunchAgents/dev.chkpt.chkptd.plist"),
            format!("<string>{CHKPTD}</string>"),
            "launchctl bootstrap gui/".to_owned(),
        ]
    } else {
        vec![
            format!("cat > {h}/.config/systemd/user/chkptd.socket <<'EOF'"),
            format!("cat > {h}/.config/systemd/user/chkptd.service <<'EOF'"),
            format!("\nExecStart={CHKPTD}\n"),
            "\nsystemctl --user daemon-reload\n".to_owned(),
            "\nsystemctl --user enable --now chkptd.socket chkptd.service\n".to_owned(),
        ]
    };
    for text in expected {
        assert!(
            out.stdout.contains(&text),
            "no {text:?} in:\n{}",
            out.stdout
        );
    }
    assert_eq!(
        fs::read_dir(home.path()).unwrap().count(),
        0,
        "dry run wrote files"
    );

    let out = home.chkptctl(&["service", "uninstall", "--dry-run"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
}

/// `systemd-analyze verify --user` on `units`, written into a fresh directory; any output
/// (a warning about the units too) is a failure.
#[cfg(target_os = "linux")]
fn verify_units(units: &[(String, String)]) {
    assert_eq!(units.len(), 2, "{units:?}");
    let dir = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = units
        .iter()
        .map(|(name, contents)| {
            let path = dir.path().join(name);
            fs::write(&path, contents).unwrap();
            path
        })
        .collect();
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--user"])
        .args(&paths)
        .env("HOME", dir.path())
        .env("XDG_RUNTIME_DIR", runtime.path())
        .env_remove("XDG_CONFIG_HOME");
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            panic!("systemd-analyze is missing: `apt-get install systemd` (.ci/run does)")
        }
        Err(e) => panic!("systemd-analyze: {e}"),
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}\nunits:\n{units:#?}",
        out.status
    );
}

#[cfg(target_os = "linux")]
#[test]
fn systemd_analyze_verify_accepts_the_installed_units() {
    let home = Home::new();
    let units = home.planned_files(Path::new(CHKPTCTL));
    assert!(
        units[1].1.contains(&format!("\nExecStart={CHKPTD}\n")),
        "{units:?}"
    );
    verify_units(&units);
}

/// A chkptd whose path needs quoting and escaping in `ExecStart=` still verifies, which
/// systemd-analyze does only when the unescaped path is the real executable.
#[cfg(target_os = "linux")]
#[test]
fn a_chkptd_path_with_spaces_percent_and_dollar_survives_in_exec_start() {
    // Hard links (for a chkptctl whose own path is the odd one) need the target's file system.
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let odd = base.path().join("my tools/100% $HOME");
    fs::create_dir_all(&odd).unwrap();
    for (name, exe) in [("chkptctl", CHKPTCTL), ("chkptd", CHKPTD)] {
        if fs::hard_link(exe, odd.join(name)).is_err() {
            fs::copy(exe, odd.join(name)).unwrap();
        }
    }
    let home = Home::new();
    let units = home.planned_files(&odd.join("chkptctl"));
    assert!(
        units[1].1.contains("ExecStart=\"") && units[1].1.contains("/100%% $HOME/chkptd\"\n"),
        "{units:?}"
    );
    verify_units(&units);
}

#[test]
fn the_launch_agent_parses_with_plistlib_and_has_the_keys_launchd_needs() {
    let home = Home::new();
    let plist = if cfg!(target_os = "macos") {
        home.planned_files(Path::new(CHKPTCTL)).remove(0).1
    } else {
        // What `service install` does on macOS (its escaping has unit tests in the client).
        let template = fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/launchd/dev.chkpt.chkptd.plist"
        ))
        .unwrap();
        template
            .replace("<string>@CHKPTD@", &format!("<string>{CHKPTD}"))
            .replace(
                "<string>@HOME@",
                &format!("<string>{}", home.path().display()),
            )
    };
    let file = home.path().join("agent.plist");
    fs::write(&file, plist).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, plistlib, sys; print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plistlib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent: Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = format!("{}/Library/Logs/chkptd.log", home.path().display());
    assert_eq!(agent["Label"], "dev.chkpt.chkptd");
    assert_eq!(agent["ProgramArguments"], serde_json::json!([CHKPTD]));
    assert_eq!(agent["RunAtLoad"], true);
    assert!(
        agent["KeepAlive"].is_object() || agent["KeepAlive"] == true,
        "{agent}"
    );
    assert_eq!(agent["StandardOutPath"], log.as_str());
    assert_eq!(agent["StandardErrorPath"], log.as_str());
}

/// Starts `chkptd` the way systemd starts a socket-activated service: the listening socket as
/// fd 3, `LISTEN_FDS=1`, and `LISTEN_PID` set to the pid of the process it is meant for. A
/// shell sets that (`$$`) and then becomes chkptd with `exec`, so the pid is chkptd's.
fn spawn_activated(listener: &UnixListener, dir: &Path, notify: &Path) -> Child {
    let fd = listener.as_raw_fd();
    let log = fs::File::create(dir.join("chkptd.log")).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(CHKPTD)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "chkptd.socket")
        .env("NOTIFY_SOCKET", notify)
        // Were the passed socket ignored, chkptd would serve here instead.
        .env("XDG_RUNTIME_DIR", dir.join("elsewhere"))
        .env_remove("CHKPT_SOCKET")
        .env_remove("LISTEN_PID")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // dup2 onto itself would keep close-on-exec set.
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// The next datagram on the notify socket, as text.
fn next_notification(notify: &UnixDatagram, log: &Path) -> String {
    let mut buf = [0u8; 256];
    match notify.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!(
            "no notification from chkptd ({e}); its log:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

#[test]
fn socket_activation_serves_the_passed_socket_and_notifies_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    fs::create_dir(&run).unwrap();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).unwrap();
    let socket = run.join("chkptd.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = dir.path().join("chkptd.log");

    let mut chkptd = spawn_activated(&listener, dir.path(), &notify_path);
    assert_eq!(next_notification(&notify, &log), "READY=1");
    assert!(
        !dir.path().join("elsewhere").exists(),
        "chkptd bound its own socket"
    );

    let mut cmd = Command::new(CHKPTCTL);
    cmd.arg("--socket")
        .arg(&socket)
        .args(["--json", "status"])
        .env_remove("CHKPT_SOCKET");
    let out = output_within(cmd, 30);
    assert_eq!(
        out.code,
        Some(0),
        "{out:?}\nchkptd log:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let status: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(status["socket"], socket.display().to_string().as_str());

    // SAFETY: kill with the pid of our own child.
    unsafe { libc::kill(chkptd.id() as i32, libc::SIGTERM) };
    assert_eq!(next_notification(&notify, &log), "STOPPING=1");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = chkptd.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "chkptd did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        exit.success(),
        "chkptd exited with {exit}:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    // The socket is systemd's: it stays for the next activation.
    assert!(socket.exists(), "chkptd removed the socket systemd owns");
}

#[cfg(target_os = "linux")]
#[test]
fn without_a_user_manager_service_commands_say_so_and_print_the_manual_steps() {
    let home = Home::new();
    let units = home.path().join(".config/systemd/user");

    let out = home.chkptctl(&["service", "install"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    for text in [
        "user manager is not reachable",
        "The files are written",
        "\nsystemctl --user daemon-reload\n\
         systemctl --user enable --now chkptd.socket chkptd.service\n",
    ] {
        assert!(out.stderr.contains(text), "no {text:?} in:\n{}", out.stderr);
    }
    assert!(units.join("chkptd.socket").is_file());
    assert!(units.join("chkptd.service").is_file());

    let out = home.chkptctl(&["service", "status"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("chkptd.service: installed"), "{out:?}");
    assert!(out.stdout.contains("not reachable"), "{out:?}");

    let out = home.chkptctl(&["service", "uninstall"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("Nothing was changed"), "{out:?}");
    assert!(
        out.stderr
            .contains("systemctl --user disable --now chkptd.socket chkptd.service\n"),
        "{out:?}"
    );
    assert!(units.join("chkptd.service").is_file());
}
