//! Keeping the store from filling the disk: a budget for the whole data directory, enforced by
//! the maintenance worker (oldest automatic snapshots first), and a floor of free space below
//! which automatic snapshots pause (the autosave worker asks [`Engine::below_floor`]).

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::Engine;
use crate::error::{Error, Result};
use crate::store::WorkspaceId;
use crate::store::catalog::{SnapshotRecord, Trigger};
use crate::sync::lock;

/// The default budget is the smaller of this share of the data directory's file system …
pub const DEFAULT_BUDGET_FRACTION: f64 = 0.10;
/// … and this.
pub const DEFAULT_BUDGET_CAP: u64 = 20 << 30;
/// The default floor is the smaller of this share of the file system …
pub const DEFAULT_FLOOR_FRACTION: f64 = 0.05;
/// … and this.
pub const DEFAULT_FLOOR_CAP: u64 = 2 << 30;
/// Enforcing the budget brings the store down to this share of it, so that it does not run
/// again after every snapshot.
const BUDGET_TARGET: f64 = 0.9;
/// Packs more dead than this are rewritten when the budget is enforced (garbage collection's
/// usual threshold would leave a small store's one pack as it is).
const BUDGET_REPACK_FRACTION: f64 = 0.05;
/// Rounds of dropping and collecting per enforcement, at most.
const BUDGET_ROUNDS: usize = 32;

/// A limit in bytes, or the default derived from the file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Limit {
    /// The default (see the `DEFAULT_*` constants).
    #[default]
    Auto,
    /// This many bytes; 0 turns the limit off.
    Bytes(u64),
}

impl Limit {
    fn resolve(self, fs_bytes: u64, fraction: f64, cap: u64) -> u64 {
        match self {
            Limit::Auto => ((fs_bytes as f64 * fraction) as u64).min(cap),
            Limit::Bytes(b) => b,
        }
    }
}

/// The store-wide limits the daemon runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Budget for everything in the data directory.
    pub budget: Limit,
    /// Free space below which automatic snapshots pause.
    pub floor: Limit,
}

/// The store's size, its limits and the disk's free space, for `Status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Space {
    /// Bytes the data directory takes on disk.
    pub store_bytes: u64,
    /// Its budget (0: none).
    pub budget_bytes: u64,
    /// Free bytes on its file system (for an unprivileged user).
    pub free_bytes: u64,
    /// The file system's size.
    pub fs_bytes: u64,
    /// Automatic snapshots pause below this much free space (0: never).
    pub floor_bytes: u64,
}

/// (size, free) of the file system holding `path`.
pub fn fs_space(path: &Path) -> std::io::Result<(u64, u64)> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a path"))?;
    // SAFETY: a zeroed statvfs is a valid out-parameter; `c` is NUL-terminated and outlives it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

/// Bytes the files under `dir` take on disk (allocated blocks: a sparse file counts what it
/// holds).
fn disk_usage(dir: &Path) -> u64 {
    files_under(dir, |m| m.blocks() * 512)
}

/// The sum of `size` over the files under `dir` (links not followed, unreadable entries left
/// out).
pub(crate) fn files_under(dir: &Path, size: impl Fn(&std::fs::Metadata) -> u64) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += size(&m);
            }
        }
    }
    total
}

/// `n` bytes for people: `1.5 GiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Engine {
    /// Sets the store-wide limits (the daemon's command line).
    pub fn set_limits(&self, limits: Limits) {
        *lock(&self.limits) = limits;
    }

    /// Sets how long the daemon must be idle before it recompresses what saves wrote; none
    /// turns recompression off.
    pub fn set_recompress_after(&self, after: Option<std::time::Duration>) {
        *lock(&self.recompress_after) = after;
    }

    /// See [`Engine::set_recompress_after`].
    pub fn recompress_after(&self) -> Option<std::time::Duration> {
        *lock(&self.recompress_after)
    }

    /// Recompresses what saves wrote (see [`crate::store::recompress`]), stopping between
    /// slices when `stop` says so or a save is writing. Not while the disk lacks a pack's
    /// worth of room above the floor (a source pack and its copy exist side by side for a
    /// while). Returns whether nothing is left to do until the next snapshot.
    pub(crate) fn recompress_idle(&self, stop: &dyn Fn() -> bool) -> bool {
        if self.store.batches_open() {
            return false;
        }
        let dir = self.store.dir();
        if let Ok((fs_bytes, free)) = fs_space(dir) {
            let floor = lock(&self.limits).floor.resolve(
                fs_bytes,
                DEFAULT_FLOOR_FRACTION,
                DEFAULT_FLOOR_CAP,
            );
            if free < floor.saturating_add(crate::store::pack::PACK_TARGET_SIZE) {
                tracing::debug!(free, floor, "too little free space to recompress");
                return true;
            }
        }
        // Deleted sources take their space until their maps go (see the module's rule 3).
        let short = || {
            fs_space(dir).is_ok_and(|(fs_bytes, free)| {
                let floor = lock(&self.limits).floor.resolve(
                    fs_bytes,
                    DEFAULT_FLOOR_FRACTION,
                    DEFAULT_FLOOR_CAP,
                );
                free < floor.saturating_add(2 * crate::store::recompress::SLICE_BYTES)
            })
        };
        match self
            .store
            .recompress(&|| stop() || self.store.batches_open() || short())
        {
            Ok(report) => report.done,
            Err(e) => {
                tracing::warn!(error = %e, "recompressing the store failed");
                true
            }
        }
    }

    /// The store's size, its budget and the disk's free space now.
    pub fn space(&self) -> Result<Space> {
        let dir = self.store.dir();
        let (fs_bytes, free_bytes) = fs_space(dir).map_err(|e| Error::io(dir, e))?;
        let limits = *lock(&self.limits);
        Ok(Space {
            store_bytes: disk_usage(dir),
            budget_bytes: limits.budget.resolve(
                fs_bytes,
                DEFAULT_BUDGET_FRACTION,
                DEFAULT_BUDGET_CAP,
            ),
            free_bytes,
            fs_bytes,
            floor_bytes: limits
                .floor
                .resolve(fs_bytes, DEFAULT_FLOOR_FRACTION, DEFAULT_FLOOR_CAP),
        })
    }

    /// Why automatic snapshots must wait, when the disk's free space is below the floor.
    pub fn below_floor(&self) -> Option<String> {
        let dir = self.store.dir();
        let (fs_bytes, free) = match fs_space(dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell the free space of the data directory");
                return None;
            }
        };
        let floor =
            lock(&self.limits)
                .floor
                .resolve(fs_bytes, DEFAULT_FLOOR_FRACTION, DEFAULT_FLOOR_CAP);
        (free < floor).then(|| {
            format!(
                "automatic snapshots paused: {} free on the disk of {}, below the floor of {}; they resume by themselves once there is room (manual saves still work while they fit; `chkptd --min-free-bytes` sets the floor)",
                human(free),
                dir.display(),
                human(floor)
            )
        })
    }

    /// Brings the data directory under its budget: drops the oldest automatic snapshots
    /// (never a manual or pinned one, nor a workspace's newest) and collects what they
    /// leave, until the store is at [`BUDGET_TARGET`] of its budget or nothing may go.
    /// Returns the snapshots dropped.
    pub fn enforce_budget(&self) -> Result<usize> {
        let mut dropped = 0;
        for _ in 0..BUDGET_ROUNDS {
            let space = self.space()?;
            if space.budget_bytes == 0 || space.store_bytes <= space.budget_bytes {
                break;
            }
            let target = (space.budget_bytes as f64 * BUDGET_TARGET) as u64;
            let mut excess = space.store_bytes.saturating_sub(target);
            let candidates = self.budget_candidates()?;
            if candidates.is_empty() {
                tracing::warn!(
                    store = space.store_bytes,
                    budget = space.budget_bytes,
                    "the store is over its budget, but only manual, pinned and newest snapshots are left"
                );
                break;
            }
            // The bytes a snapshot added are about what dropping it frees (what later ones
            // share stays); collecting tells, and the next round goes on if it was less.
            let mut batch = Vec::new();
            for s in candidates {
                excess = excess.saturating_sub(s.new_bytes.max(1));
                batch.push(s);
                if excess == 0 {
                    break;
                }
            }
            let reclaimed = self.forget_repacking(&batch, BUDGET_REPACK_FRACTION)?;
            dropped += batch.len();
            tracing::info!(
                dropped = batch.len(),
                reclaimed,
                store = space.store_bytes,
                budget = space.budget_bytes,
                "over the store budget: oldest automatic snapshots dropped"
            );
        }
        Ok(dropped)
    }

    /// Snapshots the budget may drop, oldest first: automatic and unpinned, and not the
    /// newest of their workspace.
    fn budget_candidates(&self) -> Result<Vec<SnapshotRecord>> {
        let all = self.store.cat.all_snapshots()?;
        let mut newest: HashMap<WorkspaceId, u64> = HashMap::new();
        for s in &all {
            let n = newest.entry(s.workspace).or_insert(s.created_us);
            *n = (*n).max(s.created_us);
        }
        let mut out: Vec<SnapshotRecord> = all
            .into_iter()
            .filter(|s| {
                !s.pinned
                    && s.trigger != Trigger::Manual
                    && newest.get(&s.workspace) != Some(&s.created_us)
            })
            .collect();
        out.sort_by_key(|s| s.created_us);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_the_smaller_of_a_share_and_a_cap() {
        let small = 10u64 << 30;
        assert_eq!(
            Limit::Auto.resolve(small, DEFAULT_BUDGET_FRACTION, DEFAULT_BUDGET_CAP),
            1 << 30
        );
        assert_eq!(
            Limit::Auto.resolve(1 << 40, DEFAULT_BUDGET_FRACTION, DEFAULT_BUDGET_CAP),
            DEFAULT_BUDGET_CAP
        );
        assert_eq!(
            Limit::Auto.resolve(1 << 40, DEFAULT_FLOOR_FRACTION, DEFAULT_FLOOR_CAP),
            DEFAULT_FLOOR_CAP
        );
        assert_eq!(Limit::Bytes(0).resolve(small, 0.1, 1), 0);
        assert_eq!(human(1536), "1.5 KiB");
    }
}
