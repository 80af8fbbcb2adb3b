//! The store-wide maintenance worker: applies workspaces' retention policies, collects the
//! garbage and, once the daemon has been idle for a while, recompresses what saves wrote (see
//! [`crate::store::recompress`]), on its own thread at a lower priority, so no workspace's event
//! loop ever waits for it.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use super::Engine;
use crate::store::WorkspaceId;
use crate::sync::lock;

/// Retention runs after a workspace's auto snapshots at most this often.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug)]
enum Job {
    /// Workspace `0` took an auto snapshot: apply its retention policy if it is time.
    RetentionDue(WorkspaceId),
    /// A snapshot was taken, or automatic ones paused for space: keep the data directory
    /// within its budget.
    BudgetDue,
    Stop,
}

/// The handle of the maintenance thread.
#[derive(Debug)]
pub struct Maintenance {
    tx: Mutex<Sender<Job>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Maintenance {
    /// Starts the worker; it holds the engine weakly and ends when told or when the engine is
    /// gone.
    pub(super) fn start(engine: Weak<Engine>) -> Maintenance {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("chkpt-maintenance".into())
            .spawn(move || run(engine, rx));
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "could not start the maintenance thread; retention will not run");
                None
            }
        };
        Maintenance {
            tx: Mutex::new(tx),
            thread: Mutex::new(thread),
        }
    }

    /// Workspace `ws` took an auto snapshot.
    pub fn retention_due(&self, ws: WorkspaceId) {
        let _ = lock(&self.tx).send(Job::RetentionDue(ws));
    }

    /// The store grew (or the disk is short of space): the budget is checked.
    pub fn budget_due(&self) {
        let _ = lock(&self.tx).send(Job::BudgetDue);
    }

    /// Stops the worker after the job in progress.
    pub fn stop(&self) {
        let _ = lock(&self.tx).send(Job::Stop);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

/// Lowers this thread's CPU priority (nice 10): what it does can always wait for a save.
fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority on this thread's id changes only it.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10)
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the maintenance thread's priority");
    }
}

/// The next job; with recompression to do, none for the idle period is `None` (time to do it).
fn next_job(
    rx: &Receiver<Job>,
    queued: &std::cell::RefCell<Option<Job>>,
    idle: Option<Duration>,
) -> Option<Result<Job, ()>> {
    if let Some(job) = queued.borrow_mut().take() {
        return Some(Ok(job));
    }
    match idle {
        None => Some(rx.recv().map_err(|_| ())),
        Some(idle) => match rx.recv_timeout(idle) {
            Ok(job) => Some(Ok(job)),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(Err(())),
        },
    }
}

fn run(engine: Weak<Engine>, rx: Receiver<Job>) {
    lower_priority();
    let mut last_run: HashMap<WorkspaceId, Instant> = HashMap::new();
    // A job that arrived while recompressing (which stops for it).
    let queued = std::cell::RefCell::new(None);
    // Whether recompression may have work: at start (a run counts what there is), and after
    // every snapshot.
    let mut recompress = true;
    // When the maps of packs recompression deleted may go (their disk space comes back).
    let mut retired: Option<Instant> = None;
    let mut last_job = Instant::now();
    loop {
        let after = engine.upgrade().and_then(|e| e.recompress_after());
        let mut idle = match after {
            Some(after) if recompress => Some(after.saturating_sub(last_job.elapsed())),
            _ => None,
        };
        if let Some(at) = retired {
            let until = at.saturating_duration_since(Instant::now());
            idle = Some(idle.map_or(until, |i| i.min(until)));
        }
        let job = match next_job(&rx, &queued, idle) {
            Some(Ok(job)) => job,
            Some(Err(())) => break,
            None => {
                let Some(engine) = engine.upgrade() else {
                    break;
                };
                let expire = |retired: &mut Option<Instant>| {
                    *retired = engine
                        .store
                        .expire_retired()
                        .map(|d| Instant::now() + d + Duration::from_millis(100));
                };
                if !recompress || after.is_none_or(|a| last_job.elapsed() < a) {
                    expire(&mut retired);
                    continue;
                }
                let stop = || {
                    if queued.borrow().is_some() {
                        return true;
                    }
                    match rx.try_recv() {
                        Ok(job) => {
                            *queued.borrow_mut() = Some(job);
                            true
                        }
                        Err(_) => false,
                    }
                };
                recompress = !engine.recompress_idle(&stop);
                if recompress {
                    // Stopped for a save or a job: the daemon must be idle again first.
                    last_job = Instant::now();
                }
                expire(&mut retired);
                continue;
            }
        };
        last_job = Instant::now();
        if matches!(job, Job::BudgetDue) {
            recompress = true;
        }
        let ws = match job {
            Job::Stop => break,
            Job::RetentionDue(ws) => ws,
            Job::BudgetDue => {
                // Requests that queued up while one ran are one check.
                let mut stop = false;
                let mut due = Vec::new();
                while let Ok(next) = rx.try_recv() {
                    match next {
                        Job::Stop => stop = true,
                        Job::RetentionDue(ws) => due.push(ws),
                        Job::BudgetDue => {}
                    }
                }
                let Some(engine) = engine.upgrade() else {
                    break;
                };
                if let Err(e) = engine.enforce_budget() {
                    tracing::warn!(error = %e, "enforcing the store budget failed");
                }
                if stop {
                    break;
                }
                for ws in due {
                    retention(&engine, ws, &mut last_run);
                }
                continue;
            }
        };
        let Some(engine) = engine.upgrade() else {
            break;
        };
        retention(&engine, ws, &mut last_run);
    }
    tracing::debug!("maintenance stopped");
}

/// Applies workspace `ws`'s retention policy, unless it ran in the last [`RETENTION_EVERY`].
fn retention(engine: &Engine, ws: WorkspaceId, last_run: &mut HashMap<WorkspaceId, Instant>) {
    if last_run
        .get(&ws)
        .is_some_and(|t| t.elapsed() < RETENTION_EVERY)
    {
        return;
    }
    last_run.insert(ws, Instant::now());
    if let Err(e) = engine.apply_retention(ws) {
        tracing::warn!(workspace = %ws, error = %e, "retention failed");
    }
}
