//! Drawing the terminal UI: a header with the change volume over time, the timeline, the
//! selected snapshot's files, the selected file's patch, and a status line.

use chkpt_proto::v1::{ChangeKind, Snapshot, Trigger};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, List, ListItem, ListState, Paragraph, Sparkline};

use super::app::{App, Focus, InputKind};
use crate::output::{self, LineKind};

/// The keys, for `?`.
pub const HELP: &[(&str, &str)] = &[
    ("↑ ↓  j k", "move in the pane with the keys"),
    ("Tab Enter → / ← Esc", "next pane / previous pane"),
    ("PgUp PgDn g G", "scroll a page / to the top or the bottom"),
    ("r", "restore the selected file as it was in the snapshot"),
    ("R", "restore the whole workspace to the snapshot"),
    ("u", "undo the last restore"),
    ("p", "pin or unpin the snapshot"),
    ("f", "filter the timeline by a path (empty: all)"),
    ("@", "jump to a time: 10m, 2h, 1d, 2026-11-24T10:00"),
    ("/  n", "search the messages / the next match"),
    ("?", "this help"),
    ("q", "quit"),
];

/// Change counts bucketed over the timeline's span, oldest on the left.
pub fn volume(snapshots: &[Snapshot], buckets: usize) -> Vec<u64> {
    let mut out = vec![0u64; buckets.max(1)];
    let (Some(newest), Some(oldest)) = (snapshots.first(), snapshots.last()) else {
        return out;
    };
    let span = newest
        .created_unix_ms
        .saturating_sub(oldest.created_unix_ms)
        .max(1);
    let last = out.len() - 1;
    for s in snapshots {
        let at = s.created_unix_ms.saturating_sub(oldest.created_unix_ms);
        let i = ((at as u128 * last as u128) / span as u128) as usize;
        out[i.min(last)] += s.added + s.modified + s.deleted;
    }
    out
}

fn focused(app: &App, f: Focus, title: String) -> Block<'static> {
    let block = Block::bordered().title(title);
    if app.focus == f {
        block.border_style(Style::new().fg(Color::Yellow))
    } else {
        block
    }
}

/// One timeline row: age, trigger, counts, marks, message.
fn timeline_row(app: &App, now_ms: u64, s: &Snapshot) -> ListItem<'static> {
    let trigger = match s.trigger() {
        Trigger::PreRestore => "pre-restore",
        t => output::trigger_name(t),
    };
    let mut spans = vec![
        Span::styled(
            format!("{} ", &s.id[..s.id.len().min(8)]),
            Style::new().fg(Color::Yellow),
        ),
        Span::raw(format!(
            "{:>8} {:<11} ",
            output::age(now_ms, s.created_unix_ms),
            trigger
        )),
        Span::styled(format!("+{}", s.added), Style::new().fg(Color::Green)),
        Span::raw(" "),
        Span::styled(format!("~{}", s.modified), Style::new().fg(Color::Yellow)),
        Span::raw(" "),
        Span::styled(format!("-{} ", s.deleted), Style::new().fg(Color::Red)),
    ];
    if s.pinned {
        spans.push(Span::styled("[pin] ", Style::new().fg(Color::Cyan)));
    }
    if app.tripwire.as_deref() == Some(s.id.as_str()) {
        spans.push(Span::styled(
            "[tripwire] ",
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    if s.rescan {
        spans.push(Span::styled(
            "[rescan] ",
            Style::new().add_modifier(Modifier::DIM),
        ));
    }
    if !s.git_branch.is_empty() {
        spans.push(Span::styled(
            format!("[{}] ", s.git_branch),
            Style::new().add_modifier(Modifier::DIM),
        ));
    }
    spans.push(Span::raw(s.message.clone()));
    ListItem::new(Line::from(spans))
}

fn file_row(e: &chkpt_proto::v1::DiffEntry) -> ListItem<'static> {
    let (mark, colour) = match e.change() {
        ChangeKind::Added => ("A", Color::Green),
        ChangeKind::Deleted => ("D", Color::Red),
        ChangeKind::TypeChanged => ("T", Color::Cyan),
        ChangeKind::Modified | ChangeKind::Unspecified => ("M", Color::Yellow),
    };
    let counts = e.patch.as_ref().map_or(String::new(), |p| match p.kind() {
        chkpt_proto::v1::PatchKind::Binary => " (binary)".to_owned(),
        chkpt_proto::v1::PatchKind::TooLarge => " (large)".to_owned(),
        _ => format!(" +{} -{}", p.lines_added, p.lines_deleted),
    });
    ListItem::new(Line::from(vec![
        Span::styled(format!("{mark} "), Style::new().fg(colour)),
        Span::raw(output::path_text(&e.path)),
        Span::styled(counts, Style::new().add_modifier(Modifier::DIM)),
    ]))
}

fn patch_line(kind: LineKind, body: &[u8]) -> Line<'static> {
    let style = match kind {
        LineKind::Header => Style::new().add_modifier(Modifier::BOLD),
        LineKind::HunkHeader => Style::new().fg(Color::Cyan),
        LineKind::Deleted => Style::new().fg(Color::Red),
        LineKind::Added => Style::new().fg(Color::Green),
        LineKind::NoNewline => Style::new().add_modifier(Modifier::DIM),
        LineKind::Context => Style::new(),
    };
    // Tabs would leave the terminal's cursor out of step with the buffer.
    let text = String::from_utf8_lossy(body).replace('\t', "    ");
    Line::styled(text, style)
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, app: &App, now_ms: u64) {
    let [head, middle, bottom, status] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Percentage(45),
        Constraint::Min(5),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let filter = if app.filter.is_empty() {
        String::new()
    } else {
        format!(" · only {}", app.filter)
    };
    let title = format!(
        " chkpt · {} · {} snapshots{filter} · following ",
        app.workspace,
        app.snapshots.len()
    );
    let data = volume(&app.snapshots, head.width.saturating_sub(2) as usize);
    frame.render_widget(
        Sparkline::default()
            .block(
                Block::bordered()
                    .title(title)
                    .title_bottom(" changes over time "),
            )
            .style(Style::new().fg(Color::Cyan))
            .data(&data),
        head,
    );

    let [left, right] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(middle);
    let rows: Vec<ListItem> = app
        .snapshots
        .iter()
        .map(|s| timeline_row(app, now_ms, s))
        .collect();
    let mut state = ListState::default().with_selected(Some(app.selected));
    frame.render_stateful_widget(
        List::new(rows)
            .block(focused(app, Focus::Timeline, " Snapshots ".into()))
            .highlight_style(Style::new().add_modifier(Modifier::REVERSED)),
        left,
        &mut state,
    );

    let loading = app.files_of.as_deref() != app.current().map(|s| s.id.as_str());
    let files_title = match app.current() {
        Some(s) if !loading => format!(
            " Files changed in {} ({}) ",
            &s.id[..s.id.len().min(8)],
            app.files.len()
        ),
        Some(_) => " Files (loading…) ".to_owned(),
        None => " Files ".to_owned(),
    };
    let rows: Vec<ListItem> = if loading {
        Vec::new()
    } else {
        app.files.iter().map(file_row).collect()
    };
    let mut state =
        ListState::default().with_selected((!app.files.is_empty()).then_some(app.file_sel));
    frame.render_stateful_widget(
        List::new(rows)
            .block(focused(app, Focus::Files, files_title))
            .highlight_style(Style::new().add_modifier(Modifier::REVERSED)),
        right,
        &mut state,
    );

    let patch_title = match (&app.patch_of, app.current_file()) {
        (Some((_, p)), _) => format!(" Patch of {} ", output::path_text(p)),
        (None, Some(_)) => " Patch (loading…) ".to_owned(),
        (None, None) => " Patch ".to_owned(),
    };
    let lines: Vec<Line> = output::patch_lines(&app.patch)
        .into_iter()
        .map(|(k, b)| patch_line(k, b))
        .collect();
    frame.render_widget(
        Paragraph::new(lines)
            .block(focused(app, Focus::Patch, patch_title))
            .scroll((app.scroll, 0)),
        bottom,
    );

    let line = match &app.input {
        Some(i) => {
            let prompt = match i.kind {
                InputKind::Filter => "filter by path: ",
                InputKind::Search => "/",
                InputKind::Jump => "jump to @",
            };
            Line::from(vec![
                Span::styled(prompt, Style::new().fg(Color::Yellow)),
                Span::raw(i.text.clone()),
            ])
        }
        None => Line::raw(app.status.clone()),
    };
    frame.render_widget(Paragraph::new(line), status);

    if app.help {
        help(frame);
    }
}

fn help(frame: &mut Frame<'_>) {
    let area = frame.area();
    let h = (HELP.len() as u16 + 2).min(area.height);
    let w = 70.min(area.width);
    let rect = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:<22}"), Style::new().fg(Color::Yellow)),
                Span::raw(*what),
            ])
        })
        .collect();
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Keys (any key closes) ")),
        rect,
    );
}
