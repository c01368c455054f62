//! A worker under test, as a real child process.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::services::{free_port, AMQP_URL, S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The `vargpt-worker` binary (`env!("CARGO_BIN_EXE_vargpt-worker")`).
    pub bin: PathBuf,
    pub prefix: String,
    pub s3_endpoint: String,
    pub bucket: String,
    pub amqp_url: String,
    /// Fake backend (fault injection) instead of the tiny reference model.
    pub fake: bool,
    /// Extra command-line arguments after `serve`.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl WorkerConfig {
    pub fn new(bin: impl Into<PathBuf>, prefix: &str, s3_endpoint: &str, bucket: &str) -> Self {
        WorkerConfig {
            bin: bin.into(),
            prefix: prefix.to_string(),
            s3_endpoint: s3_endpoint.to_string(),
            bucket: bucket.to_string(),
            amqp_url: AMQP_URL.to_string(),
            fake: crate::force_fake_backend(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn fake(mut self) -> Self {
        self.fake = true;
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

pub struct Worker {
    child: Option<Child>,
    pub config: WorkerConfig,
    /// `127.0.0.1:port` of /metrics, /healthz, /readyz.
    pub http: String,
    pub worker_id: String,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Worker {
    /// Starts `vargpt-worker serve` with a clean environment (only what the
    /// test sets), logs to a file.
    pub fn spawn(config: &WorkerConfig, worker_id: &str) -> anyhow::Result<Self> {
        let log_dir = tempfile::tempdir()?;
        let log = log_dir.path().join("worker.log");
        let log_file = std::fs::File::create(&log)?;
        let http = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(&config.bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("VARGPT_IT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("RUST_BACKTRACE", "0")
            .env("VARGPT_AMQP_URL", &config.amqp_url)
            .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
            .env("AWS_REGION", S3_REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .arg("serve")
            .args(["--model", &crate::tiny_model().display().to_string()])
            .args(["--queue-prefix", &config.prefix])
            .args(["--s3-bucket", &config.bucket])
            .args(["--s3-endpoint", &config.s3_endpoint])
            .args(["--http-addr", &http])
            .args(["--worker-id", worker_id])
            .args(["--reconnect-max-backoff-ms", "1000"])
            .args(&config.args)
            .stdin(Stdio::null())
            // One file, one offset: stdout and stderr interleave instead of
            // overwriting each other.
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if config.fake {
            cmd.arg("--fake-backend");
        }
        for (k, v) in &config.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn()?;
        Ok(Worker {
            child: Some(child),
            config: config.clone(),
            http,
            worker_id: worker_id.to_string(),
            log,
            _log_dir: log_dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for `/readyz` to answer 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok((200, _)) = crate::http::get(&self.http, "/readyz").await {
                return Ok(());
            }
            if let Some(status) = self.try_wait() {
                bail!(
                    "worker exited with {status} before becoming ready; logs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "worker not ready within {timeout:?}; logs:\n{}",
            self.logs()
        )
    }

    pub async fn metrics(&self) -> String {
        crate::http::get(&self.http, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: the polite request to stop.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- logs of worker {} ----\n{}",
                self.worker_id,
                self.logs()
            );
        }
    }
}
