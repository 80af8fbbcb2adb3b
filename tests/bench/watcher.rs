//! The watcher section: what watching a Rust project costs chkptd when its `target/` and
//! `node_modules/` are large and busy (issue 16's targets).
//!
//! - kernel watches held, counted by the kernel (`/proc/PID/fdinfo`), for a project of 2
//!   source folders beside a `target/` (with its `CACHEDIR.TAG`) of 3,000 folders and a
//!   `node_modules/` of 3,000 folders: target ≤ included folders + excluded roots + 5;
//! - the daemon's CPU time for 30,000 writes inside `target/`: target ≤ 20 ms, and no snapshot;
//! - a real `cargo build` of a crate inside the watched folder: the daemon's CPU over the
//!   build's wall time, target ≤ 1 % of a core, and no snapshot holds `target/`.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chkpt_proto::v1 as pb;

use crate::util::{Daemon, cpu_ms, kernel_watches, snapshots, wait_for, watch, write_build_output};

const CACHEDIR_TAG: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55\n";

/// One row of the section's table.
struct Row {
    step: &'static str,
    figure: String,
    target: &'static str,
    met: bool,
}

/// Runs the section and returns its table (markdown) and whether every target was met.
pub async fn section(scratch: &Path) -> (String, bool) {
    let d = Daemon::start(&[]);
    let mut c = d.client().await;
    let pid = c
        .status(pb::StatusRequest {})
        .await
        .map(|r| r.into_inner().pid)
        .unwrap_or(0);
    let root = scratch.join("watched-project");
    for dir in ["src/bin", "target"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("target/CACHEDIR.TAG"), CACHEDIR_TAG).unwrap();
    for i in 0..3000 {
        fs::create_dir_all(root.join(format!("target/debug/d{i}"))).unwrap();
        fs::create_dir_all(root.join(format!("node_modules/m{i}"))).unwrap();
    }
    fs::write(
        root.join("Cargo.toml"),
        b"[package]\nname = \"watched\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    let mut main = String::from("mod lots;\nfn main() { println!(\"{}\", lots::f0()); }\n");
    let mut lots = String::new();
    for i in 0..400 {
        lots.push_str(&format!(
            "pub fn f{i}() -> u64 {{ (0..{i}u64).map(|x| x * x).sum() }}\n"
        ));
    }
    main.push('\n');
    fs::write(root.join("src/main.rs"), main).unwrap();
    fs::write(root.join("src/lots.rs"), lots).unwrap();
    fs::write(root.join("src/bin/other.rs"), b"fn main() {}\n").unwrap();
    watch(&mut c, &root, 300, 3000).await;
    let mut rows = Vec::new();

    // root, src, src/bin; target.
    let included = 3;
    let excluded_roots = 1;
    let watches = wait_for(30, "the watch in place", || {
        let mut c = c.clone();
        async move {
            let st = c.status(pb::StatusRequest {}).await.ok()?.into_inner();
            let w = st.workspaces.first()?;
            (w.state() == pb::WorkspaceState::Watching).then_some(())?;
            Some(kernel_watches(pid))
        }
    })
    .await;
    rows.push(Row {
        step: "kernel watches, 3 included folders beside 6,000 in target/ and node_modules/",
        figure: watches.to_string(),
        target: "≤ included + excluded roots + 5 (9)",
        met: watches <= included + excluded_roots + 5,
    });

    let before = snapshots(&mut c, &root).await.len();
    let cpu0 = cpu_ms(pid);
    write_build_output(&root, 30_000);
    // Seen everything before the marker once the marker is saved.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = cpu_ms(pid) - cpu0;
    fs::write(root.join("src/marker.rs"), b"// m\n").unwrap();
    let after = wait_for(30, "the marker's snapshot", || {
        let mut c = c.clone();
        let root = root.clone();
        async move {
            let s = snapshots(&mut c, &root).await;
            (s.len() > before && s[0].added == 1).then_some(s.len())
        }
    })
    .await;
    rows.push(Row {
        step: "daemon CPU for 30,000 writes inside target/",
        figure: format!("{cpu} ms"),
        target: "≤ 20 ms",
        met: cpu <= 20,
    });
    rows.push(Row {
        step: "snapshots those writes made",
        figure: (after - before - 1).to_string(),
        target: "0",
        met: after == before + 1,
    });

    let cpu0 = cpu_ms(pid);
    let started = Instant::now();
    let build = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet"])
        .current_dir(&root)
        .env_remove("CARGO_TARGET_DIR")
        .output();
    let wall = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = cpu_ms(pid) - cpu0;
    match build {
        Ok(out) if out.status.success() => {
            let share = cpu as f64 / wall.as_millis().max(1) as f64 * 100.0;
            rows.push(Row {
                step: "daemon CPU over a real `cargo build` in the watched crate",
                figure: format!(
                    "{share:.2} % of a core ({cpu} ms over {:.1} s)",
                    wall.as_secs_f64()
                ),
                target: "≤ 1 % of a core",
                met: share <= 1.0,
            });
            let s = snapshots(&mut c, &root).await;
            // Cargo.toml, Cargo.lock, src/main.rs, src/lots.rs, src/bin/other.rs, src/marker.rs.
            let most = s.iter().map(|s| s.files).max().unwrap_or(0);
            rows.push(Row {
                step: "files in the largest snapshot after the build (6 outside target/)",
                figure: most.to_string(),
                target: "≤ 6",
                met: most <= 6,
            });
        }
        Ok(out) => rows.push(Row {
            step: "daemon CPU over a real `cargo build` in the watched crate",
            figure: format!("the build failed: {}", String::from_utf8_lossy(&out.stderr)),
            target: "≤ 1 % of a core",
            met: false,
        }),
        Err(e) => rows.push(Row {
            step: "daemon CPU over a real `cargo build` in the watched crate",
            figure: format!("cargo could not run: {e}"),
            target: "≤ 1 % of a core",
            met: false,
        }),
    }
    drop(d);

    let mut table = String::from(
        "### Watching a busy Rust project (issue 16)\n\n| step | ours: chkptd | target | met? |\n|---|---|---|---|\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.step,
            r.figure,
            r.target,
            if r.met { "yes" } else { "**no**" }
        ));
    }
    (table, rows.iter().all(|r| r.met))
}
