//! Credentials from where AWS's tools look for them, against a real Garage: chkptd's
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), `~/.aws/credentials` with
//! `~/.aws/config` (a profile, its region), and the files `AWS_SHARED_CREDENTIALS_FILE` and
//! `AWS_CONFIG_FILE` name; a bad secret from the environment is refused saying where it came
//! from; and no secret ever lands in a data directory.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod util;

use std::path::Path;

use util::Daemon;
use util::cli::{fails_in, ok_in, project, save};
use util::garage::{Garage, S3};
use util::remote::{restore_fresh, strs, tree};

/// Every AWS variable chkptd reads, removed, then `set` set.
fn aws_env<'a>(set: &[(&'a str, &'a str)]) -> Vec<(&'a str, Option<&'a str>)> {
    let mut env: Vec<(&str, Option<&str>)> = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ]
    .into_iter()
    .map(|k| (k, None))
    .collect();
    env.extend(set.iter().map(|(k, v)| (*k, Some(*v))));
    env
}

/// `remote add` without --credentials (and without --region when `region` is false).
fn add(g: &Garage, name: &str, key: &Path, region: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "remote",
        "add",
        name,
        &format!("s3://{}/p", g.bucket),
        "--endpoint",
        &g.endpoint(),
        "--key-file",
        &key.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if region {
        args.extend(["--region", "garage"].map(String::from));
    }
    args
}

/// Fails when `needle` is in any file under `dir`.
fn assert_nowhere_in(dir: &Path, needle: &str) {
    fn walk(dir: &Path, needle: &[u8]) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                walk(&p, needle);
            } else if meta.is_file() {
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "the secret is in {}",
                    p.display()
                );
            }
        }
    }
    walk(dir, needle.as_bytes());
}

#[test]
fn credentials_from_the_aws_environment_and_files_work_and_stay_out_of_the_data_dir() {
    let g = Garage::start();
    let secrets = tempfile::tempdir().unwrap();
    let key = secrets.path().join("k");
    let empty_home = tempfile::tempdir().unwrap();
    let home = empty_home.path().display().to_string();

    // chkptd's environment.
    let d = Daemon::start_with_env(
        &aws_env(&[
            ("AWS_ACCESS_KEY_ID", &g.key_id),
            ("AWS_SECRET_ACCESS_KEY", &g.secret),
            ("HOME", &home),
        ]),
        &[],
    );
    let ws = project(&d);
    let root = ws.path();
    std::fs::write(
        root.join("notes.txt"),
        b"replicated with credentials from the env\n",
    )
    .unwrap();
    let snap = save(&d, root, "env");
    ok_in(&d, root, &strs(&add(&g, "env", &key, true)));
    ok_in(&d, root, &["remote", "sync", "env", "--timeout", "60s"]);

    // ~/.aws/credentials and ~/.aws/config, a profile of their own; the region from the
    // config file (Garage refuses requests signed for another region).
    let aws_home = tempfile::tempdir().unwrap();
    let aws = aws_home.path().join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        format!(
            "[default]\naws_access_key_id = GK000000000000000000000000\n\
             aws_secret_access_key = {}\n\n[ci]\naws_access_key_id = {}\n\
             aws_secret_access_key = {}\n",
            "0".repeat(64),
            g.key_id,
            g.secret
        ),
    )
    .unwrap();
    std::fs::write(
        aws.join("config"),
        "[default]\nregion = us-east-1\n\n[profile ci]\nregion = garage\n",
    )
    .unwrap();
    let aws_home_text = aws_home.path().display().to_string();
    let files = Daemon::start_with_env(
        &aws_env(&[("HOME", &aws_home_text), ("AWS_PROFILE", "ci")]),
        &[],
    );
    let other = tempfile::tempdir().unwrap();
    ok_in(&files, other.path(), &strs(&add(&g, "files", &key, false)));
    let to = restore_fresh(&files, other.path(), "files", &snap);
    assert_eq!(tree(&to), tree(root));

    // The files AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE name, HOME empty; here the
    // credentials are in the config file's profile.
    let elsewhere = tempfile::tempdir().unwrap();
    let config = elsewhere.path().join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[profile ci]\nregion = garage\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            g.key_id, g.secret
        ),
    )
    .unwrap();
    let named = Daemon::start_with_env(
        &aws_env(&[
            ("HOME", &home),
            ("AWS_PROFILE", "ci"),
            ("AWS_CONFIG_FILE", &config.display().to_string()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                &elsewhere.path().join("none").display().to_string(),
            ),
        ]),
        &[],
    );
    ok_in(&named, other.path(), &strs(&add(&g, "named", &key, false)));
    let listed = ok_in(&named, other.path(), &["remote", "snapshots", "named"]).text();
    assert!(listed.contains(&snap), "{listed}");

    // A bad secret in the environment: refused, saying where it came from.
    let wrong = "1".repeat(64);
    let bad = Daemon::start_with_env(
        &aws_env(&[
            ("AWS_ACCESS_KEY_ID", &g.key_id),
            ("AWS_SECRET_ACCESS_KEY", &wrong),
            ("HOME", &home),
        ]),
        &[],
    );
    let out = fails_in(&bad, other.path(), &strs(&add(&g, "bad", &key, true)));
    assert!(
        out.stderr.contains("refused the credentials")
            && out
                .stderr
                .contains("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{}",
        out.stderr
    );

    for data in [&d.data, &files.data, &named.data, &bad.data] {
        assert_nowhere_in(data, &g.secret);
    }
}
