//! Which files cost the most: the stored bytes each file's new versions added in the last day,
//! summed over the snapshots that recorded them (`SnapshotRecord::costs`), for `Status`.

use std::collections::HashMap;

use super::Engine;
use super::registry::{WsHandle, lock};
use crate::error::Result;
use crate::store::SnapshotId;
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

/// A computed answer: for which newest snapshot, when, and what.
#[derive(Debug, Clone, Default)]
pub struct CostCache {
    latest: Option<SnapshotId>,
    at_us: u64,
    top: Vec<FileCostSum>,
}

impl Engine {
    /// The files of `h` whose new versions added the most to the store in the last day, most
    /// first.
    pub fn top_files(&self, h: &WsHandle) -> Result<Vec<FileCostSum>> {
        let now = now_us();
        let latest = self.store.cat.latest(h.id)?.map(|s| s.id);
        if let Some(c) = lock(&h.costs).as_ref()
            && c.latest == latest
            && now.saturating_sub(c.at_us) < CACHE_US
        {
            return Ok(c.top.clone());
        }
        let mut sums: HashMap<Vec<u8>, (u64, u64)> = HashMap::new();
        for item in self.store.cat.snapshot_ids(h.id, None) {
            let (created, id) = item?;
            if now.saturating_sub(created) > WINDOW_US {
                break;
            }
            let Some(s) = self.store.cat.snapshot(id)? else {
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
        *lock(&h.costs) = Some(CostCache {
            latest,
            at_us: now,
            top: top.clone(),
        });
        Ok(top)
    }
}
