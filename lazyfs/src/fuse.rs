//! The FUSE side: each request becomes a call on the shared [`State`], under its lock (one
//! request at a time: the file systems these tests build are small).
//!
//! Every change goes through the kernel, which keeps its caches of names and attributes in
//! line; a cut changes the backing folder behind its back, so it is made only while unmounted,
//! and the remount starts with empty caches (names, attributes and file pages).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::model::{DirEntry, Ino, Kind, State, errno};

const TTL: Duration = Duration::from_secs(1);

pub(crate) fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// One mount's view of the shared state, with its open files.
#[derive(Debug)]
pub(crate) struct LazyFs {
    pub(crate) state: Arc<Mutex<State>>,
    handles: Mutex<HashMap<u64, (Ino, Arc<File>)>>,
    /// Open directories: their entries as of `opendir`, so that offsets stay valid while
    /// entries are removed (POSIX leaves it open whether those still show).
    dirs: Mutex<HashMap<u64, Vec<DirEntry>>>,
    next_fh: AtomicU64,
}

impl LazyFs {
    pub(crate) fn new(state: Arc<Mutex<State>>) -> LazyFs {
        LazyFs {
            state,
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    fn handle(&self, fh: FileHandle) -> Result<(Ino, Arc<File>), Errno> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn add_handle(&self, ino: Ino, file: File) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, (ino, Arc::new(file)));
        FileHandle(fh)
    }

    fn attr_of(&self, state: &State, ino: Ino) -> io::Result<FileAttr> {
        let meta = std::fs::symlink_metadata(state.path(ino))?;
        Ok(attr(ino, &meta))
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

fn attr(ino: Ino, m: &Metadata) -> FileAttr {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn kind_of(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::File => FileType::RegularFile,
    }
}

fn err(e: io::Error) -> Errno {
    Errno::from(e)
}

fn set_time(path: &Path, atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> io::Result<()> {
    let spec = |t: Option<TimeOrNow>| match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            }
        }
    };
    let times = [spec(atime), spec(mtime)];
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| errno(libc::EINVAL))?;
    // SAFETY: a valid NUL-terminated path and two timespecs that outlive the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = lock(&self.state);
        match s.lookup(parent.0, name).and_then(|i| self.attr_of(&s, i)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(fh) = fh
            && let Ok((i, f)) = self.handle(fh)
        {
            return match f.metadata() {
                Ok(m) => reply.attr(&TTL, &attr(i, &m)),
                Err(e) => reply.error(err(e)),
            };
        }
        let s = lock(&self.state);
        match s.node(ino.0).and_then(|_| self.attr_of(&s, ino.0)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        let mut s = lock(&self.state);
        let res = (|| -> io::Result<FileAttr> {
            let path = s.path(ino.0);
            if let Some(size) = size {
                let file = match &handle {
                    Some((_, f)) => f.clone(),
                    None => Arc::new(
                        std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(&path)?,
                    ),
                };
                s.before_truncate(ino.0, &file, size)?;
                file.set_len(size)?;
            }
            if let Some(mode) = mode {
                s.before_chmod(ino.0)?;
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
                )?;
            }
            if atime.is_some() || mtime.is_some() {
                set_time(&path, atime, mtime)?;
            }
            self.attr_of(&s, ino.0)
        })();
        match res {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let s = lock(&self.state);
        match std::fs::read_link(s.path(ino.0)) {
            Ok(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = lock(&self.state);
        match s
            .mkdir(parent.0, name, mode)
            .and_then(|i| self.attr_of(&s, i))
        {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match lock(&self.state).unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match lock(&self.state).rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let mut s = lock(&self.state);
        match s
            .symlink(parent.0, link_name, target)
            .and_then(|i| self.attr_of(&s, i))
        {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match lock(&self.state).rename(parent.0, name, newparent.0, newname, noreplace) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let res = lock(&self.state).open(ino.0, flags.0);
        match res {
            Ok(f) => reply.opened(self.add_handle(ino.0, f), FopenFlags::empty()),
            Err(e) => reply.error(err(e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = lock(&self.state);
        let res = s.create(parent.0, name, mode, flags).and_then(|(i, f)| {
            let a = attr(i, &f.metadata()?);
            Ok((i, f, a))
        });
        drop(s);
        match res {
            Ok((i, f, a)) => {
                let fh = self.add_handle(i, f);
                reply.created(&TTL, &a, Generation(0), fh, FopenFlags::empty());
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (_, f) = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let _s = lock(&self.state);
        let mut buf = vec![0u8; size as usize];
        let mut n = 0;
        while n < buf.len() {
            match f.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(err(e)),
            }
        }
        reply.data(&buf[..n]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (ino, f) = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let mut s = lock(&self.state);
        let res = s
            .before_write(ino, &f, offset, data.len() as u64)
            .and_then(|()| f.write_all_at(data, offset));
        match res {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let gone = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        if let Some((ino, _)) = gone {
            lock(&self.state).release(ino);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match lock(&self.state).fsync(ino.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let s = lock(&self.state);
        let entries = match s.entries(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(err(e)),
        };
        let parent = s.parent(ino.0);
        drop(s);
        let all: Vec<_> = [
            DirEntry {
                name: OsStr::new(".").to_owned(),
                ino: ino.0,
                kind: Kind::Dir,
            },
            DirEntry {
                name: OsStr::new("..").to_owned(),
                ino: parent,
                kind: Kind::Dir,
            },
        ]
        .into_iter()
        .chain(entries)
        .collect();
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, all);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(all) = dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, e) in all.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, kind_of(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match lock(&self.state).fsyncdir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let path = lock(&self.state).path(crate::model::ROOT);
        let c = match std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
            path.as_os_str(),
        )) {
            Ok(c) => c,
            Err(_) => return reply.error(Errno::EINVAL),
        };
        // SAFETY: statvfs fills the zeroed struct for a valid NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return reply.error(err(io::Error::last_os_error()));
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }
}
