//! Helpers for black-box tests: a real `chkptd` on a socket in a temp dir, and a gRPC client.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chkpt_proto::v1 as pb;
use chkpt_proto::v1::chkpt_client::ChkptClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub mod cli;
pub mod garage;
pub mod remote;
pub mod survival;

/// A running daemon, stopped with SIGTERM when dropped.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub data: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
    prefix: Vec<String>,
    /// Environment variables set (or, with none, removed) for the daemon.
    env: Vec<(String, Option<String>)>,
}

impl Daemon {
    /// Starts `chkptd` bound by file permissions even as root (without the capabilities that
    /// override them), so that a file mode can keep it out.
    pub fn start_bound_by_permissions(args: &[&str]) -> Daemon {
        // SAFETY: getuid cannot fail.
        let root = unsafe { libc::getuid() } == 0;
        let prefix: &[&str] = if root {
            &[
                "setpriv",
                "--bounding-set=-dac_override,-dac_read_search",
                "--",
            ]
        } else {
            &[]
        };
        Daemon::start_with_prefix(prefix, args)
    }

    /// Starts `chkptd` with a fresh data dir and socket; `args` are extra flags.
    pub fn start(args: &[&str]) -> Daemon {
        Daemon::start_with_prefix(&[], args)
    }

    /// Starts `chkptd` through a command prefix (e.g. `setpriv …`).
    pub fn start_with_prefix(prefix: &[&str], args: &[&str]) -> Daemon {
        Daemon::start_full(prefix, None, args)
    }

    /// Starts `chkptd` with its data directory on a fresh tmpfs (mounted with these `-o`
    /// options, e.g. `size=24m,nr_inodes=400`) in a mount namespace of its own: no root
    /// needed, nobody else sees it, and it is gone with the daemon. The tests that fill a disk
    /// use it.
    pub fn on_a_tmpfs(options: &str, args: &[&str]) -> Daemon {
        let prefix = chkpt_testkit::disk::private_tmpfs(
            options,
            r#""$d""#,
            r#"d=; prev=; for a in "$@"; do [ "$prev" = --data-dir ] && d=$a; prev=$a; done
mkdir -p "$d" && "#,
        );
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        Daemon::start_with_prefix(&prefix, args)
    }

    /// Starts `chkptd` with environment variables set (`Some`) or removed (`None`).
    pub fn start_with_env(env: &[(&str, Option<&str>)], args: &[&str]) -> Daemon {
        let mut d = Daemon::start_full_unspawned(&[], None, args);
        d.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
            .collect();
        d.spawn();
        d
    }

    /// Starts `chkptd` with its data directory at `data` (socket and log in a temp dir).
    pub fn start_with_data(data: &Path, args: &[&str]) -> Daemon {
        Daemon::start_full(&[], Some(data), args)
    }

    fn start_full(prefix: &[&str], data: Option<&Path>, args: &[&str]) -> Daemon {
        let mut d = Daemon::start_full_unspawned(prefix, data, args);
        d.spawn();
        d
    }

    fn start_full_unspawned(prefix: &[&str], data: Option<&Path>, args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("run/chkptd.sock");
        let data = data.map_or_else(|| dir.path().join("data"), Path::to_path_buf);
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        // The default free-space floor (2 GiB at most) would pause every test's automatic
        // snapshots whenever the shared disk the temp dirs live on runs low, and tests that
        // wait for one would time out: the floor is off unless a test sets it (the fill test
        // does, on a file system of its own).
        if !args.iter().any(|a| a == "--min-free-bytes") {
            args.extend(["--min-free-bytes".into(), "0".into()]);
        }
        Daemon {
            dir,
            socket,
            data,
            child: None,
            args,
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("chkptd.log"))
            .expect("log file");
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(chkptd_bin());
                c
            }
            None => Command::new(chkptd_bin()),
        };
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let child = cmd
            .arg("--socket")
            .arg(&self.socket)
            .arg("--data-dir")
            .arg(&self.data)
            .args(&self.args)
            .env("RUST_LOG", "chkpt_daemon=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn chkptd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "chkptd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it with SIGKILL, as a crash would, and waits.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chkptd.log")).unwrap_or_default()
    }

    /// Stops it (SIGTERM) and waits.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill with a valid pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "chkptd did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again after [`Daemon::stop`] or [`Daemon::kill9`], on the same data dir and
    /// socket; returns once the socket accepts connections.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Stops and starts again on the same data dir and socket.
    pub fn restart(&mut self) {
        assert!(
            self.stop().success(),
            "chkptd exited badly:\n{}",
            self.log()
        );
        self.spawn();
    }

    /// A connected client.
    pub async fn client(&self) -> ChkptClient<Channel> {
        connect(&self.socket).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `chkptd` to start: this build's, or the one in `$CHKPT_BENCH_BIN_DIR` when set (the
/// benchmark measures an earlier build that way, on the same machine and trees).
pub fn chkptd_bin() -> PathBuf {
    bench_bin("chkptd", env!("CARGO_BIN_EXE_chkptd"))
}

/// `name` in `$CHKPT_BENCH_BIN_DIR` when it is set, else `built`.
pub fn bench_bin(name: &str, built: &str) -> PathBuf {
    std::env::var_os("CHKPT_BENCH_BIN_DIR")
        .map_or_else(|| PathBuf::from(built), |d| PathBuf::from(d).join(name))
}

/// Connects to a daemon's socket.
pub async fn connect(socket: &Path) -> ChkptClient<Channel> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::try_from("http://localhost")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect");
    ChkptClient::new(channel)
}

/// Polls `f` every 50 ms until it returns `Some`, up to `secs`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Watches `dir` with these timings (the daemon's default retention).
pub async fn watch(
    c: &mut ChkptClient<Channel>,
    dir: &Path,
    idle_ms: u64,
    max_delay_ms: u64,
) -> pb::WatchResponse {
    c.watch(pb::WatchRequest {
        path: dir.display().to_string(),
        idle_ms,
        max_delay_ms,
        include_dependency_dirs: false,
        retention: None,
        include_git: false,
    })
    .await
    .expect("watch")
    .into_inner()
}

/// Watches `dir` with automatic snapshots practically off (an hour's quiet or delay), so only
/// the test's own requests make snapshots; returns the baseline snapshot.
pub async fn watch_without_autosave(c: &mut ChkptClient<Channel>, dir: &Path) -> pb::Snapshot {
    watch(c, dir, 3_600_000, 3_600_000)
        .await
        .baseline
        .expect("a baseline snapshot")
}

/// The workspace's snapshots, newest first: every page of them.
pub async fn snapshots(c: &mut ChkptClient<Channel>, ws: &Path) -> Vec<pb::Snapshot> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .list(pb::ListRequest {
                workspace: ws.display().to_string(),
                limit: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        all.extend(page.snapshots);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// Waits up to `secs` seconds for the workspace's snapshots (newest first) to hold what `pick`
/// looks for, and returns what it found.
pub async fn wait_for_snapshots<T>(
    c: &ChkptClient<Channel>,
    ws: &Path,
    secs: u64,
    what: &str,
    pick: impl Fn(Vec<pb::Snapshot>) -> Option<T>,
) -> T {
    let pick = &pick;
    wait_for(secs, what, || {
        let mut c = c.clone();
        let ws = ws.to_path_buf();
        async move { pick(snapshots(&mut c, &ws).await) }
    })
    .await
}

/// Takes a snapshot of the workspace at `ws` through `Save` and returns it.
pub async fn save(c: &mut ChkptClient<Channel>, ws: &Path, message: &str) -> pb::Snapshot {
    c.save(pb::SaveRequest {
        workspace: ws.display().to_string(),
        message: message.to_owned(),
        pin: false,
        ..Default::default()
    })
    .await
    .expect("save")
    .into_inner()
    .snapshot
    .expect("a snapshot")
}

/// Restores `snap` into `to` and returns the summary.
pub async fn restore_to(
    c: &mut ChkptClient<Channel>,
    ws: &Path,
    snap: &str,
    to: &Path,
) -> pb::RestoreSummary {
    let mut stream = c
        .restore(pb::RestoreRequest {
            workspace: ws.display().to_string(),
            snapshot: snap.to_owned(),
            to: to.display().to_string(),
            ..Default::default()
        })
        .await
        .expect("restore")
        .into_inner();
    let mut summary = None;
    while let Some(ev) = stream.message().await.expect("restore stream") {
        if let Some(pb::restore_event::Event::Summary(s)) = ev.event {
            summary = Some(s);
        }
    }
    summary.expect("a summary")
}

/// Restores `snap` over the workspace itself; returns the snapshot the summary names.
pub async fn restore_in_place(
    c: &mut ChkptClient<Channel>,
    ws: &Path,
    snap: &str,
) -> Result<String, tonic::Status> {
    let mut s = c
        .restore(pb::RestoreRequest {
            workspace: ws.display().to_string(),
            snapshot: snap.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut last = String::new();
    while let Some(ev) = s.message().await? {
        if let Some(pb::restore_event::Event::Summary(sum)) = ev.event {
            last = sum.snapshot;
        }
    }
    Ok(last)
}

/// Reads `path` from snapshot `snap` through `ReadFile`.
pub async fn read_file(
    c: &mut ChkptClient<Channel>,
    ws: &Path,
    snap: &str,
    path: &[u8],
) -> Result<Vec<u8>, tonic::Status> {
    let mut s = c
        .read_file(pb::ReadFileRequest {
            workspace: ws.display().to_string(),
            snapshot: snap.to_owned(),
            path: path.to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = s.message().await? {
        got.extend_from_slice(&chunk.data);
    }
    Ok(got)
}

/// What `Verify` says of the whole store.
pub async fn verify(c: &mut ChkptClient<Channel>) -> pb::VerifyResponse {
    c.verify(pb::VerifyRequest::default())
        .await
        .expect("Verify")
        .into_inner()
}

/// Asserts that `Verify` finds every object the snapshots need, intact.
pub async fn assert_store_verifies(c: &mut ChkptClient<Channel>) {
    let v = verify(c).await;
    assert!(v.ok, "{:?}", v.problems);
}

/// Runs `git args...` in `dir` as a made-up user, with no system or user configuration read,
/// asserting success; returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git (install git)");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a build writes: `n` small object files spread over the 3,000 folders
/// `target/debug/d0` … `d2999` (which must exist).
pub fn write_build_output(root: &Path, n: usize) {
    for i in 0..n {
        std::fs::write(
            root.join(format!("target/debug/d{}/f{i}.o", i % 3000)),
            b"obj",
        )
        .expect("write into target/");
    }
}

/// path → content (`None` for a folder) of everything under `root`.
pub type Listing = std::collections::BTreeMap<PathBuf, Option<Vec<u8>>>;

/// path → (is_dir, content) of everything under `root`, for comparing folders.
pub fn listing(root: &Path) -> Listing {
    fn rec(
        root: &Path,
        dir: &Path,
        out: &mut std::collections::BTreeMap<PathBuf, Option<Vec<u8>>>,
    ) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
            if p.is_dir() && !p.is_symlink() {
                out.insert(rel, None);
                rec(root, &p, out);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    rec(root, root, &mut out);
    out
}

impl Daemon {
    /// Starts again after [`Daemon::stop`].
    pub fn restart_after_stop(&mut self) {
        self.spawn();
    }
}

/// A Python with `grpcio`, `grpcio-reflection` and `protobuf`: the system's if it has them
/// (`.ci/run` installs them), else a virtualenv under `target/` made once for the tests.
pub fn python_with_grpc() -> PathBuf {
    python_with(
        "test-python",
        "import grpc, grpc_reflection, google.protobuf",
        &["grpcio", "grpcio-reflection", "protobuf"],
        true,
    )
}

/// A Python that runs `check`: the system's when `system_ok` and it does, else the
/// virtualenv `target/<venv>`, made once (with `pip install packages`) for the tests.
pub fn python_with(venv: &str, check: &str, packages: &[&str], system_ok: bool) -> PathBuf {
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", check])
            .status()
            .is_ok_and(|s| s.success())
    };
    let system = PathBuf::from("python3");
    if system_ok && has(&system) {
        return system;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(venv);
    let py = venv.join("bin/python");
    if !has(&py) {
        let made = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "python3 -m venv failed: install python3-venv"
        );
        let pip = Command::new(&py)
            .args(["-m", "pip", "install", "--quiet"])
            .args(packages)
            .status();
        assert!(
            pip.is_ok_and(|s| s.success()),
            "pip install {packages:?} failed"
        );
        assert!(
            has(&py),
            "{check:?} fails even after pip install {packages:?}"
        );
    }
    py
}

/// CPU time process `pid` used so far, in ms (user + system, from /proc; 10 ms steps).
pub fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'; utime and
    // stime are fields 14 and 15 of the whole line.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1000 / hz
}

/// The inotify watches process `pid` holds, as the kernel counts them.
pub fn kernel_watches(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .map(|t| t.lines().filter(|l| l.starts_with("inotify wd:")).count())
        .sum()
}

/// chkpt's own files left in the folder (there must be none while nothing runs).
pub fn litter(root: &Path) -> Vec<PathBuf> {
    listing(root)
        .into_keys()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".chkpt-"))
        })
        .collect()
}

/// A client, once the daemon answers and has its (first) workspace watched again after a
/// restart, and reconciled (the walk for changes made while it was down done); fails with the
/// daemon's log after 30 s.
pub async fn ready(d: &Daemon) -> ChkptClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = d.client().await;
        if let Ok(st) = c.status(pb::StatusRequest {}).await
            && st
                .into_inner()
                .workspaces
                .first()
                .is_some_and(|w| w.state() == pb::WorkspaceState::Watching && !w.reconciling)
        {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "the workspace was not re-watched:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
