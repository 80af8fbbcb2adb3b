use std::{
    ffi::OsString,
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
};

use clap::CommandFactory;
use indicatif::ProgressStyle;

use super::commands::{RESTORE_BYTES, RESTORE_ENTRIES, SAVE_SPINNER, WATCH_SPINNER};
use super::*;

#[test]
fn clap_definition_is_valid() {
    Cli::command().debug_assert();
}

#[test]
fn progress_templates_parse() {
    for template in [SAVE_SPINNER, WATCH_SPINNER, RESTORE_BYTES, RESTORE_ENTRIES] {
        assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
    }
}

#[test]
fn durations_take_units_or_seconds() {
    let idle = |args: &[&str]| match parse(args) {
        Ok(Cli {
            command: Command::Watch(w),
            ..
        }) => (w.idle, w.max_delay, w.policy.keep_within),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        idle(&[
            "watch",
            "--idle",
            "0.3",
            "--max-delay",
            "2m",
            "--keep-within",
            "1d12h"
        ]),
        (Some(300), Some(120_000), Some(129_600))
    );
    assert_eq!(
        idle(&["watch", "--idle", "1m30s", "--keep-within", "3600"]),
        (Some(90_000), None, Some(3600))
    );
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("chkptctl").chain(args.iter().copied()))
}

#[test]
fn global_flags_work_before_and_after_the_subcommand() {
    let cli = parse(&["--json", "list", "-w", "/p", "--socket", "/s.sock"]);
    let cli = cli.map_err(|e| e.to_string());
    assert!(matches!(
        cli,
        Ok(Cli { json: true, ref workspace, ref socket, command: Command::List { limit: None, all: false, .. }, .. })
            if workspace.as_deref() == Some(Path::new("/p")) && socket.as_deref() == Some(Path::new("/s.sock"))
    ));
}

#[test]
fn usage_errors_exit_with_2() {
    for args in [
        &["delete"][..],
        &["list", "--limit", "0"],
        &["prune", "--keep-within", "soon"],
        &["prune", "--keep-within", "0.5"],
        &["watch", "--idle", "0"],
        &["completions", "powershell"],
        &["diff", "a", "b", "c"],
        &["diff", "--stat", "--name-status"],
        &["show", "latest", "-p", "--stat"],
        &["log"],
        &["log", "-p", "--stat", "x"],
        &["list", "--all", "--", "src"],
        &["diff", "-U", "many"],
        &["--color", "sometimes", "list"],
    ] {
        match parse(args) {
            Err(e) => assert_eq!(e.exit_code(), 2, "{args:?}"),
            Ok(cli) => panic!("{args:?} parsed as {cli:?}"),
        }
    }
}

#[test]
fn paths_after_the_double_dash_limit_diff_show_log_and_list() {
    match parse(&["diff", "a", "--stat", "-U", "1", "--", "src", "b"]) {
        Ok(Cli {
            command: Command::Diff(args),
            ..
        }) => {
            assert_eq!(args.snap.as_deref(), Some("a"));
            assert_eq!(args.snap2, None, "a path after -- is not a snapshot");
            assert_eq!(args.paths, [PathBuf::from("src"), PathBuf::from("b")]);
            assert!(args.stat);
            assert_eq!(args.patch.unified, Some(1));
        }
        other => panic!("{other:?}"),
    }
    match parse(&["log", "-p", "--", "a", "b"]) {
        Ok(Cli {
            command: Command::Log(args),
            ..
        }) => {
            assert_eq!(args.paths, [PathBuf::from("a"), PathBuf::from("b")]);
            assert!(args.patch_form);
        }
        other => panic!("{other:?}"),
    }
    match parse(&["show", "latest", "-p", "--", "x"]) {
        Ok(Cli {
            command: Command::Show(args),
            ..
        }) => assert_eq!(args.paths, [PathBuf::from("x")]),
        other => panic!("{other:?}"),
    }
    match parse(&["list", "--", "x"]) {
        Ok(Cli {
            command: Command::List { paths, .. },
            ..
        }) => assert_eq!(paths, [PathBuf::from("x")]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn diff_takes_zero_one_or_two_snapshots() {
    let pair = |args: &[&str]| match parse(args) {
        Ok(Cli {
            command: Command::Diff(args),
            ..
        }) => (args.snap, args.snap2),
        other => panic!("{other:?}"),
    };
    assert_eq!(pair(&["diff"]), (None, None));
    assert_eq!(pair(&["diff", "latest~1"]), (Some("latest~1".into()), None));
    assert_eq!(
        pair(&["diff", "a", "b"]),
        (Some("a".into()), Some("b".into()))
    );
}

#[test]
fn relative_paths_are_joined_onto_the_current_directory() -> Result<(), Error> {
    let cwd = std::env::current_dir().map_err(|e| Error::io("read cwd", e))?;
    let bytes = path_bytes(Path::new("src/main.rs"))?;
    assert_eq!(
        PathBuf::from(OsString::from_vec(bytes)),
        cwd.join("src/main.rs")
    );
    assert_eq!(path_string(Path::new("/abs/x"))?, "/abs/x");
    Ok(())
}
