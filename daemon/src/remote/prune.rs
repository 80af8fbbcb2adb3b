//! Remote retention: which of this data directory's snapshot records a remote keeps, and the
//! collection of the objects no remaining record needs.
//!
//! # Rules
//! 1. The remote's policy ([`Retention`]) is applied to what the remote holds of each
//!    workspace, by the same rules as locally ([`crate::retention::decide`]): by default each
//!    workspace's own local rules (not the local store budget, which is about this disk),
//!    else the remote's own rules, or nothing is deleted at all. Only this data directory's
//!    records are decided on: another machine's are its own to prune.
//! 2. Deletion is in this order, and each step is safe to stop after: the ids to drop are
//!    recorded locally with "collection pending" (they are never sent again); their records
//!    are deleted; then, reading every record left (of every data directory) and walking its
//!    trees on the remote, each index none of whose objects is needed is deleted, then its
//!    pack; then every pack that no index names (left by a cut upload, or by a stop between
//!    an index and its pack). An object is gone from the remote's view once its index is, so
//!    no upload reuses an object whose pack is about to go. A pass that stops anywhere leaves
//!    a remote every remaining record restores from; the next pass, seeing "collection
//!    pending", collects again from the start.
//! 3. A pack still partly needed is kept whole: its dead bytes are counted (`status` shows
//!    them) and are not reclaimed. Rewriting it would download, decrypt, re-encrypt and send
//!    again every live object in it, and a remote pack is small (16 MiB by default), so the
//!    dead space stays bounded by the live data it sits beside.
//! 4. Objects are deleted only while this data directory is the remote's one writer: while
//!    any record or pack of another origin is there, records are still pruned but no object
//!    is deleted (another machine may be uploading a snapshot that reuses them, and there is
//!    no lock between machines). `status` says so.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use super::backend::Connection;
use super::config::{Registry, Retention};
use super::crypto::Key;
use super::fetch::Fetcher;
use super::format::{self, KIND_CHUNKS, KIND_TREE, PackIndex};
use super::restore::{self, RemoteSnap};
use super::upload::{Shared, parse_snapshot_name, snapshot_name};
use super::{RemoteError, now_ms};
use crate::engine::Engine;
use crate::retention::Policy;
use crate::store::catalog::SnapshotRecord;
use crate::store::{ChunkList, Id, Kind, Tree, WorkspaceId};
use crate::sync::lock;

/// Objects fetched at once while walking.
const PARALLEL: usize = 16;

/// The ids among `ours` (this data directory's records on the remote) that `retention`
/// drops. `local` gives each local workspace's rules; a workspace with none here keeps
/// everything under [`Retention::FollowLocal`]. A snapshot still here is decided on as it is
/// now (`current`: pinned or noted since it was sent, it stays).
pub fn to_drop(
    ours: &[RemoteSnap],
    retention: &Retention,
    local: &HashMap<WorkspaceId, Policy>,
    current: &HashMap<u64, SnapshotRecord>,
) -> Vec<u64> {
    let mut groups: BTreeMap<&[u8], Vec<&RemoteSnap>> = BTreeMap::new();
    for s in ours {
        groups.entry(&s.workspace).or_default().push(s);
    }
    let mut out = Vec::new();
    for snaps in groups.values() {
        let policy = match retention {
            Retention::KeepAll => continue,
            Retention::Own { policy } => *policy,
            Retention::FollowLocal => {
                // A record names its local workspace by id; the newest one's is the current.
                let Some(newest) = snaps.iter().max_by_key(|s| s.record.created_us) else {
                    continue;
                };
                match local.get(&newest.record.workspace) {
                    Some(p) => Policy {
                        max_store_bytes: 0,
                        ..*p
                    },
                    None => continue,
                }
            }
        };
        let records: Vec<SnapshotRecord> = snaps
            .iter()
            .map(|s| current.get(&s.record.id.get()).unwrap_or(&s.record).clone())
            .collect();
        out.extend(
            crate::retention::decide(&records, &policy, 0)
                .into_iter()
                .filter(|d| !d.keep)
                .map(|d| d.snapshot.id.get()),
        );
    }
    out.sort_unstable();
    out
}

/// What the retention step of a pass works with.
#[derive(Debug)]
pub struct Pass<'a> {
    /// The remote.
    pub conn: &'a Connection,
    /// Its key.
    pub key: &'a Key,
    /// This data directory's origin.
    pub origin: &'a str,
    /// The remote's name.
    pub name: &'a str,
    /// The local side.
    pub engine: &'a Arc<Engine>,
    /// Where the uploader's state is recorded.
    pub registry: &'a Registry,
    /// The uploader's state.
    pub shared: &'a Shared,
    /// The local snapshots, by id.
    pub local: &'a HashMap<u64, SnapshotRecord>,
}

/// Applies the remote's retention after an upload (rules 1 and 2), then collects what it
/// left, or what an earlier pass that stopped left.
pub async fn apply(p: &Pass<'_>) -> Result<(), RemoteError> {
    let retention = *lock(&p.shared.retention);
    let ours: Vec<RemoteSnap> = lock(&p.shared.ours).values().cloned().collect();
    let mut policies = HashMap::new();
    if retention == Retention::FollowLocal {
        let engine = p.engine.clone();
        let all = tokio::task::spawn_blocking(move || engine.store.catalog().workspaces())
            .await
            .map_err(|e| RemoteError::Config(format!("catalog: {e}")))??;
        policies.extend(all.into_iter().map(|w| (w.id, w.retention)));
    }
    let gone = to_drop(&ours, &retention, &policies, p.local);
    // Ids gone here as well need no remembering; one pinned or noted by hand since is sent
    // again (and then kept).
    lock(&p.shared.dropped).retain(|id| {
        p.local
            .get(id)
            .is_some_and(|s| !s.pinned && !s.saved_by_hand())
    });
    if !gone.is_empty() {
        lock(&p.shared.dropped).extend(gone.iter().copied().filter(|id| p.local.contains_key(id)));
        *lock(&p.shared.collect_pending) = true;
        p.registry.save_state(p.name, &p.shared.state())?;
        for id in &gone {
            p.conn
                .delete(&format!("snapshots/{}", snapshot_name(p.origin, *id)))
                .await?;
            lock(&p.shared.ours).remove(id);
            lock(&p.shared.replicated).remove(id);
            {
                let mut n = lock(&p.shared.remote_snapshots);
                *n = n.saturating_sub(1);
            }
            let mut progress = lock(&p.shared.progress);
            progress.pruned_snapshots += 1;
            progress.last_prune_ms = now_ms();
        }
        p.registry.save_state(p.name, &p.shared.state())?;
        tracing::info!(
            remote = p.name,
            snapshots = gone.len(),
            mode = retention.mode(),
            "remote retention deleted snapshot records"
        );
    }
    if *lock(&p.shared.collect_pending) {
        let c = collect(p.conn, p.key, p.origin).await?;
        if let Some(live) = &c.live {
            p.shared.set_indexes(live);
        }
        {
            let mut progress = lock(&p.shared.progress);
            progress.deleted_packs += c.deleted_packs;
            progress.deleted_bytes += c.deleted_bytes;
            progress.dead_bytes = c.dead_bytes;
            progress.prune_note = c.note.clone();
            if c.deleted_packs > 0 {
                progress.last_prune_ms = now_ms();
            }
        }
        *lock(&p.shared.collect_pending) = false;
        p.registry.save_state(p.name, &p.shared.state())?;
        tracing::info!(remote = p.name, packs = c.deleted_packs, bytes = c.deleted_bytes, dead_bytes = c.dead_bytes, note = %c.note, "remote objects collected");
    }
    Ok(())
}

/// What a collection did.
#[derive(Debug, Default)]
pub struct Collected {
    /// Packs deleted (with their indexes), and orphan packs.
    pub deleted_packs: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Bytes of unneeded objects inside packs kept because they hold needed ones.
    pub dead_bytes: u64,
    /// Why objects were kept, when they were (rule 4); empty otherwise.
    pub note: String,
    /// The indexes left, when objects were collected (to know what the remote holds).
    pub live: Option<Vec<(String, PackIndex)>>,
}

/// The origin a pack's name carries: `ORIGIN-RANDOM`; none for names from before origins.
fn pack_origin(name: &str) -> Option<&str> {
    name.split_once('-').map(|(o, _)| o)
}

/// Collects the objects no record on the remote needs (rules 2 to 4).
pub async fn collect(conn: &Connection, key: &Key, origin: &str) -> Result<Collected, RemoteError> {
    let names = conn.list("snapshots").await?;
    let packs = conn.list("packs").await?;
    let others: HashSet<&str> = names
        .iter()
        .filter_map(|(n, _)| parse_snapshot_name(n).map(|(o, _)| o))
        .chain(packs.iter().filter_map(|(n, _)| pack_origin(n)))
        .filter(|o| *o != origin)
        .collect();
    if !others.is_empty() {
        return Ok(Collected {
            note: format!(
                "unneeded objects are kept: {} other data director{} write{} to this remote",
                others.len(),
                if others.len() == 1 { "y" } else { "ies" },
                if others.len() == 1 { "s" } else { "" },
            ),
            ..Collected::default()
        });
    }
    // Indexes are listed after packs: a pack listed has its index listed too, if it has one.
    let index_names: Vec<String> = conn
        .list("index")
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let indexes = format::fetch_indexes(conn, key, index_names, PARALLEL).await?;
    let snaps = restore::snapshots(conn, key).await?;
    let locs = super::fetch::locations_of(&indexes);
    let fetcher = Fetcher::new(conn, key, &locs);
    let needed = needed(&fetcher, &snaps).await?;

    let sizes: HashMap<&str, u64> = packs.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let mut out = Collected::default();
    let mut live = Vec::new();
    let mut dead = Vec::new();
    for (name, index) in indexes {
        let unneeded: u64 = index
            .entries
            .iter()
            .filter(|e| !needed.contains(&e.id))
            .map(|e| u64::from(e.len))
            .sum();
        if index.entries.iter().any(|e| needed.contains(&e.id)) {
            out.dead_bytes += unneeded;
            live.push((name, index));
        } else {
            dead.push(name);
        }
    }
    let indexed: HashSet<&str> = live
        .iter()
        .map(|(n, _)| n.as_str())
        .chain(dead.iter().map(String::as_str))
        .collect();
    let orphans: Vec<String> = packs
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !indexed.contains(n.as_str()))
        .collect();
    for name in dead.iter().chain(&orphans) {
        // The index first: from then on nothing reuses the pack's objects (rule 2).
        conn.delete(&format::index_path(name)).await?;
        conn.delete(&format::pack_path(name)).await?;
        out.deleted_packs += 1;
        out.deleted_bytes += sizes.get(name.as_str()).copied().unwrap_or(0);
    }
    out.live = Some(live);
    Ok(out)
}

/// Every object the snapshots `snaps` need: their trees, walked a level at a time, the
/// files and symlinks they name, and the chunks of chunked files.
async fn needed(f: &Fetcher<'_>, snaps: &[RemoteSnap]) -> Result<HashSet<Id>, RemoteError> {
    let mut needed: HashSet<Id> = HashSet::new();
    let mut level: Vec<Id> = snaps
        .iter()
        .map(|s| s.record.root)
        .filter(|id| needed.insert(*id))
        .collect();
    while !level.is_empty() {
        let trees: Vec<Tree> = futures::stream::iter(level)
            .map(|id| async move {
                let bytes = f.object(&id, KIND_TREE).await?;
                Tree::decode(&bytes).map_err(|e| f.damaged(format!("tree {id}: {e}")))
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        level = Vec::new();
        let mut lists = Vec::new();
        for tree in trees {
            for e in tree.entries {
                if !needed.insert(e.id) {
                    continue;
                }
                match e.kind {
                    // A split tree's parts are trees too.
                    Kind::Dir => level.push(e.id),
                    Kind::File | Kind::Symlink => {
                        if f.kind(&e.id)? == KIND_CHUNKS {
                            lists.push(e.id);
                        }
                    }
                }
            }
        }
        let chunks: Vec<Vec<Id>> = futures::stream::iter(lists)
            .map(|id| async move {
                let bytes = f.object(&id, KIND_CHUNKS).await?;
                let list = ChunkList::decode(&bytes)
                    .map_err(|m| f.damaged(format!("chunk list {id}: {m}")))?;
                Ok::<_, RemoteError>(list.chunk_ids().collect())
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        needed.extend(chunks.into_iter().flatten());
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SnapshotId;
    use crate::store::catalog::Trigger;

    fn snap(id: u64, ws: u64, path: &str, hours_ago: u64) -> RemoteSnap {
        let now = 1_000_000 * 3600 * 24 * 400;
        RemoteSnap {
            record: SnapshotRecord {
                id: SnapshotId::new(id),
                workspace: WorkspaceId::new(ws),
                created_us: now - hours_ago * 3_600_000_000 - id,
                trigger: Trigger::Auto,
                ..Default::default()
            },
            workspace: path.as_bytes().to_vec(),
        }
    }

    #[test]
    fn each_workspace_follows_its_own_local_rules_or_the_remotes() {
        let ours = [
            snap(1, 1, "/a", 0),
            snap(2, 1, "/a", 1),
            snap(3, 1, "/a", 2),
            snap(4, 2, "/b", 0),
            snap(5, 2, "/b", 1),
            snap(6, 9, "/gone", 5),
            snap(7, 9, "/gone", 6),
        ];
        let keep = |n| Policy {
            keep_last: n,
            ..Policy::default()
        };
        let local = HashMap::from([
            (WorkspaceId::new(1), keep(1)),
            // The store budget is this disk's: the remote does not follow it.
            (
                WorkspaceId::new(2),
                Policy {
                    max_store_bytes: 1,
                    ..keep(2)
                },
            ),
        ]);
        let now = HashMap::new();
        assert_eq!(
            to_drop(&ours, &Retention::FollowLocal, &local, &now),
            vec![2, 3]
        );
        let own = Retention::Own { policy: keep(1) };
        assert_eq!(to_drop(&ours, &own, &local, &now), vec![2, 3, 5, 7]);
        assert!(to_drop(&ours, &Retention::KeepAll, &local, &now).is_empty());
        // Pinned here since it was sent: kept there too.
        let mut pinned = ours[2].record.clone();
        pinned.pinned = true;
        let now = HashMap::from([(3, pinned)]);
        assert_eq!(
            to_drop(&ours, &Retention::FollowLocal, &local, &now),
            vec![2]
        );
    }

    #[test]
    fn pack_names_carry_their_origin() {
        assert_eq!(
            pack_origin("0123abcd0123abcd-ff00"),
            Some("0123abcd0123abcd")
        );
        assert_eq!(pack_origin("ff00ff00"), None);
    }
}
