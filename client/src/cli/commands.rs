//! The subcommands that do more than one call and print: streams, spinners,
//! process control.

use std::{
    io::{self, Write},
    path::Path,
    time::{Duration, Instant},
};

use chkpt_proto::v1::{self, Trigger, restore_event};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::{Cli, Ctx, DaemonAction, ServiceAction};
use crate::{
    connect::{Client, Error},
    daemon,
    output::{self, Run},
    service::{self, Manager, Outcome, Plan},
};

/// A spinner or bar on stderr, drawn only on a terminal.
pub(super) fn progress_bar(ctx: &Ctx, len: Option<u64>, template: &str) -> ProgressBar {
    let target = if ctx.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(len, target);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Progress templates (checked by a test: a bad one would silently lose its style).
pub(super) const SAVE_SPINNER: &str = "{spinner} saving a snapshot... {elapsed}";
pub(super) const WATCH_SPINNER: &str = "{spinner} taking the baseline snapshot: {msg} {elapsed}";
pub(super) const RESTORE_BYTES: &str =
    "{spinner} restoring [{bar:30}] {bytes}/{total_bytes} ({eta})";
pub(super) const RESTORE_ENTRIES: &str =
    "{spinner} restoring [{bar:30}] {pos}/{len} entries ({eta})";

/// Operations faster than this show no spinner or bar.
pub(super) const QUIET_FOR: Duration = Duration::from_millis(500);

pub(super) async fn save(ctx: &Ctx, req: v1::SaveRequest) -> Result<(), Error> {
    let mut client = ctx.client().await?;
    let call = client.save(req);
    tokio::pin!(call);
    let response = tokio::select! {
        response = &mut call => response,
        () = tokio::time::sleep(QUIET_FOR) => {
            let spinner = progress_bar(ctx, None, SAVE_SPINNER);
            let response = call.await;
            spinner.finish_and_clear();
            response
        }
    }?;
    let snapshot = response.snapshot.unwrap_or_default();
    if ctx.json {
        let mut value = output::snapshot_json(&snapshot);
        value["created"] = response.created.into();
        value["unchanged"] = response.unchanged.into();
        return ctx.print_json(&value);
    }
    if response.unchanged {
        eprintln!(
            "nothing changed since snapshot {}: no new one recorded (--allow-empty records one)",
            snapshot.id
        );
    }
    for warning in &snapshot.warnings {
        eprintln!("warning: {warning}");
    }
    ctx.print(&format!("{}\n", snapshot.id))
}

/// Runs a restore, drawing a bar from its progress events once it has taken
/// longer than [`QUIET_FOR`], and returns its summary.
pub(super) async fn restore(
    ctx: &Ctx,
    client: &mut Client,
    req: v1::RestoreRequest,
) -> Result<v1::RestoreSummary, Error> {
    let started = Instant::now();
    let mut bar: Option<ProgressBar> = None;
    let result = async {
        let mut stream = client.restore(req).await?;
        while let Some(event) = stream.next().await? {
            match event.event {
                Some(restore_event::Event::Summary(summary)) => return Ok(summary),
                Some(restore_event::Event::Progress(p)) if started.elapsed() >= QUIET_FOR => {
                    let (done, total) = if p.total_bytes > 0 {
                        (p.done_bytes, p.total_bytes)
                    } else {
                        (p.done_entries, p.total_entries)
                    };
                    let template = if p.total_bytes > 0 { RESTORE_BYTES } else { RESTORE_ENTRIES };
                    let bar = bar.get_or_insert_with(|| progress_bar(ctx, Some(total), template));
                    bar.set_length(total);
                    bar.set_position(done);
                }
                _ => {}
            }
        }
        Err(Error::Failed(
            "chkptd ended the restore without a summary: run `chkptctl diff` to see the working tree's state"
                .to_owned(),
        ))
    }
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

pub(super) async fn undo(ctx: &Ctx, include_git: bool) -> Result<(), Error> {
    let workspace = ctx.workspace()?;
    let mut client = ctx.client().await?;
    let snapshots = client.list(workspace.clone(), false, None).await?;
    let Some(before) = snapshots
        .iter()
        .find(|s| s.trigger() == Trigger::PreRestore)
    else {
        return Err(Error::Failed(format!(
            "no pre-restore snapshot in {workspace}: there is no restore to undo"
        )));
    };
    let req = v1::RestoreRequest {
        workspace,
        snapshot: before.id.clone(),
        include_git,
        ..v1::RestoreRequest::default()
    };
    let summary = restore(ctx, &mut client, req).await?;
    ctx.emit(
        || output::restore_json(&summary, Run::Done),
        || output::restore_text(ctx.palette, &summary, Run::Done),
    )
}

pub(super) async fn cat(ctx: &Ctx, snapshot: String, path: &Path) -> Result<(), Error> {
    let req = v1::ReadFileRequest {
        workspace: ctx.workspace()?,
        snapshot,
        path: ctx.ws_path(path)?,
        ..v1::ReadFileRequest::default()
    };
    let mut stream = ctx.client().await?.read_file(req).await?;
    let mut out = io::stdout().lock();
    let mut written: u64 = 0;
    while let Some(chunk) = stream.next().await? {
        if chunk.offset != written {
            return Err(Error::Failed(format!(
                "chkptd sent bytes at offset {} where {written} was expected: the output is incomplete, try again",
                chunk.offset
            )));
        }
        out.write_all(&chunk.data)
            .map_err(|e| Error::io("write to stdout", e))?;
        written += chunk.data.len() as u64;
    }
    out.flush().map_err(|e| Error::io("write to stdout", e))
}

pub(super) async fn set_pin(ctx: &Ctx, snap: String, pin: bool) -> Result<(), Error> {
    let snapshot = ctx
        .client()
        .await?
        .set_pin(ctx.workspace()?, snap, pin)
        .await?;
    let verb = if pin { "pinned" } else { "unpinned" };
    ctx.emit(
        || output::snapshot_json(&snapshot),
        || format!("{verb} {}\n", snapshot.id),
    )
}

pub(super) async fn verify(ctx: &Ctx) -> Result<(), Error> {
    // Without -w the whole store is checked, wherever chkptctl runs.
    let workspace = match &ctx.workspace {
        Some(_) => ctx.workspace()?,
        None => String::new(),
    };
    let report = ctx.client().await?.verify(workspace).await?;
    ctx.emit(
        || output::verify_json(&report),
        || {
            let mut text = format!(
                "checked {} blobs, {} trees, {}\n",
                report.blobs_checked,
                report.trees_checked,
                output::human_bytes(report.bytes_checked)
            );
            for p in &report.problems {
                text.push_str(&format!(
                    "problem: object {} (snapshot {}, path {}): {}\n",
                    p.object_id,
                    if p.snapshot.is_empty() {
                        "unknown"
                    } else {
                        &p.snapshot
                    },
                    if p.path.is_empty() {
                        "unknown".into()
                    } else {
                        output::path_text(&p.path)
                    },
                    p.problem
                ));
            }
            text
        },
    )?;
    if report.ok && report.problems.is_empty() {
        return Ok(());
    }
    Err(Error::Failed(format!(
        "the store has {} problems: snapshots using damaged objects cannot be fully restored; \
         delete them with `chkptctl delete`",
        report.problems.len()
    )))
}

pub(super) async fn daemon_action(ctx: &Ctx, action: DaemonAction) -> Result<(), Error> {
    let socket = ctx.socket.display().to_string();
    match action {
        DaemonAction::Start => {
            let started = daemon::start(&ctx.socket).await?;
            let log = started.log.display().to_string();
            let pid = started.status.pid;
            ctx.emit(
                || json!({ "started": started.spawned, "pid": pid, "socket": socket, "log": log, "version": started.status.version }),
                || {
                    let head = if started.spawned {
                        format!("chkptd {} started (pid {pid})\nlog: {log}\n", started.status.version)
                    } else {
                        format!("chkptd {} is already running (pid {pid})\n", started.status.version)
                    };
                    format!("{head}socket: {socket}\nstop it with `chkptctl daemon stop`\n")
                },
            )
        }
        DaemonAction::Stop => {
            let pid = daemon::stop(&ctx.socket).await?;
            ctx.emit(
                || json!({ "stopped": pid.is_some(), "pid": pid, "socket": socket }),
                || match pid {
                    Some(pid) => format!("chkptd (pid {pid}) stopped\n"),
                    None => format!("chkptd is not running (socket {socket})\n"),
                },
            )
        }
    }
}

pub(super) async fn service_action(ctx: &Ctx, action: ServiceAction) -> Result<(), Error> {
    let (plan, dry_run, verb) = match action {
        ServiceAction::Status => return service_status(ctx).await,
        ServiceAction::Install { dry_run } => (service::install_plan().await?, dry_run, "install"),
        ServiceAction::Uninstall { dry_run } => match service::uninstall_plan()? {
            Some(plan) => (plan, dry_run, "uninstall"),
            None => {
                let manager = Manager::current().name();
                return ctx.emit(
                    || json!({ "action": "uninstall", "manager": manager, "installed": false }),
                    || format!("chkptd is not a {manager} user service: nothing to do\n"),
                );
            }
        },
    };
    let manager = plan.manager.name();
    if dry_run {
        return ctx.emit(
            || {
                let steps = Plan::steps_json(&plan.steps);
                json!({ "action": verb, "manager": manager, "dry_run": true, "steps": steps })
            },
            || {
                format!(
                    "# `chkptctl service {verb} --dry-run` changed nothing; \
                     {verb} would do this ({manager}):\n{}",
                    plan.script(0)
                )
            },
        );
    }
    let mut done = Vec::new();
    let outcome = service::execute(&plan, |step| {
        done.push(step.clone());
        if ctx.json {
            Ok(())
        } else {
            ctx.print(&format!("{}\n", step.done_text()))
        }
    })
    .await?;
    if let Outcome::Unreachable {
        reason,
        done: count,
    } = outcome
    {
        return service_unreachable(ctx, &plan, verb, &reason, count);
    }
    let running = if verb == "install" {
        service::wait_until_running(&plan.socket).await?
    } else {
        None
    };
    let socket = plan.socket.display().to_string();
    let logs = plan.env.logs(plan.manager);
    ctx.emit(
        || {
            json!({
                "action": verb,
                "manager": manager,
                "dry_run": false,
                "steps": Plan::steps_json(&done),
                "socket": socket,
                "logs": logs,
                "running": running_json(running.as_ref()),
            })
        },
        || match (verb, &running) {
            ("install", Some(status)) => format!(
                "chkptd {} runs as a {manager} user service (pid {}), socket {socket}\n\
                 logs: {logs}\n",
                status.version, status.pid
            ),
            ("install", None) => String::new(),
            _ => format!(
                "chkptd is no longer a {manager} user service; its snapshots are kept \
                 (start it by hand with `chkptctl daemon start`)\n"
            ),
        },
    )?;
    if verb == "install" && running.is_none() {
        return Err(Error::Failed(format!(
            "the {manager} service is installed and started, but chkptd does not answer on \
             {socket}: see `chkptctl service status` and {logs}"
        )));
    }
    Ok(())
}

fn running_json(status: Option<&v1::StatusResponse>) -> serde_json::Value {
    status.map_or(
        serde_json::Value::Null,
        |s| json!({ "pid": s.pid, "version": s.version }),
    )
}

/// The service manager could not be reached: say what was done, print the rest as a script
/// to run by hand, and fail.
fn service_unreachable(
    ctx: &Ctx,
    plan: &Plan,
    verb: &str,
    reason: &str,
    done: usize,
) -> Result<(), Error> {
    let manager = plan.manager;
    let written: Vec<String> = plan.steps[..done]
        .iter()
        .filter_map(|s| match s {
            service::Step::Write { path, .. } => Some(path.display().to_string()),
            _ => None,
        })
        .collect();
    if ctx.json {
        ctx.print_json(&json!({
            "action": verb,
            "manager": manager.name(),
            "dry_run": false,
            "reachable": false,
            "reason": reason,
            "written": written,
            "left": Plan::steps_json(&plan.steps[done..]),
        }))?;
    } else {
        let what = if written.is_empty() {
            "Nothing was changed.".to_owned()
        } else {
            format!(
                "The files are written ({}), but nothing is enabled or started.",
                written.join(", ")
            )
        };
        let session = match manager {
            Manager::Systemd => {
                "in a login session of this user (`loginctl enable-linger $USER` keeps the \
                 user manager running without one)"
            }
            Manager::Launchd => "in a session of this user logged in at the Mac's screen",
        };
        eprint!(
            "{what}\nTo finish `chkptctl service {verb}` by hand, run {session}:\n\n{}\n",
            plan.script(done)
        );
    }
    Err(Error::Failed(format!(
        "{}'s user manager is not reachable: {reason}",
        manager.name()
    )))
}

async fn service_status(ctx: &Ctx) -> Result<(), Error> {
    let st = service::status().await?;
    let manager = st.manager.name();
    let socket = st.socket.display().to_string();
    ctx.emit(
        || {
            let files: Vec<_> = st
                .files
                .iter()
                .map(|(path, state)| {
                    json!({ "path": path.display().to_string(), "state": state.key() })
                })
                .collect();
            let manager_says = match &st.manager_says {
                Ok(states) => states
                    .iter()
                    .map(|(unit, state)| json!({ "unit": unit, "state": state }))
                    .collect(),
                Err(reason) => json!(reason),
            };
            json!({
                "manager": manager,
                "files": files,
                "reachable": st.manager_says.is_ok(),
                "manager_says": manager_says,
                "socket": socket,
                "running": running_json(st.daemon.as_ref()),
                "logs": st.logs,
            })
        },
        || {
            let mut text = format!("service manager: {manager} (per user)\n");
            for (path, state) in &st.files {
                text.push_str(&format!("{}: {}\n", path.display(), state.name()));
            }
            match &st.manager_says {
                Ok(states) => {
                    for (unit, state) in states {
                        text.push_str(&format!("{unit}: {state}\n"));
                    }
                }
                Err(reason) => text.push_str(&format!("{manager} is not reachable: {reason}\n")),
            }
            match &st.daemon {
                Some(s) => text.push_str(&format!(
                    "chkptd {} answers on {socket} (pid {})\n",
                    s.version, s.pid
                )),
                None => text.push_str(&format!("chkptd does not answer on {socket}\n")),
            }
            text.push_str(&format!("logs: {}\n", st.logs));
            text
        },
    )
}

/// `chkptctl man DIR`: chkptctl's pages from its clap definitions, chkptd's from `chkptd --man`
/// (the daemon's flags live in its own binary).
pub(super) async fn man_pages(ctx: &Ctx, dir: &Path) -> Result<(), Error> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("make {}", dir.display()), e))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .map_err(|e| Error::io(format!("write the manual pages into {}", dir.display()), e))?;
    let chkptd = daemon::find_chkptd()?;
    let out = tokio::process::Command::new(&chkptd)
        .arg("--man")
        .output()
        .await
        .map_err(|e| Error::io(format!("run {} --man", chkptd.display()), e))?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(Error::Failed(format!(
            "{} --man wrote no manual page ({}): is it as new as chkptctl?",
            chkptd.display(),
            out.status
        )));
    }
    let page = dir.join("chkptd.1");
    std::fs::write(&page, &out.stdout)
        .map_err(|e| Error::io(format!("write {}", page.display()), e))?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("list {}", dir.display()), e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("chkpt") && n.ends_with(".1"))
        .collect();
    pages.sort();
    let shown = dir.display().to_string();
    ctx.emit(
        || json!({ "dir": shown, "pages": pages }),
        || {
            format!(
                "wrote {} manual pages into {shown}\n`man chkptctl` finds them if {shown} is a man1 folder on MANPATH \
                 (~/.local/share/man/man1 is, on most systems)\n",
                pages.len()
            )
        },
    )
}
