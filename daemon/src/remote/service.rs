//! The `chkpt.v1.Remotes` gRPC service: decode, call [`Remotes`], encode. Failures map to a
//! status code plus an `ErrorInfo` reason (`REMOTE_UNREACHABLE`, `REMOTE_WRONG_KEY`, …), as
//! the engine's do in `service::convert`.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::remotes_server::Remotes as RemotesRpc;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::config::{RemoteConfig, Retention};
use super::manager::{AddRequest, StatusView};
use super::restore::RemoteSnap;
use super::{Failure, RemoteError, Remotes};
use crate::service::convert::ERROR_DOMAIN;

/// The service over the daemon's remotes.
#[derive(Debug, Clone)]
pub struct RemoteService {
    remotes: Arc<Remotes>,
}

impl RemoteService {
    /// A service over `remotes`.
    pub fn new(remotes: Arc<Remotes>) -> RemoteService {
        RemoteService { remotes }
    }
}

/// The status of a failed remote operation.
pub fn status(e: RemoteError) -> Status {
    let e = match e {
        RemoteError::Local(inner) => return crate::service::convert::status(inner),
        e => e,
    };
    let (code, reason) = match &e {
        RemoteError::Config(_) => (Code::InvalidArgument, "REMOTE_CONFIG"),
        RemoteError::NotFound(_) => (Code::NotFound, "REMOTE_NOT_FOUND"),
        RemoteError::Exists(_) => (Code::AlreadyExists, "REMOTE_EXISTS"),
        RemoteError::NoSnapshot { .. } => (Code::NotFound, "REMOTE_SNAPSHOT_NOT_FOUND"),
        RemoteError::Remote { kind, .. } => (
            match kind {
                Failure::Unreachable => Code::Unavailable,
                Failure::Denied => Code::PermissionDenied,
                Failure::NoBucket => Code::NotFound,
                Failure::WrongKey => Code::PermissionDenied,
                Failure::Damaged => Code::DataLoss,
                Failure::Other => Code::Internal,
            },
            kind.reason(),
        ),
        RemoteError::Local(_) => (Code::Internal, "REMOTE_FAILED"),
    };
    let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(code, e.to_string(), details)
}

fn remote(c: &RemoteConfig) -> pb::Remote {
    pb::Remote {
        name: c.name.clone(),
        url: c.url.clone(),
        endpoint: c.endpoint.clone(),
        region: c.region.clone(),
        credentials_file: c
            .credentials_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        key_file: c.key_file.display().to_string(),
        key_source: c.key_source.as_str().to_owned(),
        pack_bytes: c.pack_bytes,
        concurrency: c.concurrency,
        max_upload_bytes_per_sec: c.max_upload_bytes_per_sec,
        retention: Some(retention_to_wire(&c.retention)),
    }
}

fn retention_to_wire(r: &Retention) -> pb::RemoteRetention {
    pb::RemoteRetention {
        mode: r.mode().to_owned(),
        policy: match r {
            Retention::Own { policy } => Some(crate::service::convert::policy_to_wire(policy)),
            _ => None,
        },
    }
}

fn retention_from_wire(r: Option<&pb::RemoteRetention>) -> Result<Retention, Status> {
    let Some(r) = r else {
        return Ok(Retention::FollowLocal);
    };
    match r.mode.as_str() {
        "" | "follow-local" => Ok(Retention::FollowLocal),
        "keep-all" => Ok(Retention::KeepAll),
        "own" => {
            let wire = r.policy.unwrap_or_default();
            let policy = crate::retention::Policy {
                max_store_bytes: 0,
                ..crate::service::convert::policy_from_wire(&wire)
            };
            Ok(Retention::Own { policy })
        }
        other => Err(status(RemoteError::Config(format!(
            "{other:?} is not a remote retention: use follow-local, own or keep-all"
        )))),
    }
}

fn state(v: &StatusView) -> pb::RemoteState {
    let p = &v.progress;
    pb::RemoteState {
        remote: Some(remote(&v.config)),
        connected: p.connected,
        last_error: p.last_error.clone(),
        last_error_unix_ms: p.last_error_ms,
        last_success_unix_ms: p.last_success_ms,
        pending_snapshots: v.pending_snapshots,
        pending_bytes: v.pending_bytes,
        oldest_pending_unix_ms: v.oldest_pending_ms,
        remote_snapshots: v.remote_snapshots,
        uploaded_bytes: p.uploaded_bytes,
        uploaded_objects: p.uploaded_objects,
        uploaded_packs: p.uploaded_packs,
        busy: p.busy,
        remote_objects: v.remote_objects,
        pruned_snapshots: p.pruned_snapshots,
        deleted_packs: p.deleted_packs,
        deleted_bytes: p.deleted_bytes,
        last_prune_unix_ms: p.last_prune_ms,
        dead_bytes: p.dead_bytes,
        prune_note: p.prune_note.clone(),
        collect_pending: v.collect_pending,
    }
}

fn snapshot(s: &RemoteSnap) -> pb::RemoteSnapshot {
    let r = &s.record;
    pb::RemoteSnapshot {
        id: r.hex_id(),
        workspace: s.workspace.clone(),
        workspace_text: String::from_utf8_lossy(&s.workspace).into_owned(),
        created_unix_ms: i64::try_from(r.created_us / 1000).unwrap_or(i64::MAX),
        trigger: r.trigger.as_str().to_owned(),
        message: r.message.clone(),
        files: r.files,
        bytes: r.bytes,
        pinned: r.pinned,
    }
}

fn path_of(text: &str) -> Option<PathBuf> {
    (!text.is_empty()).then(|| PathBuf::from(text))
}

#[tonic::async_trait]
impl RemotesRpc for RemoteService {
    async fn add_remote(
        &self,
        req: Request<pb::AddRemoteRequest>,
    ) -> Result<Response<pb::AddRemoteResponse>, Status> {
        let r = req.into_inner();
        let retention = retention_from_wire(r.retention.as_ref())?;
        let added = self
            .remotes
            .add(AddRequest {
                name: r.name,
                url: r.url,
                endpoint: r.endpoint,
                region: r.region,
                credentials_file: path_of(&r.credentials_file),
                key_file: path_of(&r.key_file),
                passphrase: (!r.passphrase.is_empty()).then_some(r.passphrase),
                pack_bytes: r.pack_bytes,
                concurrency: r.concurrency,
                max_upload_bytes_per_sec: r.max_upload_bytes_per_sec,
                retention,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AddRemoteResponse {
            remote: Some(remote(&added.config)),
            initialized: added.initialized,
            key_generated: added.key_generated,
        }))
    }

    async fn set_remote_retention(
        &self,
        req: Request<pb::SetRemoteRetentionRequest>,
    ) -> Result<Response<pb::SetRemoteRetentionResponse>, Status> {
        let r = req.into_inner();
        let retention = retention_from_wire(r.retention.as_ref())?;
        let cfg = self
            .remotes
            .set_retention(&r.name, retention)
            .map_err(status)?;
        Ok(Response::new(pb::SetRemoteRetentionResponse {
            remote: Some(remote(&cfg)),
        }))
    }

    async fn list_remotes(
        &self,
        _req: Request<pb::ListRemotesRequest>,
    ) -> Result<Response<pb::ListRemotesResponse>, Status> {
        Ok(Response::new(pb::ListRemotesResponse {
            remotes: self.remotes.list().iter().map(remote).collect(),
        }))
    }

    async fn remove_remote(
        &self,
        req: Request<pb::RemoveRemoteRequest>,
    ) -> Result<Response<pb::RemoveRemoteResponse>, Status> {
        let removed = self
            .remotes
            .remove(&req.into_inner().name)
            .map_err(status)?;
        Ok(Response::new(pb::RemoveRemoteResponse {
            remote: Some(remote(&removed)),
        }))
    }

    async fn remote_status(
        &self,
        req: Request<pb::RemoteStatusRequest>,
    ) -> Result<Response<pb::RemoteStatusResponse>, Status> {
        let name = req.into_inner().name;
        let views = self
            .remotes
            .status((!name.is_empty()).then_some(name.as_str()))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoteStatusResponse {
            remotes: views.iter().map(state).collect(),
        }))
    }

    async fn remote_sync(
        &self,
        req: Request<pb::RemoteSyncRequest>,
    ) -> Result<Response<pb::RemoteStatusResponse>, Status> {
        let r = req.into_inner();
        let views = self
            .remotes
            .sync(&r.name, Duration::from_millis(r.wait_ms))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoteStatusResponse {
            remotes: views.iter().map(state).collect(),
        }))
    }

    async fn remote_snapshots(
        &self,
        req: Request<pb::RemoteSnapshotsRequest>,
    ) -> Result<Response<pb::RemoteSnapshotsResponse>, Status> {
        let snaps = self
            .remotes
            .snapshots(&req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoteSnapshotsResponse {
            snapshots: snaps.iter().map(snapshot).collect(),
        }))
    }

    async fn remote_restore(
        &self,
        req: Request<pb::RemoteRestoreRequest>,
    ) -> Result<Response<pb::RemoteRestoreResponse>, Status> {
        let r = req.into_inner();
        let to = PathBuf::from(std::ffi::OsStr::from_bytes(r.to.as_bytes()));
        let workspace = (!r.workspace.is_empty()).then_some(r.workspace.as_slice());
        let (snap, s) = self
            .remotes
            .restore(&r.name, &r.snapshot, &to, workspace)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoteRestoreResponse {
            snapshot: Some(snapshot(&snap)),
            files: s.files,
            dirs: s.dirs,
            symlinks: s.symlinks,
            bytes: s.bytes,
            fetched_bytes: s.fetched,
            elapsed_ms: s.elapsed_ms,
        }))
    }
}
