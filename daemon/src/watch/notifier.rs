//! Everything that speaks notify's language: building the watcher whose callback only
//! converts and forwards, what an event means here, and why a watch could not be placed.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, Watcher};

use super::PathChange;

/// Why a kernel watch could not be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchFailure {
    /// The kernel has no inotify watches left for this user.
    OutOfWatches,
    /// Anything else (the folder vanished, permissions…).
    Other(String),
}

/// Raw events from notify's thread to the intake thread.
pub(super) enum Raw {
    /// Paths an event named, what it did to them, and what it may have done to folders.
    Paths(Vec<Vec<u8>>, PathChange, Shape),
    /// Events were lost.
    Rescan(String),
}

/// What an event may have done to the folders being watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// Nothing: file content or metadata.
    Same,
    /// A folder (or something that may be one) appeared at the path.
    Appeared,
    /// The path went away (a watched folder there loses its watches).
    Went,
}

fn shape(kind: &EventKind) -> Shape {
    match kind {
        EventKind::Create(CreateKind::File) => Shape::Same,
        EventKind::Create(_) => Shape::Appeared,
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Shape::Appeared,
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Shape::Went,
        EventKind::Remove(RemoveKind::File) => Shape::Same,
        EventKind::Remove(_) => Shape::Went,
        _ => Shape::Same,
    }
}

fn classify(kind: &EventKind) -> Option<PathChange> {
    Some(match kind {
        EventKind::Access(_) => return None,
        EventKind::Create(_) => PathChange::Created,
        EventKind::Remove(_)
        | EventKind::Modify(ModifyKind::Data(_))
        | EventKind::Modify(ModifyKind::Any)
        | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => PathChange::Destructive,
        _ => PathChange::Other,
    })
}

/// Builds the notify watcher; its callback only converts and forwards.
pub(super) fn make_watcher(
    root: &Path,
    tx: SyncSender<Raw>,
    overflow: Arc<AtomicBool>,
) -> notify::Result<RecommendedWatcher> {
    let root_b = root.as_os_str().as_bytes().to_vec();
    let handler = move |res: notify::Result<Event>| {
        let raw = match res {
            Ok(ev) if ev.need_rescan() => Raw::Rescan("the kernel's event queue overflowed".into()),
            Ok(ev) => {
                let Some(change) = classify(&ev.kind) else {
                    return;
                };
                // A rename seen from both ends repeats what its two halves said.
                if matches!(
                    ev.kind,
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both))
                ) {
                    return;
                }
                let paths: Vec<Vec<u8>> = ev
                    .paths
                    .iter()
                    .filter_map(|p| {
                        match p.as_os_str().as_bytes().strip_prefix(root_b.as_slice()) {
                            Some([]) => Some(Vec::new()),
                            Some([b'/', rest @ ..]) => Some(rest.to_vec()),
                            _ => None,
                        }
                    })
                    .collect();
                if paths.is_empty() {
                    return;
                }
                Raw::Paths(paths, change, shape(&ev.kind))
            }
            Err(e) => Raw::Rescan(format!("watch error: {e}")),
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(raw) {
            // Cannot block here; the intake thread sees the flag after its next message (the
            // channel is full, so there is one).
            overflow.store(true, Ordering::SeqCst);
        }
    };
    // Symlinks are saved as links, never followed: a watched link to a directory would report
    // that directory's events under the link's path. Only changes are subscribed to: a build or
    // an indexer opening every file would otherwise flood the kernel queue with open events.
    let config = notify::Config::default()
        .with_follow_symlinks(false)
        .with_event_kinds(notify::EventKindMask::CORE);
    RecommendedWatcher::new(handler, config)
}

/// Whether notify says the kernel has no watches left.
pub(super) fn is_out_of_watches(e: &notify::Error) -> bool {
    matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
        || matches!(&e.kind, notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::ENOSPC))
}
