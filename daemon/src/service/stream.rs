//! Server streams: the Events stream and the chunks of a file being read.

use std::io::Write;
use std::sync::Arc;

use chkpt_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::Status;

use super::Stream_;
use super::convert;
use crate::engine::{Engine, EngineEvent};

/// The Events stream: the engine's events (of one workspace, or all) as they happen. A
/// subscriber too slow to keep up is told how many events it missed, never left unaware.
pub(super) fn events(engine: Arc<Engine>, filter: Option<u64>) -> Stream_<pb::Event> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_stream::StreamExt;

    use super::*;
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
            engine.emit(EngineEvent::Warning(1, format!("event {i}")));
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
