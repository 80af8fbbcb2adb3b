//! The engine's end of a workspace's autosave thread: where its notices go and how to wait
//! for it. The thread itself, and what it does, is [`autosave`](super::autosave); this end
//! knows nothing of it, so the workspace handle can hold it.

use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use crate::watch::{Feed, Notice, PathChange};

/// A running autosave worker; the engine keeps one per watched workspace.
#[derive(Debug)]
pub struct Worker {
    tx: Sender<Notice>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// The end of a worker that reads `tx`'s notices on `thread` (none when it could not
    /// start).
    pub(super) fn new(tx: Sender<Notice>, thread: Option<JoinHandle<()>>) -> Worker {
        Worker { tx, thread }
    }

    /// Tells the worker that `dirs` may hold files created before the kernel watched them:
    /// they are marked dirty in `feed` and looked at again on the next save.
    pub fn recheck(&self, feed: &Feed, dirs: Vec<Vec<u8>>) {
        feed.dirty().paths.extend(dirs.iter().cloned());
        let paths = dirs.into_iter().map(|d| (d, PathChange::Other)).collect();
        let _ = self.tx.send(Notice::Changed {
            paths,
            during_restore: false,
        });
    }

    /// Stops the worker, finishing a save in flight, and waits for it.
    pub fn stop(mut self) {
        let _ = self.tx.send(Notice::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
