//! A remote's object store: S3 (any S3-compatible server through `endpoint`) or a folder,
//! under the URL's prefix; where its credentials come from; and what its failures mean, in
//! one line each.
//!
//! Credentials are read when a connection is made, never stored: from the credentials file
//! named with `remote add --credentials` (AWS's INI format, mode 0600), else from the daemon's
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), else from
//! `$AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials` (profile `$AWS_PROFILE`, else
//! `default`), else from `$AWS_CONFIG_FILE` or `~/.aws/config` (its `[profile NAME]`, or
//! `[default]`). The region is `remote add --region`, else `$AWS_REGION`, else
//! `$AWS_DEFAULT_REGION`, else the config file's `region` for the profile, else us-east-1.

use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use super::config::{Location, RemoteConfig};
use super::{Failure, RemoteError};

/// How hard the object store itself retries one request. Short: the uploader retries whole
/// passes with its own backoff, and a command should fail soon when the server is down.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
    }
}

/// An open connection to a remote (no request is made until one is needed).
#[derive(Debug, Clone)]
pub struct Connection {
    name: String,
    store: Arc<dyn ObjectStore>,
    /// Where it is, for messages: the endpoint (or AWS) and the bucket, or the folder.
    place: String,
    /// Where the credentials came from, for messages.
    creds: String,
}

/// What an S3 server is signed in to with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Credentials {
    /// The access key id.
    key_id: String,
    /// Its secret.
    secret: String,
    /// A session token, for temporary credentials.
    token: Option<String>,
}

impl Connection {
    /// A connection to the remote `cfg` describes.
    pub fn new(cfg: &RemoteConfig) -> Result<Connection, RemoteError> {
        let (store, place, creds): (Arc<dyn ObjectStore>, String, String) =
            match Location::parse(&cfg.url)? {
                Location::Folder(dir) => {
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        RemoteError::Config(format!("remote folder {}: {e}", dir.display()))
                    })?;
                    let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| {
                        RemoteError::Config(format!("remote folder {}: {e}", dir.display()))
                    })?;
                    (Arc::new(fs), dir.display().to_string(), String::new())
                }
                Location::S3 { bucket, prefix } => {
                    let (found, creds) = credentials(cfg)?;
                    let mut b = AmazonS3Builder::new()
                        .with_bucket_name(&bucket)
                        .with_retry(retry())
                        .with_client_options(
                            ClientOptions::new()
                                .with_connect_timeout(Duration::from_secs(5))
                                .with_timeout(Duration::from_secs(120))
                                .with_allow_http(cfg.endpoint.starts_with("http://")),
                        );
                    if let Some(Credentials {
                        key_id,
                        secret,
                        token,
                    }) = found
                    {
                        b = b.with_access_key_id(key_id).with_secret_access_key(secret);
                        if let Some(token) = token {
                            b = b.with_token(token);
                        }
                    }
                    let region = if !cfg.region.is_empty() {
                        cfg.region.clone()
                    } else {
                        std::env::var("AWS_REGION")
                            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                            .ok()
                            .or_else(|| config_file_value(&profile(), "region"))
                            .unwrap_or_else(|| "us-east-1".to_owned())
                    };
                    b = b.with_region(region);
                    if !cfg.endpoint.is_empty() {
                        b = b.with_endpoint(&cfg.endpoint);
                    }
                    let s3 = b.build().map_err(|e| {
                        RemoteError::Config(format!("remote {}: {}", cfg.name, chain(&e)))
                    })?;
                    let place = if cfg.endpoint.is_empty() {
                        format!("bucket {bucket} on AWS S3")
                    } else {
                        format!("bucket {bucket} at {}", cfg.endpoint)
                    };
                    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                        Arc::new(s3)
                    } else {
                        Arc::new(PrefixStore::new(s3, prefix.as_str()))
                    };
                    (store, place, creds)
                }
            };
        Ok(Connection {
            name: cfg.name.clone(),
            store,
            place,
            creds,
        })
    }

    /// The remote's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes an object.
    pub async fn put(&self, path: &str, body: Vec<u8>) -> Result<(), RemoteError> {
        self.store
            .put(&Path::from(path), body.into())
            .await
            .map(|_| ())
            .map_err(|e| self.error(&format!("write {path}"), &e))
    }

    /// Reads an object; none when there is none of that name.
    pub async fn get(&self, path: &str) -> Result<Option<Bytes>, RemoteError> {
        let got = match self.store.get(&Path::from(path)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error(&format!("read {path}"), &e)),
        };
        got.bytes()
            .await
            .map(Some)
            .map_err(|e| self.error(&format!("read {path}"), &e))
    }

    /// Reads part of an object.
    pub async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes, RemoteError> {
        self.store
            .get_range(&Path::from(path), range)
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => self.damaged(format!("{path} is missing")),
                e => self.error(&format!("read {path}"), &e),
            })
    }

    /// The names and sizes of the objects under `dir/` (names without the `dir/`).
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, RemoteError> {
        let prefix = Path::from(dir);
        let found: Vec<_> =
            self.store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|e| match e {
                    // Listing an existing bucket never finds nothing: a 404 is the bucket's.
                    object_store::Error::NotFound { .. } => self.fail(
                        Failure::NoBucket,
                        format!("{} does not exist: create it, or check the URL", self.place),
                    ),
                    e => self.error(&format!("list {dir}/"), &e),
                })?;
        Ok(found
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_owned();
                Some((name, m.size))
            })
            .collect())
    }

    /// Deletes an object (none of that name is fine).
    pub async fn delete(&self, path: &str) -> Result<(), RemoteError> {
        match self.store.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(&format!("delete {path}"), &e)),
        }
    }

    /// A failure of `kind`.
    pub fn fail(&self, kind: Failure, message: String) -> RemoteError {
        RemoteError::Remote {
            name: self.name.clone(),
            kind,
            message,
        }
    }

    /// An object that is missing or fails its check.
    pub fn damaged(&self, message: String) -> RemoteError {
        self.fail(
            Failure::Damaged,
            format!("{message}: the remote is damaged or was changed by something else"),
        )
    }

    /// What a failed request means, in one line.
    fn error(&self, what: &str, e: &object_store::Error) -> RemoteError {
        let text = chain(e);
        let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
        if has(&["NoSuchBucket"]) {
            return self.fail(
                Failure::NoBucket,
                format!("{} does not exist: create it, or check the URL", self.place),
            );
        }
        if has(&["AuthorizationHeaderMalformed"]) {
            return self.fail(
                Failure::Denied,
                format!(
                    "{} refused the request's signature ({}): is the region right? (--region, \
                     $AWS_REGION, or `region` in ~/.aws/config)",
                    self.place,
                    short(&text)
                ),
            );
        }
        if has(&[
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "Forbidden",
            "403",
            "401",
            "No such key",
        ]) {
            return self.fail(
                Failure::Denied,
                format!(
                    "{} refused the credentials ({}): check {}",
                    self.place,
                    short(&text),
                    self.creds
                ),
            );
        }
        if has(&[
            "Connection refused",
            "error sending request",
            "connection error",
            "dns error",
            "timed out",
            "Timeout",
            "connection closed",
            "Connection reset",
        ]) {
            return self.fail(
                Failure::Unreachable,
                format!(
                    "cannot reach {} ({}): is the server running, and the endpoint right?",
                    self.place,
                    short(&text)
                ),
            );
        }
        self.fail(
            Failure::Other,
            format!("cannot {what} on {}: {}", self.place, short(&text)),
        )
    }
}

/// An error and its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

/// At most ~300 characters of an error.
fn short(text: &str) -> String {
    let mut t: String = text.chars().take(300).collect();
    if t.len() < text.len() {
        t.push('…');
    }
    t
}

/// The credentials for `cfg`, and where they came from (for messages).
fn credentials(cfg: &RemoteConfig) -> Result<(Option<Credentials>, String), RemoteError> {
    let profile = profile();
    if let Some(file) = &cfg.credentials_file {
        let found = read_credentials_file(file, &profile, true)?;
        let Some(found) = found else {
            return Err(RemoteError::Config(format!(
                "credentials file {}: no aws_access_key_id and aws_secret_access_key in \
                 [{profile}] (or in its only section)",
                file.display()
            )));
        };
        return Ok((
            Some(found),
            format!("the credentials file {}", file.display()),
        ));
    }
    if let (Ok(key_id), Ok(secret)) = (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        let token = std::env::var("AWS_SESSION_TOKEN").ok();
        return Ok((
            Some(Credentials {
                key_id,
                secret,
                token,
            }),
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in chkptd's environment".to_owned(),
        ));
    }
    let shared = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| FsPath::new(&h).join(".aws/credentials")));
    if let Some(path) = shared
        && path.exists()
    {
        let found = read_credentials_file(&path, &profile, false)?;
        if found.is_some() {
            return Ok((found, format!("[{profile}] in {}", path.display())));
        }
    }
    if let Some(path) = config_file()
        && let Ok(text) = std::fs::read_to_string(&path)
        && let Some(found) = section(&text, &config_section(&profile)).and_then(credentials_in)
    {
        return Ok((
            Some(found),
            format!("[{}] in {}", config_section(&profile), path.display()),
        ));
    }
    Err(RemoteError::Config(format!(
        "remote {}: no credentials: pass --credentials FILE (mode 0600, AWS's format), or set \
         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for chkptd, or write ~/.aws/credentials",
        cfg.name
    )))
}

/// The AWS profile: `$AWS_PROFILE`, else `default`.
fn profile() -> String {
    std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_owned())
}

/// AWS's config file: `$AWS_CONFIG_FILE`, else `~/.aws/config`.
fn config_file() -> Option<std::path::PathBuf> {
    std::env::var_os("AWS_CONFIG_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| FsPath::new(&h).join(".aws/config")))
}

/// A profile's section in the config file: `[default]`, else `[profile NAME]`.
fn config_section(profile: &str) -> String {
    if profile == "default" {
        profile.to_owned()
    } else {
        format!("profile {profile}")
    }
}

/// Setting `key` of `profile` in AWS's config file.
fn config_file_value(profile: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(config_file()?).ok()?;
    let section = section(&text, &config_section(profile))?;
    section.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Reads AWS's INI credentials format: `[profile]` sections of `key = value` lines. With
/// `strict` (a file named by the user) the file must be mode 0600 or stricter, and a file of
/// one section is read whatever the section's name.
fn read_credentials_file(
    path: &FsPath,
    profile: &str,
    strict: bool,
) -> Result<Option<Credentials>, RemoteError> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| RemoteError::Config(format!("credentials file {shown}: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if strict && mode & 0o077 != 0 {
        return Err(RemoteError::Config(format!(
            "credentials file {shown} may be read by others (mode {mode:04o}): `chmod 600 {shown}`"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| RemoteError::Config(format!("credentials file {shown}: {e}")))?;
    Ok(parse_credentials(&text, profile, strict))
}

/// The `[section]`s of an INI file, each with its `key = value` lines (keys lower-cased).
type Sections = Vec<(String, Vec<(String, String)>)>;

fn sections(text: &str) -> Sections {
    let mut sections: Sections = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.trim().to_owned(), Vec::new()));
        } else if let Some((k, v)) = line.split_once('=') {
            if sections.is_empty() {
                sections.push((String::new(), Vec::new()));
            }
            if let Some(last) = sections.last_mut() {
                last.1.push((k.trim().to_lowercase(), v.trim().to_owned()));
            }
        }
    }
    sections
}

/// The lines of section `name`.
fn section(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    sections(text)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, lines)| lines)
}

/// The credentials a section's lines hold.
fn credentials_in(lines: Vec<(String, String)>) -> Option<Credentials> {
    let get = |k: &str| {
        lines
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    Some(Credentials {
        key_id: get("aws_access_key_id")?,
        secret: get("aws_secret_access_key")?,
        token: get("aws_session_token"),
    })
}

fn parse_credentials(text: &str, profile: &str, any_single: bool) -> Option<Credentials> {
    let sections = sections(text);
    let section = sections
        .iter()
        .find(|(n, _)| n == profile)
        .or_else(|| (any_single && sections.len() == 1).then(|| &sections[0]))?;
    credentials_in(section.1.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files_read_as_aws_writes_them() {
        let text = "# mine\n[other]\naws_access_key_id = A\naws_secret_access_key=B\n\n[default]\n\
                    aws_access_key_id=GK1\naws_secret_access_key = s3cr3t\naws_session_token=T\n";
        assert_eq!(
            parse_credentials(text, "default", false),
            Some(Credentials {
                key_id: "GK1".into(),
                secret: "s3cr3t".into(),
                token: Some("T".into())
            })
        );
        assert_eq!(
            parse_credentials(text, "other", false),
            Some(Credentials {
                key_id: "A".into(),
                secret: "B".into(),
                token: None
            })
        );
        assert_eq!(parse_credentials(text, "nope", true), None);
        let single = "[garage]\naws_access_key_id=K\naws_secret_access_key=S\n";
        assert!(parse_credentials(single, "default", true).is_some());
        assert!(parse_credentials(single, "default", false).is_none());
        let config = "[default]\nregion = eu-west-1\n[profile ci]\nregion=garage\n\
                      aws_access_key_id=K\naws_secret_access_key=S\n";
        assert_eq!(
            section(config, &config_section("ci")).and_then(credentials_in),
            Some(Credentials {
                key_id: "K".into(),
                secret: "S".into(),
                token: None
            })
        );
        assert_eq!(
            section(config, &config_section("default")).and_then(credentials_in),
            None
        );
    }
}
