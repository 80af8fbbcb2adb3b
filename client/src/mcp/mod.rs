//! `chkptctl mcp`: a Model Context Protocol server on stdin/stdout, so an AI agent can ask
//! chkptd for checkpoints, diffs, old files and restores.
//!
//! # Layout
//! - this module: the tools as the agent sees them (names, argument schemas, descriptions),
//!   served with the official SDK (`rmcp`), and which workspace a call is about: the client's
//!   first root (MCP roots), else the server's working directory (or `-w`).
//! - `ops`: what each tool does, over the same typed gRPC client as the rest of chkptctl.
//!
//! A daemon error comes back as a tool error (`isError: true`) carrying the daemon's
//! message; arguments that do not fit a tool's schema are refused by the SDK as invalid
//! parameters. Neither ends the server.

use std::path::PathBuf;
use std::time::Duration;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::{
    ErrorData, Peer, RoleServer, ServerHandler, ServiceExt, tool, tool_handler, tool_router,
};

use crate::connect::{Client, Error};

mod ops;

pub use ops::{CheckpointArgs, DiffArgs, FileHistoryArgs, ListArgs, ReadFileArgs, RestoreArgs};

/// How long the server waits for the client to list its roots.
const ROOTS_TIMEOUT: Duration = Duration::from_secs(5);

/// The server: where the daemon is, and the workspace when the client names no root.
#[derive(Debug, Clone)]
pub struct ChkptMcp {
    socket: PathBuf,
    fallback: PathBuf,
}

/// Runs the server on stdin/stdout until the client closes it.
pub async fn serve(socket: PathBuf, workspace: Option<PathBuf>) -> Result<(), Error> {
    let fallback = match workspace {
        Some(w) => std::path::absolute(&w).map_err(|e| Error::io("resolve the workspace", e))?,
        None => std::env::current_dir().map_err(|e| Error::io("read the working directory", e))?,
    };
    let server = ChkptMcp { socket, fallback };
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| Error::Failed(format!("MCP handshake failed: {e}")))?;
    running
        .waiting()
        .await
        .map_err(|e| Error::Failed(format!("MCP server stopped: {e}")))?;
    Ok(())
}

impl ChkptMcp {
    /// The workspace of this call: the client's first `file://` root, else the fallback.
    // Roots are deprecated by SEP-2577, but they are what clients send today.
    #[allow(deprecated)]
    async fn workspace(&self, peer: &Peer<RoleServer>) -> PathBuf {
        let has_roots = peer
            .peer_info()
            .is_some_and(|info| info.capabilities.roots.is_some());
        if has_roots {
            let listed = tokio::time::timeout(ROOTS_TIMEOUT, peer.list_roots()).await;
            match listed {
                Ok(Ok(list)) => {
                    if let Some(path) = list.roots.iter().find_map(|r| file_uri_path(&r.uri)) {
                        return path;
                    }
                }
                // stderr is the log of a stdio MCP server.
                Ok(Err(e)) => eprintln!(
                    "chkpt mcp: roots/list failed ({e}); using {}",
                    self.fallback.display()
                ),
                Err(_) => eprintln!(
                    "chkpt mcp: roots/list timed out; using {}",
                    self.fallback.display()
                ),
            }
        }
        self.fallback.clone()
    }

    async fn client(&self) -> Result<Client, Error> {
        Client::connect(&self.socket).await
    }

    /// Runs one tool: a daemon error becomes a tool error with the daemon's message.
    async fn run<F, Fut>(&self, peer: &Peer<RoleServer>, op: F) -> Result<CallToolResult, ErrorData>
    where
        F: FnOnce(Client, PathBuf) -> Fut,
        Fut: Future<Output = Result<ops::Answer, Error>>,
    {
        let ws = self.workspace(peer).await;
        let answer = match self.client().await {
            Ok(client) => op(client, ws).await,
            Err(e) => Err(e),
        };
        Ok(match answer {
            Ok(a) => {
                let mut r = CallToolResult::success(vec![ContentBlock::text(a.text)]);
                r.structured_content = Some(a.data);
                r
            }
            Err(e) => CallToolResult::error(vec![ContentBlock::text(e.to_string())]),
        })
    }
}

#[tool_router]
impl ChkptMcp {
    /// Take a checkpoint of the workspace now. Returns its id and what changed since the one
    /// before; when nothing changed, the latest checkpoint (marked unchanged, with the message
    /// and tags kept on it as a note).
    #[tool]
    async fn checkpoint(
        &self,
        peer: Peer<RoleServer>,
        Parameters(args): Parameters<CheckpointArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run(&peer, |c, ws| ops::checkpoint(c, ws, args)).await
    }

    /// List the workspace's checkpoints, newest first: id, time, trigger, counts of added,
    /// modified and deleted paths, message and tags.
    #[tool]
    async fn list_checkpoints(
        &self,
        peer: Peer<RoleServer>,
        Parameters(args): Parameters<ListArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run(&peer, |c, ws| ops::list(c, ws, args)).await
    }

    /// A unified patch (git's format) between two checkpoints, or a checkpoint and the
    /// working tree. By default the latest checkpoint against the working tree.
    #[tool]
    async fn diff(
        &self,
        peer: Peer<RoleServer>,
        Parameters(args): Parameters<DiffArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run(&peer, |c, ws| ops::diff(c, ws, args)).await
    }

    /// A file as it was in a checkpoint, or some of its lines.
    #[tool]
    async fn read_file_at(
        &self,
        peer: Peer<RoleServer>,
        Parameters(args): Parameters<ReadFileArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run(&peer, |c, ws| ops::read_file_at(c, ws, args))
            .await
    }

    /// The checkpoints in which a file (or folder) changed, newest first.
    #[tool]
    async fn file_history(
        &self,
        peer: Peer<RoleServer>,
        Parameters(args): Parameters<FileHistoryArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run(&peer, |c, ws| ops::file_history(c, ws, args))
            .await
    }

    /// Restore the workspace (or some paths) to a checkpoint. A dry run (the default) only
    /// lists what would change; a real restore first checkpoints the current state and
    /// returns that pre-restore checkpoint's id (undo_restore goes back to it).
    #[tool]
    async fn restore(
        &self,
        peer: Peer<RoleServer>,
        Parameters(args): Parameters<RestoreArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run(&peer, |c, ws| ops::restore(c, ws, args)).await
    }

    /// Undo the last restore: put back the state just before it (its pre-restore checkpoint).
    #[tool]
    async fn undo_restore(&self, peer: Peer<RoleServer>) -> Result<CallToolResult, ErrorData> {
        self.run(&peer, ops::undo_restore).await
    }
}

#[tool_handler(
    name = "chkpt",
    instructions = "chkpt keeps checkpoints of this workspace: every write from every source \
                    (your edits, the shell, the user). Take a checkpoint before a risky change, \
                    diff to see what changed since one, read_file_at for an old version, \
                    restore (dry_run first) to go back, undo_restore to undo a restore."
)]
impl ServerHandler for ChkptMcp {}

/// The local path of a `file://` URI (percent-decoded); none for other schemes.
fn file_uri_path(uri: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let rest = uri.strip_prefix("file://")?;
    // `file://host/path`: only an empty host or localhost is this machine.
    let path = match rest.find('/') {
        Some(0) => rest,
        Some(i) if &rest[..i] == "localhost" => &rest[i..],
        _ => return None,
    };
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_become_paths() {
        assert_eq!(
            file_uri_path("file:///home/me/my%20project"),
            Some(PathBuf::from("/home/me/my project"))
        );
        assert_eq!(
            file_uri_path("file://localhost/srv/x"),
            Some(PathBuf::from("/srv/x"))
        );
        assert_eq!(file_uri_path("file://otherhost/srv/x"), None);
        assert_eq!(file_uri_path("https://example.invalid/x"), None);
        assert_eq!(
            file_uri_path("file:///a%zzb"),
            Some(PathBuf::from("/a%zzb"))
        );
    }
}
