//! Taking snapshots: the event barrier that makes a save see every earlier change, and the
//! save itself.

use std::time::Duration;

use super::registry::WsHandle;
use super::{Engine, EngineEvent, WatchState};
use crate::error::{Error, Result};
use crate::store::catalog::{Tag, Trigger};
use crate::sync::lock;
use crate::workspace::{Changes, SaveOptions, SaveOutcome};

/// How long a save waits for the watcher to report its event barrier before walking instead.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a manual save of a workspace that saves `.git` waits for git to finish.
const GIT_WAIT: Duration = Duration::from_secs(10);
/// A save that added more than this gives memory back afterwards.
const HEAVY_BYTES: u64 = 64 << 20;

/// What the save looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// The paths the watcher reported (a full walk if it reported lost events).
    Dirty,
    /// The whole tree, whatever the watcher said.
    Full,
}

/// A snapshot to take.
#[derive(Debug, Clone)]
pub struct SaveRequest {
    /// Why.
    pub trigger: Trigger,
    /// The user's message.
    pub message: String,
    /// Pin it.
    pub pin: bool,
    /// What to look at.
    pub walk: Walk,
    /// `key=value` labels.
    pub tags: Vec<Tag>,
    /// Record a manual snapshot even when nothing changed.
    pub allow_empty: bool,
}

impl SaveRequest {
    /// An automatic snapshot of the dirty paths, with `message`.
    pub fn auto(message: String) -> SaveRequest {
        SaveRequest {
            trigger: Trigger::Auto,
            message,
            pin: false,
            walk: Walk::Dirty,
            tags: Vec::new(),
            allow_empty: false,
        }
    }
}

/// What a manual save asks for.
#[derive(Debug, Clone, Default)]
pub struct ManualSave {
    /// The user's message.
    pub message: String,
    /// Pin the snapshot.
    pub pin: bool,
    /// `key=value` labels.
    pub tags: Vec<Tag>,
    /// Record a new snapshot even when nothing changed since the latest.
    pub allow_empty: bool,
}

impl Engine {
    /// Makes sure every change made before this call is in `h`'s dirty set (see
    /// [`Feed::sync`](crate::watch::Feed::sync)). When that cannot be done (not watching, a
    /// read-only folder, no answer in time) the dirty set is marked for a full stat-walk
    /// instead, which is always right.
    pub fn sync_events(&self, h: &WsHandle) {
        let watching = matches!(h.state(), WatchState::Watching | WatchState::Paused(_))
            && lock(&h.worker).is_some();
        if !watching || !h.feed.sync(&h.root, h.id.get(), BARRIER_TIMEOUT) {
            h.feed.dirty().full = true;
        }
    }

    /// Takes a snapshot of `h` with the changes the watcher reported.
    pub fn save_now(&self, h: &WsHandle, req: &SaveRequest) -> Result<SaveOutcome> {
        let mut ws = h.workspace(&self.store);
        let mut taken = Taken::from(h);
        if req.walk == Walk::Full {
            taken.changes = Changes::Full;
        }
        let mut opts = SaveOptions::new(req.trigger, taken.changes.clone());
        opts.message = req.message.clone();
        opts.pin = req.pin;
        opts.rescan = taken.rescan;
        opts.tags = req.tags.clone();
        opts.allow_empty = req.allow_empty;
        let full = matches!(opts.changes, Changes::Full);
        // Polling stays polling, and a missing folder missing, whatever a walk finds.
        let watched = matches!(h.state(), WatchState::Watching | WatchState::Rescanning);
        // A reconciling walk runs while watched: it stays `Watching`, `reconciling` says it.
        if full && watched && !h.is_reconciling() {
            h.set_state(WatchState::Rescanning);
        }
        let res = ws.save(&self.store, &opts);
        // A stat-walk (restart, re-watch, rescan) or a large save leaves much freed memory.
        if full
            || res
                .as_ref()
                .is_ok_and(|o| o.created && o.snapshot.new_bytes > HEAVY_BYTES)
        {
            self.store.release_memory();
        }
        let recheck = ws.take_new_dirs();
        drop(ws);
        if !recheck.is_empty()
            && let Some(w) = lock(&h.worker).as_ref()
        {
            // Files created in a new directory before the kernel watched it send no event:
            // list those directories again on the next save.
            w.recheck(&h.feed, recheck);
        }
        match &res {
            Ok(out) => {
                if h.state() == WatchState::Rescanning {
                    h.set_state(WatchState::Watching);
                }
                if out.created {
                    self.maintenance().budget_due();
                    h.count_snapshot();
                    self.emit(EngineEvent::SnapshotTaken(out.snapshot.clone()));
                    for w in &out.snapshot.warnings {
                        h.warn(w.clone());
                    }
                }
            }
            Err(e) => {
                taken.put_back(h);
                if let Error::WorkspaceGone { .. } = e {
                    h.set_state(WatchState::Missing(e.to_string()));
                } else if matches!(h.state(), WatchState::Rescanning) {
                    h.set_state(WatchState::Watching);
                }
                self.emit(EngineEvent::Warning(h.id, format!("save failed: {e}")));
            }
        }
        res
    }

    /// A manual save of the workspace containing `path`. When the workspace saves `.git` and
    /// git is half way through something, the save waits for it a while: a snapshot should
    /// not hold a half-written repository. See
    /// [`Workspace::save`](crate::workspace::Workspace::save) for what a save that finds
    /// nothing changed does.
    pub fn save_manual(&self, path: &str, ask: &ManualSave) -> Result<SaveOutcome> {
        for t in &ask.tags {
            check_tag(t)?;
        }
        let h = self.handle_for(path)?;
        let include_git = self.workspace_record(h.id)?.is_some_and(|r| r.include_git);
        if include_git && let Some(git_dir) = crate::workspace::git::find_git_dir(&h.root) {
            let until = std::time::Instant::now() + GIT_WAIT;
            while let Some(why) = crate::workspace::git::busy(&git_dir) {
                if std::time::Instant::now() >= until {
                    tracing::warn!(workspace = %h.root.display(), why, "git is still busy; saving anyway");
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.sync_events(&h);
        let req = SaveRequest {
            trigger: Trigger::Manual,
            message: ask.message.clone(),
            pin: ask.pin,
            walk: Walk::Dirty,
            tags: ask.tags.clone(),
            allow_empty: ask.allow_empty,
        };
        self.save_now(&h, &req)
    }
}

/// Longest tag key and value, in bytes.
const MAX_TAG_BYTES: usize = 256;

/// A tag's key is a word (letters, digits, `_`, `-`, `.`, `/`); its value anything printable
/// short enough.
fn check_tag(t: &Tag) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "tag {}={}: {why}",
            t.key, t.value
        )))
    };
    if t.key.is_empty() {
        return bad("the key is empty");
    }
    if t.key.len() > MAX_TAG_BYTES || t.value.len() > MAX_TAG_BYTES {
        return bad("longer than 256 bytes");
    }
    if !t
        .key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b))
    {
        return bad("a key is letters, digits, '_', '-', '.' and '/'");
    }
    if t.value.chars().any(char::is_control) {
        return bad("the value holds a control character");
    }
    Ok(())
}

/// Changes taken out of a workspace's dirty set for an operation, to be put back if it fails.
#[derive(Debug)]
pub(super) struct Taken {
    /// What may have changed.
    pub changes: Changes,
    /// Some of it may have been seen only by a rescan.
    pub rescan: bool,
}

impl Taken {
    /// Takes the dirty set out of `h`'s feed.
    pub fn from(h: &WsHandle) -> Taken {
        let mut d = h.feed.dirty();
        let rescan = d.rescan_reason.take().is_some();
        let paths = std::mem::take(&mut d.paths);
        let changes = if std::mem::take(&mut d.full) {
            Changes::Full
        } else {
            Changes::Paths(paths.into_iter().collect())
        };
        Taken { changes, rescan }
    }

    /// Puts the changes back, after the operation that took them failed or did not consume
    /// them.
    pub fn put_back(self, h: &WsHandle) {
        let mut d = h.feed.dirty();
        match self.changes {
            Changes::Full => d.full = true,
            Changes::Paths(p) => d.paths.extend(p),
        }
        if self.rescan && d.rescan_reason.is_none() {
            d.rescan_reason = Some("retry".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::workspace::WatchOptions;
    use crate::workspace::test_hooks::panic_after_next_refresh;

    fn manual(message: &str) -> ManualSave {
        ManualSave {
            message: message.to_owned(),
            ..ManualSave::default()
        }
    }

    /// An engine over a fresh store, and an empty folder `ws` to watch.
    fn engine() -> (tempfile::TempDir, std::path::PathBuf, Arc<Engine>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir_all(&root).unwrap();
        let store = crate::store::Store::open(dir.path().join("data")).unwrap();
        let engine = Engine::new(
            store,
            WatchOptions::default(),
            Duration::from_secs(60),
            dir.path().join("sock"),
        );
        (dir, root, engine)
    }

    #[test]
    fn a_save_that_panicked_leaves_no_half_updated_index_behind() {
        let (_dir, root, engine) = engine();
        std::fs::write(root.join("a.txt"), b"first").unwrap();
        engine.watch(&root, WatchOptions::default()).unwrap();
        let ws = root.display().to_string();
        // Racy-clean rule: a file read within a second of its write is read again anyway.
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(root.join("a.txt"), b"second, longer").unwrap();
        std::fs::write(root.join("b.txt"), b"new file").unwrap();
        let e = Arc::clone(&engine);
        let w = ws.clone();
        let panicked = std::thread::spawn(move || {
            panic_after_next_refresh();
            e.save_manual(&w, &manual("panics"))
        })
        .join();
        assert!(panicked.is_err(), "the injected panic happened");
        // The panicked save had taken the dirty paths and updated the index with objects no
        // batch committed; the next save must neither trust that index nor miss the changes.
        let out = engine.save_manual(&ws, &manual("after the panic")).unwrap();
        assert!(out.created);
        let (_, a) = engine.entry_at(&ws, "latest", b"a.txt").unwrap();
        let mut got = Vec::new();
        engine.read_into(&a, &mut got).unwrap();
        assert_eq!(got, b"second, longer");
        let (_, b) = engine.entry_at(&ws, "latest", b"b.txt").unwrap();
        let mut got = Vec::new();
        engine.read_into(&b, &mut got).unwrap();
        assert_eq!(got, b"new file");
        let report = engine.verify(None).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        engine.shutdown();
    }

    #[test]
    fn event_barriers_are_seen_and_forgotten() {
        let (_dir, root, engine) = engine();
        engine.watch(&root, WatchOptions::default()).unwrap();
        let h = engine.handle_for(&root.display().to_string()).unwrap();
        for _ in 0..20 {
            assert!(
                h.feed.sync(&root, h.id.get(), Duration::from_secs(5)),
                "barrier seen"
            );
        }
        // Regression: each barrier file's delete event put its name back in the set, which
        // then grew by one per Save, Diff and Restore.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(h.feed.barriers_waiting(), 0);
        assert!(
            std::fs::read_dir(&root).unwrap().next().is_none(),
            "no barrier left"
        );
        engine.shutdown();
    }
}
