//! The typed client: where the socket is, how to reach the daemon through it,
//! and what a failed call means to the person at the terminal.
//!
//! Every method maps a failure to an [`Error`] whose `Display` is one line that
//! says what happened and what to do; the CLI prints it as is.

use std::{
    error::Error as StdError,
    fmt, io,
    path::{Path, PathBuf},
};

use chkpt_proto::v1::{self, chkpt_client::ChkptClient};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::{
    Response, Status, Streaming,
    transport::{Channel, Endpoint, Uri},
};

/// Environment variable that overrides the socket path (like `--socket`).
pub const SOCKET_ENV: &str = "CHKPT_SOCKET";

/// Largest response the client accepts. tonic's default of 4 MiB is too small
/// for the diff of a large tree (one entry per changed path, in one message).
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// Snapshots asked for per `List` page when the client follows pages itself.
const LIST_PAGE: u32 = 500;

/// Why a command failed. Usage errors found by clap never get here: clap
/// prints them and exits with 2 itself.
#[derive(Debug)]
pub enum Error {
    /// Nothing listens on the socket: it is missing or the connection is refused.
    NotRunning {
        /// The socket tried.
        socket: PathBuf,
    },
    /// The socket exists but could not be connected to for another reason.
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// What the operating system said.
        reason: String,
    },
    /// The connection broke during a call (the daemon crashed or was stopped).
    ConnectionLost {
        /// The socket in use.
        socket: PathBuf,
        /// What the transport said.
        reason: String,
    },
    /// The daemon answered with an error status.
    Rpc(Status),
    /// A local operation (writing output, spawning the daemon, ...) failed.
    Io {
        /// What was being done, e.g. "write to stdout".
        what: String,
        /// The error.
        source: io::Error,
    },
    /// Bad input found after argument parsing (exit code 2, like clap's).
    Usage(String),
    /// Any other failure; the message already says what to do.
    Failed(String),
}

impl Error {
    /// The process exit code for this error: 2 for usage errors, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotRunning { socket } => write!(
                f,
                "chkptd is not running (socket {}): start it with `chkptctl daemon start`",
                socket.display()
            ),
            Error::Connect { socket, reason } => write!(
                f,
                "cannot connect to chkptd (socket {}): {}: check --socket or {SOCKET_ENV}",
                socket.display(),
                one_line(reason)
            ),
            Error::ConnectionLost { socket, reason } => write!(
                f,
                "lost the connection to chkptd (socket {}): {}: check `chkptctl status`, \
                 or start it again with `chkptctl daemon start`",
                socket.display(),
                one_line(reason)
            ),
            Error::Rpc(status) => {
                let message = one_line(status.message());
                let message = if message.is_empty() {
                    format!("chkptd failed the request ({:?})", status.code())
                } else {
                    message
                };
                write!(f, "{message}{}", rpc_hint(status, &message))
            }
            Error::Io { what, source } => write!(f, "cannot {what}: {source}"),
            Error::Usage(message) | Error::Failed(message) => f.write_str(&one_line(message)),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Rpc(status) => Some(status),
            _ => None,
        }
    }
}

mod hint;

use hint::rpc_hint;
pub use hint::{error_metadata, shell_word};

/// The machine-readable reason chkptd gave for a failed call (`google.rpc.ErrorInfo`), such
/// as `SNAPSHOT_NOT_FOUND`; none for statuses that carry no such detail.
pub fn error_reason(status: &Status) -> Option<String> {
    use tonic_types::StatusExt;
    status.get_details_error_info().map(|info| info.reason)
}

/// Joins a multi-line message into one line, so an error stays on one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where the daemon's socket is by default: part of the contract, so it lives in `chkpt-proto`.
pub use chkpt_proto::{default_socket_path, socket_path_from};

/// A connection to `chkptd`.
#[derive(Debug, Clone)]
pub struct Client {
    inner: ChkptClient<Channel>,
    socket: PathBuf,
}

/// A server stream whose failures map to [`Error`].
#[derive(Debug)]
pub struct Stream<T> {
    inner: Streaming<T>,
    socket: PathBuf,
}

impl<T> Stream<T> {
    /// The next message, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<T>, Error> {
        self.inner
            .message()
            .await
            .map_err(|status| call_error(&self.socket, status))
    }
}

impl Client {
    /// Connects to the daemon listening on `socket`.
    pub async fn connect(socket: &Path) -> Result<Self, Error> {
        let channel = connect_channel(socket).await?;
        let inner = ChkptClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
        Ok(Client {
            inner,
            socket: socket.to_path_buf(),
        })
    }

    /// The socket this client is connected through.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn unary<T>(&self, result: Result<Response<T>, Status>) -> Result<T, Error> {
        result
            .map(Response::into_inner)
            .map_err(|status| call_error(&self.socket, status))
    }

    fn stream<T>(
        &self,
        result: Result<Response<Streaming<T>>, Status>,
    ) -> Result<Stream<T>, Error> {
        Ok(Stream {
            inner: self.unary(result)?,
            socket: self.socket.clone(),
        })
    }

    /// The daemon's health and every watched workspace.
    pub async fn status(&mut self) -> Result<v1::StatusResponse, Error> {
        let r = self.inner.status(v1::StatusRequest {}).await;
        self.unary(r)
    }

    /// Starts watching a directory.
    pub async fn watch(&mut self, req: v1::WatchRequest) -> Result<v1::WatchResponse, Error> {
        let r = self.inner.watch(req).await;
        self.unary(r)
    }

    /// Stops watching a directory.
    pub async fn unwatch(&mut self, path: String) -> Result<v1::UnwatchResponse, Error> {
        let r = self.inner.unwatch(v1::UnwatchRequest { path }).await;
        self.unary(r)
    }

    /// The watched workspaces.
    pub async fn list_workspaces(&mut self) -> Result<Vec<v1::Workspace>, Error> {
        let r = self
            .inner
            .list_workspaces(v1::ListWorkspacesRequest {})
            .await;
        Ok(self.unary(r)?.workspaces)
    }

    /// Takes a snapshot now.
    pub async fn save(&mut self, req: v1::SaveRequest) -> Result<v1::SaveResponse, Error> {
        let r = self.inner.save(req).await;
        self.unary(r)
    }

    /// Snapshots, newest first, following pages until `limit` are collected
    /// (or all of them when `limit` is `None`).
    pub async fn list(
        &mut self,
        workspace: String,
        all: bool,
        limit: Option<usize>,
    ) -> Result<Vec<v1::Snapshot>, Error> {
        self.list_touching(workspace, all, limit, Vec::new()).await
    }

    /// Like [`Client::list`], only the snapshots in which one of `paths` changed (all when
    /// empty).
    pub async fn list_touching(
        &mut self,
        workspace: String,
        all: bool,
        limit: Option<usize>,
        paths: Vec<Vec<u8>>,
    ) -> Result<Vec<v1::Snapshot>, Error> {
        self.list_filtered(workspace, all, limit, paths, Vec::new())
            .await
    }

    /// Like [`Client::list_touching`], only the snapshots carrying every tag of `tags` (by
    /// themselves or in one note).
    pub async fn list_filtered(
        &mut self,
        workspace: String,
        all: bool,
        limit: Option<usize>,
        paths: Vec<Vec<u8>>,
        tags: Vec<v1::Tag>,
    ) -> Result<Vec<v1::Snapshot>, Error> {
        let mut snapshots = Vec::new();
        let mut page_token = String::new();
        loop {
            let want = limit.map_or(LIST_PAGE as usize, |l| l - snapshots.len());
            let req = v1::ListRequest {
                workspace: workspace.clone(),
                limit: u32::try_from(want).unwrap_or(LIST_PAGE).min(LIST_PAGE),
                page_token: std::mem::take(&mut page_token),
                all,
                paths: paths.clone(),
                tags: tags.clone(),
            };
            let r = self.inner.list(req.clone()).await;
            let page = self.unary(r)?;
            let got = page.snapshots.len();
            snapshots.extend(page.snapshots);
            let done = limit.is_some_and(|l| snapshots.len() >= l);
            // A token equal to the one just used would loop forever.
            if done
                || got == 0
                || page.next_page_token.is_empty()
                || page.next_page_token == req.page_token
            {
                break;
            }
            page_token = page.next_page_token;
        }
        if let Some(limit) = limit {
            snapshots.truncate(limit);
        }
        Ok(snapshots)
    }

    /// One snapshot, by selector.
    pub async fn get(
        &mut self,
        workspace: String,
        snapshot: String,
    ) -> Result<v1::Snapshot, Error> {
        let r = self
            .inner
            .get(v1::GetRequest {
                workspace,
                snapshot,
            })
            .await;
        self.unary(r)
    }

    /// Compares two snapshots, or a snapshot and the working tree.
    pub async fn diff(&mut self, req: v1::DiffRequest) -> Result<v1::DiffResponse, Error> {
        let r = self.inner.diff(req).await;
        self.unary(r)
    }

    /// Restores a snapshot; progress events, then one summary.
    pub async fn restore(
        &mut self,
        req: v1::RestoreRequest,
    ) -> Result<Stream<v1::RestoreEvent>, Error> {
        let r = self.inner.restore(req).await;
        self.stream(r)
    }

    /// The contents of one file in a snapshot, in chunks.
    pub async fn read_file(
        &mut self,
        req: v1::ReadFileRequest,
    ) -> Result<Stream<v1::FileChunk>, Error> {
        let r = self.inner.read_file(req).await;
        self.stream(r)
    }

    /// One directory of a snapshot.
    pub async fn list_tree(
        &mut self,
        req: v1::ListTreeRequest,
    ) -> Result<v1::ListTreeResponse, Error> {
        let r = self.inner.list_tree(req).await;
        self.unary(r)
    }

    /// The snapshots in which one path changed.
    pub async fn log(&mut self, req: v1::LogRequest) -> Result<Vec<v1::LogEntry>, Error> {
        let r = self.inner.log(req).await;
        Ok(self.unary(r)?.entries)
    }

    /// Deletes snapshots.
    pub async fn delete(&mut self, req: v1::DeleteRequest) -> Result<v1::DeleteResponse, Error> {
        let r = self.inner.delete(req).await;
        self.unary(r)
    }

    /// Pins (`pin = true`) or unpins a snapshot.
    pub async fn set_pin(
        &mut self,
        workspace: String,
        snapshot: String,
        pin: bool,
    ) -> Result<v1::Snapshot, Error> {
        let req = v1::PinRequest {
            workspace,
            snapshot,
        };
        let r = if pin {
            self.inner.pin(req).await
        } else {
            self.inner.unpin(req).await
        };
        self.unary(r)
    }

    /// Applies (or previews) a retention policy.
    pub async fn prune(&mut self, req: v1::PruneRequest) -> Result<v1::PruneResponse, Error> {
        let r = self.inner.prune(req).await;
        self.unary(r)
    }

    /// Clears a fired mass-change tripwire; returns it.
    pub async fn acknowledge(&mut self, workspace: String) -> Result<Option<v1::Tripwire>, Error> {
        let r = self
            .inner
            .acknowledge(v1::AcknowledgeRequest { workspace })
            .await;
        Ok(self.unary(r)?.cleared)
    }

    /// The daemon's events as they happen (one workspace's, or all when empty).
    pub async fn events(&mut self, workspace: String) -> Result<Stream<v1::Event>, Error> {
        let r = self.inner.events(v1::EventsRequest { workspace }).await;
        self.stream(r)
    }

    /// Checks the integrity of the store (one workspace, or all when empty).
    pub async fn verify(&mut self, workspace: String) -> Result<v1::VerifyResponse, Error> {
        let r = self.inner.verify(v1::VerifyRequest { workspace }).await;
        self.unary(r)
    }
}

/// The I/O error kinds that mean nobody is listening on the socket.
fn nobody_listening(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

/// The first I/O error in an error's source chain.
fn io_cause<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

fn connect_error(socket: &Path, error: &tonic::transport::Error) -> Error {
    match io_cause(error) {
        Some(io) if nobody_listening(io.kind()) => Error::NotRunning {
            socket: socket.to_path_buf(),
        },
        // The daemon accepted and then hung up (it is shutting down): the connection was lost,
        // the socket itself is fine.
        Some(io)
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            Error::ConnectionLost {
                socket: socket.to_path_buf(),
                reason: io.to_string(),
            }
        }
        Some(io) => Error::Connect {
            socket: socket.to_path_buf(),
            reason: io.to_string(),
        },
        None => Error::Connect {
            socket: socket.to_path_buf(),
            reason: error.to_string(),
        },
    }
}

/// Tells a status the daemon sent from one tonic made up after a transport
/// failure: only the latter carries a source error.
/// A gRPC channel to the daemon on `socket`, for the services beside `Chkpt` (`Remotes`).
pub async fn connect_channel(socket: &Path) -> Result<Channel, Error> {
    let path = socket.to_path_buf();
    let endpoint = Endpoint::try_from("http://localhost")
        .map_err(|e| Error::Failed(format!("cannot build the gRPC endpoint: {e}")))?;
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| connect_error(socket, &e))
}

/// What a failed call means (the connection lost, or the daemon's status).
pub fn call_error(socket: &Path, status: Status) -> Error {
    let Some(source) = status.source() else {
        return Error::Rpc(status);
    };
    match io_cause(source) {
        // The channel reconnects lazily; a refused reconnect means the daemon is gone.
        Some(io) if nobody_listening(io.kind()) => Error::NotRunning {
            socket: socket.to_path_buf(),
        },
        Some(io) => Error::ConnectionLost {
            socket: socket.to_path_buf(),
            reason: io.to_string(),
        },
        None => Error::ConnectionLost {
            socket: socket.to_path_buf(),
            reason: source.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn socket_under_xdg_runtime_dir() {
        assert_eq!(
            socket_path_from(Some("/run/user/1000".into()), 1000),
            PathBuf::from("/run/user/1000/chkpt/chkptd.sock")
        );
    }

    #[test]
    fn socket_falls_back_to_tmp_when_runtime_dir_unset_empty_or_relative() {
        let fallback = PathBuf::from("/tmp/chkpt-1234/chkptd.sock");
        assert_eq!(socket_path_from(None, 1234), fallback);
        assert_eq!(socket_path_from(Some("".into()), 1234), fallback);
        assert_eq!(socket_path_from(Some("run/user".into()), 1234), fallback);
    }

    fn with_reason(code: Code, message: &str, reason: &str) -> Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let details =
            ErrorDetails::with_error_info(reason, "chkpt.dev", std::collections::HashMap::new());
        Status::with_error_details(code, message, details)
    }

    #[test]
    fn not_found_snapshot_points_at_list() {
        let e = Error::Rpc(with_reason(
            Code::NotFound,
            "no snapshot matches \"abc\"",
            "SNAPSHOT_NOT_FOUND",
        ));
        assert_eq!(
            e.to_string(),
            "no snapshot matches \"abc\"; run `chkptctl list` to see snapshots"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn not_found_workspace_points_at_workspaces() {
        let e = Error::Rpc(with_reason(
            Code::NotFound,
            "no watched workspace contains /x",
            "WORKSPACE_NOT_FOUND",
        ));
        assert!(e.to_string().contains("chkptctl workspaces"), "{e}");
        // The wording alone means nothing: the reason decides.
        let e = Error::Rpc(Status::not_found("no watched workspace contains /x"));
        assert!(!e.to_string().contains("chkptctl"), "{e}");
    }

    #[test]
    fn not_running_message_says_how_to_start() {
        let e = Error::NotRunning {
            socket: "/tmp/s.sock".into(),
        };
        assert_eq!(
            e.to_string(),
            "chkptd is not running (socket /tmp/s.sock): start it with `chkptctl daemon start`"
        );
    }

    #[test]
    fn multi_line_messages_become_one_line() {
        let e = Error::Rpc(Status::failed_precondition("first\n  second\n"));
        assert_eq!(e.to_string(), "first; second");
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_is_not_running() {
        let socket =
            std::env::temp_dir().join(format!("chkpt-missing-{}.sock", std::process::id()));
        match Client::connect(&socket).await {
            Err(Error::NotRunning { socket: s }) => assert_eq!(s, socket),
            other => panic!("expected NotRunning, got {other:?}"),
        }
    }
}
