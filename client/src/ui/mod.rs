//! `chkptctl ui`: the timeline of a workspace in a terminal (ratatui over crossterm), driven
//! over the same gRPC API as every other command.
//!
//! # Layout
//! - `app`: the state and what each key does (pure, tested with ratatui's `TestBackend`).
//! - `view`: drawing it.
//! - this file: the terminal, the keys and the daemon's events in one loop, and the calls that
//!   load files and patches and carry out restores and pins.

pub mod app;
pub mod view;

use std::io::{self, IsTerminal};
use std::time::Instant;

use chkpt_proto::v1;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use tokio::sync::mpsc;

use self::app::{Action, App, Pending, Want};
use crate::connect::{Client, Error};

/// Snapshots the timeline loads at most.
const TIMELINE_LIMIT: usize = 10_000;

/// What the loop waits for.
enum Input {
    Term(Event),
    Daemon(Box<v1::Event>),
}

/// The terminal in raw mode on the alternate screen, given back when dropped (also on an
/// error or a panic: ratatui's panic hook restores it too).
struct Screen(ratatui::DefaultTerminal);

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the UI for `workspace` until the user quits. With `first_frame_only`, it draws the
/// first frame with the timeline and returns (the benchmark times that).
pub async fn run(
    mut client: Client,
    workspace: String,
    first_frame_only: bool,
) -> Result<(), Error> {
    if !io::stdout().is_terminal() || !io::stdin().is_terminal() {
        return Err(Error::Usage(
            "chkptctl ui needs a terminal; `chkptctl list` and `chkptctl log -p` print the same"
                .into(),
        ));
    }
    let started = Instant::now();
    let snapshots = client
        .list(workspace.clone(), false, Some(TIMELINE_LIMIT))
        .await?;
    let mut app = App::new(workspace.clone(), snapshots);
    app.tripwire = tripwire_of(&mut client, &workspace).await;
    let mut screen = Screen(ratatui::try_init().map_err(|e| Error::io("set up the terminal", e))?);
    draw(&mut screen, &app)?;
    tracing_first_frame(started);
    if first_frame_only {
        return Ok(());
    }

    let (tx, mut rx) = mpsc::channel::<Input>(64);
    let keys = tx.clone();
    // crossterm's read blocks: it gets a thread of its own, which ends with the process.
    std::thread::spawn(move || {
        while let Ok(ev) = event::read() {
            if keys.blocking_send(Input::Term(ev)).is_err() {
                break;
            }
        }
    });
    let mut events = client.clone().events(workspace.clone()).await?;
    tokio::spawn(async move {
        while let Ok(Some(ev)) = events.next().await {
            if tx.send(Input::Daemon(Box::new(ev))).await.is_err() {
                break;
            }
        }
    });

    loop {
        if let Some(want) = app.wants() {
            load(&mut client, &mut app, want).await;
            draw(&mut screen, &app)?;
            continue;
        }
        let Some(input) = rx.recv().await else { break };
        match input {
            Input::Term(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                if let Some(action) = app.key(k) {
                    act(&mut client, &mut app, action).await;
                }
            }
            Input::Term(_) => {}
            Input::Daemon(ev) => on_event(&mut client, &mut app, *ev).await,
        }
        if app.quit {
            break;
        }
        draw(&mut screen, &app)?;
    }
    Ok(())
}

fn tracing_first_frame(started: Instant) {
    if let Ok(path) = std::env::var("CHKPT_UI_FIRST_FRAME_LOG") {
        // For the benchmark: how long the first frame took from the start of `ui`.
        let _ = std::fs::write(path, format!("{}\n", started.elapsed().as_micros()));
    }
}

fn draw(screen: &mut Screen, app: &App) -> Result<(), Error> {
    let now = now_ms();
    screen
        .0
        .draw(|f| view::draw(f, app, now))
        .map(drop)
        .map_err(|e| Error::io("draw on the terminal", e))
}

async fn tripwire_of(client: &mut Client, workspace: &str) -> Option<String> {
    let status = client.status().await.ok()?;
    status
        .workspaces
        .iter()
        .find(|w| {
            w.workspace
                .as_ref()
                .is_some_and(|x| workspace.starts_with(&x.path))
        })
        .and_then(|w| w.tripwire.as_ref())
        .map(|t| t.pinned_snapshot.clone())
}

fn diff_request(
    app: &App,
    snapshot: &str,
    paths: Vec<Vec<u8>>,
    stat_only: bool,
) -> v1::DiffRequest {
    v1::DiffRequest {
        workspace: app.workspace.clone(),
        from: String::new(),
        to: snapshot.to_owned(),
        paths,
        patch: Some(v1::PatchOptions {
            stat_only,
            ..v1::PatchOptions::default()
        }),
        from_parent: true,
    }
}

async fn load(client: &mut Client, app: &mut App, want: Want) {
    match want {
        Want::Files(snap) => {
            let paths = if app.filter.is_empty() {
                Vec::new()
            } else {
                vec![app.filter.clone().into_bytes()]
            };
            match client.diff(diff_request(app, &snap, paths, true)).await {
                Ok(d) => app.set_files(snap, d.entries),
                Err(e) => {
                    app.status = format!("error: {e}");
                    app.set_files(snap, Vec::new());
                }
            }
        }
        Want::Patch(snap, path) => {
            let text = match client
                .diff(diff_request(app, &snap, vec![path.clone()], false))
                .await
            {
                Ok(d) => d
                    .entries
                    .iter()
                    .filter_map(|e| e.patch.as_ref())
                    .flat_map(|p| p.text.iter().copied())
                    .collect(),
                Err(e) => format!("error: {e}\n").into_bytes(),
            };
            app.set_patch(snap, path, text);
        }
    }
}

async fn restore(
    client: &mut Client,
    workspace: &str,
    p: &Pending,
) -> Result<v1::RestoreSummary, Error> {
    let req = v1::RestoreRequest {
        workspace: workspace.to_owned(),
        snapshot: p.snapshot.clone(),
        paths: p.paths.clone(),
        dry_run: false,
        to: String::new(),
        // As `chkptctl restore` without --include-git: a living .git is left alone.
        include_git: false,
        // In place: `force` is only about a non-empty `to`.
        force: false,
    };
    let mut stream = client.restore(req).await?;
    while let Some(ev) = stream.next().await? {
        if let Some(v1::restore_event::Event::Summary(s)) = ev.event {
            return Ok(s);
        }
    }
    Err(Error::Failed(
        "the restore ended without a summary: see `chkptctl diff`".into(),
    ))
}

async fn act(client: &mut Client, app: &mut App, action: Action) {
    match action {
        Action::Restore(p) => match restore(client, &app.workspace.clone(), &p).await {
            Ok(summary) => {
                app.restored(&p, &summary);
                // The files and patch of a pre-restore snapshot appear with its event.
            }
            Err(e) => app.status = format!("restore failed: {e}"),
        },
        Action::Pin(id, pin) => match client.set_pin(app.workspace.clone(), id, pin).await {
            Ok(s) => {
                app.status = format!(
                    "{} {}",
                    if pin { "pinned" } else { "unpinned" },
                    app::short(&s.id)
                );
                app.snapshot_changed(s);
            }
            Err(e) => app.status = format!("error: {e}"),
        },
        Action::Jump(selector) => match client.get(app.workspace.clone(), selector.clone()).await {
            Ok(s) => {
                if app.select_id(&s.id) {
                    app.status = format!("{selector}: {}", app::short(&s.id));
                } else {
                    app.status = format!(
                        "{selector} is {}, which the filter hides",
                        app::short(&s.id)
                    );
                }
            }
            Err(e) => app.status = format!("{selector}: {e}"),
        },
        Action::Filter(path) => {
            let path = path.trim().to_owned();
            let paths = if path.is_empty() {
                Vec::new()
            } else {
                vec![path.clone().into_bytes()]
            };
            match client
                .list_touching(app.workspace.clone(), false, Some(TIMELINE_LIMIT), paths)
                .await
            {
                Ok(snapshots) => {
                    app.filter = path;
                    app.files_of = None;
                    app.set_snapshots(snapshots);
                    app.status = if app.filter.is_empty() {
                        "all snapshots".into()
                    } else {
                        format!("{} snapshots changed {}", app.snapshots.len(), app.filter)
                    };
                }
                Err(e) => app.status = format!("filter: {e}"),
            }
        }
    }
}

async fn on_event(client: &mut Client, app: &mut App, ev: v1::Event) {
    match ev.kind {
        Some(v1::event::Kind::SnapshotTaken(t)) => {
            let Some(s) = t.snapshot else { return };
            if app.filter.is_empty() {
                app.snapshot_taken(s);
            } else {
                // Whether it touched the filtered path is the daemon's to say.
                act(client, app, Action::Filter(app.filter.clone())).await;
            }
        }
        Some(v1::event::Kind::RestoreDone(r)) => {
            // The snapshot a restore takes first comes with the restore's event, not as a
            // SnapshotTaken of its own.
            let pre = r
                .summary
                .map(|s| s.pre_restore_snapshot)
                .unwrap_or_default();
            if pre.is_empty() {
                return;
            }
            if app.filter.is_empty() {
                if let Ok(s) = client.get(app.workspace.clone(), pre).await {
                    app.snapshot_taken(s);
                }
            } else {
                act(client, app, Action::Filter(app.filter.clone())).await;
            }
        }
        Some(v1::event::Kind::Tripwire(t)) => {
            app.tripwire = Some(t.pinned_snapshot.clone());
            app.status = format!(
                "mass-change tripwire: {} files deleted or rewritten; {} is pinned",
                t.changed_files,
                app::short(&t.pinned_snapshot)
            );
        }
        Some(v1::event::Kind::Warning(w)) => app.status = format!("warning: {}", w.message),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
