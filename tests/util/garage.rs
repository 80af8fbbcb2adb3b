//! A real Garage server (an S3-compatible object store) for the remote tests: one node in a
//! temporary folder, with a key and a bucket, killed when dropped.
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

/// The Garage binary, or a failure that says how to get one.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHKPT_GARAGE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let cached = home.join(format!(".cache/chkpt-tools/garage-{VERSION}/bin/garage"));
    if cached.exists() {
        return cached;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("garage");
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "the remote tests need Garage {VERSION} and found none (not in $CHKPT_GARAGE, {}, or on \
         PATH): run .ci/run, which installs it there, or `cargo install garage --version \
         {VERSION} --locked --root {}`",
        cached.display(),
        home.join(format!(".cache/chkpt-tools/garage-{VERSION}"))
            .display()
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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

impl Garage {
    /// Starts a node with a key allowed on bucket `chkpt-test` (Garage's `--single-node
    /// --default-bucket`: the layout, the key and the bucket are made before the S3 API
    /// listens), and waits for its S3 port.
    pub fn start() -> Garage {
        let dir = tempfile::tempdir().expect("tempdir");
        let s3_port = free_port();
        let rpc_port = free_port();
        let config = dir.path().join("garage.toml");
        let secret_hex: String = chkpt_testkit::noise(32, u64::from(s3_port))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret_hex}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
                d = dir.path().display()
            ),
        )
        .expect("write garage.toml");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
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

    /// The S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }

    /// Writes a credentials file (mode 0600) for its key, or for `secret` instead of the
    /// right one, into `dir`.
    pub fn credentials(&self, dir: &Path, secret: Option<&str>) -> PathBuf {
        let path = dir.join(if secret.is_some() {
            "bad-credentials"
        } else {
            "credentials"
        });
        std::fs::write(
            &path,
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                self.key_id,
                secret.unwrap_or(&self.secret)
            ),
        )
        .expect("write credentials");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("garage.log"))
            .expect("log");
        let child = Command::new(bin())
            .arg("-c")
            .arg(&self.config)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.key_id)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret)
            .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
            .env("RUST_LOG", "garage=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin().display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok() {
                return;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("garage exited ({st}) before it listened:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "garage did not listen on {} in 60 s:\n{}",
                self.s3_port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}
