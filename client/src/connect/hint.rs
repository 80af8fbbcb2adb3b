//! What to do next about a failed call: the hint appended to chkptd's message, chosen by the
//! reason and metadata of its `ErrorInfo`, with paths typed as the user would type them.

use std::path::{Path, PathBuf};

use tonic::{Code, Status};

use super::error_reason;

/// A value of the `ErrorInfo` metadata chkptd attached to a failed call (e.g. `path`).
pub fn error_metadata(status: &Status, key: &str) -> Option<String> {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .and_then(|info| info.metadata.get(key).cloned())
}

/// `text` as one shell word: as it is when it is plain, else in single quotes.
pub fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%".contains(&b));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A path relative to the workspace `root` as it is typed from the current directory, with
/// the global option that goes before the subcommand: relative to the current directory inside
/// the workspace (`../README.md` from `src/`), else `-w ROOT` and the path as it is (with `-w`,
/// relative paths are the workspace's).
fn as_typed(root: &Path, rel: &str) -> (String, String) {
    if root.as_os_str().is_empty() {
        return (String::new(), rel.to_owned());
    }
    let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let root_real = real(root);
    let inside = std::env::current_dir().ok().and_then(|c| {
        real(&c)
            .strip_prefix(&root_real)
            .ok()
            .map(Path::to_path_buf)
    });
    let Some(here) = inside else {
        let w = format!("-w {} ", shell_word(&root.display().to_string()));
        return (w, rel.to_owned());
    };
    // Past the folders the current directory and the path share, up and then down.
    let here: Vec<_> = here.components().collect();
    let there: Vec<_> = Path::new(rel).components().collect();
    let common = here.iter().zip(&there).take_while(|(a, b)| a == b).count();
    let mut typed = PathBuf::new();
    for _ in common..here.len() {
        typed.push("..");
    }
    typed.extend(&there[common..]);
    (String::new(), typed.display().to_string())
}

/// What to do about a daemon error status, appended to its message. Chosen by the reason the
/// daemon gives (and what it names), never by the message's wording.
pub(super) fn rpc_hint(status: &Status, message: &str) -> String {
    if message.contains("chkptctl") {
        // The daemon already says what to run.
        return String::new();
    }
    match error_reason(status).as_deref() {
        Some("SNAPSHOT_NOT_FOUND") => return "; run `chkptctl list` to see snapshots".into(),
        // The daemon's message names the nearest path when one is close: that is the next step.
        Some("PATH_NOT_IN_SNAPSHOT") if error_metadata(status, "nearest").is_some() => {
            return String::new();
        }
        Some("PATH_NOT_IN_SNAPSHOT") => {
            let path = error_metadata(status, "path").unwrap_or_else(|| "PATH".into());
            let workspace = error_metadata(status, "workspace").unwrap_or_default();
            let (w, path) = as_typed(Path::new(&workspace), &path);
            return format!(
                "; `chkptctl {w}log {}` lists the snapshots that held it, `chkptctl {w}diff \
                 --name-status` what changed",
                shell_word(&path)
            );
        }
        Some("WORKSPACE_NOT_FOUND") => {
            return "; run `chkptctl workspaces` to see watched workspaces, \
                    or `chkptctl watch` to watch this one"
                .into();
        }
        Some(_) => return String::new(),
        None => {}
    }
    let hint = match status.code() {
        Code::DataLoss => "; run `chkptctl verify` to check the store",
        Code::Unavailable => "; try again in a moment",
        Code::Unimplemented => {
            "; chkptd may be older than chkptctl: restart it with \
                                `chkptctl daemon stop && chkptctl daemon start`"
        }
        _ => "",
    };
    hint.into()
}
