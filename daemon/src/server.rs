//! Serving: the socket, the services, and an orderly shutdown.
//!
//! Start-up: private umask, take the socket systemd passed if it started us (socket
//! activation), open the store (its lock stops a second daemon on the same data directory),
//! else claim the socket (a leftover one is removed only when connecting to it is refused),
//! tell systemd we are ready, then serve and re-watch the workspaces of the last run in the
//! background.
//!
//! Shutdown (SIGTERM, SIGINT): stop accepting RPCs and let those in flight finish, stop the
//! watchers (a save in flight completes), flush the catalog, remove the socket (unless
//! systemd owns it).

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chkpt_proto::v1::chkpt_server::ChkptServer;
use chkpt_proto::v1::remotes_server::RemotesServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

use crate::config::{Config, prepare_socket_dir};
use crate::engine::Engine;
use crate::service::Service;
use crate::store::Store;
use crate::workspace::WatchOptions;

/// Why the daemon could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another daemon answers on the socket.
    #[error(
        "another chkptd is already serving on {0}; stop it with `chkptctl daemon stop` or pass another --socket"
    )]
    AlreadyRunning(PathBuf),
    /// The socket could not be set up.
    #[error("socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Only the user the daemon runs as may talk to it.
#[allow(clippy::result_large_err)]
pub fn check_peer(req: Request<()>) -> Result<Request<()>, Status> {
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    let peer = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| c.uid());
    check_uid(peer, me)?;
    Ok(req)
}

/// The rule behind [`check_peer`].
#[allow(clippy::result_large_err)]
pub fn check_uid(peer: Option<u32>, me: u32) -> Result<(), Status> {
    match peer {
        Some(uid) if uid == me => Ok(()),
        Some(uid) => Err(Status::permission_denied(format!(
            "uid {uid} may not use the chkptd of uid {me}"
        ))),
        None => Err(Status::permission_denied(
            "the caller's credentials are unknown",
        )),
    }
}

/// Binds the socket, mode 0600 from the start (the process umask is 077).
fn claim_socket(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        prepare_socket_dir(dir).map_err(err)?;
    }
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ServeError::AlreadyRunning(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "removing a stale socket");
                std::fs::remove_file(path).map_err(err)?;
            }
            Err(e) => return Err(err(e)),
        }
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// The listening socket systemd passed to this process (socket activation, taken by `main`
/// with [`take_listen_fd`](crate::systemd::take_listen_fd) before any thread started) and its
/// path, or `None` when it passed none; then chkptd binds its own.
fn activated_listener(
    fd: Option<std::os::fd::OwnedFd>,
) -> Result<Option<(UnixListener, PathBuf)>, ServeError> {
    let Some(fd) = fd else {
        return Ok(None);
    };
    let err = |source| ServeError::Socket {
        path: PathBuf::from("(fd 3 from systemd)"),
        source,
    };
    let listener = std::os::unix::net::UnixListener::from(fd);
    // Fails unless fd 3 is a Unix socket; an abstract one has no path to report.
    let addr = listener.local_addr().map_err(err)?;
    let path = addr.as_pathname().map_or_else(
        || PathBuf::from("(unnamed socket from systemd)"),
        Path::to_path_buf,
    );
    listener.set_nonblocking(true).map_err(err)?;
    Ok(Some((UnixListener::from_std(listener).map_err(err)?, path)))
}

/// Runs the daemon until `shutdown` completes, serving on `activation` (the socket systemd
/// passed, if any) or on a socket of its own.
pub async fn run(
    config: Config,
    activation: Option<std::os::fd::OwnedFd>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    // SAFETY: umask only sets the process's file creation mask.
    unsafe { libc::umask(0o077) };
    let activated = activated_listener(activation)?;
    let data_dir = config
        .data_dir()
        .map_err(|e| crate::Error::io("data directory", e))?;
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir))
        .await
        .map_err(|e| crate::Error::io("store", io::Error::other(e)))??;
    // systemd owns a socket it passed: it stays when chkptd stops, for the next activation.
    let (listener, socket, owns_socket) = match activated {
        Some((listener, path)) => (listener, path, false),
        None => {
            let path = config.socket_path();
            (claim_socket(&path)?, path, true)
        }
    };
    let defaults = WatchOptions {
        idle_ms: duration_ms(config.idle),
        max_delay_ms: duration_ms(config.max_delay),
        include_dependency_dirs: false,
        include_git: false,
        retention: config.retention(),
    };
    let engine = Engine::new(
        store,
        defaults,
        config.poll_interval.max(Duration::from_secs(1)),
        socket.clone(),
    );
    engine.set_limits(config.limits());
    engine.set_recompress_after(Some(config.recompress_after).filter(|d| !d.is_zero()));
    tracing::info!(socket = %socket.display(), data_dir = %engine.store.dir().display(), version = env!("CARGO_PKG_VERSION"), activated = !owns_socket, "chkptd ready");
    sd_notify("READY=1");

    let startup = engine.clone();
    let extra = config.watch.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = startup.rewatch_all() {
            tracing::error!(error = %e, "could not re-watch workspaces");
        }
        for path in extra {
            let abs = std::path::absolute(&path).unwrap_or(path);
            match startup.watch(&abs, startup.defaults) {
                Ok((_, snap)) => {
                    tracing::info!(workspace = %abs.display(), snapshot = %snap.hex_id(), "watching")
                }
                Err(e) => tracing::error!(workspace = %abs.display(), error = %e, "cannot watch"),
            }
        }
    });

    let remotes = crate::remote::Remotes::start(engine.clone());

    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<ChkptServer<Service>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(chkpt_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(chkpt_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let result = tonic::transport::Server::builder()
        .add_service(InterceptedService::new(health_svc, check_peer))
        .add_service(InterceptedService::new(reflection, check_peer))
        .add_service(InterceptedService::new(reflection_v1alpha, check_peer))
        .add_service(InterceptedService::new(
            ChkptServer::new(Service::new(engine.clone())).max_decoding_message_size(16 << 20),
            check_peer,
        ))
        .add_service(InterceptedService::new(
            RemotesServer::new(crate::remote::service::RemoteService::new(remotes)),
            check_peer,
        ))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            shutdown.await;
            sd_notify("STOPPING=1");
        })
        .await;
    tracing::info!("shutting down: stopping watchers and flushing the catalog");
    let stopping = engine.clone();
    let _ = tokio::task::spawn_blocking(move || stopping.shutdown()).await;
    if owns_socket && let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!(socket = %socket.display(), error = %e, "could not remove the socket");
    }
    result?;
    Ok(())
}

/// Tells systemd (`Type=notify`) about a state change; a failure only costs a log line.
fn sd_notify(state: &str) {
    if let Err(e) = crate::systemd::notify(state) {
        tracing::warn!(state, error = %e, "could not notify systemd");
    }
}

/// Whole milliseconds, at least 1 (a zero quiet period would mean "the default" on the wire).
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_uid_is_refused() {
        assert!(check_uid(Some(1000), 1000).is_ok());
        assert_eq!(
            check_uid(Some(0), 1000).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            check_uid(None, 1000).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }
}
