//! The registered remotes, kept in `remotes.json` in the data directory (never credentials:
//! only the path of a credentials file, when one was named), and what each uploader last knew
//! of its remote (`remotes/NAME.state`), so `status` can say what is not replicated while the
//! remote cannot be reached.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RemoteError;

/// Default target size of a remote pack: large enough that a cold save of a big tree is a few
/// hundred requests, small enough that a cut connection costs little to send again.
pub const DEFAULT_PACK_BYTES: u64 = 16 << 20;
/// Default number of packs uploaded at once.
pub const DEFAULT_CONCURRENCY: u32 = 4;

/// Where a remote's key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeySource {
    /// A key file (the user's, or one made for this remote).
    KeyFile,
    /// Derived from a passphrase; the derived key is kept in the data directory.
    Passphrase,
}

impl KeySource {
    /// As shown and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::KeyFile => "key-file",
            KeySource::Passphrase => "passphrase",
        }
    }
}

/// One registered remote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteConfig {
    /// Its name.
    pub name: String,
    /// `s3://BUCKET/PREFIX` or `file:///PATH`.
    pub url: String,
    /// The S3 endpoint; empty: AWS.
    #[serde(default)]
    pub endpoint: String,
    /// The S3 region; empty: `$AWS_REGION`, else us-east-1.
    #[serde(default)]
    pub region: String,
    /// A credentials file (mode 0600); none: the standard AWS environment and files.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// The key, 64 hex digits.
    pub key_file: PathBuf,
    /// Where the key came from.
    pub key_source: KeySource,
    /// Target size of a pack.
    pub pack_bytes: u64,
    /// Packs uploaded at once.
    pub concurrency: u32,
    /// Upload bandwidth limit, bytes per second; 0: none.
    #[serde(default)]
    pub max_upload_bytes_per_sec: u64,
    /// Which of this data directory's snapshots the remote keeps.
    #[serde(default)]
    pub retention: Retention,
}

/// Which of this data directory's snapshots a remote keeps (see [`super::prune`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Retention {
    /// Each workspace's local rules, applied to what the remote holds of it (not the local
    /// store budget: that is about this disk).
    #[default]
    FollowLocal,
    /// Rules of the remote's own, for every workspace.
    Own {
        /// The rules (all zero: the default rules).
        policy: crate::retention::Policy,
    },
    /// Nothing is ever deleted from the remote.
    KeepAll,
}

impl Retention {
    /// As shown and sent.
    pub fn mode(&self) -> &'static str {
        match self {
            Retention::FollowLocal => "follow-local",
            Retention::Own { .. } => "own",
            Retention::KeepAll => "keep-all",
        }
    }
}

/// Where a remote's objects are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// An S3 bucket and a prefix in it (no leading or trailing `/`; may be empty).
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix.
        prefix: String,
    },
    /// A folder.
    Folder(PathBuf),
}

impl Location {
    /// Parses `s3://BUCKET/PREFIX` or `file:///PATH`.
    pub fn parse(url: &str) -> Result<Location, RemoteError> {
        let bad = |why: &str| {
            RemoteError::Config(format!(
                "{url:?} is not a remote URL ({why}): use s3://BUCKET/PREFIX or file:///PATH"
            ))
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid =
                |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
            if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(valid) {
                return Err(bad(
                    "a bucket name is 3 to 63 lowercase letters, digits, '-' or '.'",
                ));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
                return Err(bad("the prefix has an empty, '.' or '..' part"));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        if let Some(path) = url.strip_prefix("file://") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(bad("a folder must be an absolute path"));
            }
            return Ok(Location::Folder(path));
        }
        Err(bad("unknown scheme"))
    }
}

/// Whether `name` may name a remote.
pub fn check_name(name: &str) -> Result<(), RemoteError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(RemoteError::Config(format!(
            "{name:?} cannot name a remote: use 1 to 64 letters, digits, '-' or '_'"
        )))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    remotes: Vec<RemoteConfig>,
}

/// The registry file of a data directory.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    /// The registry of data directory `dir`.
    pub fn new(dir: &Path) -> Registry {
        Registry {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("remotes.json")
    }

    /// Where this data directory keeps remotes' own files (keys made here, states).
    pub fn own_dir(&self) -> PathBuf {
        self.dir.join("remotes")
    }

    /// The registered remotes.
    pub fn load(&self) -> Result<Vec<RemoteConfig>, RemoteError> {
        let path = self.path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<File>(&bytes)
                .map(|f| f.remotes)
                .map_err(|e| RemoteError::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(RemoteError::Config(format!("{}: {e}", path.display()))),
        }
    }

    /// Replaces the registered remotes, durably (a new file renamed over the old one).
    pub fn save(&self, remotes: &[RemoteConfig]) -> Result<(), RemoteError> {
        let body = serde_json::to_vec_pretty(&File {
            remotes: remotes.to_vec(),
        })
        .map_err(|e| RemoteError::Config(format!("encode remotes.json: {e}")))?;
        write_atomically(&self.path(), &body)
    }

    fn state_path(&self, name: &str) -> PathBuf {
        self.own_dir().join(format!("{name}.state"))
    }

    /// What the uploader of remote `name` last recorded.
    pub fn load_state(&self, name: &str) -> State {
        fs::read(self.state_path(name))
            .ok()
            .and_then(|b| serde_json::from_slice::<State>(&b).ok())
            .unwrap_or_default()
    }

    /// Records what the uploader of remote `name` knows.
    pub fn save_state(&self, name: &str, state: &State) -> Result<(), RemoteError> {
        let body = serde_json::to_vec(state)
            .map_err(|e| RemoteError::Config(format!("encode the remote state: {e}")))?;
        fs::create_dir_all(self.own_dir())
            .map_err(|e| RemoteError::Config(format!("{}: {e}", self.own_dir().display())))?;
        write_atomically(&self.state_path(name), &body)
    }

    /// Forgets what the uploader of `name` knew.
    pub fn remove_state(&self, name: &str) {
        let _ = fs::remove_file(self.state_path(name));
    }
}

/// What an uploader records of its remote between runs.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// This data directory's snapshot ids on the remote.
    pub replicated: BTreeSet<u64>,
    /// Ids the remote's retention deleted there that are still local: never sent again.
    #[serde(default)]
    pub dropped: BTreeSet<u64>,
    /// Snapshot records were deleted and the objects they leave unreferenced may not all be
    /// gone yet: the next pass collects them (set before the first record is deleted).
    #[serde(default)]
    pub collect_pending: bool,
}

fn write_atomically(path: &Path, body: &[u8]) -> Result<(), RemoteError> {
    let err = |e: std::io::Error| RemoteError::Config(format!("write {}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(body).and_then(|()| f.sync_all()).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    sync_parent(path).map_err(err)
}

/// Makes a new or renamed file's name at `path` durable: fsyncs the folder holding it.
pub(super) fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => fs::File::open(dir).and_then(|d| d.sync_all()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_say_what_is_wrong() {
        assert_eq!(
            Location::parse("s3://my-bucket/some/prefix/").unwrap(),
            Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            Location::parse("s3://bucket").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Location::parse("file:///srv/backup").unwrap(),
            Location::Folder("/srv/backup".into())
        );
        for bad in [
            "s3://B/x",
            "s3://a/../x",
            "http://x/y",
            "file://rel",
            "s3://ab",
        ] {
            let e = Location::parse(bad).unwrap_err().to_string();
            assert!(e.contains("s3://BUCKET/PREFIX"), "{bad}: {e}");
        }
        assert!(check_name("off-site_2").is_ok());
        assert!(check_name("a/b").is_err() && check_name("").is_err());
    }
}
