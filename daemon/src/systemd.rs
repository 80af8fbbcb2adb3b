//! What chkptd speaks of systemd's service protocol, each part a no-op outside systemd:
//!
//! - socket activation (`sd_listen_fds(3)`): systemd binds the socket and passes it as fd 3,
//!   with `LISTEN_PID` set to the pid it is meant for and `LISTEN_FDS` to how many it passed;
//! - readiness (`sd_notify(3)`): `READY=1` and `STOPPING=1` as datagrams to `NOTIFY_SOCKET`,
//!   for `Type=notify`;
//! - the journal: `JOURNAL_STREAM` names the device and inode of the journal's stream, so
//!   logs can leave out the time journald adds anyway.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// How many fds were passed to the process `pid`, from the values of `LISTEN_PID` and
/// `LISTEN_FDS`: `None` unless both are set, well-formed, meant for `pid`, and at least one fd
/// was passed. A `LISTEN_PID` of another process means the variables were inherited from a
/// parent and are not ours.
pub fn listen_fds(listen_pid: Option<&OsStr>, listen_fds: Option<&OsStr>, pid: u32) -> Option<u32> {
    let number = |v: &OsStr| v.to_str()?.parse::<u32>().ok();
    if number(listen_pid?)? != pid {
        return None;
    }
    number(listen_fds?).filter(|&n| n >= 1)
}

/// Takes the first socket systemd passed to this process, if any, and removes `LISTEN_PID`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES` from the environment so that no child takes it too.
/// Later calls return `None`.
///
/// # Safety
///
/// No other thread may read or write the environment during the call (see
/// [`std::env::remove_var`]), and nothing else in the process may own fd 3 when systemd passed
/// it.
pub unsafe fn take_listen_fd() -> Option<OwnedFd> {
    let pid_var = std::env::var_os("LISTEN_PID");
    let fds_var = std::env::var_os("LISTEN_FDS");
    if pid_var.is_none() && fds_var.is_none() {
        return None;
    }
    let count = listen_fds(pid_var.as_deref(), fds_var.as_deref(), std::process::id());
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: the caller guarantees no other thread uses the environment now.
        unsafe { std::env::remove_var(name) };
    }
    let count = count?;
    if count > 1 {
        tracing::warn!(
            count,
            "systemd passed more than one socket; using only the first"
        );
    }
    // SAFETY: fcntl on any fd number is sound; F_GETFD fails on one that is not open.
    let flags = unsafe { libc::fcntl(LISTEN_FDS_START, libc::F_GETFD) };
    if flags < 0 {
        tracing::warn!(
            error = %io::Error::last_os_error(),
            "LISTEN_FDS is set but fd 3 is not open; binding our own socket"
        );
        return None;
    }
    // systemd passes the fd without close-on-exec; no child of ours should hold the socket.
    // SAFETY: fd 3 is open (checked above); setting its flags touches no memory.
    unsafe { libc::fcntl(LISTEN_FDS_START, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: systemd passed fd 3 to this process, the variables it came with are gone (so it
    // is taken once), and the caller guarantees that nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) })
}

/// Sends `state` (e.g. `READY=1`) to the service manager when `NOTIFY_SOCKET` is set.
/// Returns whether it was sent.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(addr) => notify_to(&addr, state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `state` to the notification socket `addr`: a path, or `@name` in Linux's abstract
/// namespace.
pub fn notify_to(addr: &OsStr, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    match addr.as_bytes() {
        [b'/', ..] => socket.send_to(state.as_bytes(), Path::new(addr))?,
        #[cfg(any(target_os = "linux", target_os = "android"))]
        [b'@', name @ ..] => {
            #[cfg(target_os = "android")]
            use std::os::android::net::SocketAddrExt;
            #[cfg(target_os = "linux")]
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET={} is not a socket path", addr.display()),
            ));
        }
    };
    Ok(())
}

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` is `<device>:<inode>` of it, and
/// is only believed when stderr still is that file (a child with stderr redirected inherits
/// the variable too).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata())
        .is_ok_and(|meta| meta.dev() == dev && meta.ino() == ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds(pid: Option<&str>, count: Option<&str>, me: u32) -> Option<u32> {
        listen_fds(pid.map(OsStr::new), count.map(OsStr::new), me)
    }

    #[test]
    fn listen_fds_are_ours_only_when_listen_pid_is_our_pid() {
        assert_eq!(fds(Some("42"), Some("1"), 42), Some(1));
        assert_eq!(fds(Some("42"), Some("3"), 42), Some(3));
        // Inherited from a parent that was socket-activated.
        assert_eq!(fds(Some("41"), Some("1"), 42), None);
    }

    #[test]
    fn missing_malformed_or_zero_listen_fds_mean_none() {
        assert_eq!(fds(None, Some("1"), 42), None);
        assert_eq!(fds(Some("42"), None, 42), None);
        assert_eq!(fds(Some("42"), Some("0"), 42), None);
        assert_eq!(fds(Some("42"), Some("-1"), 42), None);
        assert_eq!(fds(Some("42"), Some("one"), 42), None);
        assert_eq!(fds(Some(" 42"), Some("1"), 42), None);
        assert_eq!(fds(Some(""), Some("1"), 42), None);
    }

    #[test]
    fn notify_sends_the_state_as_one_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn notify_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("chkpt-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_notify_socket_that_is_no_path_is_an_error() {
        assert!(notify_to(OsStr::new("relative/notify"), "READY=1").is_err());
    }
}
