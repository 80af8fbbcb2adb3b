//! The gRPC handlers: decode the request, run the engine off the async runtime, encode the
//! answer. No logic of their own.

pub mod convert;
mod stream;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_server::Chkpt;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use self::convert::{Excluded, status};
use crate::engine::history::DiffQuery;
use crate::engine::{Engine, IfPinned, ListQuery, ManualSave, PruneMode, SnapshotPage, WatchState};
use crate::error::{Error, Result};
use crate::store::Kind;
use crate::workspace::WatchOptions;

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The `chkpt.v1.Chkpt` service.
#[derive(Debug, Clone)]
pub struct Service {
    engine: Arc<Engine>,
}

impl Service {
    /// A service over `engine`.
    pub fn new(engine: Arc<Engine>) -> Service {
        Service { engine }
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let engine = self.engine.clone();
        match tokio::task::spawn_blocking(move || f(&engine)).await {
            Ok(r) => r.map_err(status),
            Err(e) => Err(Status::internal(format!("the operation failed: {e}"))),
        }
    }
}

fn snap(engine: &Engine, s: &crate::store::catalog::SnapshotRecord) -> Result<pb::Snapshot> {
    Ok(convert::snapshot(s, &engine.workspace_path(s.workspace)?))
}

/// A watched workspace as `Status` and `ListWorkspaces` show it.
struct WorkspaceView {
    /// Its record, from the catalog (it also holds the tripwire).
    record: crate::store::catalog::WorkspaceRecord,
    /// The paths its last full scan left out.
    excluded: Vec<Excluded>,
}

/// A watched workspace's record (from the catalog: it also holds the tripwire) and the paths
/// its last full scan left out. While a save holds the workspace, the list is not waited for.
fn workspace_view(e: &Engine, h: &crate::engine::WsHandle) -> Result<Option<WorkspaceView>> {
    let Some(record) = e.workspace_record(h.id)? else {
        return Ok(None);
    };
    let excluded = h
        .try_workspace()
        .map(|ws| excluded_of(&ws))
        .unwrap_or_default();
    Ok(Some(WorkspaceView { record, excluded }))
}

/// The paths the last full scan of `ws` left out (the first thousand), with why.
fn excluded_of(ws: &crate::workspace::Workspace) -> Vec<Excluded> {
    ws.excluded()
        .iter()
        .take(1000)
        .map(|(path, why)| Excluded {
            path: path.clone(),
            reason: why.describe(),
        })
        .collect()
}

/// `ms` from a request, or the default.
fn ms_or(ms: u64, default: u64) -> u64 {
    if ms == 0 { default } else { ms }
}

#[tonic::async_trait]
impl Chkpt for Service {
    #[tracing::instrument(skip_all)]
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let resp = self
            .blocking(|e| {
                let mut workspaces = Vec::new();
                for h in e.handles() {
                    let Some(WorkspaceView { record, excluded }) = workspace_view(e, &h)? else {
                        continue;
                    };
                    let (state, detail) = match h.state() {
                        WatchState::Watching => (pb::WorkspaceState::Watching, String::new()),
                        WatchState::Rescanning => (pb::WorkspaceState::Rescanning, String::new()),
                        WatchState::Polling(m) => (pb::WorkspaceState::Polling, m),
                        WatchState::Missing(m) => (pb::WorkspaceState::Missing, m),
                        WatchState::Failed(m) => (pb::WorkspaceState::Error, m),
                        WatchState::Paused(m) => (pb::WorkspaceState::Paused, m),
                    };
                    let last = e.latest(h.id)?;
                    let path = String::from_utf8_lossy(&record.path).into_owned();
                    let mut st = pb::WorkspaceStatus {
                        tripwire: record.tripwire.as_ref().map(convert::tripwire),
                        workspace: Some(convert::workspace(&record, &excluded, h.git_dir_bytes())),
                        state: 0,
                        state_detail: detail,
                        pending_changes: h.feed.dirty().len() as u64,
                        last_snapshot: last.map(|s| convert::snapshot(&s, &path)),
                        counters: Some(pb::WorkspaceCounters {
                            snapshots_taken: h.snapshots_taken.load(Ordering::Relaxed),
                            files_hashed: h.counters.files_hashed.load(Ordering::Relaxed),
                            bytes_hashed: h.counters.bytes_hashed.load(Ordering::Relaxed),
                            rescans: h.feed.counters.rescans.load(Ordering::Relaxed),
                            events_received: h.feed.counters.received.load(Ordering::Relaxed),
                            events_ignored: h.feed.counters.ignored.load(Ordering::Relaxed),
                            kernel_watches: h.feed.counters.watches.load(Ordering::Relaxed),
                            files_walked: h.counters.files_walked.load(Ordering::Relaxed),
                            bytes_stored: h.counters.bytes_stored.load(Ordering::Relaxed),
                        }),
                        warnings: h.warnings(),
                        reconciling: h.is_reconciling(),
                        top_files: e
                            .top_files(&h)?
                            .into_iter()
                            .map(|c| pb::FileCost {
                                path: c.path,
                                bytes_added: c.bytes,
                                snapshots: c.snapshots,
                            })
                            .collect(),
                    };
                    st.set_state(state);
                    workspaces.push(st);
                }
                Ok(pb::StatusResponse {
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    protocol: chkpt_proto::PROTOCOL_VERSION,
                    uptime_ms: e.started.elapsed().as_millis() as u64,
                    pid: std::process::id(),
                    data_dir: e.store.dir().display().to_string(),
                    socket: e.socket.display().to_string(),
                    workspaces,
                    store: Some(match e.space() {
                        Ok(s) => pb::StoreSpace {
                            size_bytes: s.store_bytes,
                            budget_bytes: s.budget_bytes,
                            free_bytes: s.free_bytes,
                            floor_bytes: s.floor_bytes,
                            fs_bytes: s.fs_bytes,
                            recompress_pending_bytes: e.store.recompress_pending(),
                        },
                        // Status must answer even when the disk cannot be asked.
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot measure the data directory");
                            pb::StoreSpace::default()
                        }
                    }),
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all, fields(path = %req.get_ref().path))]
    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<pb::WatchResponse>, Status> {
        let r = req.into_inner();
        let engine = self.engine.clone();
        let resp = self
            .blocking(move |e| {
                let opts = WatchOptions {
                    idle_ms: ms_or(r.idle_ms, e.defaults.idle_ms),
                    max_delay_ms: ms_or(r.max_delay_ms, e.defaults.max_delay_ms),
                    include_dependency_dirs: r.include_dependency_dirs,
                    include_git: r.include_git,
                    retention: r
                        .retention
                        .as_ref()
                        .map(convert::policy_from_wire)
                        .unwrap_or(e.defaults.retention),
                };
                // Bounded so the debouncer's deadlines stay representable.
                const DAY_MS: u64 = 86_400_000;
                if r.idle_ms > DAY_MS || r.max_delay_ms > 7 * DAY_MS {
                    return Err(Error::InvalidArgument(
                        "idle may be at most a day and max_delay at most a week".into(),
                    ));
                }
                if r.path.is_empty() || r.path.as_bytes().contains(&0) {
                    return Err(Error::InvalidArgument(
                        "watch needs the absolute path of a folder".into(),
                    ));
                }
                let (record, baseline) = engine.watch(&PathBuf::from(&r.path), opts)?;
                let (excluded, git_bytes) = e
                    .handle_for(&r.path)
                    .map(|h| (excluded_of(&h.workspace(&e.store)), h.git_dir_bytes()))
                    .unwrap_or_default();
                let path = String::from_utf8_lossy(&record.path).into_owned();
                Ok(pb::WatchResponse {
                    workspace: Some(convert::workspace(&record, &excluded, git_bytes)),
                    baseline: Some(convert::snapshot(&baseline, &path)),
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all)]
    async fn unwatch(
        &self,
        req: Request<pb::UnwatchRequest>,
    ) -> Result<Response<pb::UnwatchResponse>, Status> {
        let r = req.into_inner();
        let resp = self
            .blocking(move |e| {
                let record = e.unwatch(&r.path)?;
                Ok(pb::UnwatchResponse {
                    workspace: Some(convert::workspace(&record, &[], 0)),
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn list_workspaces(
        &self,
        _req: Request<pb::ListWorkspacesRequest>,
    ) -> Result<Response<pb::ListWorkspacesResponse>, Status> {
        let resp = self
            .blocking(|e| {
                let mut workspaces = Vec::new();
                for h in e.handles() {
                    if let Some(WorkspaceView { record, excluded }) = workspace_view(e, &h)? {
                        workspaces.push(convert::workspace(&record, &excluded, h.git_dir_bytes()));
                    }
                }
                Ok(pb::ListWorkspacesResponse { workspaces })
            })
            .await?;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all)]
    async fn save(
        &self,
        req: Request<pb::SaveRequest>,
    ) -> Result<Response<pb::SaveResponse>, Status> {
        let r = req.into_inner();
        let resp = self
            .blocking(move |e| {
                let ask = ManualSave {
                    message: r.message,
                    pin: r.pin,
                    tags: r.tags.into_iter().map(convert::tag_from).collect(),
                    allow_empty: r.allow_empty,
                };
                let out = e.save_manual(&r.workspace, &ask)?;
                Ok(pb::SaveResponse {
                    snapshot: Some(snap(e, &out.snapshot)?),
                    created: out.created,
                    unchanged: !out.created,
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let r = req.into_inner();
        let resp = self
            .blocking(move |e| {
                let query = ListQuery {
                    all: r.all,
                    limit: r.limit as usize,
                    page_token: r.page_token,
                    paths: r.paths,
                    tags: r.tags.into_iter().map(convert::tag_from).collect(),
                };
                let SnapshotPage {
                    snapshots: snaps,
                    next_page_token: next,
                } = e.list(&r.workspace, &query)?;
                let paths = e.workspace_paths()?;
                let snapshots = snaps
                    .iter()
                    .map(|s| {
                        convert::snapshot(
                            s,
                            paths.get(&s.workspace).map(String::as_str).unwrap_or(""),
                        )
                    })
                    .collect();
                Ok(pb::ListResponse {
                    snapshots,
                    next_page_token: next,
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::Snapshot>, Status> {
        let r = req.into_inner();
        let resp = self
            .blocking(move |e| {
                let record = e.record_for(&r.workspace)?;
                snap(e, &e.resolve(record.id, &r.snapshot)?)
            })
            .await?;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all)]
    async fn diff(
        &self,
        req: Request<pb::DiffRequest>,
    ) -> Result<Response<pb::DiffResponse>, Status> {
        let r = req.into_inner();
        let resp = self
            .blocking(move |e| {
                let q = DiffQuery {
                    from: r.from,
                    to: r.to,
                    from_parent: r.from_parent,
                    paths: r.paths,
                    patch: r.patch.as_ref().map(convert::patch_options),
                };
                let d = e.diff(&r.workspace, &q)?;
                Ok(pb::DiffResponse {
                    entries: d
                        .entries
                        .iter()
                        .map(|p| convert::diff_entry(&p.entry, p.patch.as_ref()))
                        .collect(),
                    from_snapshot: d.from.map(|f| f.hex_id()).unwrap_or_default(),
                    to_snapshot: d.to.map(|t| t.hex_id()).unwrap_or_default(),
                    truncated: d.truncated,
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    type RestoreStream = Stream_<pb::RestoreEvent>;

    #[tracing::instrument(skip_all)]
    async fn restore(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<Self::RestoreStream>, Status> {
        Ok(Response::new(stream::restore(
            self.engine.clone(),
            req.into_inner(),
        )))
    }

    type ReadFileStream = Stream_<pb::FileChunk>;

    async fn read_file(
        &self,
        req: Request<pb::ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        let r = req.into_inner();
        let (_, entry) = {
            let r = r.clone();
            self.blocking(move |e| e.entry_at(&r.workspace, &r.snapshot, &r.path))
                .await?
        };
        Ok(Response::new(stream::read_file(
            self.engine.clone(),
            entry,
            r.offset,
            r.length,
        )))
    }

    async fn list_tree(
        &self,
        req: Request<pb::ListTreeRequest>,
    ) -> Result<Response<pb::ListTreeResponse>, Status> {
        let r = req.into_inner();
        let resp = self
            .blocking(move |e| {
                let (snap, entries) = e.list_dir(&r.workspace, &r.snapshot, &r.path)?;
                Ok(pb::ListTreeResponse {
                    snapshot: snap.hex_id(),
                    entries: entries
                        .iter()
                        .map(|d| convert::tree_entry(&d.entry, &d.target))
                        .collect(),
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn log(&self, req: Request<pb::LogRequest>) -> Result<Response<pb::LogResponse>, Status> {
        let r = req.into_inner();
        let resp = self
            .blocking(move |e| {
                let opts = r.patch.as_ref().map(convert::patch_options);
                let entries = e
                    .log(
                        &r.workspace,
                        &r.path,
                        &r.paths,
                        r.limit as usize,
                        opts.as_ref(),
                    )?
                    .iter()
                    .map(|item| {
                        let mut le = pb::LogEntry {
                            snapshot: Some(snap(e, &item.snapshot)?),
                            change: 0,
                            // A directory's own size is its listing's: no use to anyone.
                            size: match item.after {
                                Some((Kind::Dir, _)) => 0,
                                _ => item.size,
                            },
                            kind: 0,
                            changes: item
                                .changes
                                .iter()
                                .map(|p| convert::diff_entry(&p.entry, p.patch.as_ref()))
                                .collect(),
                            truncated: item.truncated,
                        };
                        le.set_change(convert::change(item.change));
                        if let Some((k, mode)) = item.after {
                            le.set_kind(convert::entry_kind(k, mode));
                        }
                        Ok(le)
                    })
                    .collect::<Result<_>>()?;
                Ok(pb::LogResponse { entries })
            })
            .await?;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all)]
    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = req.into_inner();
        let resp = self
            .blocking(move |e| {
                let if_pinned = if r.force {
                    IfPinned::Delete
                } else {
                    IfPinned::Refuse
                };
                let (deleted, reclaimed) = e.delete(&r.workspace, &r.snapshots, if_pinned)?;
                Ok(pb::DeleteResponse {
                    deleted: deleted.iter().map(|s| s.hex_id()).collect(),
                    reclaimed_bytes: reclaimed,
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn pin(&self, req: Request<pb::PinRequest>) -> Result<Response<pb::Snapshot>, Status> {
        let r = req.into_inner();
        let resp = self
            .blocking(move |e| snap(e, &e.pin(&r.workspace, &r.snapshot)?))
            .await?;
        Ok(Response::new(resp))
    }

    async fn unpin(&self, req: Request<pb::PinRequest>) -> Result<Response<pb::Snapshot>, Status> {
        let r = req.into_inner();
        let resp = self
            .blocking(move |e| snap(e, &e.unpin(&r.workspace, &r.snapshot)?))
            .await?;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all)]
    async fn prune(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let r = req.into_inner();
        let resp = self
            .blocking(move |e| {
                let policy = crate::retention::Policy {
                    keep_last: r.keep_last,
                    keep_hourly: r.keep_hourly,
                    keep_daily: r.keep_daily,
                    keep_weekly: r.keep_weekly,
                    keep_within_us: r.keep_within_secs.saturating_mul(1_000_000),
                    max_store_bytes: 0,
                };
                let mode = if r.dry_run {
                    PruneMode::DryRun
                } else {
                    PruneMode::Apply
                };
                let (decisions, reclaimed) = e.prune(&r.workspace, &policy, mode)?;
                let removed = decisions.iter().filter(|d| !d.keep).count() as u32;
                let decisions = decisions
                    .iter()
                    .map(|d| {
                        Ok(pb::PruneDecision {
                            snapshot: Some(snap(e, &d.snapshot)?),
                            keep: d.keep,
                            reason: d.reason.clone(),
                        })
                    })
                    .collect::<Result<_>>()?;
                Ok(pb::PruneResponse {
                    decisions,
                    removed: if r.dry_run { 0 } else { removed },
                    reclaimed_bytes: reclaimed,
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all)]
    async fn verify(
        &self,
        req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let r = req.into_inner();
        let resp = self
            .blocking(move |e| {
                let only = if r.workspace.is_empty() {
                    None
                } else {
                    Some(e.record_for(&r.workspace)?.id)
                };
                let report = e.verify(only)?;
                Ok(convert::verify_response(&report))
            })
            .await?;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all)]
    async fn acknowledge(
        &self,
        req: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        let r = req.into_inner();
        let resp = self
            .blocking(move |e| {
                let cleared = e.acknowledge(&r.workspace)?;
                Ok(pb::AcknowledgeResponse {
                    cleared: cleared.as_ref().map(convert::tripwire),
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    type EventsStream = Stream_<pb::Event>;

    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let r = req.into_inner();
        let filter = if r.workspace.is_empty() {
            None
        } else {
            let path = r.workspace.clone();
            Some(self.blocking(move |e| e.record_for(&path)).await?.id)
        };
        let stream = stream::events(self.engine.clone(), filter);
        Ok(Response::new(Box::pin(stream)))
    }
}
