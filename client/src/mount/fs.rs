//! The FUSE side: each request looks its inode up in the [`Tree`], asks the daemon over gRPC
//! for what is missing (outside the tree's lock), and answers. Read-only: the kernel refuses
//! writes (the mount is `ro`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chkpt_proto::v1;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, Request,
};

use super::tree::{self, Ino, Node, SnapshotList, Tree};
use crate::connect::{Client, Error};

/// How long the kernel may keep what it was told about the root and workspace folders.
const TTL_LISTS: Duration = Duration::from_secs(1);
/// ... and about anything inside a snapshot, which never changes.
const TTL_SNAPSHOT: Duration = Duration::from_secs(3600);
/// Snapshots listed per workspace at most.
const MAX_SNAPSHOTS: usize = 100_000;

/// The file system: the tree, and a client to fill it.
pub struct ChkptFs {
    rt: tokio::runtime::Handle,
    client: Client,
    tree: Mutex<Tree>,
    /// Held while a window of a large file is fetched: the kernel's parallel read-ahead
    /// requests then wait for it and find their bytes, instead of each decoding the file
    /// again.
    window_fetch: Mutex<()>,
    uid: u32,
    gid: u32,
    mounted: SystemTime,
}

impl std::fmt::Debug for ChkptFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChkptFs").finish_non_exhaustive()
    }
}

fn ms(t: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(t)
}

/// An entry of a folder, as `readdir` and `lookup` see it.
#[derive(Debug)]
struct Child {
    ino: Ino,
    kind: FileType,
    name: Vec<u8>,
}

impl Child {
    fn new(ino: Ino, kind: FileType, name: &[u8]) -> Child {
        Child {
            ino,
            kind,
            name: name.to_vec(),
        }
    }
}

/// A daemon error as an errno; anything but "not found" is also told on stderr once.
fn errno(e: &Error) -> Errno {
    if let Error::Rpc(s) = e
        && s.code() == tonic::Code::NotFound
    {
        return Errno::ENOENT;
    }
    eprintln!("chkptctl mount: {e}");
    Errno::EIO
}

impl ChkptFs {
    /// A file system asking `client`, its futures run on `rt`.
    pub fn new(rt: tokio::runtime::Handle, client: Client) -> ChkptFs {
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        ChkptFs {
            rt,
            client,
            tree: Mutex::new(Tree::new()),
            window_fetch: Mutex::new(()),
            uid,
            gid,
            mounted: SystemTime::now(),
        }
    }

    fn tree(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node(&self, ino: INodeNo) -> Result<Node, Errno> {
        self.tree().node(ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn call<T>(&self, f: impl AsyncFnOnce(&mut Client) -> Result<T, Error>) -> Result<T, Errno> {
        let mut client = self.client.clone();
        self.rt.block_on(f(&mut client)).map_err(|e| errno(&e))
    }

    fn workspaces(&self) -> Result<tree::Workspaces, Errno> {
        if let Some((at, list)) = &self.tree().workspaces
            && at.elapsed() < tree::LIST_TTL
        {
            return Ok(list.clone());
        }
        let all = self.call(async |c| c.list_workspaces().await)?;
        let list = Arc::new(tree::workspace_names(&all));
        self.tree().workspaces = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    fn snapshots(&self, ws: Ino, path: &str) -> Result<Arc<SnapshotList>, Errno> {
        if let Some((at, list)) = self.tree().snapshots.get(&ws)
            && at.elapsed() < tree::LIST_TTL
        {
            return Ok(list.clone());
        }
        let path = path.to_owned();
        let snaps = self.call(async move |c| c.list(path, false, Some(MAX_SNAPSHOTS)).await)?;
        let list = Arc::new(SnapshotList {
            items: snaps
                .into_iter()
                .map(|s| (tree::snapshot_name(&s), s))
                .collect(),
        });
        self.tree()
            .snapshots
            .insert(ws, (Instant::now(), list.clone()));
        Ok(list)
    }

    /// The workspace path and snapshot id a node inside a snapshot belongs to.
    fn owner(&self, snap: Ino) -> Result<(String, String), Errno> {
        let t = self.tree();
        let Some(Node::Snapshot { ws, id, .. }) = t.node(snap) else {
            return Err(Errno::ENOENT);
        };
        let Some(Node::Workspace { path }) = t.node(*ws) else {
            return Err(Errno::ENOENT);
        };
        Ok((path.clone(), id.clone()))
    }

    /// A directory's entries: a snapshot's root, or a directory inside it.
    fn dir(&self, ino: Ino, node: &Node) -> Result<Arc<Vec<v1::TreeEntry>>, Errno> {
        if let Some(d) = self.tree().dirs.get(&ino) {
            return Ok(d.clone());
        }
        let (snap, path) = match node {
            Node::Snapshot { .. } => (ino, Vec::new()),
            Node::Entry { snap, path, entry } if tree::is_dir(entry) => (*snap, path.clone()),
            _ => return Err(Errno::ENOTDIR),
        };
        let (workspace, snapshot) = self.owner(snap)?;
        let req = v1::ListTreeRequest {
            workspace,
            snapshot,
            path,
        };
        let entries = Arc::new(self.call(async move |c| c.list_tree(req).await)?.entries);
        self.tree().dirs.insert(ino, entries.clone());
        Ok(entries)
    }

    fn attr(&self, ino: Ino, node: &Node) -> Result<FileAttr, Errno> {
        let dir = |mtime: SystemTime, perm: u16| (FileType::Directory, 0u64, perm, mtime);
        let (kind, size, perm, mtime) = match node {
            Node::Root | Node::Workspace { .. } => dir(self.mounted, 0o555),
            Node::Latest { ws } => {
                let target = self.latest_target(*ws)?;
                (FileType::Symlink, target.len() as u64, 0o777, self.mounted)
            }
            Node::Snapshot { created_ms, .. } => dir(ms(*created_ms), 0o755),
            Node::Entry { snap, entry, .. } => {
                // Trees keep no times: everything in a snapshot has the snapshot's.
                let mtime = match self.tree().node(*snap) {
                    Some(Node::Snapshot { created_ms, .. }) => ms(*created_ms),
                    _ => self.mounted,
                };
                let kind = if tree::is_dir(entry) {
                    FileType::Directory
                } else if tree::is_symlink(entry) {
                    FileType::Symlink
                } else {
                    FileType::RegularFile
                };
                (kind, entry.size, (entry.mode & 0o7777) as u16, mtime)
            }
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn ttl(node: &Node) -> Duration {
        match node {
            Node::Root | Node::Workspace { .. } | Node::Latest { .. } => TTL_LISTS,
            Node::Snapshot { .. } | Node::Entry { .. } => TTL_SNAPSHOT,
        }
    }

    fn latest_target(&self, ws: Ino) -> Result<String, Errno> {
        let path = match self.tree().node(ws) {
            Some(Node::Workspace { path }) => path.clone(),
            _ => return Err(Errno::ENOENT),
        };
        let list = self.snapshots(ws, &path)?;
        list.items
            .first()
            .map(|(n, _)| n.clone())
            .ok_or(Errno::ENOENT)
    }

    /// The children of a folder.
    fn children(&self, ino: Ino, node: &Node) -> Result<Vec<Child>, Errno> {
        match node {
            Node::Root => {
                let list = self.workspaces()?;
                let mut t = self.tree();
                Ok(list
                    .iter()
                    .map(|(name, path)| {
                        let path = path.clone();
                        let i = t.child(ino, name.as_bytes(), || Node::Workspace { path });
                        Child::new(i, FileType::Directory, name.as_bytes())
                    })
                    .collect())
            }
            Node::Workspace { path } => {
                let list = self.snapshots(ino, path)?;
                let mut t = self.tree();
                let mut out = Vec::with_capacity(list.items.len() + 1);
                if !list.items.is_empty() {
                    let l = t.child(ino, b"latest", || Node::Latest { ws: ino });
                    out.push(Child::new(l, FileType::Symlink, b"latest"));
                }
                for (name, s) in &list.items {
                    let i = t.child(ino, name.as_bytes(), || Node::Snapshot {
                        ws: ino,
                        id: s.id.clone(),
                        created_ms: s.created_unix_ms,
                    });
                    out.push(Child::new(i, FileType::Directory, name.as_bytes()));
                }
                Ok(out)
            }
            Node::Snapshot { .. } | Node::Entry { .. } => {
                let entries = self.dir(ino, node)?;
                let (snap, base) = match node {
                    Node::Entry { snap, path, .. } => (*snap, path.clone()),
                    _ => (ino, Vec::new()),
                };
                let mut t = self.tree();
                Ok(entries
                    .iter()
                    .map(|e| {
                        let mut path = base.clone();
                        if !path.is_empty() {
                            path.push(b'/');
                        }
                        path.extend_from_slice(&e.name);
                        let kind = if tree::is_dir(e) {
                            FileType::Directory
                        } else if tree::is_symlink(e) {
                            FileType::Symlink
                        } else {
                            FileType::RegularFile
                        };
                        let entry = e.clone();
                        let i = t.child(ino, &e.name, || Node::Entry { snap, path, entry });
                        Child::new(i, kind, &e.name)
                    })
                    .collect())
            }
            Node::Latest { .. } => Err(Errno::ENOTDIR),
        }
    }

    /// Bytes `offset..offset + size` of a file in a snapshot.
    fn read_bytes(&self, ino: Ino, node: &Node, offset: u64, size: u64) -> Result<Vec<u8>, Errno> {
        let Node::Entry { snap, path, entry } = node else {
            return Err(Errno::EISDIR);
        };
        if tree::is_dir(entry) {
            return Err(Errno::EISDIR);
        }
        let slice = |data: &[u8], from: u64| {
            let lo = (offset - from).min(data.len() as u64) as usize;
            let hi = (offset - from + size).min(data.len() as u64) as usize;
            data[lo..hi].to_vec()
        };
        if entry.size <= tree::WHOLE_FILE {
            if let Some(data) = self.tree().files.get(&ino) {
                return Ok(slice(data, 0));
            }
            let data = Arc::new(self.fetch(*snap, path, 0, 0)?);
            self.tree().keep_file(ino, data.clone());
            return Ok(slice(&data, 0));
        }
        let _one_at_a_time = self.window_fetch.lock().unwrap_or_else(|p| p.into_inner());
        let last = self.tree().windows.get(&ino).cloned();
        if let Some((from, data)) = &last
            && offset >= *from
            && offset + size <= *from + data.len() as u64
        {
            return Ok(slice(data, *from));
        }
        // A read that goes on where the last window ended is sequential: the window doubles
        // (each fetch of a large file decodes it from its start); a random one fetches little.
        let len = match &last {
            Some((from, data)) if offset >= *from && offset <= *from + data.len() as u64 => {
                (data.len() as u64 * 2).clamp(tree::WINDOW_MIN, tree::WINDOW_MAX)
            }
            _ => tree::WINDOW_MIN,
        }
        .max(size);
        let data = Arc::new(self.fetch(*snap, path, offset, len)?);
        self.tree().windows.insert(ino, (offset, data.clone()));
        Ok(slice(&data, offset))
    }

    fn fetch(&self, snap: Ino, path: &[u8], offset: u64, length: u64) -> Result<Vec<u8>, Errno> {
        let (workspace, snapshot) = self.owner(snap)?;
        let req = v1::ReadFileRequest {
            workspace,
            snapshot,
            path: path.to_vec(),
            offset,
            length,
        };
        self.call(async move |c| {
            let mut stream = c.read_file(req).await?;
            let mut out = Vec::new();
            while let Some(chunk) = stream.next().await? {
                if chunk.offset != offset + out.len() as u64 {
                    return Err(Error::Failed(format!(
                        "chkptd sent bytes at offset {} where {} was expected",
                        chunk.offset,
                        offset + out.len() as u64
                    )));
                }
                out.extend_from_slice(&chunk.data);
            }
            Ok(out)
        })
    }
}

impl Filesystem for ChkptFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let res = (|| {
            let node = self.node(parent)?;
            let name = name.as_bytes();
            if let Node::Workspace { .. } = node
                && name == b"latest"
            {
                let ino = self
                    .tree()
                    .child(parent.0, b"latest", || Node::Latest { ws: parent.0 });
                let node = self.node(INodeNo(ino))?;
                return Ok((self.attr(ino, &node)?, Self::ttl(&node)));
            }
            let children = self.children(parent.0, &node)?;
            let ino = children
                .into_iter()
                .find(|c| c.name == name)
                .ok_or(Errno::ENOENT)?
                .ino;
            let node = self.node(INodeNo(ino))?;
            Ok((self.attr(ino, &node)?, Self::ttl(&node)))
        })();
        match res {
            Ok((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self
            .node(ino)
            .and_then(|n| Ok((self.attr(ino.0, &n)?, Self::ttl(&n))))
        {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let res = match self.node(ino) {
            Ok(Node::Latest { ws }) => self.latest_target(ws).map(String::into_bytes),
            Ok(Node::Entry { entry, .. }) if tree::is_symlink(&entry) => Ok(entry.symlink_target),
            Ok(_) => Err(Errno::EINVAL),
            Err(e) => Err(e),
        };
        match res {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self
            .node(ino)
            .and_then(|n| self.read_bytes(ino.0, &n, offset, u64::from(size)))
        {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let children = match self.node(ino).and_then(|n| self.children(ino.0, &n)) {
            Ok(c) => c,
            Err(e) => return reply.error(e),
        };
        let dots = [
            Child::new(ino.0, FileType::Directory, b"."),
            Child::new(ino.0, FileType::Directory, b".."),
        ];
        for (
            i,
            Child {
                ino: child,
                kind,
                name,
            },
        ) in dots
            .into_iter()
            .chain(children)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(child), i as u64 + 1, kind, OsStr::from_bytes(&name)) {
                break;
            }
        }
        reply.ok();
    }
}
