//! Long output on a terminal goes through a pager, as git's does: `$PAGER`, else `less -FRX`
//! (quit at once when it fits one screen, keep colours, leave the text on the screen). Into a
//! pipe or a file it is written as is.

use std::io::{self, IsTerminal, Write};
use std::process::{Command, Stdio};

/// The pager used when `$PAGER` is unset or empty.
pub const DEFAULT_PAGER: &str = "less -FRX";

/// The pager command for `$PAGER`'s value: none for `cat` (as git treats it).
pub fn pager_command(env: Option<&str>) -> Option<String> {
    let pager = env
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .unwrap_or(DEFAULT_PAGER);
    (pager != "cat").then(|| pager.to_owned())
}

/// Writes `bytes` to stdout, through the pager when stdout is a terminal.
pub fn page(bytes: &[u8]) -> io::Result<()> {
    let stdout = io::stdout();
    let pager = if stdout.is_terminal() {
        pager_command(std::env::var("PAGER").ok().as_deref())
    } else {
        None
    };
    if let Some(cmd) = pager {
        match through(&cmd, bytes) {
            Ok(()) => return Ok(()),
            // A pager that does not start is no reason to lose the output.
            Err(e) => eprintln!("warning: cannot run the pager `{cmd}` ({e}); printing directly"),
        }
    }
    let mut out = stdout.lock();
    out.write_all(bytes)?;
    out.flush()
}

fn through(cmd: &str, bytes: &[u8]) -> io::Result<()> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env(
            "LESS",
            std::env::var("LESS").unwrap_or_else(|_| "FRX".into()),
        )
        .stdin(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        // The reader may quit before the end (`q` in less): that is not an error.
        match stdin.write_all(bytes) {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                let _ = child.wait();
                return Err(e);
            }
            _ => {}
        }
    }
    child.wait()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pager_is_pager_else_less_and_cat_means_none() {
        assert_eq!(pager_command(None).as_deref(), Some(DEFAULT_PAGER));
        assert_eq!(pager_command(Some("  ")).as_deref(), Some(DEFAULT_PAGER));
        assert_eq!(pager_command(Some("most -s")).as_deref(), Some("most -s"));
        assert_eq!(pager_command(Some("cat")), None);
    }
}
