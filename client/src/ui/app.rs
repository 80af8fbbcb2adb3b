//! The terminal UI's state and what each key does to it. Pure: no terminal, no daemon; the
//! runner (`ui/mod.rs`) loads what [`App::wants`] names and carries out the [`Action`]s keys
//! return.

use chkpt_proto::v1::{self, Snapshot};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Which pane has the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// The snapshots.
    Timeline,
    /// The selected snapshot's changed files.
    Files,
    /// The selected file's patch.
    Patch,
}

/// A line of text being typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// What it is for.
    pub kind: InputKind,
    /// What was typed.
    pub text: String,
}

/// What a typed line is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// `f`: only snapshots that changed this path.
    Filter,
    /// `/`: the next snapshot whose message holds this.
    Search,
    /// `@`: the snapshot at this time (`10m`, `2h`, `2026-11-24T10:00`).
    Jump,
}

/// A restore waiting for `y`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The snapshot to restore from.
    pub snapshot: String,
    /// The paths (empty: everything).
    pub paths: Vec<Vec<u8>>,
    /// Whether it takes back an earlier restore.
    pub undo: bool,
}

/// What the runner must do for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Restore (after the confirmation).
    Restore(Pending),
    /// Pin (`true`) or unpin a snapshot.
    Pin(String, bool),
    /// Select the snapshot this selector names.
    Jump(String),
    /// Reload the timeline with this path filter (empty: none).
    Filter(String),
}

/// What the runner must load for the current selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// The changed files of this snapshot.
    Files(String),
    /// The patch of one file in this snapshot.
    Patch(String, Vec<u8>),
}

/// Everything on the screen.
#[derive(Debug)]
pub struct App {
    /// The workspace shown.
    pub workspace: String,
    /// Snapshots, newest first (only those touching `filter` when set).
    pub snapshots: Vec<Snapshot>,
    /// Index of the selected snapshot.
    pub selected: usize,
    /// The selected snapshot's changed files, and whose they are.
    pub files: Vec<v1::DiffEntry>,
    /// The snapshot `files` belong to.
    pub files_of: Option<String>,
    /// Index of the selected file.
    pub file_sel: usize,
    /// The selected file's patch text, and whose it is.
    pub patch: Vec<u8>,
    /// The (snapshot, path) `patch` belongs to.
    pub patch_of: Option<(String, Vec<u8>)>,
    /// First patch line shown.
    pub scroll: u16,
    /// Which pane has the keys.
    pub focus: Focus,
    /// A line being typed.
    pub input: Option<Input>,
    /// A restore waiting for `y`.
    pub confirm: Option<Pending>,
    /// The help is shown.
    pub help: bool,
    /// The last message.
    pub status: String,
    /// The path filter of the timeline.
    pub filter: String,
    /// The last search.
    pub search: String,
    /// The snapshot a fired tripwire pinned.
    pub tripwire: Option<String>,
    /// How to take back the last restore: the snapshot taken before it, and its paths.
    pub undo: Option<(String, Vec<Vec<u8>>)>,
    /// Quit now.
    pub quit: bool,
}

impl App {
    /// The UI for `workspace`, its snapshots newest first.
    pub fn new(workspace: String, snapshots: Vec<Snapshot>) -> App {
        App {
            workspace,
            snapshots,
            selected: 0,
            files: Vec::new(),
            files_of: None,
            file_sel: 0,
            patch: Vec::new(),
            patch_of: None,
            scroll: 0,
            focus: Focus::Timeline,
            input: None,
            confirm: None,
            help: false,
            status: "? help · q quit".into(),
            filter: String::new(),
            search: String::new(),
            tripwire: None,
            undo: None,
            quit: false,
        }
    }

    /// The selected snapshot.
    pub fn current(&self) -> Option<&Snapshot> {
        self.snapshots.get(self.selected)
    }

    /// The selected file.
    pub fn current_file(&self) -> Option<&v1::DiffEntry> {
        self.files.get(self.file_sel)
    }

    /// What must be loaded to show the selection.
    pub fn wants(&self) -> Option<Want> {
        let snap = self.current()?.id.clone();
        if self.files_of.as_deref() != Some(snap.as_str()) {
            return Some(Want::Files(snap));
        }
        let file = self.current_file()?.path.clone();
        match &self.patch_of {
            Some((s, p)) if *s == snap && *p == file => None,
            _ => Some(Want::Patch(snap, file)),
        }
    }

    /// The changed files of `snapshot` arrived.
    pub fn set_files(&mut self, snapshot: String, files: Vec<v1::DiffEntry>) {
        self.files = files;
        self.files_of = Some(snapshot);
        self.file_sel = 0;
        self.patch_of = None;
        self.patch.clear();
        self.scroll = 0;
    }

    /// A file's patch arrived.
    pub fn set_patch(&mut self, snapshot: String, path: Vec<u8>, text: Vec<u8>) {
        self.patch = text;
        self.patch_of = Some((snapshot, path));
        self.scroll = 0;
    }

    /// A new timeline (after a filter, or at the start); the selection stays on the same
    /// snapshot when it is still there.
    pub fn set_snapshots(&mut self, snapshots: Vec<Snapshot>) {
        let keep = self.current().map(|s| s.id.clone());
        self.snapshots = snapshots;
        self.selected = keep
            .and_then(|id| self.snapshots.iter().position(|s| s.id == id))
            .unwrap_or(0);
    }

    /// A snapshot was taken (the Events stream): it goes on top, the selection stays put.
    pub fn snapshot_taken(&mut self, s: Snapshot) {
        if self.snapshots.iter().any(|x| x.id == s.id) {
            return;
        }
        if !self.snapshots.is_empty() {
            self.selected += 1;
        }
        self.snapshots.insert(0, s);
    }

    /// A snapshot changed (pinned, unpinned).
    pub fn snapshot_changed(&mut self, s: Snapshot) {
        if let Some(x) = self.snapshots.iter_mut().find(|x| x.id == s.id) {
            *x = s;
        }
    }

    /// Selects the snapshot with this id, if listed.
    pub fn select_id(&mut self, id: &str) -> bool {
        match self.snapshots.iter().position(|s| s.id == id) {
            Some(i) => {
                self.selected = i;
                true
            }
            None => false,
        }
    }

    fn move_by(&mut self, delta: isize) {
        match self.focus {
            Focus::Timeline => {
                self.selected = step(self.selected, delta, self.snapshots.len());
            }
            Focus::Files => {
                self.file_sel = step(self.file_sel, delta, self.files.len());
            }
            Focus::Patch => {
                let lines = self.patch.split(|&b| b == b'\n').count();
                let max = lines.saturating_sub(1).min(u16::MAX as usize) as isize;
                self.scroll = (self.scroll as isize + delta).clamp(0, max) as u16;
            }
        }
    }

    fn next_match(&mut self) {
        if self.search.is_empty() || self.snapshots.is_empty() {
            return;
        }
        let needle = self.search.to_lowercase();
        let n = self.snapshots.len();
        for k in 1..=n {
            let i = (self.selected + k) % n;
            if self.snapshots[i].message.to_lowercase().contains(&needle) {
                self.selected = i;
                self.focus = Focus::Timeline;
                self.status = format!("/{}: {}", self.search, short(&self.snapshots[i].id));
                return;
            }
        }
        self.status = format!("/{}: no snapshot's message has it", self.search);
    }

    /// What a key does.
    pub fn key(&mut self, k: KeyEvent) -> Option<Action> {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            self.quit = true;
            return None;
        }
        if let Some(input) = self.input.as_mut() {
            match k.code {
                KeyCode::Esc => self.input = None,
                KeyCode::Backspace => {
                    input.text.pop();
                }
                KeyCode::Char(c) => input.text.push(c),
                KeyCode::Enter => {
                    let Input { kind, text } = self.input.take()?;
                    return match kind {
                        InputKind::Search => {
                            self.search = text;
                            self.next_match();
                            None
                        }
                        InputKind::Filter => Some(Action::Filter(text)),
                        InputKind::Jump => {
                            let t = text.trim().trim_start_matches('@');
                            (!t.is_empty()).then(|| Action::Jump(format!("@{t}")))
                        }
                    };
                }
                _ => {}
            }
            return None;
        }
        if let Some(pending) = self.confirm.take() {
            if matches!(k.code, KeyCode::Char('y') | KeyCode::Char('Y')) {
                return Some(Action::Restore(pending));
            }
            self.status = "restore cancelled".into();
            return None;
        }
        if self.help {
            self.help = false;
            return None;
        }
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Esc => {
                if self.focus == Focus::Timeline {
                    self.quit = true;
                } else {
                    self.focus = Focus::Timeline;
                }
            }
            KeyCode::Char('?') => self.help = true,
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::PageDown | KeyCode::Char(' ') => self.move_by(20),
            KeyCode::PageUp => self.move_by(-20),
            KeyCode::Home | KeyCode::Char('g') => self.move_by(-(u16::MAX as isize)),
            KeyCode::End | KeyCode::Char('G') => self.move_by(u16::MAX as isize),
            KeyCode::Tab | KeyCode::Right | KeyCode::Enter | KeyCode::Char('l') => {
                self.focus = match self.focus {
                    Focus::Timeline => Focus::Files,
                    Focus::Files | Focus::Patch => Focus::Patch,
                };
            }
            KeyCode::BackTab | KeyCode::Left | KeyCode::Char('h') => {
                self.focus = match self.focus {
                    Focus::Patch => Focus::Files,
                    Focus::Files | Focus::Timeline => Focus::Timeline,
                };
            }
            KeyCode::Char('/') => self.start(InputKind::Search),
            KeyCode::Char('n') => self.next_match(),
            KeyCode::Char('f') => self.start(InputKind::Filter),
            KeyCode::Char('@') => self.start(InputKind::Jump),
            KeyCode::Char('p') => {
                let s = self.current()?;
                return Some(Action::Pin(s.id.clone(), !s.pinned));
            }
            KeyCode::Char('r') => {
                let snap = self.current()?.id.clone();
                let Some(file) = self
                    .current_file()
                    .filter(|_| self.files_of.as_deref() == Some(snap.as_str()))
                else {
                    self.status = "no file selected: R restores the whole snapshot".into();
                    return None;
                };
                let path = file.path.clone();
                self.status = format!(
                    "restore {} as it was in {}? y/n",
                    String::from_utf8_lossy(&path),
                    short(&snap)
                );
                self.confirm = Some(Pending {
                    snapshot: snap,
                    paths: vec![path],
                    undo: false,
                });
            }
            KeyCode::Char('R') => {
                let snap = self.current()?.id.clone();
                self.status = format!(
                    "restore the whole workspace to {}? (the current state is saved first) y/n",
                    short(&snap)
                );
                self.confirm = Some(Pending {
                    snapshot: snap,
                    paths: Vec::new(),
                    undo: false,
                });
            }
            KeyCode::Char('u') => match self.undo.clone() {
                Some((pre, paths)) => {
                    self.status = format!("undo the last restore (back to {})? y/n", short(&pre));
                    self.confirm = Some(Pending {
                        snapshot: pre,
                        paths,
                        undo: true,
                    });
                }
                None => self.status = "no restore to undo".into(),
            },
            _ => {}
        }
        None
    }

    fn start(&mut self, kind: InputKind) {
        let text = match kind {
            InputKind::Filter => self.filter.clone(),
            InputKind::Search | InputKind::Jump => String::new(),
        };
        self.input = Some(Input { kind, text });
    }

    /// A restore finished.
    pub fn restored(&mut self, pending: &Pending, summary: &v1::RestoreSummary) {
        let what = if pending.paths.is_empty() {
            "the workspace".to_owned()
        } else {
            pending
                .paths
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let verb = if pending.undo {
            "undid: restored"
        } else {
            "restored"
        };
        self.status = format!(
            "{verb} {what} from {} (+{} ~{} -{})",
            short(&pending.snapshot),
            summary.added,
            summary.modified,
            summary.deleted
        );
        if summary.pre_restore_snapshot.is_empty() {
            self.undo = None;
        } else {
            self.status.push_str(&format!(
                "; the state before is snapshot {}: u undoes",
                short(&summary.pre_restore_snapshot)
            ));
            self.undo = Some((summary.pre_restore_snapshot.clone(), pending.paths.clone()));
        }
    }
}

/// `i` moved by `delta` within `0..len`.
fn step(i: usize, delta: isize, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    (i as isize + delta).clamp(0, len as isize - 1) as usize
}

/// The first 8 hex digits of an id.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
