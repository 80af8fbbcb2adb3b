//! Running a parsed command line: the runtime, the dispatch to one function per subcommand, and
//! the exit code.

use std::{
    io::{self, IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use chkpt_proto::v1;
use clap::{CommandFactory, Parser};
use serde_json::json;

use super::{
    Cli, ColorWhen, Command, Ctx, HookAgent, Shell, absolute, commands, history,
    make_restore_target, now_ms, path_string, watch,
};
use crate::{
    connect::{self, Error},
    output::{self, Palette, Run, WorkspaceColumn},
};

/// Runs `chkptctl` and returns its exit code; the whole of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    // The mount's FUSE threads wait on the runtime's futures: it needs threads of its own.
    let mut builder = if matches!(cli.command, Command::Mount { .. }) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let result = builder
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the async runtime", e))
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`chkptctl list | head`): nothing left to say.
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            if json {
                // A script reading stdout gets a document too, never nothing.
                let doc = json!({ "error": e.to_string(), "exit_code": e.exit_code() });
                let mut out = io::stdout().lock();
                let _ = writeln!(out, "{doc}").and_then(|()| out.flush());
            }
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let socket = match &cli.socket {
        Some(path) => absolute(path)?,
        None => connect::default_socket_path(),
    };
    let colour = match cli.color {
        ColorWhen::Always => true,
        ColorWhen::Never => false,
        ColorWhen::Auto => {
            io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
        }
    };
    let ctx = Ctx {
        socket,
        json: cli.json,
        workspace: cli.workspace,
        palette: Palette { enabled: colour },
        // --json is for scripts: nothing but the document, on any terminal.
        progress: !cli.json && io::stderr().is_terminal(),
    };
    let now = now_ms();
    let p = ctx.palette;
    match cli.command {
        Command::Status => {
            let status = ctx.client().await?.status().await?;
            if status.protocol != chkpt_proto::PROTOCOL_VERSION {
                eprintln!(
                    "warning: chkptd {} speaks protocol {}, chkptctl speaks {}: restart it with \
                     `chkptctl daemon stop && chkptctl daemon start`",
                    status.version,
                    status.protocol,
                    chkpt_proto::PROTOCOL_VERSION
                );
            }
            ctx.emit(
                || output::status_json(&status),
                || output::status_text(p, now, &status),
            )
        }
        Command::Remote { action } => {
            crate::remote::run(&ctx.socket, ctx.json, ctx.workspace.as_deref(), action).await
        }
        Command::Workspaces => {
            let mut workspaces = ctx.client().await?.list_workspaces().await?;
            workspaces.sort_by_key(|w| std::cmp::Reverse(w.created_unix_ms));
            ctx.emit(
                || workspaces.iter().map(output::workspace_json).collect(),
                || output::workspaces_text(p, now, &workspaces),
            )
        }
        Command::Watch(args) => watch::watch(&ctx, args).await,
        Command::Unwatch { path } => {
            let path = match path {
                Some(path) => path_string(&path)?,
                None => ctx.workspace()?,
            };
            let response = ctx.client().await?.unwatch(path).await?;
            let ws = response.workspace.unwrap_or_default();
            ctx.emit(
                || output::workspace_json(&ws),
                || format!("stopped watching {}; its snapshots are kept\n", ws.path),
            )
        }
        Command::Save {
            message,
            pin,
            tags,
            allow_empty,
        } => {
            let req = v1::SaveRequest {
                workspace: ctx.workspace()?,
                message: message.unwrap_or_default(),
                pin,
                tags,
                allow_empty,
            };
            commands::save(&ctx, req).await
        }
        Command::List {
            limit,
            all,
            mut tags,
            session,
            paths,
        } => {
            if let Some(id) = session {
                tags.push(v1::Tag {
                    key: "session".into(),
                    value: id,
                });
            }
            let workspace = if all { String::new() } else { ctx.workspace()? };
            let limit = limit.map(|l| l as usize);
            let paths = paths
                .iter()
                .map(|p| ctx.ws_path(p))
                .collect::<Result<_, _>>()?;
            let snapshots = ctx
                .client()
                .await?
                .list_filtered(workspace, all, limit, paths, tags)
                .await?;
            ctx.emit_doc(
                || {
                    snapshots
                        .iter()
                        .map(output::SnapshotOut::of)
                        .collect::<Vec<_>>()
                },
                || {
                    output::snapshot_table(
                        p,
                        now,
                        &snapshots,
                        if all {
                            WorkspaceColumn::Shown
                        } else {
                            WorkspaceColumn::Hidden
                        },
                    )
                },
            )
        }
        Command::Show(args) => history::show(&ctx, args).await,
        Command::Log(args) => history::log(&ctx, args).await,
        Command::Diff(args) => history::diff(&ctx, args).await,
        Command::Ui { first_frame } => {
            crate::ui::run(ctx.client().await?, ctx.workspace()?, first_frame).await
        }
        Command::Mount { dir } => mount(&ctx, &dir).await,
        Command::Cat { snap, path } => commands::cat(&ctx, snap, &path).await,
        Command::Restore {
            snap,
            paths,
            dry_run,
            to,
            force,
            include_git,
        } => {
            let made = match to.as_deref() {
                Some(to) if !dry_run => make_restore_target(to)?,
                _ => Vec::new(),
            };
            let req = v1::RestoreRequest {
                workspace: ctx.workspace()?,
                snapshot: snap,
                paths: paths
                    .iter()
                    .map(|p| ctx.ws_path(p))
                    .collect::<Result<_, _>>()?,
                dry_run,
                to: to
                    .as_deref()
                    .map(path_string)
                    .transpose()?
                    .unwrap_or_default(),
                include_git,
                force,
            };
            let summary = match ctx.client().await {
                Ok(mut client) => commands::restore(&ctx, &mut client, req).await,
                Err(e) => Err(e),
            };
            let summary = summary.inspect_err(|_| {
                // Refused (inside the workspace, say) or failed: the folders made for it go.
                for dir in &made {
                    let _ = std::fs::remove_dir(dir);
                }
            })?;
            ctx.emit(
                || output::restore_json(&summary, Run::dry_if(dry_run)),
                || output::restore_text(p, &summary, Run::dry_if(dry_run)),
            )
        }
        Command::Undo { include_git } => commands::undo(&ctx, include_git).await,
        Command::Delete { snaps, force } => {
            let req = v1::DeleteRequest {
                workspace: ctx.workspace()?,
                snapshots: snaps,
                force,
            };
            let deleted = ctx.client().await?.delete(req).await?;
            ctx.emit(
                || json!({ "deleted": deleted.deleted, "reclaimed_bytes": deleted.reclaimed_bytes }),
                || {
                    let mut text: String = deleted.deleted.iter().map(|id| format!("deleted {id}\n")).collect();
                    text.push_str(&format!("freed {}\n", output::human_bytes(deleted.reclaimed_bytes)));
                    text
                },
            )
        }
        Command::Pin { snap } => commands::set_pin(&ctx, snap, true).await,
        Command::Unpin { snap } => commands::set_pin(&ctx, snap, false).await,
        Command::Prune(args) => {
            let req = v1::PruneRequest {
                workspace: ctx.workspace()?,
                dry_run: args.dry_run,
                keep_last: args.policy.keep_last.unwrap_or(0),
                keep_hourly: args.policy.keep_hourly.unwrap_or(0),
                keep_daily: args.policy.keep_daily.unwrap_or(0),
                keep_weekly: args.policy.keep_weekly.unwrap_or(0),
                keep_within_secs: args.policy.keep_within.unwrap_or(0),
            };
            let pruned = ctx.client().await?.prune(req).await?;
            ctx.emit(
                || output::prune_json(&pruned, Run::dry_if(args.dry_run)),
                || output::prune_text(p, now, &pruned, Run::dry_if(args.dry_run)),
            )
        }
        Command::Verify => commands::verify(&ctx).await,
        Command::Ack => {
            let cleared = ctx.client().await?.acknowledge(ctx.workspace()?).await?;
            ctx.emit(
                || json!({ "cleared": cleared.as_ref().map(output::tripwire_json) }),
                || match &cleared {
                    Some(t) => format!(
                        "tripwire cleared (snapshot {} stays pinned)\n",
                        t.pinned_snapshot
                    ),
                    None => "no tripwire to acknowledge\n".to_owned(),
                },
            )
        }
        Command::Hook { agent } => {
            hook(&ctx, agent).await;
            Ok(())
        }
        Command::Mcp => crate::mcp::serve(ctx.socket.clone(), ctx.workspace.clone()).await,
        Command::Daemon { action } => commands::daemon_action(&ctx, action).await,
        Command::Service { action } => commands::service_action(&ctx, action).await,
        Command::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "chkptctl", &mut script);
            ctx.print(&String::from_utf8_lossy(&script))
        }
        Command::Man { dir } => commands::man_pages(&ctx, &dir).await,
    }
}

/// `chkptctl hook`: every failure is one line on stderr, never an exit code the agent sees.
async fn hook(ctx: &Ctx, agent: HookAgent) {
    let (facts, timeout_ms) = match agent {
        HookAgent::ClaudeCode { timeout_ms } => (
            crate::hook::read_stdin()
                .and_then(|input| crate::hook::Facts::from_claude_code(&input)),
            timeout_ms,
        ),
        HookAgent::Generic(a) => (
            Ok(crate::hook::Facts {
                agent: a.agent,
                session: a.session,
                phase: Some(a.phase),
                event: String::new(),
                tool: a.tool,
                prompt: a.prompt.lines().next().unwrap_or("").trim().to_owned(),
                cwd: a.cwd,
            }),
            a.timeout_ms,
        ),
    };
    let facts = match facts {
        Ok(f) => f,
        Err(e) => {
            eprintln!("chkpt hook: {e}; no checkpoint taken");
            return;
        }
    };
    let fallback = ctx.workspace.clone().unwrap_or_else(|| PathBuf::from("."));
    let timeout = std::time::Duration::from_millis(timeout_ms);
    if let Err(e) = crate::hook::checkpoint(&ctx.socket, &facts, &fallback, timeout).await {
        eprintln!("chkpt hook: {e}; no checkpoint taken");
    }
}

#[cfg(target_os = "linux")]
async fn mount(ctx: &Ctx, dir: &Path) -> Result<(), Error> {
    crate::mount::run(ctx.client().await?, dir).await
}

#[cfg(not(target_os = "linux"))]
async fn mount(_ctx: &Ctx, _dir: &Path) -> Result<(), Error> {
    Err(Error::Failed(
        "chkptctl mount needs Linux's FUSE; on macOS, `chkptctl restore SNAP --to DIR` gives a \
         snapshot as a folder"
            .into(),
    ))
}
