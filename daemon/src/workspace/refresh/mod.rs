//! Bringing the warm index up to date with the disk, storing new content on the way.
//!
//! A full refresh is one parallel stat-walk whose threads also read what changed: reading the
//! tree's files runs alongside the walk instead of after it, which is most of a cold save. A
//! refresh of dirty paths stats only those (and walks only directories that appeared), then reads
//! what changed in parallel.

mod read;
mod walk;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use rayon::prelude::*;

use super::chunking;
use super::index::Node;
use super::rules::{Rules, abs};
use super::scan::{Looked, Stat};
use super::{Changes, RACY_WINDOW_NS, Workspace, now_ns};
use crate::error::{Error, Result};
use crate::store::catalog::FileMeta;
use crate::store::{Batch, Id, Kind};

use self::read::read_object;
pub use self::read::release_thread_buffers;

/// Attempts at reading a file that keeps changing before its previous version is kept.
const READ_ATTEMPTS: usize = 4;

/// Looks sorted in parallel past this many (waking rayon's threads costs more for a few).
const PARALLEL_SORT: usize = 4096;
/// After reading a file larger than this, rayon's threads free their buffers.
const KEPT_BUFFER: u64 = 1 << 20;

/// The content id the index holds for `rel` (the version saved before), if any.
fn previous(index: &super::Index, rel: &[u8]) -> Option<Id> {
    match index.get(rel) {
        Some(Node::Leaf(m)) if m.kind == Kind::File => Some(m.id),
        _ => None,
    }
}

/// How one path's content was read.
enum ReadOutcome {
    /// Stored, and the bytes storing it added to the packs.
    Stored(FileMeta, u64),
    Gone,
    Skipped(String),
}

/// What a walk did with an entry, in the thread that found it.
enum Walked {
    /// Nothing to read: a directory, or a file or symlink whose metadata matches the index.
    Nothing,
    /// Read (and stored, if it still existed and could be read); whether the index had an
    /// entry for the path.
    Read(ReadOutcome, bool),
    /// A hard link to an inode another thread of the walk claimed to read.
    Link,
    /// Not read: the save had already failed.
    Abandoned,
}

/// How the looks a refresh settles come.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Each path once (a full walk): applied as they come.
    Unique,
    /// Possibly repeated: sorted, the first look at a path kept.
    Any,
}

/// What a refresh found at one path.
enum Look {
    /// Gone, or no longer saved.
    Gone,
    /// What `lstat` said; a file or symlink is still to be compared with the index and read.
    Stat(Stat),
    /// What a walk found and did.
    Walked(Stat, Walked),
}

/// What the index holds of a file or symlink: `None` when it holds this version (an entry read
/// too close to a write to be trusted, a racy one, is read again), else whether it has an
/// entry at all.
fn known(index: &super::Index, rel: &[u8], st: &Stat) -> Option<bool> {
    match index.get(rel) {
        Some(Node::Leaf(m)) if st.matches(&m) && !m.racy => None,
        Some(Node::Leaf(_)) => Some(true),
        _ => Some(false),
    }
}

/// What a refresh read, gathered for the index as each read is done.
#[derive(Default)]
struct Done {
    /// Reads taken.
    n: usize,
    /// Files stored, to insert in one pass.
    stored: Vec<(Vec<u8>, FileMeta)>,
    /// What was stored of each inode with more than one link, for its other links to share.
    linked: HashMap<(u64, u64), FileMeta>,
}

impl Done {
    /// Takes what reading `rel` gave: a file stored (and its cost counted), gone (out of the
    /// index), or skipped (a warning).
    fn take(
        &mut self,
        ws: &mut Workspace,
        rel: Vec<u8>,
        st: &Stat,
        had: bool,
        outcome: ReadOutcome,
        warnings: &mut Vec<String>,
    ) {
        self.n += 1;
        match outcome {
            ReadOutcome::Stored(meta, added) => {
                if st.kind == Kind::File && st.nlink > 1 {
                    self.linked.insert((st.dev, st.ino), meta);
                }
                if added > 0 {
                    *ws.costs.entry(rel.clone()).or_default() += added;
                }
                self.stored.push((rel, meta));
            }
            ReadOutcome::Gone => ws.index.remove(&rel),
            ReadOutcome::Skipped(why) => {
                let kept = if had {
                    "; its previous version is kept"
                } else {
                    "; not saved"
                };
                warnings.push(format!("{why}{kept}"));
            }
        }
    }
}

impl Workspace {
    /// Brings the index up to date with the disk for `changes`, storing new content in `batch`.
    /// Returns warnings about paths that could not be read.
    pub fn refresh(&mut self, batch: &Batch<'_>, changes: &Changes) -> Result<Vec<String>> {
        if !self.root.is_dir() {
            return Err(Error::WorkspaceGone {
                path: self.root.clone(),
            });
        }
        if batch.store().gc_epoch() != self.gc_epoch {
            // Only the trees garbage collection dropped must be encoded again; a workspace it
            // did not touch keeps every cached id.
            let store = batch.store();
            let forgotten = self
                .index
                .forget_missing_trees(&|id| store.contains(id).unwrap_or(false));
            tracing::debug!(workspace = %self.root.display(), forgotten, "tree ids checked after a collection");
            self.gc_epoch = store.gc_epoch();
        }
        let mut warnings = Vec::new();
        self.unpersisted = true;
        let full = Changes::Full;
        let changes = if self.must_walk { &full } else { changes };
        match changes {
            Changes::Full => {
                let walk_started_ns = now_ns();
                let (looks, early) = self.full_looks(batch, &mut warnings)?;
                // What the walk stored is made durable (fsync, blob index) while the index is
                // brought up to date: committing early only lets nothing wait.
                std::thread::scope(|s| {
                    let committing = s.spawn(|| batch.commit_objects());
                    let settled = self
                        .settle(batch, looks, Order::Unique, &mut warnings)
                        .and_then(|()| {
                            self.look_again(batch, early, walk_started_ns, &mut warnings)
                        });
                    let committed = committing
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p));
                    settled.and(committed)
                })?;
                self.must_walk = false;
                // A second walk (ignore rules changed under the first) warns of the same paths.
                let mut seen = HashSet::new();
                warnings.retain(|w| seen.insert(w.clone()));
            }
            Changes::Paths(paths) => {
                let looks = self.dirty_looks(batch, paths, &mut warnings)?;
                self.settle(batch, looks, Order::Any, &mut warnings)?;
            }
        }
        Ok(warnings)
    }

    /// Once the watcher's kernel watch is in place, looks again at what a full walk saw before
    /// it was: a directory or file whose metadata changed since (or changed too recently to
    /// tell) is refreshed as a dirty path. Nothing the walk saw early escapes both the walk and
    /// the watch.
    fn look_again(
        &mut self,
        batch: &Batch<'_>,
        early: Vec<(Vec<u8>, Stat)>,
        walk_started_ns: i64,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        let Some(placed) = self.watching.clone() else {
            return Ok(());
        };
        if early.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let early_n = early.len();
        placed.wait();
        let waited = started.elapsed();
        let root = &self.root;
        let recent = walk_started_ns - RACY_WINDOW_NS;
        let dirty: Vec<Vec<u8>> = early
            .into_par_iter()
            .filter(|(rel, seen)| match Stat::lstat(&abs(root, rel)) {
                Ok(Looked::Stat(now)) => {
                    (
                        now.kind,
                        now.mode,
                        now.size,
                        now.mtime_ns,
                        now.ctime_ns,
                        now.ino,
                    ) != (
                        seen.kind,
                        seen.mode,
                        seen.size,
                        seen.mtime_ns,
                        seen.ctime_ns,
                        seen.ino,
                    ) || now.mtime_ns >= recent
                        || now.ctime_ns >= recent
                }
                _ => true,
            })
            .map(|(rel, _)| rel)
            .collect();
        let changed = dirty.len();
        let mut rules_changed = dirty.iter().any(|p| Rules::is_rule_file(p));
        let looks = if rules_changed || dirty.is_empty() {
            Vec::new()
        } else {
            self.dirty_looks(batch, &dirty, warnings)?
        };
        // An ignore file created in a directory the walk had listed is found only now.
        rules_changed |= looks.iter().any(|(p, _)| Rules::is_rule_file(p));
        if rules_changed {
            // What is left out may have changed anywhere below: walk again (the watch is in
            // place now, so nothing needs looking at a third time).
            self.rules.invalidate_all();
            let (looks, _) = self.full_looks(batch, warnings)?;
            self.settle(batch, looks, Order::Unique, warnings)?;
        } else if !looks.is_empty() {
            self.settle(batch, looks, Order::Any, warnings)?;
        }
        tracing::debug!(
            workspace = %self.root.display(),
            waited_ms = waited.as_millis() as u64,
            early = early_n,
            changed,
            ms = started.elapsed().as_millis() as u64,
            "looked again at what the walk saw before the watch was in place"
        );
        Ok(())
    }

    /// Applies what a refresh found to the index: removes what is gone, reads (in parallel)
    /// what changed and was not read during a walk, and records every new version.
    fn settle(
        &mut self,
        batch: &Batch<'_>,
        mut looks: Vec<(Vec<u8>, Look)>,
        order: Order,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        let started = Instant::now();
        if order == Order::Any {
            if looks.len() > PARALLEL_SORT {
                looks.par_sort_unstable_by(|a, b| a.0.cmp(&b.0));
            } else {
                looks.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            }
            looks.dedup_by(|a, b| a.0 == b.0);
        }
        // What was read, applied as it comes: a cold save's whole list of (path, stat, outcome)
        // was ~200 bytes a path on top of the walk's own list, at the save's peak.
        let mut done = Done::default();
        let mut to_read: Vec<(Vec<u8>, Stat, bool)> = Vec::new();
        let mut links: Vec<(Vec<u8>, Stat)> = Vec::new();
        // Directories whose metadata changed, inserted at once: a walk finds them in no order,
        // and a folder of thousands inserted one by one would move its sorted entries each time.
        let mut dirs: Vec<(Vec<u8>, FileMeta)> = Vec::new();
        for (rel, look) in looks {
            let (st, walked) = match look {
                Look::Gone => {
                    self.index.remove(&rel);
                    continue;
                }
                Look::Stat(st) => (st, None),
                Look::Walked(st, w) => (st, Some(w)),
            };
            if st.kind == Kind::Dir {
                let unchanged = match (rel.is_empty(), self.index.get(&rel)) {
                    (true, _) => self.index.root().meta.mode == st.mode,
                    (false, Some(Node::Dir(d))) => d.meta.mode == st.mode,
                    _ => false,
                };
                if !unchanged && rel.is_empty() {
                    self.index.insert(&rel, st.to_meta(Id::default(), false));
                } else if !unchanged {
                    dirs.push((rel, st.to_meta(Id::default(), false)));
                }
                continue;
            }
            match walked {
                None => {
                    if let Some(had) = known(&self.index, &rel, &st) {
                        to_read.push((rel, st, had));
                    }
                }
                Some(Walked::Nothing) => {}
                Some(Walked::Read(outcome, had)) => {
                    done.take(self, rel, &st, had, outcome, warnings);
                }
                Some(Walked::Link) => links.push((rel, st)),
                // Only after a failed read, whose error the walk returned instead.
                Some(Walked::Abandoned) => {}
            }
        }
        self.index.insert_many(dirs);
        let walked = done.n;
        // Hard links among what is left to read: each inode once.
        let mut first_of: HashMap<(u64, u64), usize> = HashMap::new();
        let mut link_of: Vec<Option<usize>> = vec![None; to_read.len()];
        for (i, (_, st, _)) in to_read.iter().enumerate() {
            if st.kind == Kind::File && st.nlink > 1 {
                match first_of.get(&(st.dev, st.ino)) {
                    Some(&first) => link_of[i] = Some(first),
                    None => {
                        first_of.insert((st.dev, st.ino), i);
                    }
                }
            }
        }
        let root = &self.root;
        let counters = &self.counters;
        let index = &self.index;
        let outcomes: Vec<Result<Option<ReadOutcome>>> = to_read
            .par_iter()
            .enumerate()
            .map(|(i, (rel, st, _))| {
                if link_of[i].is_some() {
                    return Ok(None); // a link of an inode read at another path
                }
                let prev = previous(index, rel);
                read_object(batch, counters, &abs(root, rel), st, None, prev).map(Some)
            })
            .collect();
        if to_read.iter().any(|(_, st, _)| st.size > KEPT_BUFFER) {
            // rayon's threads outlive the save: they keep no large buffers.
            rayon::broadcast(|_| {
                release_thread_buffers();
                chunking::release_thread_buffers();
                crate::store::release_thread_buffers();
            });
        }
        let mut followers = Vec::new();
        for (i, ((rel, st, had), outcome)) in to_read.into_iter().zip(outcomes).enumerate() {
            match outcome? {
                Some(outcome) => done.take(self, rel, &st, had, outcome, warnings),
                None => followers.push((rel, st, had, link_of[i])),
            }
        }
        let mut stored = std::mem::take(&mut done.linked);
        for (rel, st) in links {
            let had = matches!(self.index.get(&rel), Some(Node::Leaf(_)));
            followers.push((rel, st, had, None));
        }
        for (rel, st, had, _) in followers {
            // Another link of the same inode was read: share its content, keep this mode. When
            // that read found nothing (the other link was removed), read this one.
            let outcome = match stored.get(&(st.dev, st.ino)) {
                Some(m) => ReadOutcome::Stored(
                    FileMeta {
                        mode: st.mode,
                        ..*m
                    },
                    0,
                ),
                None => {
                    let prev = previous(&self.index, &rel);
                    let path = abs(&self.root, &rel);
                    let o = read_object(batch, &self.counters, &path, &st, None, prev)?;
                    if let ReadOutcome::Stored(m, _) = &o {
                        stored.insert((st.dev, st.ino), *m);
                    }
                    o
                }
            };
            done.take(self, rel, &st, had, outcome, warnings);
        }
        let read_ms = started.elapsed().as_millis() as u64;
        let n = done.n;
        self.index.insert_many(done.stored);
        tracing::debug!(
            read_during_walk = walked,
            read = n - walked,
            read_ms,
            total_ms = started.elapsed().as_millis() as u64,
            "index updated"
        );
        Ok(())
    }
}
