//! `chkptd`: parse the command line, set up logging, serve until SIGTERM or SIGINT.

use std::io::IsTerminal;

use std::io::Write;

use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    tune_malloc();
    // SAFETY: no other thread exists yet (the runtime starts below), so nothing else reads or
    // writes the environment while it is changed, and nothing in chkptd owns fd 3.
    let activation = unsafe { chkpt_daemon::systemd::take_listen_fd() };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(activation))
}

/// glibc gives each thread that allocates concurrently its own arena, up to 8 per core, and
/// memory freed in one arena is not reused by another: a daemon whose work moves between
/// tokio, rayon and watcher threads then keeps growing (measured on the Linux tree: +3 to
/// +12 MiB resident per re-watch, ~150 MiB in all). One arena per core keeps it near 80 MiB
/// and flat. Must run before any thread starts.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
    // glibc serves a block of 128 KiB or more with its own mapping, and raises that bound to
    // the size of each such block freed (up to 32 MiB): after the first large buffer of a save
    // or a restart's index load is freed, the next ones come from the heap, between the index's
    // small long-lived blocks, and what they leave behind cannot be returned (measured at
    // 100,000 files: ~42 MiB anonymous after a restart with 21 MiB live, ~31 MiB with the
    // bound fixed). A fixed bound keeps large buffers in mappings that go back whole.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: as above.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10) };
    }
}

async fn run(activation: Option<std::os::fd::OwnedFd>) -> anyhow::Result<()> {
    let config = chkpt_daemon::config::Config::parse();
    if config.man {
        return print_man_page();
    }
    // Past a file-size limit, writes must fail with EFBIG (reported as a full disk), not kill
    // the daemon mid-save.
    // SAFETY: ignoring a signal has no preconditions.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    // Under systemd, plain lines: the journal adds the time itself.
    if chkpt_daemon::systemd::stderr_is_journal() {
        logs.without_time().init();
    } else {
        logs.init();
    }
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return std::future::pending().await;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        }
    };
    if let Err(e) = chkpt_daemon::server::run(config, activation, shutdown).await {
        tracing::error!("{e}");
        return Err(e.into());
    }
    Ok(())
}

/// `chkptd --man`: the manual page, for `chkptctl man` to install beside its own.
fn print_man_page() -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(chkpt_daemon::config::Config::command()).render(&mut page)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&page)?;
    out.flush()?;
    Ok(())
}
