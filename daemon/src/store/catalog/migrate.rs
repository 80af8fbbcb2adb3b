//! Moving a sled catalog (format rule 9) into the redb file.
//!
//! sled's flush was not durable (the power-loss harness lost acknowledged snapshots at every
//! cut), so catalogs move to redb the first time a new chkptd opens them:
//! 1. every sled tree is copied, entry by entry, into a table of the same name in
//!    `catalog.redb.migrating`, and `meta`'s `next_id` is set past sled's id counter and every
//!    workspace id; the copy ends with a durable commit;
//! 2. the file is renamed to [`FILE`](super::FILE), and the data directory fsynced: from here on
//!    the new catalog is the catalog;
//! 3. sled's folder is renamed aside to `catalog.sled-migrated` (and the directory fsynced).
//!
//! A crash before 2 leaves sled's catalog untouched and a `.migrating` file, which the next open
//! deletes and copies again from the start; a crash between 2 and 3 leaves both, and the next
//! open finishes 3. The sled folder is kept aside, not deleted: were the copy ever wrong, the
//! only other record of the store's snapshots would be gone with it (the packs alone cannot be
//! listed), and it is small beside the packs. It may be deleted by hand once the store works.

use std::fs::{self, File};
use std::path::Path;

use redb::{Database, Durability, ReadableTable, TableDefinition};

use super::{META, NEXT_ID, WORKSPACES, be, u64_at};
use crate::error::{Error, IoContext, Result};

/// sled's folder, and where it goes once copied.
const SLED_DIR: &str = "catalog";
const SLED_ASIDE: &str = "catalog.sled-migrated";

/// Moves the sled catalog of `dir`, if there is one and no redb file yet.
pub(super) fn from_sled(dir: &Path, cache_bytes: usize) -> Result<()> {
    let sled_dir = dir.join(SLED_DIR);
    let target = dir.join(super::FILE);
    let sled_there = sled_dir.join("conf").exists() || sled_dir.join("db").exists();
    if target.exists() {
        if sled_there {
            // Step 3 of an interrupted migration.
            set_aside(dir, &sled_dir)?;
        }
        return Ok(());
    }
    let tmp = dir.join(format!("{}.migrating", super::FILE));
    if tmp.exists() {
        tracing::info!(file = %tmp.display(), "an interrupted catalog migration is started again");
        fs::remove_file(&tmp).at(&tmp)?;
    }
    if !sled_there {
        return Ok(());
    }
    let t = std::time::Instant::now();
    let entries = match copy(&sled_dir, &tmp, cache_bytes) {
        Ok(n) => n,
        Err(e) => {
            // The partial copy goes (it would be deleted at the next open anyway): on a full
            // disk it holds the room the next attempt needs.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    File::open(&tmp).and_then(|f| f.sync_all()).at(&tmp)?;
    fs::rename(&tmp, &target).at(&target)?;
    sync_dir(dir)?;
    set_aside(dir, &sled_dir)?;
    tracing::info!(
        entries,
        ms = t.elapsed().as_millis() as u64,
        "catalog moved from sled to {}",
        super::FILE
    );
    Ok(())
}

/// Copies every tree of the sled database at `from` into a new redb file `to`; returns the
/// entries copied.
fn copy(from: &Path, to: &Path, cache_bytes: usize) -> Result<u64> {
    let sled = sled::Config::new()
        .path(from)
        .cache_capacity(cache_bytes as u64)
        .flush_every_ms(None)
        .open()?;
    let copied = Database::builder()
        .set_cache_size(cache_bytes)
        .create(to)
        .map_err(Error::from)
        .and_then(|db| copy_trees(&sled, &db));
    // Errors of the new file name it.
    copied.map_err(|e| match e {
        Error::Io { path, source } if path == Path::new(super::FILE) => Error::io(to, source),
        Error::DiskFull { path } if path == Path::new(super::FILE) => Error::DiskFull {
            path: to.to_path_buf(),
        },
        other => other,
    })
}

fn copy_trees(sled: &sled::Db, db: &Database) -> Result<u64> {
    let mut entries = 0u64;
    let mut trees = 0usize;
    for name in sled.tree_names() {
        let tree = sled.open_tree(&name)?;
        // sled's default tree, which chkpt never wrote to.
        if name.as_ref() == b"__sled__default" && tree.is_empty() {
            continue;
        }
        let name = String::from_utf8_lossy(&name).into_owned();
        // One transaction per tree, durable with the last commit below.
        let mut w = db.begin_write()?;
        w.set_durability(Durability::None)?;
        {
            let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
            let mut t = w.open_table(def)?;
            for kv in tree.iter() {
                let (k, v) = kv?;
                t.insert(k.as_ref(), v.as_ref())?;
                entries += 1;
            }
        }
        w.commit()?;
        trees += 1;
        #[cfg(test)]
        tests::maybe_stop(trees);
    }
    tracing::debug!(trees, entries, "sled's trees copied");
    // Past every id sled gave out (its counter jumps ahead at each start) and every workspace.
    let mut next = sled.generate_id()? + 1;
    let w = db.begin_write()?;
    {
        let ws = w.open_table(WORKSPACES)?;
        if let Some((k, _)) = ws.last()? {
            next = next.max(u64_at(k.value(), 0) + 1);
        }
        w.open_table(META)?.insert(NEXT_ID, be(next).as_slice())?;
    }
    // Immediate, redb's default: everything copied is durable once this returns.
    w.commit()?;
    Ok(entries)
}

fn set_aside(dir: &Path, sled_dir: &Path) -> Result<()> {
    let mut aside = dir.join(SLED_ASIDE);
    let mut n = 1;
    while aside.exists() {
        n += 1;
        aside = dir.join(format!("{SLED_ASIDE}.{n}"));
    }
    fs::rename(sled_dir, &aside).at(&aside)?;
    sync_dir(dir)?;
    tracing::info!(
        kept = %aside.display(),
        "the old sled catalog is kept aside; it may be deleted once this store works"
    );
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

#[cfg(test)]
pub(crate) mod tests {
    /// Set in a test's child process: the migration stops the process dead (SIGKILL) after
    /// copying this many trees.
    pub const KILL_AFTER: &str = "CHKPT_TEST_KILL_MIGRATION_AFTER";

    pub fn maybe_stop(copied: usize) {
        if let Some(n) = std::env::var(KILL_AFTER)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            && copied >= n
        {
            // SAFETY: raising a signal at ourselves.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
        }
    }
}
