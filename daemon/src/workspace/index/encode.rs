//! Encoding the index as trees: only directories whose cached tree id is gone, siblings in
//! parallel, big directories as parts of which only the changed ones are encoded again.

use rayon::prelude::*;

use super::children::{Attrs, Body};
use super::{CachedPart, DirNode, Index, PARALLEL_TREES, Parts};
use crate::error::Result;
use crate::store::tree::{PartRef, SPLIT_MIN, ends_part};
use crate::store::{Batch, Entry, Id, Kind, Tree};

impl Index {
    /// The root tree's id, encoding and storing only directories whose cached id is gone, and
    /// how many trees that encoded. Sibling directories are encoded in parallel (a cold save
    /// has thousands).
    pub fn root_tree(&mut self, batch: &Batch<'_>) -> Result<(Id, u64)> {
        fn rec(dir: &mut DirNode, attrs: &Attrs, batch: &Batch<'_>) -> Result<(Id, u64)> {
            if let Some(id) = dir.tree {
                return Ok((id, 0));
            }
            let below = if dir.scan_all {
                encode_stale_children(dir, attrs, batch)?
            } else {
                // Only the children changed since the last encoding can be stale.
                let mut n = 0;
                for name in std::mem::take(&mut dir.changed) {
                    if let Some(d) = dir.children.dir_mut(&name)
                        && d.tree.is_none()
                    {
                        n += rec(d, attrs, batch)?.1;
                    }
                }
                n
            };
            dir.changed = Vec::new();
            dir.scan_all = false;
            // What came since the last encoding is all there: the vectors keep what they hold.
            dir.children.shrink();
            if dir.children.len() > SPLIT_MIN {
                let (id, parts) = split_tree(dir, attrs, batch)?;
                dir.tree = Some(id);
                dir.parts = Some(Box::new(parts));
                return Ok((id, below + 1));
            }
            dir.parts = None;
            let entries = dir
                .children
                .iter()
                .map(|(n, body)| entry(n, body, attrs))
                .collect();
            let id = batch.put_tree(Tree { entries })?;
            dir.tree = Some(id);
            Ok((id, below + 1))
        }
        /// Encodes every child directory whose tree is gone (in parallel when there are
        /// many); returns how many trees that encoded.
        fn encode_stale_children(
            dir: &mut DirNode,
            attrs: &Attrs,
            batch: &Batch<'_>,
        ) -> Result<u64> {
            let mut stale: Vec<&mut DirNode> = dir
                .children
                .bodies_mut()
                .filter_map(|b| match b {
                    Body::Dir(d) if d.tree.is_none() => Some(&mut **d),
                    _ => None,
                })
                .collect();
            Ok(if stale.len() >= PARALLEL_TREES {
                stale
                    .par_iter_mut()
                    .map(|d| rec(d, attrs, batch).map(|(_, n)| n))
                    .try_reduce(|| 0, |a, b| Ok(a + b))?
            } else {
                let mut n = 0;
                for d in stale {
                    n += rec(d, attrs, batch)?.1;
                }
                n
            })
        }
        rec(&mut self.root, &self.attrs, batch)
    }
}

/// The tree entry of the child `name`; a directory's tree id must be computed.
fn entry(name: &[u8], body: &Body, attrs: &Attrs) -> Entry {
    match body {
        Body::Leaf(l) => Entry {
            name: name.to_vec(),
            kind: l.kind(),
            mode: l.mode(attrs),
            size: l.size,
            id: l.id,
        },
        Body::Dir(d) => Entry {
            name: name.to_vec(),
            kind: Kind::Dir,
            mode: d.meta.mode,
            size: d.children.len() as u64,
            id: d.tree.unwrap_or_default(),
        },
    }
}

/// Stores a directory of more than [`SPLIT_MIN`] entries as parts and a split tree, cut as
/// tree format rule 6 says, re-encoding only parts that changed since it was last stored: a
/// part's end depends only on where it starts and on its entries, so a stored part that was
/// not changed and starts where the cut before it ends is the part the rule would cut again.
/// The parts after a changed one are cut anew until a cut meets a stored part's start.
fn split_tree(dir: &DirNode, attrs: &Attrs, batch: &Batch<'_>) -> Result<(Id, Parts)> {
    let old = dir.parts.as_deref().map_or(&[][..], |p| p.list.as_slice());
    let children = &dir.children;
    let mut out: Vec<PartRef> = Vec::with_capacity(old.len().max(1));
    let mut k = 0;
    // The position the next part starts at.
    let mut at = 0;
    while at < children.len() {
        let first = children.name(at);
        while old.get(k).is_some_and(|c| c.part.first.as_slice() < first) {
            k += 1;
        }
        if let Some(c) = old.get(k).filter(|c| !c.stale && c.part.first == first) {
            out.push(c.part.clone());
            k += 1;
            match old.get(k) {
                Some(next) => at = children.lower_bound(&next.part.first),
                None => break,
            }
            continue;
        }
        let mut part = Tree::default();
        let start = at;
        while at < children.len() {
            let name = children.name(at);
            part.entries.push(entry(name, children.body(at), attrs));
            at += 1;
            if ends_part(name, part.entries.len() - 1) {
                break;
            }
        }
        out.push(PartRef {
            id: batch.put_part(&part)?,
            first: children.name(start).to_vec(),
            len: part.entries.len(),
        });
    }
    let id = batch.put_split(&out)?;
    let list = out
        .into_iter()
        .map(|part| CachedPart { part, stale: false })
        .collect();
    Ok((id, Parts { list }))
}
