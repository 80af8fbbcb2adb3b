//! Which files cost the most: the stored bytes each file's new versions added in the last day,
//! summed over the snapshots that recorded them (`SnapshotRecord::costs`), for `Status`.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::Result;
use crate::store::catalog::Catalog;
use crate::store::{SnapshotId, WorkspaceId};
use crate::sync::lock;
use crate::workspace::now_us;

/// The window costs are summed over.
const WINDOW_US: u64 = 24 * 3_600_000_000;
/// Files listed, at most.
pub const TOP_FILES: usize = 10;
/// A cached answer is recomputed once a newer snapshot exists or after this long (snapshots
/// age out of the window).
const CACHE_US: u64 = 60_000_000;

/// One file's cost over the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCostSum {
    /// Relative path.
    pub path: Vec<u8>,
    /// Stored bytes its new versions added.
    pub bytes: u64,
    /// Snapshots that stored a new version of it.
    pub snapshots: u64,
}

/// One workspace's last answer, kept until it is out of date.
#[derive(Debug, Default)]
pub struct CostCache(Mutex<Option<Computed>>);

/// A computed answer: for which newest snapshot, when, and what.
#[derive(Debug, Clone)]
struct Computed {
    latest: Option<SnapshotId>,
    at_us: u64,
    top: Vec<FileCostSum>,
}

impl CostCache {
    /// The files of workspace `ws` whose new versions added the most to the store in the last
    /// day, most first (the cached answer while no newer snapshot exists and it is fresh).
    pub fn top_files(&self, cat: &Catalog, ws: WorkspaceId) -> Result<Vec<FileCostSum>> {
        let now = now_us();
        let latest = cat.latest(ws)?.map(|s| s.id);
        if let Some(c) = lock(&self.0).as_ref()
            && c.latest == latest
            && now.saturating_sub(c.at_us) < CACHE_US
        {
            return Ok(c.top.clone());
        }
        let mut sums: HashMap<Vec<u8>, (u64, u64)> = HashMap::new();
        for item in cat.snapshot_ids(ws, None) {
            let (created, id) = item?;
            if now.saturating_sub(created) > WINDOW_US {
                break;
            }
            let Some(s) = cat.snapshot(id)? else {
                continue;
            };
            for c in s.costs {
                let e = sums.entry(c.path).or_default();
                e.0 += c.bytes;
                e.1 += 1;
            }
        }
        let mut top: Vec<FileCostSum> = sums
            .into_iter()
            .map(|(path, (bytes, snapshots))| FileCostSum {
                path,
                bytes,
                snapshots,
            })
            .collect();
        top.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.path.cmp(&b.path)));
        top.truncate(TOP_FILES);
        *lock(&self.0) = Some(Computed {
            latest,
            at_us: now,
            top: top.clone(),
        });
        Ok(top)
    }
}
