//! Starting the real services: RabbitMQ and an s3s-fs S3 server.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const S3_ACCESS_KEY: &str = "it-access-key";
pub const S3_SECRET_KEY: &str = "it-secret-key-0123456789";
pub const S3_REGION: &str = "us-east-1";

fn listening(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .is_ok_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok())
}

/// Makes sure RabbitMQ listens on 127.0.0.1:5672, starting it if needed.
/// Runs once per test binary.
pub fn ensure_rabbitmq() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| start_rabbitmq().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn start_rabbitmq() -> anyhow::Result<()> {
    if listening("127.0.0.1:5672") {
        return Ok(());
    }
    eprintln!("RabbitMQ is not listening; starting it with `rabbitmq-server -detached`");
    let status = Command::new("rabbitmq-server")
        .arg("-detached")
        .status()
        .context("running rabbitmq-server (install it, or run .ci/setup-services.sh)")?;
    if !status.success() {
        bail!("rabbitmq-server -detached failed: {status}");
    }
    wait_for_rabbitmq(Duration::from_secs(90))
}

/// Waits until the broker accepts AMQP again (after a start or restart).
pub fn wait_for_rabbitmq(timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if listening("127.0.0.1:5672") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("RabbitMQ did not come up on 127.0.0.1:5672 within {timeout:?}")
}

/// A free loopback port (bound, then released: good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The s3s-fs binary: `$S3S_FS_BIN`, the tools folder, or PATH.
pub fn s3s_fs_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("S3S_FS_BIN") {
        return Ok(PathBuf::from(p));
    }
    let tools =
        std::env::var("VARGPT_TOOLS").unwrap_or_else(|_| "/root/.cache/vargpt-rs/tools".into());
    let candidate = Path::new(&tools).join("bin/s3s-fs");
    if candidate.is_file() {
        return Ok(candidate);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
        .context("s3s-fs not found: set S3S_FS_BIN, or run .ci/setup-services.sh")
}

/// An s3s-fs server with its own temporary root; killed on drop.
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    pub root: tempfile::TempDir,
    pub bucket: String,
}

impl S3Server {
    /// Starts a server with one bucket (a folder under the root).
    pub fn start(bucket: &str) -> anyhow::Result<Self> {
        let root = tempfile::tempdir().context("temp root for s3s-fs")?;
        std::fs::create_dir_all(root.path().join(bucket))?;
        let mut s = S3Server {
            child: None,
            port: free_port(),
            root,
            bucket: bucket.to_string(),
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = s3s_fs_bin()?;
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if listening(&format!("127.0.0.1:{}", self.port)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("s3s-fs did not listen on port {} within 20 s", self.port)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server (the data stays): an S3 outage.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and root.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// An SDK client with the test credentials.
    pub fn client(&self) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint())
    }

    /// The bytes of an object, read straight from the server's folder.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(S3_REGION))
        .credentials_provider(Credentials::new(
            S3_ACCESS_KEY,
            S3_SECRET_KEY,
            None,
            None,
            "tests",
        ))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A private RabbitMQ node (own name, port and data folder) that a test may
/// stop and start without disturbing anyone else using the shared broker.
pub struct PrivateBroker {
    pub node: String,
    pub port: u16,
    /// Only TLS (amqps) on `port`, with a certificate for localhost/127.0.0.1
    /// signed by a throw-away CA at [`PrivateBroker::ca_file`].
    pub tls: bool,
    dir: PathBuf,
}

impl PrivateBroker {
    /// A plain-AMQP node.
    pub fn start(name: &str) -> anyhow::Result<Self> {
        Self::start_with(name, false)
    }

    /// A node that only speaks amqps://.
    pub fn start_tls(name: &str) -> anyhow::Result<Self> {
        Self::start_with(name, true)
    }

    fn start_with(name: &str, tls: bool) -> anyhow::Result<Self> {
        ensure_rabbitmq()?; // the packages are there and the shared node works
        let port = free_port();
        let node = format!("vargpt-{name}-{port}@localhost");
        let dir = std::env::temp_dir().join(format!("vargpt-rmq-{name}-{port}"));
        std::fs::create_dir_all(dir.join("mnesia"))?;
        std::fs::create_dir_all(dir.join("log"))?;
        let conf = if tls {
            make_certs(&dir)?;
            let d = dir.display();
            format!(
                "listeners.tcp = none\nlisteners.ssl.1 = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {d}/ca.pem\nssl_options.certfile = {d}/server.pem\n\
                 ssl_options.keyfile = {d}/server.key\nssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n"
            )
        } else {
            format!("listeners.tcp.local = 127.0.0.1:{port}\n")
        };
        std::fs::write(dir.join("rabbitmq.conf"), conf)?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        // rabbitmq-server drops to the rabbitmq user when started by root.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let b = PrivateBroker {
            node,
            port,
            tls,
            dir,
        };
        b.boot()?;
        Ok(b)
    }

    /// The CA certificate (PEM) of a TLS node.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn boot(&self) -> anyhow::Result<()> {
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("rabbitmq-server -detached")?;
        if !status.success() {
            bail!("starting RabbitMQ node {} failed: {status}", self.node);
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if listening(&format!("127.0.0.1:{}", self.port)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "RabbitMQ node {} did not listen on {} in time",
            self.node,
            self.port
        )
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("amqps://guest:guest@localhost:{}/%2f", self.port)
        } else {
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
        }
    }

    /// Stops the whole node (every connection drops, the port closes).
    pub fn stop(&self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .output();
        let deadline = Instant::now() + Duration::from_secs(30);
        while listening(&format!("127.0.0.1:{}", self.port)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A full broker restart; durable queues and persistent messages survive.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        self.boot()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throw-away CA and a server certificate for localhost / 127.0.0.1 (openssl CLI).
fn make_certs(dir: &Path) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl")?;
        if !o.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=vargpt-test-ca",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ])?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ])
}
