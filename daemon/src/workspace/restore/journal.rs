//! The restore journal: written (and fsynced) before a restore touches the workspace, so a
//! start after a crash can finish what the restore began.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use super::durable::sync_path;
use crate::error::{Error, IoContext, Result};
use crate::store::{SnapshotId, Store, WorkspaceId};

/// A restore in progress: written (and fsynced) before the workspace is touched, removed when
/// the restore ends. Finding one at start-up means the daemon died mid-restore; the restore is
/// then finished (see [`Workspace::finish_interrupted_restore`](crate::workspace::Workspace::finish_interrupted_restore)).
#[derive(Debug, Clone, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
pub struct Journal {
    /// The snapshot being restored.
    pub snapshot: SnapshotId,
    /// The checkpoint taken before it.
    pub pre_restore: Option<SnapshotId>,
    /// The paths restored (all when empty).
    pub paths: Vec<Vec<u8>>,
    /// Directories where staged temporary files may be left.
    pub dirs: Vec<Vec<u8>>,
    /// The restore rolls `.git` back too.
    pub include_git: bool,
}

/// The journal's layout before it said whether `.git` is restored (read, never written).
#[derive(Debug, Clone, PartialEq, Eq, bitcode::Encode, bitcode::Decode)]
struct JournalV1 {
    snapshot: u64,
    pre_restore: Option<u64>,
    paths: Vec<Vec<u8>>,
    dirs: Vec<Vec<u8>>,
}

/// What a journal written since it has a layout version starts with.
const JOURNAL_MAGIC: &[u8; 4] = b"CJ\x02\x00";

fn journal_path(store: &Store, ws: WorkspaceId) -> PathBuf {
    store
        .dir()
        .join("journal")
        .join(format!("{ws:016x}.restore"))
}

pub(super) fn write_journal(store: &Store, ws: WorkspaceId, j: &Journal) -> Result<()> {
    let path = journal_path(store, ws);
    let dir = store.dir().join("journal");
    if !dir.is_dir() {
        fs::create_dir_all(&dir).at(&dir)?;
        // The journal's own fsyncs below count only once its folder's name is durable.
        sync_path(store.dir())?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).at(&tmp)?;
    f.write_all(&[JOURNAL_MAGIC.as_slice(), &bitcode::encode(j)].concat())
        .at(&tmp)?;
    f.sync_all().at(&tmp)?;
    fs::rename(&tmp, &path).at(&path)?;
    fs::File::open(&dir).and_then(|d| d.sync_all()).at(&dir)?;
    Ok(())
}

/// Removes the journal, durably: one that came back after a power cut would have the next
/// start apply the snapshot again, over whatever the user did since.
pub(super) fn remove_journal(store: &Store, ws: WorkspaceId) {
    let path = journal_path(store, ws);
    match fs::remove_file(&path) {
        Ok(()) => {
            if let Some(dir) = path.parent()
                && let Err(e) = sync_path(dir)
            {
                tracing::warn!(journal = %path.display(), error = %e, "could not make the restore journal's removal durable");
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(journal = %path.display(), error = %e, "could not remove the restore journal")
        }
    }
}

/// The journal of an interrupted restore of workspace `ws`, if any.
pub fn read_journal(store: &Store, ws: WorkspaceId) -> Result<Option<Journal>> {
    let path = journal_path(store, ws);
    let corrupt =
        |e: bitcode::Error| Error::Corrupt(format!("restore journal {}: {e}", path.display()));
    match fs::read(&path) {
        Ok(bytes) => match bytes.strip_prefix(JOURNAL_MAGIC.as_slice()) {
            Some(body) => bitcode::decode(body).map(Some).map_err(corrupt),
            None => bitcode::decode::<JournalV1>(&bytes)
                .map(|j| {
                    Some(Journal {
                        snapshot: SnapshotId::new(j.snapshot),
                        pre_restore: j.pre_restore.map(SnapshotId::new),
                        paths: j.paths,
                        dirs: j.dirs,
                        include_git: false,
                    })
                })
                .map_err(corrupt),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}
