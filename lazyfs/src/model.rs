//! What is durable and what is not: the file system's state, independent of FUSE.
//!
//! The backing folder's `tree/` always holds the live state (what programs see); this module
//! remembers, in memory, what a power cut would take back:
//! 1. per file, the pages it overwrote or cut off since its last `fsync`/`fdatasync`, as they
//!    were then, and its length then (its durable content is the live one with those pages put
//!    back, cut to that length);
//! 2. per file, its mode as of its last `fsync`, when a `chmod` changed it since;
//! 3. per directory, its entries as of its last `fsync`, when a name in it was created,
//!    removed or renamed since (a new directory's durable entries are none);
//! 4. a file or directory whose last name went is moved to `limbo/` instead of being deleted,
//!    as long as some directory's durable entries still name it: a cut may bring it back.
//!
//! A cut ([`State::cut`]) makes the tree what the disk could hold after a power failure, then
//! everything is durable again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chkpt_testkit::Rng;

/// An entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirEntry {
    /// Its name.
    pub name: OsString,
    /// Its inode.
    pub ino: Ino,
    /// What it is.
    pub kind: Kind,
}

/// The unit in which unsynced data is lost or kept.
pub const PAGE: u64 = 4096;
/// The root directory's inode number.
pub const ROOT: Ino = 1;

/// An inode number of this file system (stable for its lifetime, across remounts).
pub type Ino = u64;

/// What a power cut keeps of what was not durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing: every unsynced page, length, mode and name goes back to its durable state.
    LoseAll,
    /// A choice per page, per file length and mode, and per directory, drawn from this seed:
    /// each unsynced page is either written or not, a file's length is its durable one, its
    /// live one or a page boundary between, and a directory's entries are either all as they
    /// were at its last `fsync` or all as they are now (directories linked by a rename between
    /// them since decide together).
    Torn(u64),
}

/// What a cut did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose unsynced data was in play.
    pub files: u64,
    /// Unsynced pages that were lost (put back to their durable content).
    pub pages_lost: u64,
    /// Unsynced pages that were kept.
    pub pages_kept: u64,
    /// Directories with unsynced entries that went back to their durable entries.
    pub dirs_reverted: u64,
    /// Directories with unsynced entries that kept them.
    pub dirs_kept: u64,
    /// Files and directories no durable name leads to any more: gone.
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
}

/// A file's unsynced changes (rule 1).
#[derive(Debug, Default)]
struct DataUndo {
    durable_len: u64,
    /// Durable content of pages below `durable_len` changed since (the last one may be short).
    old_pages: HashMap<u64, Vec<u8>>,
    /// Pages written since.
    dirty: BTreeSet<u64>,
    /// The shortest length the file had since: content from there on may differ.
    floor: u64,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    /// The directory it is in; none in limbo (and for the root).
    parent: Option<Ino>,
    name: OsString,
    children: BTreeMap<OsString, Ino>,
    /// Rule 3.
    durable_children: Option<BTreeMap<OsString, Ino>>,
    /// When this directory's entries were last durable (a sequence number).
    synced_at: u64,
    undo: Option<DataUndo>,
    /// Rule 2.
    durable_mode: Option<u32>,
    open: u32,
}

impl Node {
    fn new(kind: Kind, parent: Ino, name: &OsStr, seq: u64) -> Node {
        Node {
            kind,
            parent: Some(parent),
            name: name.to_owned(),
            children: BTreeMap::new(),
            durable_children: (kind == Kind::Dir).then(BTreeMap::new),
            synced_at: seq,
            undo: (kind == Kind::File).then(DataUndo::default),
            durable_mode: None,
            open: 0,
        }
    }
}

/// The whole state. Methods take and return `io::Error`s with an OS error code, which the
/// FUSE layer passes on.
#[derive(Debug)]
pub struct State {
    tree: PathBuf,
    limbo: PathBuf,
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    seq: u64,
    /// Directory pairs linked by a rename between them since the last cut.
    links: Vec<(Ino, Ino)>,
}

pub(crate) fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// What a cut decides.
enum Chooser {
    LoseAll,
    Random(Rng),
}

impl Chooser {
    /// Whether something not durable survives the cut.
    fn keeps(&mut self) -> bool {
        match self {
            Chooser::LoseAll => false,
            Chooser::Random(r) => r.below(2) == 0,
        }
    }
}

impl State {
    /// The state of the backing folder `backing` (its `tree/` is created if missing): all of it
    /// durable.
    pub fn load_backing(backing: &Path) -> io::Result<State> {
        let tree = backing.join("tree");
        let limbo = backing.join("limbo");
        fs::create_dir_all(&tree)?;
        fs::create_dir_all(&limbo)?;
        let mut s = State {
            tree,
            limbo,
            nodes: HashMap::new(),
            next_ino: ROOT + 1,
            seq: 1,
            links: Vec::new(),
        };
        let mut root = Node::new(Kind::Dir, ROOT, OsStr::new(""), 0);
        root.parent = None;
        root.durable_children = None;
        s.nodes.insert(ROOT, root);
        // Whatever limbo held is not reachable: a previous run's leftovers.
        for e in fs::read_dir(&s.limbo)? {
            remove_any(&e?.path())?;
        }
        s.load(ROOT)?;
        Ok(s)
    }

    fn load(&mut self, dir: Ino) -> io::Result<()> {
        let path = self.path(dir);
        let mut entries = Vec::new();
        for e in fs::read_dir(&path)? {
            let e = e?;
            let t = e.file_type()?;
            let kind = if t.is_dir() {
                Kind::Dir
            } else if t.is_symlink() {
                Kind::Symlink
            } else if t.is_file() {
                Kind::File
            } else {
                continue; // fifos and such: not shown
            };
            entries.push((e.file_name(), kind));
        }
        for (name, kind) in entries {
            let ino = self.alloc();
            let mut n = Node::new(kind, dir, &name, 0);
            n.durable_children = None;
            n.undo = None;
            self.nodes.insert(ino, n);
            self.node_mut(dir)?.children.insert(name, ino);
            if kind == Kind::Dir {
                self.load(ino)?;
            }
        }
        Ok(())
    }

    fn alloc(&mut self) -> Ino {
        let i = self.next_ino;
        self.next_ino += 1;
        i
    }

    fn tick(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub(crate) fn node(&self, ino: Ino) -> io::Result<&Node> {
        self.nodes.get(&ino).ok_or_else(|| errno(libc::ENOENT))
    }

    fn node_mut(&mut self, ino: Ino) -> io::Result<&mut Node> {
        self.nodes.get_mut(&ino).ok_or_else(|| errno(libc::ENOENT))
    }

    /// Where the inode is in the backing folder.
    pub fn path(&self, ino: Ino) -> PathBuf {
        let mut names = Vec::new();
        let mut at = ino;
        loop {
            if at == ROOT {
                break;
            }
            match self.nodes.get(&at) {
                Some(n) => match n.parent {
                    Some(p) => {
                        names.push(n.name.clone());
                        at = p;
                    }
                    None => {
                        let mut p = self.limbo.join(at.to_string());
                        for name in names.iter().rev() {
                            p.push(name);
                        }
                        return p;
                    }
                },
                None => return self.limbo.join(format!("gone-{ino}")),
            }
        }
        let mut p = self.tree.clone();
        for name in names.iter().rev() {
            p.push(name);
        }
        p
    }

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> io::Result<Ino> {
        let p = self.node(parent)?;
        if p.kind != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        p.children
            .get(name)
            .copied()
            .ok_or_else(|| errno(libc::ENOENT))
    }

    /// The entries of a directory, sorted by name.
    pub(crate) fn entries(&self, dir: Ino) -> io::Result<Vec<DirEntry>> {
        let d = self.node(dir)?;
        if d.kind != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        Ok(d.children
            .iter()
            .map(|(n, i)| DirEntry {
                name: n.clone(),
                ino: *i,
                kind: self.nodes.get(i).map_or(Kind::File, |c| c.kind),
            })
            .collect())
    }

    /// The parent directory of `ino` (the root's is itself).
    pub fn parent(&self, ino: Ino) -> Ino {
        self.nodes.get(&ino).and_then(|n| n.parent).unwrap_or(ROOT)
    }

    /// Rule 3: keeps `dir`'s durable entries before the first change since its last fsync.
    fn touch_dir(&mut self, dir: Ino) -> io::Result<()> {
        let d = self.node_mut(dir)?;
        if d.kind != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        if d.durable_children.is_none() {
            d.durable_children = Some(d.children.clone());
        }
        Ok(())
    }

    fn check_new(&self, parent: Ino, name: &OsStr) -> io::Result<()> {
        if self.lookup(parent, name).is_ok() {
            return Err(errno(libc::EEXIST));
        }
        if name.is_empty() || name.len() > 255 {
            return Err(errno(libc::EINVAL));
        }
        Ok(())
    }

    fn add(&mut self, parent: Ino, name: &OsStr, kind: Kind) -> io::Result<Ino> {
        self.touch_dir(parent)?;
        let ino = self.alloc();
        let seq = self.tick();
        self.nodes.insert(ino, Node::new(kind, parent, name, seq));
        self.node_mut(parent)?.children.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Creates a directory.
    pub fn mkdir(&mut self, parent: Ino, name: &OsStr, mode: u32) -> io::Result<Ino> {
        self.check_new(parent, name)?;
        let path = self.path(parent).join(name);
        fs::create_dir(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
        self.add(parent, name, Kind::Dir)
    }

    /// Creates a regular file and opens it.
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> io::Result<(Ino, File)> {
        self.check_new(parent, name)?;
        let path = self.path(parent).join(name);
        let file = open_flags(flags).create_new(true).open(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
        let ino = self.add(parent, name, Kind::File)?;
        self.node_mut(ino)?.open += 1;
        Ok((ino, file))
    }

    /// Creates a symlink.
    pub fn symlink(&mut self, parent: Ino, name: &OsStr, target: &Path) -> io::Result<Ino> {
        self.check_new(parent, name)?;
        std::os::unix::fs::symlink(target, self.path(parent).join(name))?;
        self.add(parent, name, Kind::Symlink)
    }

    /// Opens a file.
    pub fn open(&mut self, ino: Ino, flags: i32) -> io::Result<File> {
        let path = self.path(ino);
        if self.node(ino)?.kind != Kind::File {
            return Err(errno(libc::EINVAL));
        }
        let f = open_flags(flags).open(path)?;
        self.node_mut(ino)?.open += 1;
        Ok(f)
    }

    /// A handle on `ino` was closed.
    pub fn release(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.open = n.open.saturating_sub(1);
        }
        self.collect(&[ino]);
    }

    /// Whether some directory's durable entries name `ino`.
    fn durably_named(&self, ino: Ino) -> bool {
        self.nodes.values().any(|n| {
            n.durable_children
                .as_ref()
                .is_some_and(|c| c.values().any(|&i| i == ino))
        })
    }

    /// Rule 4: forgets what nothing can bring back.
    fn collect(&mut self, candidates: &[Ino]) {
        for &ino in candidates {
            let Some(n) = self.nodes.get(&ino) else {
                continue;
            };
            if n.parent.is_some() || ino == ROOT || n.open > 0 || self.durably_named(ino) {
                continue;
            }
            if n.kind == Kind::Dir && !n.children.is_empty() {
                continue;
            }
            let path = self.path(ino);
            let _ = remove_any(&path);
            let old: Vec<Ino> = n
                .durable_children
                .as_ref()
                .map(|c| c.values().copied().collect())
                .unwrap_or_default();
            self.nodes.remove(&ino);
            self.collect(&old);
        }
    }

    /// Takes `ino`'s name away (it is moved to limbo).
    fn detach(&mut self, parent: Ino, name: &OsStr) -> io::Result<Ino> {
        let ino = self.lookup(parent, name)?;
        self.touch_dir(parent)?;
        let from = self.path(ino);
        fs::rename(&from, self.limbo.join(ino.to_string()))?;
        self.node_mut(parent)?.children.remove(name);
        self.node_mut(ino)?.parent = None;
        Ok(ino)
    }

    /// Removes a file or symlink.
    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> io::Result<()> {
        let ino = self.lookup(parent, name)?;
        if self.node(ino)?.kind == Kind::Dir {
            return Err(errno(libc::EISDIR));
        }
        self.detach(parent, name)?;
        self.collect(&[ino]);
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> io::Result<()> {
        let ino = self.lookup(parent, name)?;
        let n = self.node(ino)?;
        if n.kind != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        if !n.children.is_empty() {
            return Err(errno(libc::ENOTEMPTY));
        }
        self.detach(parent, name)?;
        self.collect(&[ino]);
        Ok(())
    }

    /// Renames; `noreplace` fails with `EEXIST` instead of replacing.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        noreplace: bool,
    ) -> io::Result<()> {
        let ino = self.lookup(parent, name)?;
        if self.node(new_parent)?.kind != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        if new_name.is_empty() || new_name.len() > 255 {
            return Err(errno(libc::EINVAL));
        }
        let is_dir = self.node(ino)?.kind == Kind::Dir;
        // A directory cannot go into itself.
        let mut at = new_parent;
        while at != ROOT {
            if at == ino {
                return Err(errno(libc::EINVAL));
            }
            at = self.parent(at);
        }
        let replaced = self.lookup(new_parent, new_name).ok();
        if replaced == Some(ino) {
            return Ok(());
        }
        if let Some(old) = replaced {
            if noreplace {
                return Err(errno(libc::EEXIST));
            }
            let o = self.node(old)?;
            match (is_dir, o.kind == Kind::Dir) {
                (true, false) => return Err(errno(libc::ENOTDIR)),
                (false, true) => return Err(errno(libc::EISDIR)),
                (true, true) if !o.children.is_empty() => return Err(errno(libc::ENOTEMPTY)),
                _ => {}
            }
        }
        self.touch_dir(parent)?;
        self.touch_dir(new_parent)?;
        if replaced.is_some() {
            self.detach(new_parent, new_name)?;
        }
        let from = self.path(ino);
        let to = self.path(new_parent).join(new_name);
        fs::rename(&from, &to)?;
        self.node_mut(parent)?.children.remove(name);
        self.node_mut(new_parent)?
            .children
            .insert(new_name.to_owned(), ino);
        let n = self.node_mut(ino)?;
        n.parent = Some(new_parent);
        n.name = new_name.to_owned();
        if parent != new_parent {
            self.links.push((parent, new_parent));
        }
        if let Some(old) = replaced {
            self.collect(&[old]);
        }
        Ok(())
    }

    /// Rule 1, before `file` (inode `ino`) is written at `[offset, offset + len)`.
    pub fn before_write(&mut self, ino: Ino, file: &File, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let n = self.node_mut(ino)?;
        let undo = n.undo.get_or_insert_with(|| {
            let l = file.metadata().map(|m| m.len()).unwrap_or(0);
            DataUndo {
                durable_len: l,
                floor: l,
                ..Default::default()
            }
        });
        let (first, last) = (offset / PAGE, (offset + len - 1) / PAGE);
        for p in first..=last {
            save_page(undo, file, p)?;
            undo.dirty.insert(p);
        }
        Ok(())
    }

    /// Rule 1, before the file is cut or grown to `size`.
    pub fn before_truncate(&mut self, ino: Ino, file: &File, size: u64) -> io::Result<()> {
        let live = file.metadata()?.len();
        let n = self.node_mut(ino)?;
        let undo = n.undo.get_or_insert_with(|| DataUndo {
            durable_len: live,
            floor: live,
            ..Default::default()
        });
        let from = size.min(live);
        for p in from / PAGE..undo.durable_len.div_ceil(PAGE) {
            save_page(undo, file, p)?;
        }
        undo.floor = undo.floor.min(from);
        Ok(())
    }

    /// Rule 2, before a `chmod`.
    pub fn before_chmod(&mut self, ino: Ino) -> io::Result<()> {
        let path = self.path(ino);
        let n = self.node_mut(ino)?;
        if n.durable_mode.is_none() && n.kind != Kind::Symlink {
            n.durable_mode = Some(fs::symlink_metadata(path)?.mode() & 0o7777);
        }
        Ok(())
    }

    /// `fsync` (`data_only`: `fdatasync`) of a file.
    pub fn fsync(&mut self, ino: Ino, data_only: bool) -> io::Result<()> {
        let n = self.node_mut(ino)?;
        n.undo = None;
        if !data_only {
            n.durable_mode = None;
        }
        Ok(())
    }

    /// `fsync` of a directory: its entries are durable.
    pub fn fsyncdir(&mut self, ino: Ino) -> io::Result<()> {
        let seq = self.tick();
        let n = self.node_mut(ino)?;
        if n.kind != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        n.durable_mode = None;
        n.synced_at = seq;
        let old: Vec<Ino> = n
            .durable_children
            .take()
            .map(|c| c.into_values().collect())
            .unwrap_or_default();
        self.collect(&old);
        Ok(())
    }

    /// Makes everything durable (as `sync` would, or a machine left running long enough).
    pub fn sync_all(&mut self) {
        let seq = self.tick();
        let mut limbo = Vec::new();
        for (&ino, n) in &mut self.nodes {
            n.undo = None;
            n.durable_mode = None;
            n.durable_children = None;
            n.synced_at = seq;
            if n.parent.is_none() && ino != ROOT {
                limbo.push(ino);
            }
        }
        self.links.clear();
        self.collect(&limbo);
    }

    /// Whether anything is not durable.
    pub fn dirty(&self) -> bool {
        self.nodes
            .values()
            .any(|n| n.undo.is_some() || n.durable_mode.is_some() || n.durable_children.is_some())
    }

    /// The power cut: the tree becomes what the disk may hold (see [`Cut`]), all of it durable.
    /// Only while nothing has a file open (the file system is unmounted).
    pub fn cut(&mut self, how: Cut) -> io::Result<CutReport> {
        let mut chooser = match how {
            Cut::LoseAll => Chooser::LoseAll,
            Cut::Torn(seed) => Chooser::Random(Rng::new(seed)),
        };
        let mut report = CutReport::default();
        // Data and modes, where the inodes are now.
        let mut inos: Vec<Ino> = self.nodes.keys().copied().collect();
        inos.sort_unstable();
        for &ino in &inos {
            let path = self.path(ino);
            let n = self.nodes.get_mut(&ino).expect("listed");
            n.open = 0;
            if let Some(undo) = n.undo.take() {
                report.files += 1;
                tear(&path, &undo, &mut chooser, &mut report)?;
            }
            if let Some(mode) = n.durable_mode.take()
                && !chooser.keeps()
            {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            }
        }
        // Names: which directories keep their unsynced entries (linked ones decide together).
        let dirs: Vec<Ino> = inos
            .iter()
            .copied()
            .filter(|i| self.nodes[i].kind == Kind::Dir)
            .collect();
        let mut group: HashMap<Ino, Ino> = dirs.iter().map(|&d| (d, d)).collect();
        fn find(g: &mut HashMap<Ino, Ino>, mut x: Ino) -> Ino {
            while let Some(&p) = g.get(&x) {
                if p == x {
                    break;
                }
                x = p;
            }
            x
        }
        for &(a, b) in &self.links {
            let (ra, rb) = (find(&mut group, a), find(&mut group, b));
            if ra != rb {
                group.insert(ra.max(rb), ra.min(rb));
            }
        }
        let mut decided: HashMap<Ino, bool> = HashMap::new();
        // (entries, when they were the directory's) per directory.
        let mut finals: Vec<(Ino, BTreeMap<OsString, Ino>, u64)> = Vec::new();
        for &d in &dirs {
            let n = &self.nodes[&d];
            match &n.durable_children {
                Some(durable) => {
                    let root = find(&mut group, d);
                    let keep = *decided.entry(root).or_insert_with(|| chooser.keeps());
                    if keep {
                        report.dirs_kept += 1;
                        finals.push((d, n.children.clone(), u64::MAX));
                    } else {
                        report.dirs_reverted += 1;
                        finals.push((d, durable.clone(), n.synced_at));
                    }
                }
                None => finals.push((d, n.children.clone(), u64::MAX)),
            }
        }
        // An inode two directories name (a rename between them, one synced since): the newer
        // picture of the two wins.
        let mut best: HashMap<Ino, (u64, Ino, OsString)> = HashMap::new();
        for (d, entries, at) in &finals {
            for (name, &child) in entries {
                let cand = (*at, *d, name.clone());
                match best.get(&child) {
                    Some(b)
                        if (b.0, std::cmp::Reverse(b.1)) >= (cand.0, std::cmp::Reverse(cand.1)) => {
                    }
                    _ => {
                        best.insert(child, cand);
                    }
                }
            }
        }
        let mut kids: HashMap<Ino, Vec<(OsString, Ino)>> = HashMap::new();
        for (child, (_, d, name)) in &best {
            if self.nodes.contains_key(child) && *child != ROOT {
                kids.entry(*d).or_default().push((name.clone(), *child));
            }
        }
        // Reachable from the root, in order (parents before children).
        let mut order: Vec<(Ino, Ino, OsString)> = Vec::new();
        let mut seen: HashSet<Ino> = HashSet::from([ROOT]);
        let mut stack = vec![ROOT];
        while let Some(d) = stack.pop() {
            let mut list = kids.remove(&d).unwrap_or_default();
            list.sort();
            for (name, c) in list {
                if seen.insert(c) {
                    order.push((c, d, name));
                    if self.nodes[&c].kind == Kind::Dir {
                        stack.push(c);
                    }
                }
            }
        }
        // Everything into limbo, deepest first, then back where the cut put it.
        let mut live: Vec<(usize, Ino)> = Vec::new();
        for &ino in &inos {
            if ino == ROOT || self.nodes[&ino].parent.is_none() {
                continue;
            }
            let mut depth = 0;
            let mut at = ino;
            while at != ROOT {
                depth += 1;
                at = self.parent(at);
            }
            live.push((depth, ino));
        }
        live.sort_unstable_by(|a, b| b.cmp(a));
        for &(_, ino) in &live {
            let from = self.path(ino);
            fs::rename(&from, self.limbo.join(ino.to_string()))?;
        }
        for &(_, ino) in &live {
            self.nodes.get_mut(&ino).expect("listed").parent = None;
        }
        for n in self.nodes.values_mut() {
            n.children.clear();
        }
        for (c, d, name) in &order {
            let to = self.path(*d).join(name);
            fs::rename(self.limbo.join(c.to_string()), &to)?;
            let n = self.nodes.get_mut(c).expect("reachable");
            n.parent = Some(*d);
            n.name = name.clone();
            self.nodes
                .get_mut(d)
                .expect("reachable")
                .children
                .insert(name.clone(), *c);
        }
        let before = self.nodes.len();
        self.nodes.retain(|i, _| seen.contains(i));
        report.dropped = (before - self.nodes.len()) as u64;
        for e in fs::read_dir(&self.limbo)? {
            remove_any(&e?.path())?;
        }
        let seq = self.tick();
        for n in self.nodes.values_mut() {
            n.durable_children = None;
            n.durable_mode = None;
            n.undo = None;
            n.synced_at = seq;
        }
        self.links.clear();
        Ok(report)
    }
}

/// Backing files are always opened for reading and writing: keeping a page's durable content
/// before a write needs to read it, whatever the program asked for (the kernel checked that).
fn open_flags(_flags: i32) -> fs::OpenOptions {
    let mut o = fs::OpenOptions::new();
    o.read(true).write(true);
    o
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Keeps page `p`'s durable content, if it has one and it is not kept yet.
fn save_page(undo: &mut DataUndo, file: &File, p: u64) -> io::Result<()> {
    let start = p * PAGE;
    if start >= undo.durable_len || undo.old_pages.contains_key(&p) {
        return Ok(());
    }
    let len = PAGE.min(undo.durable_len - start) as usize;
    let mut buf = vec![0u8; len];
    let n = read_at_most(file, &mut buf, start)?;
    // Bytes the file no longer had (cut off earlier) were saved then; here they read as zeros.
    buf[n..].fill(0);
    undo.old_pages.insert(p, buf);
    Ok(())
}

fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Rule 1 at a cut: each unsynced page of the file at `path` is lost or kept, and its length
/// becomes its durable one, its live one, or a page boundary between.
fn tear(
    path: &Path,
    undo: &DataUndo,
    chooser: &mut Chooser,
    report: &mut CutReport,
) -> io::Result<()> {
    let file = fs::OpenOptions::new().read(true).write(true).open(path)?;
    let live = file.metadata()?.len();
    let durable = undo.durable_len;
    let (lo, hi) = (durable.min(live), durable.max(live));
    let len = match chooser {
        Chooser::LoseAll => durable,
        Chooser::Random(r) => match r.below(3) {
            0 => durable,
            1 => live,
            _ => {
                let pages = (hi - lo).div_ceil(PAGE);
                (lo.div_ceil(PAGE) * PAGE + r.below(pages + 1) * PAGE).clamp(lo, hi)
            }
        },
    };
    // Pages whose live and durable content may differ.
    let boundary = undo.floor.min(lo);
    let mut pages: BTreeSet<u64> = undo.dirty.iter().copied().collect();
    pages.extend(undo.old_pages.keys().copied());
    pages.extend(boundary / PAGE..len.div_ceil(PAGE));
    let mut rewrites: Vec<(u64, Vec<u8>)> = Vec::new();
    for p in pages {
        let start = p * PAGE;
        if start >= len {
            report.pages_lost += 1; // cut off with the length
            continue;
        }
        let end = (start + PAGE).min(len);
        if chooser.keeps() {
            report.pages_kept += 1;
            continue;
        }
        report.pages_lost += 1;
        let mut page = vec![0u8; (end - start) as usize];
        match undo.old_pages.get(&p) {
            Some(old) => {
                let k = old.len().min(page.len());
                page[..k].copy_from_slice(&old[..k]);
            }
            // Never changed below the durable length: the live bytes are the durable ones.
            None if start < durable => {
                let upto = (durable.min(end) - start) as usize;
                let n = read_at_most(&file, &mut page[..upto], start)?;
                page[n..].fill(0);
            }
            None => {}
        }
        rewrites.push((start, page));
    }
    if len > live {
        file.set_len(len)?;
    }
    for (at, page) in rewrites {
        file.write_all_at(&page, at)?;
    }
    file.set_len(len)?;
    Ok(())
}
