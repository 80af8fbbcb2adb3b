//! A real Garage server (an S3-compatible object store) for the remote tests: one node in a
//! temporary folder, with a key and a bucket, killed when dropped ([`Garage`]); or a cluster
//! of nodes with a replication factor, laid out and keyed through Garage's own CLI
//! ([`Cluster`]). Both are read over S3 by the tests too ([`S3::list`]).
//!
//! The binary is `$CHKPT_GARAGE`, else the one `.ci/run` installs under
//! `~/.cache/chkpt-tools/garage-VERSION/bin/`, else `garage` on `PATH`. A machine without it
//! fails the tests, saying how to install it: they never skip.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Garage version `.ci/run` installs.
pub const VERSION: &str = "2.5.0";

/// The Garage binary: `$CHKPT_GARAGE`, the cached one, or one on `PATH`.
pub fn find_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHKPT_GARAGE") {
        return Some(PathBuf::from(p));
    }
    let cached = cached_bin();
    if cached.exists() {
        return Some(cached);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("garage"))
        .find(|p| p.exists())
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

fn cached_bin() -> PathBuf {
    home().join(format!(".cache/chkpt-tools/garage-{VERSION}/bin/garage"))
}

/// The Garage binary, or a failure that says how to get one.
pub fn bin() -> PathBuf {
    if let Some(p) = find_bin() {
        return p;
    }
    let (home, cached) = (home(), cached_bin());
    panic!(
        "the remote tests need Garage {VERSION} and found none (not in $CHKPT_GARAGE, {}, or on \
         PATH): run .ci/run, which installs it there, or `cargo install garage --version \
         {VERSION} --locked --root {}`",
        cached.display(),
        home.join(format!(".cache/chkpt-tools/garage-{VERSION}"))
            .display()
    );
}

/// `n` distinct free ports: all bound at once, so none is handed out twice (a port given to
/// both the S3 and the RPC listener makes Garage exit).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("a port").port())
        .collect()
}

/// A running one-node Garage.
pub struct Garage {
    pub dir: tempfile::TempDir,
    pub s3_port: u16,
    pub key_id: String,
    pub secret: String,
    pub bucket: String,
    config: PathBuf,
    child: Option<Child>,
}

/// 32 seeded random bytes, hex.
fn hex_noise(seed: u64) -> String {
    chkpt_testkit::noise(32, seed)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes the configuration of a node whose folders are under `dir`; returns its path.
fn write_config(
    dir: &Path,
    replication: usize,
    rpc_port: u16,
    s3_port: u16,
    rpc_secret: &str,
) -> PathBuf {
    let config = dir.join("garage.toml");
    std::fs::write(
        &config,
        format!(
            r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = {replication}
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
            d = dir.display()
        ),
    )
    .expect("write garage.toml");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    config
}

/// Starts `garage -c config ARGS` with its output appended to `log`.
fn spawn(config: &Path, log: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    Command::new(bin())
        .arg("-c")
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "garage=info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin().display()))
}

/// Waits until `port` accepts, failing with `log` when `child` exits or a minute passes.
fn wait_listening(child: &mut Child, port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        let log = || std::fs::read_to_string(log).unwrap_or_default();
        if let Some(st) = child.try_wait().ok().flatten() {
            panic!("garage exited ({st}) before it listened:\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "garage did not listen on {port} in 60 s:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Garage {
    /// Starts a node with a key allowed on bucket `chkpt-test` (Garage's `--single-node
    /// --default-bucket`: the layout, the key and the bucket are made before the S3 API
    /// listens), and waits for its S3 port.
    pub fn start() -> Garage {
        let dir = tempfile::tempdir().expect("tempdir");
        let [s3_port, rpc_port] = free_ports(2)[..] else {
            unreachable!("two ports")
        };
        let secret_hex = hex_noise(u64::from(s3_port));
        let config = write_config(dir.path(), 1, rpc_port, s3_port, &secret_hex);
        let mut g = Garage {
            key_id: format!("GK{}", &secret_hex[..24]),
            secret: secret_hex.chars().rev().collect(),
            bucket: "chkpt-test".to_owned(),
            dir,
            s3_port,
            config,
            child: None,
        };
        g.start_again();
        g
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }

    /// Kills it (SIGKILL: a cut connection, as far as a client can tell) and waits.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on the same folders and ports; returns once its S3 port accepts.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = self.dir.path().join("garage.log");
        let mut child = spawn(
            &self.config,
            &log,
            &["server", "--single-node", "--default-bucket"],
            &[
                ("GARAGE_DEFAULT_ACCESS_KEY", &self.key_id),
                ("GARAGE_DEFAULT_SECRET_KEY", &self.secret),
                ("GARAGE_DEFAULT_BUCKET", &self.bucket),
            ],
        );
        wait_listening(&mut child, self.s3_port, &log);
        self.child = Some(child);
    }
}

/// What a client needs of a running Garage, one node or a cluster.
pub trait S3 {
    /// The S3 endpoint the tests talk to.
    fn endpoint(&self) -> String;
    /// The bucket.
    fn bucket(&self) -> &str;
    /// The access key's id and secret.
    fn key(&self) -> (&str, &str);

    /// Writes a credentials file (mode 0600) for its key, or for `secret` instead of the
    /// right one, into `dir`.
    fn credentials(&self, dir: &Path, secret: Option<&str>) -> PathBuf {
        let path = dir.join(if secret.is_some() {
            "bad-credentials"
        } else {
            "credentials"
        });
        let (id, right) = self.key();
        std::fs::write(
            &path,
            format!(
                "[default]\naws_access_key_id = {id}\naws_secret_access_key = {}\n",
                secret.unwrap_or(right)
            ),
        )
        .expect("write credentials");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    /// An S3 client of the bucket, with the test's key.
    fn client(&self) -> object_store::aws::AmazonS3 {
        let (id, secret) = self.key();
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_bucket_name(self.bucket())
            .with_access_key_id(id)
            .with_secret_access_key(secret)
            .with_region("garage")
            .with_allow_http(true)
            .build()
            .expect("an S3 client")
    }

    /// The names (from the bucket's root) and sizes of the objects under `prefix`, listed
    /// over S3.
    fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let s3 = self.client();
        let prefix = object_store::path::Path::from(prefix);
        runtime()
            .block_on(s3.list(Some(&prefix)).try_collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("list {prefix}: {e}"))
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect()
    }

    /// Reads an object over S3.
    fn get(&self, path: &str) -> Vec<u8> {
        use object_store::ObjectStoreExt;
        let s3 = self.client();
        let path = object_store::path::Path::from(path);
        runtime()
            .block_on(async { s3.get(&path).await?.bytes().await })
            .unwrap_or_else(|e| panic!("get {path}: {e}"))
            .to_vec()
    }

    /// Writes an object over S3.
    fn put(&self, path: &str, body: Vec<u8>) -> Result<(), object_store::Error> {
        use object_store::ObjectStoreExt;
        let s3 = self.client();
        runtime()
            .block_on(s3.put(&object_store::path::Path::from(path), body.into()))
            .map(|_| ())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

impl S3 for Garage {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }
    fn bucket(&self) -> &str {
        &self.bucket
    }
    fn key(&self) -> (&str, &str) {
        (&self.key_id, &self.secret)
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One node of a [`Cluster`].
struct Node {
    dir: PathBuf,
    config: PathBuf,
    s3_port: u16,
    child: Option<Child>,
}

/// Running Garage nodes that form one cluster, with a replication factor, a key and a
/// bucket; every node is killed when dropped. Clients talk to node 0.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub key_id: String,
    pub secret: String,
    pub bucket: String,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `n` nodes with replication factor `replication` (Garage's default consistency
    /// mode: quorums of a majority of the copies), connects them, assigns each a role of
    /// 1 GB in one zone, applies the layout, imports a key and makes a bucket it may use,
    /// then waits until node 0 takes a write over S3.
    pub fn start(n: usize, replication: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let rpc_secret = hex_noise(7);
        let mut nodes = Vec::new();
        let ports = free_ports(2 * n);
        for i in 0..n {
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let (s3_port, rpc_port) = (ports[2 * i], ports[2 * i + 1]);
            let config = write_config(&node_dir, replication, rpc_port, s3_port, &rpc_secret);
            let log = node_dir.join("garage.log");
            let mut child = spawn(&config, &log, &["server"], &[]);
            wait_listening(&mut child, s3_port, &log);
            nodes.push(Node {
                dir: node_dir,
                config,
                s3_port,
                child: Some(child),
            });
        }
        let secret = hex_noise(8);
        let c = Cluster {
            key_id: format!("GK{}", &secret[..24]),
            secret: secret.chars().rev().collect(),
            bucket: "chkpt-test".to_owned(),
            dir,
            nodes,
        };
        let ids: Vec<String> = (0..n)
            .map(|i| {
                let id = c.admin(i, &["node", "id", "-q"]);
                id.trim().to_owned()
            })
            .collect();
        for id in &ids[1..] {
            c.admin(0, &["node", "connect", id]);
        }
        let short: Vec<&str> = ids
            .iter()
            .map(|id| id.split('@').next().unwrap_or(id))
            .collect();
        let mut assign = vec!["layout", "assign", "-z", "dc1", "-c", "1GB"];
        assign.extend(short.iter().copied());
        c.admin(0, &assign);
        c.admin(0, &["layout", "apply", "--version", "1"]);
        let (key_id, secret) = (c.key_id.clone(), c.secret.clone());
        c.admin(0, &["key", "import", "--yes", &key_id, &secret]);
        c.admin(0, &["bucket", "create", "chkpt-test"]);
        c.admin(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                "chkpt-test",
                "--key",
                &key_id,
            ],
        );
        // The layout reaches every node in a moment; until it has, writes can fail.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match c.put("probe", b"probe".to_vec()) {
                Ok(()) => break,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "the cluster took no write in 60 s ({e}):\n{}",
                    c.log()
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// Runs `garage ARGS` against node `i`; fails the test with its output when it fails.
    pub fn admin(&self, i: usize, args: &[&str]) -> String {
        let out = Command::new(bin())
            .arg("-c")
            .arg(&self.nodes[i].config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run garage");
        assert!(
            out.status.success(),
            "garage {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills node `i` (SIGKILL) and waits.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every node's log.
    pub fn log(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "--- node {i}\n{}",
                    std::fs::read_to_string(n.dir.join("garage.log")).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl S3 for Cluster {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.nodes[0].s3_port)
    }
    fn bucket(&self) -> &str {
        &self.bucket
    }
    fn key(&self) -> (&str, &str) {
        (&self.key_id, &self.secret)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
