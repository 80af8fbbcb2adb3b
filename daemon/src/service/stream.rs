//! Server streams: the Events stream, a restore's progress and summary, and the chunks of a file
//! being read.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chkpt_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::Status;

use super::Stream_;
use super::convert::{self, status};
use crate::engine::{Engine, EngineEvent};
use crate::error::Error;
use crate::store::{Entry, WorkspaceId};
use crate::workspace::restore::RestoreOptions;

/// The Events stream: the engine's events (of one workspace, or all) as they happen. A
/// subscriber too slow to keep up is told how many events it missed, never left unaware.
pub(super) fn events(engine: Arc<Engine>, filter: Option<WorkspaceId>) -> Stream_<pb::Event> {
    let stream = BroadcastStream::new(engine.subscribe()).filter_map(move |item| {
        // Runs on the async runtime: no catalog reads here, the paths of watched workspaces
        // are in memory.
        let ev = match item {
            Ok(ev) => ev,
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                return Some(Ok(pb::Event {
                    unix_ms: crate::workspace::now_us() / 1000,
                    workspace: String::new(),
                    kind: Some(pb::event::Kind::Warning(pb::Warning {
                        message: format!(
                            "this subscriber fell behind and missed {missed} events; \
                             `chkptctl status` and `chkptctl list` show the current state"
                        ),
                    })),
                }));
            }
        };
        let ws = match &ev {
            EngineEvent::SnapshotTaken(s) => s.workspace,
            EngineEvent::RestoreDone(w, _)
            | EngineEvent::Rescan(w, _)
            | EngineEvent::Warning(w, _)
            | EngineEvent::Tripwire(w, _) => *w,
        };
        if filter.is_some_and(|f| f != ws) {
            return None;
        }
        let workspace = engine.watched_path(ws).unwrap_or_default();
        let kind = match ev {
            EngineEvent::SnapshotTaken(s) => pb::event::Kind::SnapshotTaken(pb::SnapshotTaken {
                snapshot: Some(convert::snapshot(&s, &workspace)),
            }),
            EngineEvent::RestoreDone(_, s) => pb::event::Kind::RestoreDone(pb::RestoreDone {
                summary: Some(convert::restore_summary(&s)),
            }),
            EngineEvent::Rescan(_, reason) => pb::event::Kind::Rescan(pb::Rescan { reason }),
            EngineEvent::Warning(_, message) => pb::event::Kind::Warning(pb::Warning { message }),
            EngineEvent::Tripwire(_, t) => pb::event::Kind::Tripwire(convert::tripwire(&t)),
        };
        Some(Ok(pb::Event {
            unix_ms: crate::workspace::now_us() / 1000,
            workspace,
            kind: Some(kind),
        }))
    });
    Box::pin(stream)
}

pub(super) const CHUNK: usize = 64 * 1024;

/// Sends what is written as `FileChunk`s.
pub(super) struct ChunkWriter {
    pub tx: mpsc::Sender<Result<pb::FileChunk, Status>>,
    pub buf: Vec<u8>,
    pub offset: u64,
    pub total: u64,
    pub sent: bool,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // The store may hand over a whole block at once (MiBs): a chunk stays within CHUNK,
        // far below the 4 MiB a gRPC client accepts in one message by default.
        for piece in data.chunks(CHUNK) {
            let room = CHUNK - self.buf.len();
            let (now, later) = piece.split_at(room.min(piece.len()));
            self.buf.extend_from_slice(now);
            if self.buf.len() >= CHUNK {
                self.flush()?;
            }
            self.buf.extend_from_slice(later);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // An empty file is still one (empty) chunk.
        if self.buf.is_empty() && self.sent {
            return Ok(());
        }
        self.sent = true;
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let len = data.len() as u64;
        self.tx
            .blocking_send(Ok(pb::FileChunk {
                data,
                offset: self.offset,
                total_size: self.total,
            }))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
            })?;
        self.offset += len;
        Ok(())
    }
}

/// The Restore stream: progress at most every 100 ms, then the summary or the error. A worker
/// that panics still ends the stream with an error, never a stream that stops without one.
pub(super) fn restore(engine: Arc<Engine>, r: pb::RestoreRequest) -> Stream_<pb::RestoreEvent> {
    let (tx, rx) = mpsc::channel(16);
    let panic_tx = tx.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let opts = RestoreOptions {
            paths: r.paths,
            dry_run: r.dry_run,
            to: (!r.to.is_empty()).then(|| PathBuf::from(&r.to)),
            skip_checkpoint: false,
            include_git: r.include_git,
            force: r.force,
        };
        let mut last = Instant::now();
        let progress_tx = tx.clone();
        let mut progress = move |done: u64, total: u64, done_bytes: u64, total_bytes: u64| {
            if last.elapsed() >= Duration::from_millis(100) || done == total {
                last = Instant::now();
                let ev = pb::RestoreEvent {
                    event: Some(pb::restore_event::Event::Progress(pb::RestoreProgress {
                        done_entries: done,
                        total_entries: total,
                        done_bytes,
                        total_bytes,
                    })),
                };
                let _ = progress_tx.blocking_send(Ok(ev));
            }
        };
        let res = engine.restore(&r.workspace, &r.snapshot, opts, &mut progress);
        let msg = res.map(|s| pb::RestoreEvent {
            event: Some(pb::restore_event::Event::Summary(convert::restore_summary(
                &s,
            ))),
        });
        let _ = tx.blocking_send(msg.map_err(status));
    });
    tokio::spawn(async move {
        if let Err(e) = worker.await {
            tracing::error!(error = %e, "the restore worker failed");
            let _ = panic_tx
                .send(Err(Status::internal(
                    "the restore stopped unexpectedly; see the daemon's log",
                )))
                .await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// The ReadFile stream: `entry`'s bytes from `offset` (`length` of them, all when 0), in
/// chunks of [`CHUNK`].
pub(super) fn read_file(
    engine: Arc<Engine>,
    entry: Entry,
    offset: u64,
    length: u64,
) -> Stream_<pb::FileChunk> {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
            offset: offset.min(entry.size),
            total: entry.size,
            sent: false,
        };
        let res = engine
            .read_range_into(&entry, offset, length, &mut w)
            .and_then(|_| w.flush().map_err(|e| Error::io("(stream)", e)));
        if let Err(e) = res {
            let _ = tx.blocking_send(Err(status(e)));
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_stream::StreamExt;

    use super::*;
    use crate::store::WorkspaceId;
    use crate::workspace::WatchOptions;

    #[tokio::test]
    async fn a_subscriber_that_fell_behind_is_told_how_many_events_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let engine = Engine::new(
            store,
            WatchOptions::default(),
            Duration::from_secs(60),
            dir.path().join("sock"),
        );
        let mut stream = events(engine.clone(), None);
        // More than the channel holds (1,024), before the subscriber reads anything.
        for i in 0..1500 {
            engine.emit(EngineEvent::Warning(
                WorkspaceId::new(1),
                format!("event {i}"),
            ));
        }
        let first = stream.next().await.unwrap().unwrap();
        match first.kind {
            Some(pb::event::Kind::Warning(w)) => {
                assert!(w.message.contains("missed 476 events"), "{}", w.message);
            }
            other => panic!("expected a warning about missed events, got {other:?}"),
        }
        // Then the events still buffered follow, the newest last.
        let mut last = None;
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(200), stream.next()).await
        {
            last = Some(ev.unwrap());
        }
        match last.and_then(|e| e.kind) {
            Some(pb::event::Kind::Warning(w)) => assert_eq!(w.message, "event 1499"),
            other => panic!("{other:?}"),
        }
        engine.shutdown();
    }
}
