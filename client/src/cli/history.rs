//! The commands that show content: `diff` (patch, `--stat`, `--name-status`), `show -p` and
//! `log -p`/`--stat`. The daemon makes the patches; these ask for them and print them.

use std::path::PathBuf;

use chkpt_proto::v1;
use clap::{Args, ValueEnum};

use super::{Ctx, now_ms};
use crate::connect::Error;
use crate::output::{self, EntryChanges, LogForm};

/// How patches are made, shared by `diff`, `show` and `log`.
#[derive(Debug, Args, Clone)]
pub(super) struct PatchArgs {
    /// Lines of context around each change
    #[arg(short = 'U', long = "unified", value_name = "N")]
    pub(super) unified: Option<u32>,
    /// The line diff: histogram (git's --histogram) or myers (git's default)
    #[arg(long, value_enum, value_name = "ALGORITHM")]
    diff_algorithm: Option<Algorithm>,
    /// Largest file whose patch is shown, e.g. 512K, 8M (default), 1G; 0 = no limit. Larger
    /// files are summarised with both sizes
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_file_size: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Algorithm {
    Histogram,
    Myers,
}

/// What `diff` prints.
#[derive(Debug, Args)]
pub(super) struct DiffArgs {
    /// Older side [default: latest]
    pub(super) snap: Option<String>,
    /// Newer side [default: the working tree]
    pub(super) snap2: Option<String>,
    /// Per-file counts of added and deleted lines with a bar, like `git diff --stat`
    #[arg(long, conflicts_with = "name_status")]
    pub(super) stat: bool,
    /// Only the changed paths, with what changed and their sizes
    #[arg(long)]
    pub(super) name_status: bool,
    #[command(flatten)]
    pub(super) patch: PatchArgs,
    /// Only these files or directories (after `--`)
    #[arg(last = true, value_name = "PATH")]
    pub(super) paths: Vec<PathBuf>,
}

/// What `show` prints besides the snapshot's details.
#[derive(Debug, Args)]
pub(super) struct ShowArgs {
    /// Snapshot: id, id prefix, latest, latest~N, @2h, @2026-11-24T10:00
    pub(super) snap: String,
    /// Also show the snapshot's changes against the one before it, as a patch
    #[arg(short = 'p', long = "patch")]
    pub(super) patch_form: bool,
    /// Also show those changes as `--stat`
    #[arg(long, conflicts_with = "patch_form")]
    pub(super) stat: bool,
    #[command(flatten)]
    pub(super) patch: PatchArgs,
    /// Only changes to these files or directories (after `--`)
    #[arg(last = true, value_name = "PATH")]
    pub(super) paths: Vec<PathBuf>,
}

/// What `log` prints.
#[derive(Debug, Args)]
pub(super) struct LogArgs {
    /// Files or directories in the workspace (`log -- PATH...` works too)
    #[arg(required = true, value_name = "PATH")]
    pub(super) paths: Vec<PathBuf>,
    /// With each snapshot, its changes to the paths as a patch
    #[arg(short = 'p', long = "patch")]
    pub(super) patch_form: bool,
    /// With each snapshot, its changes to the paths as `--stat`
    #[arg(long, conflicts_with = "patch_form")]
    pub(super) stat: bool,
    /// Show at most N snapshots
    #[arg(short = 'n', long, value_name = "N")]
    pub(super) limit: Option<u32>,
    #[command(flatten)]
    pub(super) patch: PatchArgs,
}

/// Parses a size: `512`, `512K`, `8M`, `1G` (binary units); `0` means no limit.
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 512K, 8M or 1G"))?;
    let shift = match unit.trim_end_matches(['B', 'b', 'i']) {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => return Err(format!("`{text}` is not a size like 512K, 8M or 1G")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

impl PatchArgs {
    fn options(&self, stat_only: bool) -> v1::PatchOptions {
        let mut o = v1::PatchOptions {
            context_lines: self.unified,
            stat_only,
            max_file_bytes: match self.max_file_size {
                Some(0) => u64::MAX,
                Some(n) => n,
                None => 0,
            },
            max_total_bytes: 0,
            algorithm: 0,
        };
        o.set_algorithm(match self.diff_algorithm {
            None => v1::DiffAlgorithm::Unspecified,
            Some(Algorithm::Histogram) => v1::DiffAlgorithm::Histogram,
            Some(Algorithm::Myers) => v1::DiffAlgorithm::Myers,
        });
        o
    }
}

/// The paths after `--`, each taken as `Ctx::ws_path` takes one (`..`, and `-w DIR` from
/// elsewhere).
fn paths(ctx: &Ctx, list: &[PathBuf]) -> Result<Vec<Vec<u8>>, Error> {
    list.iter().map(|p| ctx.ws_path(p)).collect()
}

/// The terminal's width for `--stat` bars (git's 80 elsewhere).
fn stat_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(output::STAT_WIDTH)
}

pub(super) async fn diff(ctx: &Ctx, args: DiffArgs) -> Result<(), Error> {
    let patch = (!args.name_status).then(|| args.patch.options(args.stat));
    let req = v1::DiffRequest {
        workspace: ctx.workspace()?,
        from: args.snap.unwrap_or_default(),
        to: args.snap2.unwrap_or_default(),
        paths: paths(ctx, &args.paths)?,
        patch,
        from_parent: false,
    };
    let diff = ctx.client().await?.diff(req).await?;
    if ctx.json {
        return ctx.print_json(&output::diff_json(&diff.entries));
    }
    let p = ctx.palette;
    // Every form says so, rather than print nothing (`diff_lines` does it for --name-status).
    if args.name_status || diff.entries.is_empty() {
        return ctx.print(&output::diff_lines(p, &diff.entries));
    }
    if args.stat {
        return ctx.page(output::stat_text(p, &diff.entries, stat_width()).as_bytes());
    }
    ctx.page(&output::diff_patch(p, &diff.entries))
}

pub(super) async fn show(ctx: &Ctx, args: ShowArgs) -> Result<(), Error> {
    let workspace = ctx.workspace()?;
    let mut client = ctx.client().await?;
    let snapshot = client.get(workspace.clone(), args.snap.clone()).await?;
    if !args.patch_form && !args.stat {
        if !args.paths.is_empty() {
            return Err(Error::Usage(
                "paths after `--` limit the changes shown: add -p or --stat".into(),
            ));
        }
        return ctx.emit(
            || output::snapshot_json(&snapshot),
            || output::snapshot_details(ctx.palette, now_ms(), &snapshot),
        );
    }
    let req = v1::DiffRequest {
        workspace,
        from: String::new(),
        // The id, not the selector: `latest` must not move between the two calls.
        to: snapshot.id.clone(),
        paths: paths(ctx, &args.paths)?,
        patch: Some(args.patch.options(args.stat)),
        from_parent: true,
    };
    let diff = client.diff(req).await?;
    if ctx.json {
        let mut value = output::snapshot_json(&snapshot);
        value["changes"] = output::diff_json(&diff.entries);
        value["compared_with"] = if diff.from_snapshot.is_empty() {
            serde_json::Value::Null
        } else {
            diff.from_snapshot.clone().into()
        };
        return ctx.print_json(&value);
    }
    let p = ctx.palette;
    let mut text = output::snapshot_details(p, now_ms(), &snapshot).into_bytes();
    text.push(b'\n');
    if args.stat {
        text.extend_from_slice(output::stat_text(p, &diff.entries, stat_width()).as_bytes());
    } else {
        text.extend_from_slice(&output::diff_patch(p, &diff.entries));
    }
    ctx.page(&text)
}

pub(super) async fn log(ctx: &Ctx, args: LogArgs) -> Result<(), Error> {
    let mut all = paths(ctx, &args.paths)?;
    let first = all.remove(0);
    let form = if args.patch_form {
        Some(LogForm::Patch)
    } else if args.stat {
        Some(LogForm::Stat)
    } else {
        None
    };
    let req = v1::LogRequest {
        workspace: ctx.workspace()?,
        path: first,
        limit: args.limit.unwrap_or(0),
        paths: all,
        patch: form.map(|f| args.patch.options(f == LogForm::Stat)),
    };
    let entries = ctx.client().await?.log(req).await?;
    if ctx.json {
        return ctx.print_json(&output::log_json(
            &entries,
            if form.is_some() {
                EntryChanges::Listed
            } else {
                EntryChanges::Omitted
            },
        ));
    }
    let (p, now) = (ctx.palette, now_ms());
    match form {
        None => ctx.print(&output::log_table(p, now, &entries)),
        Some(form) => ctx.page(&output::log_patches(p, now, &entries, form, stat_width())),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "M", "1.5M", "8X", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size("99999999999999999G").is_err());
    }
}
