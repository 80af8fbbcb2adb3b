//! What must survive a crash (chkptd SIGKILLed) or a power cut (the lazy file system losing
//! what was not durable), stated once. The crash harness (`tests/crash.rs`) and the power-loss
//! harness (`tests/powerloss.rs`) check it after every restart:
//! 1. the store opens and verifies clean ([`store_problems`]);
//! 2. every snapshot whose save was acknowledged before the cut is listed and restores
//!    byte-exact, unless an acknowledged delete or a prune removed it; an acknowledged delete
//!    stays deleted;
//! 3. the workspace ([`workspace_after_cut`]): a restore acknowledged before the cut is on disk
//!    exactly, an interrupted one is finished or never began (never half), and no other
//!    operation changes it;
//! 4. none of chkpt's temporary files is left in the workspace ([`super::litter`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use tonic::transport::Channel;

/// A folder's content: every path, with a file's or link's bytes (none for a folder).
pub type Listing = BTreeMap<PathBuf, Option<Vec<u8>>>;

/// The folder's content, without chkpt's own short-lived `.chkpt-*.tmp` files (a save's event
/// barrier may exist for a moment while we look; what a cut leaves behind is rule 4's).
pub fn listing(root: &Path) -> Listing {
    let mut l = super::listing(root);
    l.retain(|p, _| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        !(name.starts_with(".chkpt-") && name.ends_with(".tmp"))
    });
    l
}

/// The first few paths where `got` differs from `expected`, for a failure message.
pub fn difference(expected: &Listing, got: &Listing) -> Vec<String> {
    expected
        .iter()
        .filter(|(p, v)| got.get(*p) != Some(v))
        .map(|(p, v)| {
            format!(
                "{} (expected {:?} bytes, got {:?})",
                p.display(),
                v.as_ref().map(Vec::len),
                got.get(p).map(|g| g.as_ref().map(Vec::len))
            )
        })
        .chain(
            got.keys()
                .filter(|p| !expected.contains_key(*p))
                .map(|p| format!("{} (unexpected)", p.display())),
        )
        .take(5)
        .collect()
}

/// Rule 1: what `Verify` of the whole store found, if anything.
pub async fn store_problems(c: &mut ChkptClient<Channel>) -> Option<String> {
    let v = super::verify(c).await;
    (!v.ok).then(|| format!("verify found {:?}", v.problems))
}

/// How the workspace came through a cut (rule 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Came {
    /// No restore was in flight, and it is as the user left it.
    Untouched,
    /// The restore was acknowledged, and it is on disk.
    Restored,
    /// The restore was interrupted and finished at the next start.
    RestoreFinished,
    /// The restore was interrupted before it changed anything.
    RestoreNotBegun,
}

/// Rule 3, for the workspace `now` after a cut during an operation that started with it as
/// `edited`: `restoring` is the snapshot's content when the operation was an in-place restore,
/// `acknowledged` whether the operation returned success before the cut.
pub fn workspace_after_cut(
    restoring: Option<&Listing>,
    acknowledged: bool,
    edited: &Listing,
    now: &Listing,
) -> Result<Came, String> {
    match restoring {
        Some(expected) if acknowledged => {
            if now == expected {
                Ok(Came::Restored)
            } else {
                Err(format!(
                    "an acknowledged restore is not on disk: {:?}",
                    difference(expected, now)
                ))
            }
        }
        Some(expected) if now == expected && now != edited => Ok(Came::RestoreFinished),
        Some(_) if now == edited => Ok(Came::RestoreNotBegun),
        Some(expected) => Err(format!(
            "the workspace is half-restored (neither the snapshot nor the edited folder): {:?}",
            difference(expected, now)
        )),
        None if now != edited => Err(format!(
            "the workspace changed without a restore: {:?}",
            difference(edited, now)
        )),
        None => Ok(Came::Untouched),
    }
}

/// A request sent just before a cut: what it answers once it returns (a snapshot's id, or
/// nothing), or how it failed.
pub type InFlight = tokio::task::JoinHandle<Result<String, tonic::Status>>;

/// `Save` of the workspace `ws`, in flight; answers the new snapshot's id.
pub fn save_in_flight(mut c: ChkptClient<Channel>, ws: String, message: String) -> InFlight {
    let req = pb::SaveRequest {
        workspace: ws,
        message,
        pin: false,
        ..Default::default()
    };
    tokio::spawn(async move { Ok(c.save(req).await?.into_inner().snapshot.unwrap().id) })
}

/// `Delete` of snapshot `snap` (its garbage collected), in flight; answers `snap`.
pub fn delete_in_flight(mut c: ChkptClient<Channel>, ws: String, snap: String) -> InFlight {
    let req = pb::DeleteRequest {
        workspace: ws,
        snapshots: vec![snap.clone()],
        force: false,
    };
    tokio::spawn(async move { c.delete(req).await.map(|_| snap) })
}

/// `Prune` keeping the last two snapshots (and collecting what goes), in flight.
pub fn prune_in_flight(mut c: ChkptClient<Channel>, ws: String) -> InFlight {
    let req = pb::PruneRequest {
        workspace: ws,
        keep_last: 2,
        ..Default::default()
    };
    tokio::spawn(async move { c.prune(req).await.map(|_| String::new()) })
}
