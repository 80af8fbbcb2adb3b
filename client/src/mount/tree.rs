//! The mounted tree, independent of FUSE: inodes for workspaces, snapshot folders, `latest`
//! links and the entries inside snapshots, and what the daemon answered for each (cached:
//! snapshots never change; the lists of workspaces and snapshots are asked for again after a
//! second).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chkpt_proto::v1::{self, EntryKind};

/// How long the lists of workspaces and of a workspace's snapshots are kept.
pub const LIST_TTL: Duration = Duration::from_secs(1);
/// Files at most this large are read whole once and kept; larger ones are read in windows.
/// The daemon decodes files up to this size in one block anyway (`IN_MEMORY_LIMIT`), while a
/// larger one is an LZ4 frame that each read decodes from its start up to the range's end.
pub const WHOLE_FILE: u64 = 8 << 20;
/// Bytes of whole files kept at once.
pub const FILE_CACHE: u64 = 128 << 20;
/// Bytes fetched for a random read of a large file.
pub const WINDOW_MIN: u64 = 256 << 10;
/// Bytes fetched at most for sequential reads, which double the window each time.
pub const WINDOW_MAX: u64 = 16 << 20;

/// An inode number; 1 is the root.
pub type Ino = u64;

/// What an inode is.
#[derive(Debug, Clone)]
pub enum Node {
    /// The mount's root: one folder per workspace.
    Root,
    /// A workspace: one folder per snapshot and `latest`.
    Workspace {
        /// Its absolute path (what the daemon's requests name it by).
        path: String,
    },
    /// The `latest` link of a workspace.
    Latest {
        /// The workspace's inode.
        ws: Ino,
    },
    /// A snapshot's folder: its root tree.
    Snapshot {
        /// The workspace's inode.
        ws: Ino,
        /// The snapshot's id.
        id: String,
        /// When it was taken (the times of everything inside).
        created_ms: u64,
    },
    /// A file, symlink or directory inside a snapshot.
    Entry {
        /// The snapshot folder's inode.
        snap: Ino,
        /// Path from the snapshot's root.
        path: Vec<u8>,
        /// The saved entry.
        entry: v1::TreeEntry,
    },
}

/// A workspace's snapshot folders, newest first, by name.
#[derive(Debug, Clone, Default)]
pub struct SnapshotList {
    /// (folder name, snapshot).
    pub items: Vec<(String, v1::Snapshot)>,
}

/// The folder name of a snapshot: its UTC time and id (`2026-11-24T10:00:00-0123456789abcdef`).
pub fn snapshot_name(s: &v1::Snapshot) -> String {
    let time: String = s.created_at.chars().take(19).collect();
    format!("{time}-{}", s.id)
}

/// Folder names for workspaces: their last path component, made unique with the id.
pub fn workspace_names(workspaces: &[v1::Workspace]) -> Vec<(String, String)> {
    let base = |w: &v1::Workspace| {
        w.path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("root")
            .to_owned()
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for w in workspaces {
        *seen.entry(base(w)).or_default() += 1;
    }
    workspaces
        .iter()
        .map(|w| {
            let b = base(w);
            let name = if seen[&b] > 1 {
                format!("{b}-{}", w.id)
            } else {
                b
            };
            (name, w.path.clone())
        })
        .collect()
}

/// The workspaces' folder names and paths.
pub type Workspaces = Arc<Vec<(String, String)>>;

/// Every inode handed out, and the daemon's answers.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: Vec<Node>,
    by_name: HashMap<(Ino, Vec<u8>), Ino>,
    /// (workspace name, path), and when it was asked for.
    pub workspaces: Option<(Instant, Workspaces)>,
    /// A workspace inode's snapshots, and when they were asked for.
    pub snapshots: HashMap<Ino, (Instant, Arc<SnapshotList>)>,
    /// A directory inode's entries (never stale: snapshots do not change).
    pub dirs: HashMap<Ino, Arc<Vec<v1::TreeEntry>>>,
    /// Whole files by inode, and their total size.
    pub files: HashMap<Ino, Arc<Vec<u8>>>,
    files_bytes: u64,
    /// The last window read of each large file: (inode) → (offset, bytes).
    pub windows: HashMap<Ino, (u64, Arc<Vec<u8>>)>,
}

impl Tree {
    /// A tree with only the root.
    pub fn new() -> Tree {
        Tree {
            nodes: vec![Node::Root],
            ..Tree::default()
        }
    }

    /// The node of an inode.
    pub fn node(&self, ino: Ino) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    /// The inode of `name` under `parent`, made on first sight. The same name under the
    /// same parent keeps its inode.
    pub fn child(&mut self, parent: Ino, name: &[u8], make: impl FnOnce() -> Node) -> Ino {
        if let Some(&ino) = self.by_name.get(&(parent, name.to_vec())) {
            // Entries are immutable, but a workspace's `latest` or a re-listed entry may carry
            // newer data: refresh the node.
            let fresh = make();
            if let Some(n) = self.nodes.get_mut(ino as usize - 1) {
                *n = fresh;
            }
            return ino;
        }
        self.nodes.push(make());
        let ino = self.nodes.len() as Ino;
        self.by_name.insert((parent, name.to_vec()), ino);
        ino
    }

    /// Keeps a whole file, dropping the others when the budget is passed.
    pub fn keep_file(&mut self, ino: Ino, data: Arc<Vec<u8>>) {
        if self.files_bytes + data.len() as u64 > FILE_CACHE {
            self.files.clear();
            self.files_bytes = 0;
        }
        self.files_bytes += data.len() as u64;
        self.files.insert(ino, data);
    }
}

/// Whether a tree entry is a directory, a symlink, or a file.
pub fn is_dir(e: &v1::TreeEntry) -> bool {
    e.kind() == EntryKind::Directory
}

/// Whether a tree entry is a symlink.
pub fn is_symlink(e: &v1::TreeEntry) -> bool {
    e.kind() == EntryKind::Symlink
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_are_time_and_id_and_workspaces_unique() {
        let s = v1::Snapshot {
            id: "0123456789abcdef".into(),
            created_at: "2026-11-24T10:00:00.123Z".into(),
            ..v1::Snapshot::default()
        };
        assert_eq!(snapshot_name(&s), "2026-11-24T10:00:00-0123456789abcdef");
        let ws = |path: &str, id| v1::Workspace {
            path: path.into(),
            id,
            ..v1::Workspace::default()
        };
        let names = workspace_names(&[ws("/a/app", 1), ws("/b/app", 2), ws("/c/lib/", 3)]);
        let names: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["app-1", "app-2", "lib"]);
    }

    #[test]
    fn a_name_keeps_its_inode() {
        let mut t = Tree::new();
        let a = t.child(1, b"a", || Node::Workspace { path: "/a".into() });
        let b = t.child(1, b"b", || Node::Workspace { path: "/b".into() });
        assert_eq!(
            t.child(1, b"a", || Node::Workspace { path: "/a".into() }),
            a
        );
        assert_ne!(a, b);
        assert!(matches!(t.node(1), Some(Node::Root)));
        assert!(t.node(99).is_none());
    }
}
