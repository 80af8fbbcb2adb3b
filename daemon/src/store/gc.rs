//! Garbage collection, repacking and verification.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;

use super::holes::{self, PunchPlan};
use super::pack::{self, FLAG_CHUNKED, Loc};
use super::read::loc_bytes;
use super::{Id, Kind, SnapshotId, Store, WorkspaceId};
use crate::error::{Error, IoContext, Result};
use crate::sync::{read, write};

/// Packs whose dead fraction passes this are rewritten.
pub const REPACK_DEAD_FRACTION: f64 = 0.3;

/// What a garbage collection did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Objects no snapshot or warm index refers to, dropped.
    pub objects_removed: u64,
    /// Bytes freed on disk.
    pub bytes_reclaimed: u64,
    /// Packs deleted (empty, orphaned or rewritten).
    pub packs_removed: u64,
    /// Packs rewritten.
    pub packs_repacked: u64,
    /// Packs whose dead blocks were punched out in place.
    pub packs_punched: u64,
}

/// One problem found by [`Store::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The damaged or missing object.
    pub object: Id,
    /// A snapshot that needs it (none for an object nothing refers to).
    pub snapshot: Option<SnapshotId>,
    /// Where in that snapshot.
    pub path: Vec<u8>,
    /// What is wrong.
    pub problem: String,
}

/// What [`Store::verify`] checked and found.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    /// Objects read and checked.
    pub objects_checked: u64,
    /// Trees decoded.
    pub trees_checked: u64,
    /// Bytes decompressed and hashed.
    pub bytes_checked: u64,
    /// Everything wrong, at most [`MAX_PROBLEMS`].
    pub problems: Vec<Problem>,
}

/// Problems reported at most.
pub const MAX_PROBLEMS: usize = 10_000;

/// What garbage collection does with a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// Nothing in it is live (or it was never committed): deleted.
    Delete,
    /// Its dead blocks are punched out in place (see [`holes`]).
    Punch(PunchPlan),
    /// Mostly dead: its dead blocks punched out when the file system can (which lowers the
    /// peak), then its live records copied to a new pack and it deleted.
    Repack(Option<PunchPlan>),
}

/// A pack's fate and the bytes it frees on disk.
#[derive(Debug)]
struct Decision {
    no: u32,
    fate: Fate,
    frees: u64,
}

type BadPaths = Arc<Vec<(Vec<u8>, Id, String)>>;

impl Store {
    /// Every object reachable from a snapshot (but those in `without`) or a warm index.
    fn mark(&self, without: &HashSet<SnapshotId>) -> Result<HashSet<Id>> {
        let mut live: HashSet<Id> = HashSet::new();
        let mut stack: Vec<Id> = Vec::new();
        for s in self.cat.all_snapshots()? {
            if without.contains(&s.id) {
                continue;
            }
            if live.insert(s.root) {
                stack.push(s.root);
            }
        }
        while let Some(tree_id) = stack.pop() {
            // A tree that cannot be read would hide what it holds: stop rather than sweep it.
            // As stored: a split tree's parts are directory entries, marked and walked.
            let tree = self.tree_node(&tree_id)?;
            for e in tree.entries {
                if live.insert(e.id) && e.kind == Kind::Dir {
                    stack.push(e.id);
                }
            }
        }
        live.extend(self.cat.index_ids()?);
        // The chunks of live chunked files (a list that cannot be read would hide them: stop).
        let mut chunks = Vec::new();
        for id in &live {
            if let Some(loc) = self.index.committed(id)
                && loc.flags & FLAG_CHUNKED != 0
            {
                chunks.extend(self.list_at(id, &loc)?.chunk_ids());
            }
        }
        live.extend(chunks);
        Ok(live)
    }

    /// Drops objects nothing refers to, rewrites packs that are mostly dead and deletes empty
    /// and orphaned packs. Waits for open batches; new ones wait for it.
    pub fn gc(&self) -> Result<GcReport> {
        self.gc_with(REPACK_DEAD_FRACTION)
    }

    /// [`Store::gc`], rewriting packs more dead than `repack_dead_fraction` (the store
    /// budget uses a lower one: its bytes must really go).
    pub fn gc_with(&self, repack_dead_fraction: f64) -> Result<GcReport> {
        let _exclusive = write(&self.gc_lock);
        self.close_writers();
        // The recompression's output too: it may be repacked or, before its first commit,
        // collected as an orphan below, and must not be appended to after.
        self.close_recompress_output();
        let live = self.mark(&HashSet::new())?;
        let mut report = GcReport::default();
        let mut live_in: HashMap<u32, Vec<(Id, Loc)>> = HashMap::new();
        let mut kept = Vec::new();
        for (id, loc) in self.objects() {
            if live.contains(&id) {
                live_in.entry(loc.pack).or_default().push((id, loc));
                kept.push((id, loc));
            } else {
                report.objects_removed += 1;
            }
        }
        // Rewritten even when nothing is dropped: it folds the segments of many saves into few.
        // Memory forgets the dropped objects before the flush: were the flush to fail, the
        // rewrite may still reach the disk later, and a save must then not count on them.
        self.cat.rewrite_blob_index(&kept)?;
        self.index.replace_committed(kept);
        self.flush()?;
        self.gc_epoch
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);

        for d in self.pack_fates(&live_in, repack_dead_fraction)? {
            match d.fate {
                Fate::Delete => self.delete_pack(d.no, &mut report)?,
                Fate::Punch(plan) => {
                    self.punch(d.no, &plan)?;
                    report.bytes_reclaimed += d.frees;
                    report.packs_punched += 1;
                }
                Fate::Repack(plan) => {
                    if let Some(plan) = plan {
                        self.punch(d.no, &plan)?;
                    }
                    let live = live_in.remove(&d.no).unwrap_or_default();
                    self.repack(d.no, live, &mut report)?;
                    report.bytes_reclaimed += d.frees;
                }
            }
        }
        // Pack files the catalog never committed: the remains of a save that died early.
        let known: HashMap<u32, u64> = self.cat.pack_lengths()?.into_iter().collect();
        for no in self.packs.files()? {
            if !known.contains_key(&no) {
                self.delete_pack(no, &mut report)?;
            }
        }
        tracing::info!(?report, "garbage collection done");
        self.release_memory();
        Ok(report)
    }

    /// What becomes of each committed pack, given its live records, and what that frees on
    /// disk. A pack with nothing live is deleted. Otherwise, where the file system punches
    /// holes, its dead blocks are punched out in place; it is rewritten only when, even so,
    /// more than `repack_dead_fraction` of what it takes is waste (live records too small and
    /// scattered to free whole blocks) and copying its live records costs less than it frees.
    /// Where holes cannot be punched, it is rewritten when more than `repack_dead_fraction` of
    /// it is dead.
    fn pack_fates(
        &self,
        live_in: &HashMap<u32, Vec<(Id, Loc)>>,
        repack_dead_fraction: f64,
    ) -> Result<Vec<Decision>> {
        let mut out = Vec::new();
        for (no, committed) in self.cat.pack_lengths()? {
            let path = self.packs.path(no);
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                // A committed pack that is missing: verify names what it held.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&path, e)),
            };
            let meta = file.metadata().at(&path)?;
            let allocated = holes::allocated(&meta);
            let live = live_in.get(&no).map(Vec::as_slice).unwrap_or(&[]);
            if live.is_empty() {
                out.push(Decision {
                    no,
                    fate: Fate::Delete,
                    frees: allocated,
                });
                continue;
            }
            let live_bytes: u64 = live.iter().map(|(_, l)| l.record_len()).sum();
            // What a rewrite leaves on disk: the live records in a new pack with a header of
            // its own, in whole blocks (else a small pack would be rewritten at every
            // collection, its last block never full).
            let block = holes::block_size(&meta);
            let rewritten = (pack::MAGIC.len() as u64 + live_bytes).div_ceil(block) * block;
            let repack = |plan| Decision {
                no,
                fate: Fate::Repack(plan),
                frees: allocated.saturating_sub(rewritten),
            };
            if self.can_punch() {
                let locs: Vec<Loc> = live.iter().map(|(_, l)| *l).collect();
                let plan = holes::plan(&file, &locs, committed).at(&path)?;
                let left = plan.left();
                let waste = left.saturating_sub(rewritten);
                if waste as f64 > repack_dead_fraction * left as f64 && rewritten <= waste {
                    out.push(repack(Some(plan)));
                } else if plan.frees > 0 {
                    let frees = plan.frees;
                    out.push(Decision {
                        no,
                        fate: Fate::Punch(plan),
                        frees,
                    });
                }
            } else {
                let total = committed.saturating_sub(pack::MAGIC.len() as u64);
                if total > 0
                    && (total - live_bytes.min(total)) as f64 / total as f64 > repack_dead_fraction
                {
                    out.push(repack(None));
                }
            }
        }
        Ok(out)
    }

    /// The bytes [`Store::gc`] would free were the snapshots `gone` removed first, changing
    /// nothing: what `prune --dry-run` reports. The same marking and the same decisions per
    /// pack, so a prune that follows with nothing changed in between frees exactly this.
    pub fn reclaimable_without(&self, gone: &HashSet<SnapshotId>) -> Result<u64> {
        let _shared = read(&self.gc_lock);
        let live = self.mark(gone)?;
        let mut live_in: HashMap<u32, Vec<(Id, Loc)>> = HashMap::new();
        for (id, loc) in self.objects() {
            if live.contains(&id) {
                live_in.entry(loc.pack).or_default().push((id, loc));
            }
        }
        let mut bytes: u64 = self
            .pack_fates(&live_in, REPACK_DEAD_FRACTION)?
            .iter()
            .map(|d| d.frees)
            .sum();
        let known: HashSet<u32> = self
            .cat
            .pack_lengths()?
            .into_iter()
            .map(|(no, _)| no)
            .collect();
        for no in self.packs.files()? {
            if !known.contains(&no) {
                bytes += std::fs::metadata(self.packs.path(no)).map_or(0, |m| holes::allocated(&m));
            }
        }
        Ok(bytes)
    }

    /// Whether the packs' file system punches holes (asked once).
    fn can_punch(&self) -> bool {
        *self
            .punch_supported
            .get_or_init(|| holes::can_punch(self.packs.dir()))
    }

    /// Punches `plan`'s dead blocks out of pack `no`.
    fn punch(&self, no: u32, plan: &PunchPlan) -> Result<()> {
        let path = self.packs.path(no);
        let file = std::fs::File::options().write(true).open(&path).at(&path)?;
        holes::punch(&file, &plan.ranges).at(&path)?;
        Ok(())
    }

    fn delete_pack(&self, no: u32, report: &mut GcReport) -> Result<()> {
        // Out of the catalog first: a pack file without an entry is an orphan, collected later.
        self.cat.remove_pack(no)?;
        self.flush()?;
        report.bytes_reclaimed += self.packs.delete(no)?;
        report.packs_removed += 1;
        Ok(())
    }

    fn repack(&self, no: u32, live: Vec<(Id, Loc)>, report: &mut GcReport) -> Result<()> {
        let mut w = self.packs.create_outside_pool()?;
        let new_no = w.no;
        let mut moved = Vec::with_capacity(live.len());
        for (id, loc) in live {
            let map = self.packs.map(loc.pack, loc.end())?;
            let stored = loc_bytes(&map, &id, &loc)?;
            moved.push((id, w.append(id, loc.flags, loc.raw_len, stored)?));
        }
        let path = self.packs.path(new_no);
        w.flush()?;
        w.file.sync_all().at(&path)?;
        self.cat.append_blob_segments(&moved)?;
        self.cat.set_pack_length(new_no, w.len)?;
        self.flush()?;
        self.index.commit(&moved);
        // Out of the catalog first: a pack file without an entry is an orphan, collected later.
        self.cat.remove_pack(no)?;
        self.flush()?;
        self.packs.delete(no)?;
        report.packs_removed += 1;
        report.packs_repacked += 1;
        Ok(())
    }

    /// Reads every object and checks it against its id, decodes every tree reachable from a
    /// snapshot, and names for each problem the snapshots and paths it hurts.
    pub fn verify(&self, only_workspace: Option<WorkspaceId>) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut bad: HashMap<Id, String> = HashMap::new();
        for (id, loc) in self.objects() {
            report.objects_checked += 1;
            let check = |loc: &Loc| {
                if loc.flags & FLAG_CHUNKED != 0 {
                    // Its chunks are objects checked on their own: the list is checked here,
                    // and whether they are all there (reading it whole would read them twice).
                    self.check_chunked(&id, loc)
                } else {
                    self.read_loc_into(&id, loc, &mut io::sink())
                }
            };
            let checked = check(&loc).or_else(|e| {
                // A verify takes minutes, the list above is a copy: an object that moved since
                // (the idle recompression, a repack) and whose old pack is gone is checked
                // where it is now.
                match self.index.committed(&id) {
                    Some(now) if now != loc => check(&now),
                    _ => Err(e),
                }
            });
            match checked {
                Ok(n) => report.bytes_checked += n,
                Err(e) => {
                    bad.insert(id, e.to_string());
                }
            }
        }
        let mut memo: HashMap<Id, BadPaths> = HashMap::new();
        let mut snapshots = self.cat.all_snapshots()?;
        snapshots.retain(|s| only_workspace.is_none_or(|w| s.workspace == w));
        snapshots.sort_by_key(|s| std::cmp::Reverse(s.created_us));
        let mut reachable: HashSet<Id> = HashSet::new();
        for s in &snapshots {
            let hurt = self.bad_paths(
                s.root,
                &bad,
                &mut memo,
                &mut report.trees_checked,
                &mut reachable,
            );
            for (path, object, problem) in hurt.iter() {
                if report.problems.len() < MAX_PROBLEMS {
                    report.problems.push(Problem {
                        object: *object,
                        snapshot: Some(s.id),
                        path: path.clone(),
                        problem: problem.clone(),
                    });
                }
            }
        }
        self.release_memory();
        for (id, problem) in &bad {
            if !reachable.contains(id) && report.problems.len() < MAX_PROBLEMS {
                report.problems.push(Problem {
                    object: *id,
                    snapshot: None,
                    path: Vec::new(),
                    problem: problem.clone(),
                });
            }
        }
        Ok(report)
    }

    /// Checks a chunked file's list and that every chunk it names is stored as a blob;
    /// returns the bytes of the list.
    fn check_chunked(&self, id: &Id, loc: &Loc) -> Result<u64> {
        let list = self.list_at(id, loc)?;
        for chunk in list.chunk_ids() {
            match self.index.committed(&chunk) {
                Some(c) if c.flags & FLAG_CHUNKED == 0 => {}
                Some(_) => {
                    return Err(Error::Corrupt(format!(
                        "chunked file {id} names another chunked file as a chunk"
                    )));
                }
                None => {
                    return Err(Error::Corrupt(format!(
                        "chunk {chunk} of file {id} is missing from the store"
                    )));
                }
            }
        }
        Ok(loc.len)
    }

    /// Paths below tree `id` whose objects are bad or missing (memoised per tree).
    fn bad_paths(
        &self,
        id: Id,
        bad: &HashMap<Id, String>,
        memo: &mut HashMap<Id, BadPaths>,
        trees_checked: &mut u64,
        reachable: &mut HashSet<Id>,
    ) -> BadPaths {
        if let Some(hit) = memo.get(&id) {
            return hit.clone();
        }
        reachable.insert(id);
        let mut out = Vec::new();
        let tree = match bad.get(&id) {
            Some(problem) => Err(problem.clone()),
            None => self.tree_node(&id).map_err(|e| e.to_string()),
        };
        match tree {
            Err(problem) => out.push((Vec::new(), id, problem)),
            Ok(tree) => {
                *trees_checked += 1;
                // A split tree's parts hold the directory's own entries: no name of theirs.
                let split = tree.is_split();
                for e in &tree.entries {
                    reachable.insert(e.id);
                    if e.kind == Kind::Dir {
                        for (sub, obj, problem) in self
                            .bad_paths(e.id, bad, memo, trees_checked, reachable)
                            .iter()
                        {
                            let mut p = if split { Vec::new() } else { e.name.clone() };
                            if !sub.is_empty() {
                                if !p.is_empty() {
                                    p.push(b'/');
                                }
                                p.extend_from_slice(sub);
                            }
                            out.push((p, *obj, problem.clone()));
                        }
                    } else if let Some(problem) = bad.get(&e.id) {
                        out.push((e.name.clone(), e.id, problem.clone()));
                    } else if let Some(loc) = self.index.committed(&e.id) {
                        if loc.flags & FLAG_CHUNKED != 0
                            && let Ok(list) = self.list_at(&e.id, &loc)
                        {
                            // A damaged chunk hurts every file that has it.
                            let mut hurt = None;
                            for chunk in list.chunk_ids() {
                                reachable.insert(chunk);
                                if hurt.is_none() {
                                    hurt = bad.get(&chunk).map(|p| (chunk, p));
                                }
                            }
                            if let Some((chunk, problem)) = hurt {
                                out.push((
                                    e.name.clone(),
                                    chunk,
                                    format!("a chunk of it: {problem}"),
                                ));
                            }
                        }
                    } else {
                        out.push((e.name.clone(), e.id, "missing from the store".into()));
                    }
                }
            }
        }
        let out = Arc::new(out);
        memo.insert(id, out.clone());
        out
    }
}
