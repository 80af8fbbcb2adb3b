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
    #[cfg(test)]
    tests::maybe_stop("renamed");
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
        tests::maybe_stop(&format!("tree:{trees}"));
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
    use std::fs;
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;

    use super::{SLED_ASIDE, SLED_DIR};
    use crate::store::WorkspaceId;
    use crate::store::catalog::{FILE, FileMeta, SEGMENT_V1, WorkspaceRecord};
    use crate::store::{Id, Kind, ObjectKind, Store};

    /// Set in a test's child process: the migration stops the process dead (SIGKILL) at this
    /// point: `tree:N` once N trees are copied, `renamed` once the new file is in place.
    const KILL_AT: &str = "CHKPT_TEST_KILL_MIGRATION_AT";

    pub fn maybe_stop(point: &str) {
        if std::env::var(KILL_AT).is_ok_and(|p| p == point) {
            // SAFETY: raising a signal at ourselves.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
        }
    }

    fn content() -> Vec<u8> {
        (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// A data directory whose catalog is the sled database `catalog/` holding the trees
    /// `packs`, `blobs` and `files` (one entry per object and per path, as before segments)
    /// and a workspace, describing one object stored in its packs. Returns the object's id.
    fn old_sled_store(dir: &Path) -> Id {
        let data = content();
        let (id, objects, lengths) = {
            let store = Store::open(dir).unwrap();
            let b = store.batch();
            let (id, _) = b.put(&data, ObjectKind::Blob).unwrap();
            b.finish().unwrap();
            (id, store.objects(), store.cat.pack_lengths().unwrap())
        };
        fs::remove_file(dir.join(FILE)).unwrap();
        let sled = sled::open(dir.join(SLED_DIR)).unwrap();
        let packs = sled.open_tree("packs").unwrap();
        for (no, len) in lengths {
            packs.insert(no.to_be_bytes(), &len.to_le_bytes()).unwrap();
        }
        let old = sled.open_tree("blobs").unwrap();
        for (id, loc) in objects {
            old.insert(id.as_bytes(), &loc.encode()).unwrap();
        }
        let meta = FileMeta {
            kind: Kind::File,
            mode: 0o644,
            size: data.len() as u64,
            mtime_ns: 1,
            ctime_ns: 2,
            ino: 3,
            dev: 4,
            id,
            racy: false,
        };
        let mut key = 7u64.to_be_bytes().to_vec();
        key.extend_from_slice(b"src/a.bin");
        let mut value = vec![SEGMENT_V1];
        value.extend_from_slice(&bitcode::encode(&meta));
        sled.open_tree("files").unwrap().insert(key, value).unwrap();
        // As the sled catalog had them: ids from sled's counter.
        let ws = WorkspaceRecord {
            id: WorkspaceId::new(sled.generate_id().unwrap() + 1),
            path: b"/old/ws".to_vec(),
            ..Default::default()
        };
        sled.open_tree("workspaces")
            .unwrap()
            .insert(
                ws.id.get().to_be_bytes(),
                crate::store::records::encode(&ws),
            )
            .unwrap();
        sled.open_tree("ws_paths")
            .unwrap()
            .insert(&ws.path, &ws.id.get().to_be_bytes())
            .unwrap();
        sled.flush().unwrap();
        id
    }

    /// The store opens with everything the sled catalog held, in the new file, sled's folder
    /// set aside; the next open finds the same.
    fn assert_old_store_moved(dir: &Path, id: Id) {
        let store = Store::open(dir).unwrap();
        assert_eq!(store.read_vec(&id).unwrap(), content());
        let entries = store.cat.load_index(WorkspaceId::new(7)).unwrap().entries;
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].0.as_slice(), entries[0].1.id),
            (&b"src/a.bin"[..], id)
        );
        let names = store.cat.table_names().unwrap();
        assert!(
            !names.iter().any(|n| n == "blobs" || n == "files"),
            "{names:?}"
        );
        let old = store.cat.workspace_by_path(b"/old/ws").unwrap().unwrap();
        assert!(store.cat.new_id().unwrap() > old.id);
        assert!(!dir.join(SLED_DIR).exists(), "sled's folder is set aside");
        assert!(dir.join(SLED_ASIDE).join("conf").exists());
        assert!(store.verify(None).unwrap().problems.is_empty());
        drop(store);
        let store = Store::open(dir).unwrap();
        assert_eq!(store.read_vec(&id).unwrap(), content());
        assert_eq!(
            store
                .cat
                .load_index(WorkspaceId::new(7))
                .unwrap()
                .entries
                .len(),
            1
        );
        assert_eq!(store.cat.workspace(old.id).unwrap(), Some(old));
    }

    /// A store written with sled and one entry per object and per path opens with everything
    /// in place (catalog format rules 7 and 9).
    #[test]
    fn a_per_entry_sled_catalog_is_moved_into_segments_of_the_new_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let id = old_sled_store(dir.path());
        assert_old_store_moved(dir.path(), id);
    }

    /// The child of the tests below: opens the old store, the migration set to kill this
    /// process at `KILL_AT`.
    #[test]
    fn migration_child() {
        let Some(dir) = std::env::var_os("CHKPT_MIGRATION_CHILD") else {
            return;
        };
        let _ = Store::open(Path::new(&dir));
        panic!("the migration was meant to be killed");
    }

    fn open_killed_at(dir: &Path, point: &str) {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::catalog::migrate::tests::migration_child",
                "--nocapture",
            ])
            .env("CHKPT_MIGRATION_CHILD", dir)
            .env(KILL_AT, point)
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    /// A migration killed part way (SIGKILL after its first tree) leaves the sled catalog as it
    /// was and a partial new file; the next open copies everything again, from the start.
    #[test]
    fn a_migration_killed_part_way_is_done_again_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let id = old_sled_store(dir.path());
        open_killed_at(dir.path(), "tree:1");
        let partial = dir.path().join(format!("{FILE}.migrating"));
        assert!(partial.exists(), "the child died before it copied anything");
        assert!(!dir.path().join(FILE).exists());
        assert!(dir.path().join(SLED_DIR).join("conf").exists());
        assert_old_store_moved(dir.path(), id);
        assert!(!partial.exists());
    }

    /// Killed once the new file is in place, before sled's folder is set aside: the next open
    /// keeps the new file (and what was written to it since) and only sets the folder aside.
    #[test]
    fn a_migration_killed_after_the_switch_only_sets_sled_aside_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let id = old_sled_store(dir.path());
        open_killed_at(dir.path(), "renamed");
        assert!(dir.path().join(FILE).exists());
        assert!(dir.path().join(SLED_DIR).join("conf").exists());
        assert!(!dir.path().join(SLED_ASIDE).exists());
        assert_old_store_moved(dir.path(), id);
        // A later write lives in the new file only; sled's folder, put back by hand, is not
        // copied again over it.
        let store = Store::open(dir.path()).unwrap();
        let ws = WorkspaceRecord {
            id: store.cat.new_id().unwrap(),
            path: b"/new/ws".to_vec(),
            ..Default::default()
        };
        store.cat.put_workspace(&ws).unwrap();
        store.flush().unwrap();
        drop(store);
        fs::rename(dir.path().join(SLED_ASIDE), dir.path().join(SLED_DIR)).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.cat.workspace_by_path(b"/new/ws").unwrap(), Some(ws));
        assert!(dir.path().join(SLED_ASIDE).join("conf").exists());
        assert!(!dir.path().join(SLED_DIR).exists());
    }
}
