//! `chkptctl remote …`: replication of snapshots to object storage, and restores from it.
#![allow(clippy::print_stdout)] // printing is the client's job

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use chkpt_proto::v1::{self, remotes_client::RemotesClient};
use clap::Subcommand;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::connect::{self, Error};
use crate::output::{age, human_bytes};

/// The environment variable a passphrase is read from (never a flag: flags show in `ps`).
pub const PASSPHRASE_ENV: &str = "CHKPT_REMOTE_PASSPHRASE";

/// `chkptctl remote` subcommands.
#[derive(Debug, Subcommand)]
pub enum RemoteAction {
    /// Replicate snapshots to s3://BUCKET/PREFIX (or file:///PATH), encrypted here
    ///
    /// The key is a key file (made if missing; by default one in the data directory), or is
    /// derived from the passphrase in $CHKPT_REMOTE_PASSPHRASE. Keep it safe: without it,
    /// nothing on the remote can be read. Credentials come from --credentials FILE (mode
    /// 0600, AWS's INI format) or from chkptd's AWS environment and ~/.aws/credentials; only
    /// the file's path is kept.
    Add {
        /// A name for the remote
        name: String,
        /// s3://BUCKET/PREFIX or file:///PATH
        url: String,
        /// The S3 endpoint of an S3-compatible server (http://127.0.0.1:3900) [default: AWS]
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
        /// The S3 region [default: $AWS_REGION, else us-east-1]
        #[arg(long, value_name = "REGION")]
        region: Option<String>,
        /// A credentials file (mode 0600): [default] aws_access_key_id = …, aws_secret_access_key = …
        #[arg(long, value_name = "FILE")]
        credentials: Option<PathBuf>,
        /// The key: 64 hex digits, made when the file does not exist
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// Target size of a remote pack (e.g. 16M)
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        pack_size: Option<u64>,
        /// Packs uploaded at once
        #[arg(long, value_name = "N")]
        concurrency: Option<u32>,
        /// Upload bandwidth limit per second (e.g. 10M)
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        limit_upload: Option<u64>,
        #[command(flatten)]
        retention: RetentionArgs,
    },
    /// Show or set which snapshots a remote keeps (by default what each workspace's local
    /// policy keeps); what it drops is deleted from the remote, then every pack no remaining
    /// snapshot needs
    Retention {
        /// The remote
        name: String,
        #[command(flatten)]
        retention: RetentionArgs,
    },
    /// List the remotes
    List,
    /// Stop replicating to a remote and forget it (its objects and the key stay)
    Remove {
        /// The remote
        name: String,
    },
    /// What is on each remote, and what is not yet replicated
    Status {
        /// Only this remote
        name: Option<String>,
    },
    /// Replicate now and wait until everything is on the remote
    Sync {
        /// The remote
        name: String,
        /// Give up waiting after this long (e.g. 90s, 10m)
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = chkpt_proto::duration::parse)]
        timeout: std::time::Duration,
    },
    /// List the snapshots on a remote (read from the remote, not the local store)
    Snapshots {
        /// The remote
        name: String,
    },
    /// Restore a snapshot from a remote into a new or empty folder (no local store needed);
    /// -w PATH picks the workspace when the remote holds several
    Restore {
        /// The remote
        name: String,
        /// An id, a unique prefix of one, `latest` or `latest~N`
        snap: String,
        /// The folder to restore into: new or empty
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
}

/// Which snapshots a remote keeps.
#[derive(Debug, clap::Args)]
pub struct RetentionArgs {
    /// Keep what each workspace's local policy keeps (the default)
    #[arg(long)]
    follow_local: bool,
    /// Never delete anything from the remote
    #[arg(long)]
    keep_all: bool,
    #[command(flatten)]
    policy: crate::cli::PolicyArgs,
}

impl RetentionArgs {
    /// What to send; `None` when nothing was given.
    fn to_wire(&self) -> Result<Option<v1::RemoteRetention>, Error> {
        let mode = |m: &str, policy| v1::RemoteRetention {
            mode: m.to_owned(),
            policy,
        };
        match (self.follow_local, self.keep_all, self.policy.to_wire(None)) {
            (false, false, None) => Ok(None),
            (true, false, None) => Ok(Some(mode("follow-local", None))),
            (false, true, None) => Ok(Some(mode("keep-all", None))),
            (false, false, Some(p)) => Ok(Some(mode("own", Some(p)))),
            _ => Err(Error::Usage(
                "give one of --follow-local, --keep-all or --keep-… rules".into(),
            )),
        }
    }
}

/// A remote's retention, in words.
fn retention_text(r: Option<&v1::RemoteRetention>) -> String {
    match r.map(|r| (r.mode.as_str(), r.policy.unwrap_or_default())) {
        None | Some(("" | "follow-local", _)) => "follows each workspace's local policy".into(),
        Some(("keep-all", _)) => "keeps every snapshot".into(),
        Some((_, p)) => {
            let rules: Vec<String> = [
                ("keep-last", u64::from(p.keep_last)),
                ("keep-hourly", u64::from(p.keep_hourly)),
                ("keep-daily", u64::from(p.keep_daily)),
                ("keep-weekly", u64::from(p.keep_weekly)),
            ]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .chain((p.keep_within_secs > 0).then(|| format!("keep-within {}s", p.keep_within_secs)))
            .collect();
            if rules.is_empty() {
                "own rules: the default ones".into()
            } else {
                format!("own rules: {}", rules.join(", "))
            }
        }
    }
}

fn retention_json(r: Option<&v1::RemoteRetention>) -> Value {
    let mode = r.map_or("follow-local", |r| {
        if r.mode.is_empty() {
            "follow-local"
        } else {
            r.mode.as_str()
        }
    });
    let p = r.and_then(|r| r.policy).unwrap_or_default();
    json!({
        "mode": mode, "keep_last": p.keep_last, "keep_hourly": p.keep_hourly,
        "keep_daily": p.keep_daily, "keep_weekly": p.keep_weekly,
        "keep_within_secs": p.keep_within_secs,
    })
}

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => {
            let unit = t[i..]
                .trim()
                .trim_end_matches(['B', 'b'])
                .trim_end_matches('i');
            let mult = match unit.to_ascii_uppercase().as_str() {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                _ => return Err(format!("{text:?} is not a size: write 512K, 16M or 1G")),
            };
            (&t[..i], mult)
        }
        None => (t, 1),
    };
    num.parse::<u64>()
        .map(|n| n.saturating_mul(mult))
        .map_err(|_| format!("{text:?} is not a size: write 512K, 16M or 1G"))
}

fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(|e| Error::io(format!("make {} absolute", path.display()), e))
}

fn text(path: &Path) -> Result<String, Error> {
    absolute(path)?
        .into_os_string()
        .into_string()
        .map_err(|p| Error::Usage(format!("{} is not valid UTF-8", p.display())))
}

fn print(s: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("write to stdout", e))
}

fn print_json(v: &Value) -> Result<(), Error> {
    let t = serde_json::to_string_pretty(v)
        .map_err(|e| Error::Failed(format!("cannot encode the JSON output: {e}")))?;
    print(&format!("{t}\n"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ago(ms: i64) -> String {
    age(
        u64::try_from(now_ms()).unwrap_or(0),
        u64::try_from(ms).unwrap_or(0),
    )
}

fn remote_json(r: &v1::Remote) -> Value {
    json!({
        "name": r.name, "url": r.url, "endpoint": r.endpoint, "region": r.region,
        "credentials_file": r.credentials_file, "key_file": r.key_file,
        "key_source": r.key_source, "pack_bytes": r.pack_bytes, "concurrency": r.concurrency,
        "max_upload_bytes_per_sec": r.max_upload_bytes_per_sec,
        "retention": retention_json(r.retention.as_ref()),
    })
}

fn state_json(s: &v1::RemoteState) -> Value {
    let mut v = s
        .remote
        .as_ref()
        .map(remote_json)
        .unwrap_or_else(|| json!({}));
    let replicated = s.pending_snapshots == 0 && s.last_error.is_empty() && s.connected;
    v["connected"] = s.connected.into();
    v["replicated"] = replicated.into();
    v["busy"] = s.busy.into();
    v["last_error"] = s.last_error.clone().into();
    v["last_error_unix_ms"] = s.last_error_unix_ms.into();
    v["last_success_unix_ms"] = s.last_success_unix_ms.into();
    v["pending_snapshots"] = s.pending_snapshots.into();
    v["pending_bytes"] = s.pending_bytes.into();
    v["oldest_pending_unix_ms"] = s.oldest_pending_unix_ms.into();
    v["remote_snapshots"] = s.remote_snapshots.into();
    v["remote_objects"] = s.remote_objects.into();
    v["uploaded_bytes"] = s.uploaded_bytes.into();
    v["uploaded_objects"] = s.uploaded_objects.into();
    v["uploaded_packs"] = s.uploaded_packs.into();
    v["pruned_snapshots"] = s.pruned_snapshots.into();
    v["deleted_packs"] = s.deleted_packs.into();
    v["deleted_bytes"] = s.deleted_bytes.into();
    v["last_prune_unix_ms"] = s.last_prune_unix_ms.into();
    v["dead_bytes"] = s.dead_bytes.into();
    v["prune_note"] = s.prune_note.clone().into();
    v["collect_pending"] = s.collect_pending.into();
    v
}

fn state_text(s: &v1::RemoteState) -> String {
    let name = s.remote.as_ref().map_or("?", |r| r.name.as_str());
    let url = s.remote.as_ref().map_or("", |r| r.url.as_str());
    let mut out = format!("{name}  {url}\n");
    let pending = if s.pending_snapshots == 0 {
        "  everything replicated\n".to_owned()
    } else {
        format!(
            "  not replicated: {} snapshot{} (~{}), the oldest {}\n",
            s.pending_snapshots,
            if s.pending_snapshots == 1 { "" } else { "s" },
            human_bytes(s.pending_bytes),
            ago(s.oldest_pending_unix_ms)
        )
    };
    out.push_str(&pending);
    out.push_str(&format!(
        "  on the remote: {} snapshots, {} objects; sent since chkptd started: {} in {} packs{}\n",
        s.remote_snapshots,
        s.remote_objects,
        human_bytes(s.uploaded_bytes),
        s.uploaded_packs,
        if s.busy { " (uploading)" } else { "" }
    ));
    let mut retention = format!(
        "  retention: {}",
        retention_text(s.remote.as_ref().and_then(|r| r.retention.as_ref()))
    );
    if s.pruned_snapshots > 0 || s.deleted_packs > 0 {
        retention.push_str(&format!(
            "; since chkptd started it deleted {} snapshot{} and {} pack{} ({}), the last {}",
            s.pruned_snapshots,
            if s.pruned_snapshots == 1 { "" } else { "s" },
            s.deleted_packs,
            if s.deleted_packs == 1 { "" } else { "s" },
            human_bytes(s.deleted_bytes),
            ago(s.last_prune_unix_ms)
        ));
    }
    if s.dead_bytes > 0 {
        retention.push_str(&format!(
            "; {} unneeded inside packs still needed (kept)",
            human_bytes(s.dead_bytes)
        ));
    }
    out.push_str(&retention);
    out.push('\n');
    if !s.prune_note.is_empty() {
        out.push_str(&format!("  {}\n", s.prune_note));
    }
    if s.collect_pending {
        out.push_str("  unneeded objects are left for the next pass to delete\n");
    }
    if !s.last_error.is_empty() {
        out.push_str(&format!(
            "  failing since {}: {}\n",
            ago(s.last_error_unix_ms),
            s.last_error
        ));
    } else if s.last_success_unix_ms > 0 {
        out.push_str(&format!("  last pass {}\n", ago(s.last_success_unix_ms)));
    }
    out
}

fn snapshot_json(s: &v1::RemoteSnapshot) -> Value {
    json!({
        "id": s.id, "workspace": s.workspace_text, "created_unix_ms": s.created_unix_ms,
        "trigger": s.trigger, "message": s.message, "files": s.files, "bytes": s.bytes,
        "pinned": s.pinned,
    })
}

/// Runs `chkptctl remote ACTION`.
pub async fn run(
    socket: &Path,
    json: bool,
    workspace: Option<&Path>,
    action: RemoteAction,
) -> Result<(), Error> {
    let channel: Channel = connect::connect_channel(socket).await?;
    let mut client = RemotesClient::new(channel).max_decoding_message_size(1 << 30);
    let fail = |s: tonic::Status| connect::call_error(socket, s);
    match action {
        RemoteAction::Add {
            name,
            url,
            endpoint,
            region,
            credentials,
            key_file,
            pack_size,
            concurrency,
            limit_upload,
            retention,
        } => {
            let retention = retention.to_wire()?;
            let passphrase = std::env::var(PASSPHRASE_ENV).unwrap_or_default();
            let req = v1::AddRemoteRequest {
                name,
                url,
                endpoint: endpoint.unwrap_or_default(),
                region: region.unwrap_or_default(),
                credentials_file: credentials
                    .as_deref()
                    .map(text)
                    .transpose()?
                    .unwrap_or_default(),
                key_file: key_file
                    .as_deref()
                    .map(text)
                    .transpose()?
                    .unwrap_or_default(),
                passphrase,
                pack_bytes: pack_size.unwrap_or(0),
                concurrency: concurrency.unwrap_or(0),
                max_upload_bytes_per_sec: limit_upload.unwrap_or(0),
                retention,
            };
            let r = client.add_remote(req).await.map_err(fail)?.into_inner();
            let remote = r.remote.unwrap_or_default();
            // Said on stderr even with --json: it is the one thing that must not be missed.
            if remote.key_source == "passphrase" {
                eprintln!(
                    "Keep the passphrase safe: without it nothing on {} can be read. (The key \
                     derived from it is kept in {}.)",
                    remote.url, remote.key_file
                );
            } else {
                eprintln!(
                    "{} {}: keep a copy of it somewhere safe, away from this machine. Without \
                     it nothing on {} can be read.",
                    if r.key_generated {
                        "Made a new key at"
                    } else {
                        "The key is"
                    },
                    remote.key_file,
                    remote.url
                );
            }
            if json {
                let mut v = remote_json(&remote);
                v["initialized"] = r.initialized.into();
                v["key_generated"] = r.key_generated.into();
                return print_json(&v);
            }
            print(&format!(
                "added remote {} ({}{})\n",
                remote.name,
                remote.url,
                if r.initialized {
                    ", set up now"
                } else {
                    ", holding data already"
                }
            ))
        }
        RemoteAction::Retention { name, retention } => {
            let remote = match retention.to_wire()? {
                Some(r) => client
                    .set_remote_retention(v1::SetRemoteRetentionRequest {
                        name: name.clone(),
                        retention: Some(r),
                    })
                    .await
                    .map_err(fail)?
                    .into_inner()
                    .remote
                    .unwrap_or_default(),
                None => client
                    .list_remotes(v1::ListRemotesRequest {})
                    .await
                    .map_err(fail)?
                    .into_inner()
                    .remotes
                    .into_iter()
                    .find(|r| r.name == name)
                    .ok_or_else(|| {
                        Error::Failed(format!(
                            "no remote named {name:?}: `chkptctl remote list` shows them"
                        ))
                    })?,
            };
            if json {
                return print_json(&json!({
                    "name": remote.name,
                    "retention": retention_json(remote.retention.as_ref()),
                }));
            }
            print(&format!(
                "remote {} {}\n",
                remote.name,
                retention_text(remote.retention.as_ref())
            ))
        }
        RemoteAction::List => {
            let r = client
                .list_remotes(v1::ListRemotesRequest {})
                .await
                .map_err(fail)?
                .into_inner();
            if json {
                return print_json(
                    &json!({ "remotes": r.remotes.iter().map(remote_json).collect::<Vec<_>>() }),
                );
            }
            if r.remotes.is_empty() {
                return print(
                    "no remotes: add one with `chkptctl remote add NAME s3://BUCKET/PREFIX`\n",
                );
            }
            let mut out = String::new();
            for x in &r.remotes {
                out.push_str(&format!(
                    "{}  {}{}  key: {} ({})\n",
                    x.name,
                    x.url,
                    if x.endpoint.is_empty() {
                        String::new()
                    } else {
                        format!(" at {}", x.endpoint)
                    },
                    x.key_file,
                    x.key_source
                ));
            }
            print(&out)
        }
        RemoteAction::Remove { name } => {
            let r = client
                .remove_remote(v1::RemoveRemoteRequest { name })
                .await
                .map_err(fail)?
                .into_inner();
            let remote = r.remote.unwrap_or_default();
            if json {
                return print_json(&remote_json(&remote));
            }
            print(&format!(
                "removed remote {} (what is on {} stays; the key stays in {})\n",
                remote.name, remote.url, remote.key_file
            ))
        }
        RemoteAction::Status { name } => {
            let r = client
                .remote_status(v1::RemoteStatusRequest {
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            if json {
                return print_json(
                    &json!({ "remotes": r.remotes.iter().map(state_json).collect::<Vec<_>>() }),
                );
            }
            if r.remotes.is_empty() {
                return print(
                    "no remotes: add one with `chkptctl remote add NAME s3://BUCKET/PREFIX`\n",
                );
            }
            print(&r.remotes.iter().map(state_text).collect::<String>())
        }
        RemoteAction::Sync { name, timeout } => {
            let wait_ms = u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            let r = client
                .remote_sync(v1::RemoteSyncRequest { name, wait_ms })
                .await
                .map_err(fail)?
                .into_inner();
            let Some(s) = r.remotes.first() else {
                return Err(Error::Failed("chkptd returned no remote".into()));
            };
            if json {
                print_json(&state_json(s))?;
            } else {
                print(&state_text(s))?;
            }
            if !s.last_error.is_empty() {
                return Err(Error::Failed(s.last_error.clone()));
            }
            if s.pending_snapshots > 0 {
                return Err(Error::Failed(format!(
                    "{} snapshots are not replicated yet after {}: `chkptctl remote status` \
                     follows the upload",
                    s.pending_snapshots,
                    crate::output::duration_text(wait_ms)
                )));
            }
            Ok(())
        }
        RemoteAction::Snapshots { name } => {
            let r = client
                .remote_snapshots(v1::RemoteSnapshotsRequest { name })
                .await
                .map_err(fail)?
                .into_inner();
            if json {
                return print_json(
                    &json!({ "snapshots": r.snapshots.iter().map(snapshot_json).collect::<Vec<_>>() }),
                );
            }
            let mut out = String::new();
            for s in &r.snapshots {
                out.push_str(&format!(
                    "{}  {:>8}  {:<6}  {:>6} files  {:>10}  {}{}\n",
                    s.id,
                    ago(s.created_unix_ms),
                    s.trigger,
                    s.files,
                    human_bytes(s.bytes),
                    s.workspace_text,
                    if s.message.is_empty() {
                        String::new()
                    } else {
                        format!("  {}", s.message)
                    }
                ));
            }
            if out.is_empty() {
                out.push_str("no snapshots on the remote yet\n");
            }
            print(&out)
        }
        RemoteAction::Restore { name, snap, to } => {
            let to = absolute(&to)?;
            let workspace = match workspace {
                Some(w) => absolute(w)?.as_os_str().as_bytes().to_vec(),
                None => Vec::new(),
            };
            // Made here, with the user's umask (the daemon's is 077), as `restore --to` does.
            if std::fs::symlink_metadata(&to).is_err() {
                std::fs::create_dir_all(&to)
                    .map_err(|e| Error::io(format!("make --to {}", to.display()), e))?;
            }
            let r = client
                .remote_restore(v1::RemoteRestoreRequest {
                    name,
                    snapshot: snap,
                    to: text(&to)?,
                    workspace,
                })
                .await
                .map_err(fail)?
                .into_inner();
            let s = r.snapshot.clone().unwrap_or_default();
            if json {
                let mut v = snapshot_json(&s);
                v["to"] = to.display().to_string().into();
                v["restored"] = json!({
                    "files": r.files, "dirs": r.dirs, "symlinks": r.symlinks, "bytes": r.bytes,
                    "fetched_bytes": r.fetched_bytes, "elapsed_ms": r.elapsed_ms,
                });
                return print_json(&v);
            }
            print(&format!(
                "restored snapshot {} of {} into {}: {} files, {} folders, {} symlinks, {} ({} fetched) in {}\n",
                s.id,
                s.workspace_text,
                to.display(),
                r.files,
                r.dirs,
                r.symlinks,
                human_bytes(r.bytes),
                human_bytes(r.fetched_bytes),
                crate::output::duration_text(r.elapsed_ms)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("3X").is_err());
    }
}
