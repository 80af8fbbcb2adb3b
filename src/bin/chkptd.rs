//! `chkptd`: parse the command line, set up logging, serve until SIGTERM or SIGINT.

use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = chkpt_daemon::config::Config::parse();
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
    if let Err(e) = chkpt_daemon::server::run(config, shutdown).await {
        tracing::error!("{e}");
        return Err(e.into());
    }
    Ok(())
}
