use std::path::{Path, PathBuf};

use super::files::{SOCKET_UNIT, systemd_exec_path};
use super::plan::sh_quote;
use super::*;

fn env() -> Env {
    Env {
        home: "/home/ann".into(),
        config_home: "/home/ann/.config".into(),
        uid: 1000,
    }
}

#[test]
fn files_go_to_the_per_user_locations() {
    assert_eq!(
        env().files(Manager::Systemd),
        [
            PathBuf::from("/home/ann/.config/systemd/user/chkptd.socket"),
            PathBuf::from("/home/ann/.config/systemd/user/chkptd.service"),
        ]
    );
    assert_eq!(
        env().files(Manager::Launchd),
        [PathBuf::from(
            "/home/ann/Library/LaunchAgents/dev.chkpt.chkptd.plist"
        )]
    );
}

#[test]
fn the_service_unit_runs_the_given_chkptd() {
    let files = render(Manager::Systemd, &env(), Path::new("/opt/chkpt/bin/chkptd")).unwrap();
    assert_eq!(files[0], SOCKET_UNIT);
    assert!(
        files[1].contains("\nExecStart=/opt/chkpt/bin/chkptd\n"),
        "{}",
        files[1]
    );
    assert!(!files[1].contains("\nExecStart=@"));
}

#[test]
fn exec_paths_escape_specifiers_and_quote_spaces() {
    let exec = |p: &str| systemd_exec_path(Path::new(p)).unwrap();
    assert_eq!(exec("/usr/bin/chkptd"), "/usr/bin/chkptd");
    assert_eq!(exec("/opt/100%/$HOME/chkptd"), "/opt/100%%/$HOME/chkptd");
    assert_eq!(exec("/my tools/chkptd"), "\"/my tools/chkptd\"");
    assert_eq!(exec("/a\"b/chkptd"), "\"/a\\\"b/chkptd\"");
    assert!(systemd_exec_path(Path::new("/a\nb/chkptd")).is_err());
}

#[test]
fn the_launch_agent_fills_in_chkptd_and_home_as_xml_text() {
    let env = Env {
        home: "/Users/a&b".into(),
        ..env()
    };
    let files = render(Manager::Launchd, &env, Path::new("/opt/<x>/chkptd")).unwrap();
    let plist = &files[0];
    assert!(
        plist.contains("<string>/opt/&lt;x&gt;/chkptd</string>"),
        "{plist}"
    );
    assert_eq!(
        plist
            .matches("<string>/Users/a&amp;b/Library/Logs/chkptd.log</string>")
            .count(),
        2
    );
    assert!(!plist.contains("<string>@"), "{plist}");
}

#[test]
fn systemd_install_writes_both_units_then_reloads_and_enables() {
    let steps = install_steps(Manager::Systemd, &env(), Path::new("/bin/chkptd"), None).unwrap();
    let script: String = steps.iter().map(Step::script).collect();
    assert!(script.starts_with(
        "mkdir -p /home/ann/.config/systemd/user\n\
         cat > /home/ann/.config/systemd/user/chkptd.socket <<'EOF'\n"
    ));
    assert!(
        script.ends_with(
            "EOF\nsystemctl --user daemon-reload\n\
             systemctl --user enable --now chkptd.socket chkptd.service\n"
        ),
        "{script}"
    );
}

#[test]
fn a_daemon_started_by_hand_is_stopped_just_before_the_service_starts() {
    let stop = Step::StopDaemon {
        socket: "/run/user/1000/chkpt/chkptd.sock".into(),
        pid: 7,
    };
    for manager in [Manager::Systemd, Manager::Launchd] {
        let steps = install_steps(
            manager,
            &env(),
            Path::new("/bin/chkptd"),
            Some(stop.clone()),
        )
        .unwrap();
        let at = steps.iter().position(|s| *s == stop).unwrap();
        assert!(matches!(
            &steps[at + 1],
            Step::Run {
                may_fail: false,
                ..
            }
        ));
        // After the first command, which checks that the manager is reachable.
        assert!(steps[..at].iter().any(|s| matches!(s, Step::Run { .. })));
    }
}

#[test]
fn launchd_install_replaces_a_loaded_agent() {
    let steps = install_steps(Manager::Launchd, &env(), Path::new("/bin/chkptd"), None).unwrap();
    let script: String = steps.iter().skip(1).map(Step::script).collect();
    assert_eq!(
        script,
        "launchctl bootout gui/1000/dev.chkpt.chkptd || true\n\
         launchctl enable gui/1000/dev.chkpt.chkptd\n\
         launchctl bootstrap gui/1000 /home/ann/Library/LaunchAgents/dev.chkpt.chkptd.plist\n"
    );
}

#[test]
fn uninstall_disables_before_removing() {
    let files = env().files(Manager::Systemd);
    let steps = uninstall_steps(Manager::Systemd, &env(), files);
    let script: String = steps.iter().map(Step::script).collect();
    assert_eq!(
        script,
        "systemctl --user disable --now chkptd.socket chkptd.service\n\
         rm -f /home/ann/.config/systemd/user/chkptd.socket\n\
         rm -f /home/ann/.config/systemd/user/chkptd.service\n\
         systemctl --user daemon-reload\n"
    );
}

#[test]
fn shell_words_are_quoted_only_when_needed() {
    assert_eq!(sh_quote("/home/ann/x.plist"), "/home/ann/x.plist");
    assert_eq!(sh_quote("/my dir/it's"), r"'/my dir/it'\''s'");
    assert_eq!(sh_quote(""), "''");
    assert_eq!(sh_quote("$HOME"), "'$HOME'");
}
