//! `chkptctl watch`: the request, the baseline's progress on a terminal, the report, and the
//! next step when the folder does not exist.

use std::{future::Future, path::Path, time::Duration};

use chkpt_proto::v1;
use indicatif::ProgressBar;
use serde_json::json;

use super::commands::{QUIET_FOR, WATCH_SPINNER, progress_bar};
use super::{Ctx, WatchArgs, path_string};
use crate::{
    connect::{Error, error_reason, shell_word},
    output::{self, Colour},
};

pub(super) async fn watch(ctx: &Ctx, args: WatchArgs) -> Result<(), Error> {
    let path = match &args.path {
        Some(path) => path_string(path)?,
        None => ctx.workspace()?,
    };
    let req = v1::WatchRequest {
        path: path.clone(),
        idle_ms: args.idle.unwrap_or(0),
        max_delay_ms: args.max_delay.unwrap_or(0),
        include_dependency_dirs: args.include_deps,
        include_git: args.include_git,
        retention: args.policy.to_wire(args.max_store_bytes),
    };
    let mut client = ctx.client().await?;
    let call = client.watch(req);
    tokio::pin!(call);
    // The baseline of a large tree takes seconds: say so on a terminal (never in a pipe).
    let response = tokio::select! {
        response = &mut call => response,
        () = tokio::time::sleep(QUIET_FOR) => {
            let spinner = progress_bar(ctx, None, WATCH_SPINNER);
            let response = baseline_progress(ctx, &path, &spinner, &mut call).await;
            spinner.finish_and_clear();
            response
        }
    };
    let response = match response {
        Err(Error::Rpc(status)) if error_reason(&status).as_deref() == Some("NO_SUCH_PATH") => {
            return Err(Error::Failed(format!(
                "{}{}",
                status.message(),
                missing_folder_hint(Path::new(&path))
            )));
        }
        r => r?,
    };
    let ws = response.workspace.unwrap_or_default();
    let baseline = response.baseline.unwrap_or_default();
    ctx.emit(
        || json!({ "workspace": output::workspace_json(&ws), "baseline": output::snapshot_json(&baseline) }),
        || {
            let mut text = format!(
                "watching {} (idle {}, max delay {})\nbaseline snapshot {}: {} files, {}\n",
                ws.path,
                output::duration_text(ws.idle_ms),
                output::duration_text(ws.max_delay_ms),
                ctx.palette.paint(&baseline.id, Colour::Yellow),
                baseline.files,
                output::human_bytes(baseline.bytes)
            );
            for e in ws.excluded.iter().take(10) {
                text.push_str(&format!("excluding {} ({})\n", output::path_text(&e.path), e.reason));
            }
            if ws.excluded.len() > 10 {
                text.push_str(&format!(
                    "… and {} more excluded paths (`chkptctl --json workspaces` lists them)\n",
                    ws.excluded.len() - 10
                ));
            }
            if baseline.files == 0 && !ws.excluded.is_empty() {
                text.push_str("warning: the snapshot holds no file: the ignore files above exclude everything\n");
            }
            text
        },
    )
}

/// The next step after `watch` of a folder that does not exist: the nearest folder beside where
/// it would be (a typo), else the deepest folder on its way that does exist, to look into.
fn missing_folder_hint(path: &Path) -> String {
    let mut missing = path;
    let Some(found) = path.ancestors().skip(1).find(|a| {
        let exists = a.is_dir();
        if !exists {
            missing = a;
        }
        exists
    }) else {
        return String::new();
    };
    let Some(name) = missing.file_name() else {
        return String::new();
    };
    let folders: Vec<Vec<u8>> = std::fs::read_dir(found)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().into_encoded_bytes())
        .collect();
    let wanted = name.as_encoded_bytes();
    match chkpt_proto::nearest::nearest(wanted, folders.iter().map(Vec::as_slice)) {
        Some(n) => {
            let mut meant = found.join(String::from_utf8_lossy(n).as_ref());
            if let Ok(rest) = path.strip_prefix(missing)
                && !rest.as_os_str().is_empty()
            {
                meant.push(rest);
            }
            format!("; did you mean {}?", meant.display())
        }
        None => format!(
            "; {} holds no folder named like {}: `ls {}` shows what it holds",
            found.display(),
            name.to_string_lossy(),
            shell_word(&found.display().to_string())
        ),
    }
}

/// Waits for `call` (a watch), showing on `spinner` what the workspace's counters say the
/// baseline has done so far: files walked and bytes stored (asked of `Status` on a second
/// connection; an answer that is slow to come is skipped, never waited for).
async fn baseline_progress<F: Future>(
    ctx: &Ctx,
    path: &str,
    spinner: &ProgressBar,
    call: &mut std::pin::Pin<&mut F>,
) -> F::Output {
    let mut status = if ctx.progress {
        ctx.client().await.ok()
    } else {
        None
    };
    spinner.set_message("walking the tree,");
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            response = call.as_mut() => return response,
            _ = tick.tick() => {
                let Some(client) = status.as_mut() else { continue };
                let Ok(Ok(st)) = tokio::time::timeout(Duration::from_millis(200), client.status()).await else {
                    continue;
                };
                let counters = st
                    .workspaces
                    .iter()
                    .find(|w| w.workspace.as_ref().is_some_and(|w| w.path == path))
                    .and_then(|w| w.counters);
                if let Some(c) = counters {
                    spinner.set_message(baseline_message(&c));
                }
            }
        }
    }
}

/// The baseline spinner's words: "12345 files walked, 3.2 MiB stored,".
fn baseline_message(c: &v1::WorkspaceCounters) -> String {
    format!(
        "{} files walked, {} stored,",
        c.files_walked,
        output::human_bytes(c.bytes_stored)
    )
}
