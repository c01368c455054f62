//! Command line and environment (12-factor: every flag has an env var).
//! Parsed once in `main`, checked once by the `*_settings` functions here,
//! then passed down as plain settings structs.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use vargpt_proto::Limits;

/// A value that must never be printed (logs, `Debug`, error messages).
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "vargpt-worker",
    version,
    about = "VARGPT job worker: RabbitMQ in, S3 and results out."
)]
pub struct Cli {
    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, env = "VARGPT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Consume jobs from RabbitMQ, store images in S3, publish results (the service).
    Serve(Box<ServeArgs>),
    /// Run the jobs of a JSONL file with an in-process queue and a local
    /// directory as the store: no services needed.
    Embedded(Box<EmbeddedArgs>),
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory or Hugging Face hub id.
    #[arg(
        long,
        env = "VARGPT_MODEL",
        default_value = "tests/fixtures/reference-tiny"
    )]
    pub model: String,
    /// Hub revision when --model is a hub id.
    #[arg(long, env = "VARGPT_MODEL_REVISION")]
    pub revision: Option<String>,
    /// Compute dtype: f32, f16, bf16.
    #[arg(long, env = "VARGPT_DTYPE")]
    pub dtype: Option<String>,
    /// GPU ordinal (needs a CUDA build).
    #[arg(long, env = "VARGPT_CUDA_DEVICE")]
    pub cuda_device: Option<usize>,
    /// Tensor-parallel degree: split the LLaMA and VAR blocks over this many
    /// devices (GPUs in a CUDA build, CPU thread ranks otherwise).
    #[arg(long, env = "VARGPT_TP", default_value_t = 1)]
    pub tp: usize,
    /// GPU ordinals of the tensor-parallel ranks, comma separated (default:
    /// `--tp` consecutive GPUs from --cuda-device or 0).
    #[arg(long, env = "VARGPT_DEVICES", value_delimiter = ',')]
    pub devices: Vec<usize>,
    /// Continuous batching: most jobs the engine steps together (jobs in flight
    /// come from --concurrency × --batch-max).
    #[arg(long, env = "VARGPT_ENGINE_BATCH", default_value_t = 8)]
    pub engine_batch: usize,
    /// Continuous batching: most new tokens per engine step (prompts count whole).
    #[arg(long, env = "VARGPT_MAX_BATCH_TOKENS", default_value_t = 4096)]
    pub max_batch_tokens: usize,
    /// Test only: a deterministic fake model with fault-injection prompts.
    #[arg(long, env = "VARGPT_FAKE_BACKEND", hide = true)]
    pub fake_backend: bool,
    /// Test only: how long the fake model takes to "load".
    #[arg(
        long,
        env = "VARGPT_FAKE_LOAD_DELAY_MS",
        hide = true,
        default_value_t = 0
    )]
    pub fake_load_delay_ms: u64,
}

#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Largest accepted message body, bytes (inline images are base64 inside it).
    #[arg(long, env = "VARGPT_MAX_JOB_BYTES", default_value_t = 16 << 20)]
    pub max_job_bytes: usize,
    /// Largest prompt, bytes.
    #[arg(long, env = "VARGPT_MAX_PROMPT_BYTES", default_value_t = 16 << 10)]
    pub max_prompt_bytes: usize,
    /// Largest accepted params.maxNewTokens.
    #[arg(long, env = "VARGPT_MAX_NEW_TOKENS", default_value_t = 2048)]
    pub max_new_tokens: u32,
    /// Longest prompt in tokens, after the chat template and image tokens.
    #[arg(long, env = "VARGPT_MAX_PROMPT_TOKENS", default_value_t = 4096)]
    pub max_prompt_tokens: usize,
    /// Largest input image, encoded bytes.
    #[arg(long, env = "VARGPT_MAX_IMAGE_BYTES", default_value_t = 10 << 20)]
    pub max_image_bytes: usize,
    /// Largest input image, width × height.
    #[arg(long, env = "VARGPT_MAX_IMAGE_PIXELS", default_value_t = 4096 * 4096)]
    pub max_image_pixels: u64,
    /// Buckets `image.uri` may read from, comma-separated (serve: the output
    /// bucket is always allowed).
    #[arg(long, env = "VARGPT_ALLOWED_BUCKETS", value_delimiter = ',')]
    pub allowed_buckets: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// Batches processed at the same time.
    #[arg(long, env = "VARGPT_CONCURRENCY", default_value_t = 1)]
    pub concurrency: u32,
    /// Most jobs handed to the model in one call (only jobs already waiting
    /// are batched; a lone job never waits).
    #[arg(long, env = "VARGPT_BATCH_MAX", default_value_t = 1)]
    pub batch_max: u32,
    /// Name in results, logs and the broker connection; default host-pid.
    #[arg(long, env = "VARGPT_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Key prefix of generated images: `{prefix}{job id}.png`.
    #[arg(long, env = "VARGPT_IMAGE_PREFIX", default_value = "images/")]
    pub image_prefix: String,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,

    /// Broker URL, amqp:// or amqps:// (carries credentials: prefer the env
    /// var or --amqp-url-file). Default amqp://127.0.0.1:5672/%2f.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// File holding the broker URL (a mounted secret); wins over AMQP_URL.
    #[arg(long, env = "AMQP_URL_FILE")]
    pub amqp_url_file: Option<PathBuf>,
    /// PEM file of extra CA certificates for amqps://.
    #[arg(long, env = "AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,
    /// Prefix of every queue and exchange name.
    #[arg(long, env = "VARGPT_QUEUE_PREFIX", default_value = "vargpt")]
    pub queue_prefix: String,
    /// Deliveries after which a job that keeps killing its worker is dead-lettered.
    #[arg(long, env = "VARGPT_DELIVERY_LIMIT", default_value_t = 3)]
    pub delivery_limit: u32,
    /// Back-off before each retry of a transient failure, ms, comma-separated;
    /// attempts = entries + 1. Empty: no retries.
    #[arg(
        long,
        env = "VARGPT_RETRY_DELAYS_MS",
        default_value = "1000,5000,30000"
    )]
    pub retry_delays_ms: String,
    /// Unacked messages the broker may push ahead; default concurrency × batch-max.
    #[arg(long, env = "VARGPT_PREFETCH")]
    pub prefetch: Option<u16>,
    /// Longest pause between reconnection attempts, ms.
    #[arg(
        long,
        env = "VARGPT_RECONNECT_MAX_BACKOFF_MS",
        default_value_t = 10_000
    )]
    pub reconnect_max_backoff_ms: u64,

    /// Bucket for generated images (checked at start-up).
    #[arg(long, env = "VARGPT_S3_BUCKET")]
    pub s3_bucket: String,
    /// Endpoint of an S3-compatible server; unset means AWS (AWS_ENDPOINT_URL
    /// is honoured too).
    #[arg(long, env = "VARGPT_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region (the standard AWS variable).
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Path-style addressing (http://host/bucket/key), needed by most
    /// self-hosted servers.
    #[arg(long, env = "VARGPT_S3_PATH_STYLE", default_value_t = true, action = ArgAction::Set)]
    pub s3_path_style: bool,
    /// Base URL for the `url` of stored images; default s3://bucket/key.
    #[arg(long, env = "VARGPT_S3_PUBLIC_URL")]
    pub s3_public_url: Option<String>,
    /// Timeout of one S3 operation, seconds.
    #[arg(long, env = "VARGPT_S3_TIMEOUT_SECS", default_value_t = 30)]
    pub s3_timeout_secs: u64,

    /// Address of /metrics, /healthz, /readyz. Containers: 0.0.0.0:9090.
    #[arg(long, env = "VARGPT_HTTP_ADDR", default_value = "127.0.0.1:9090")]
    pub http_addr: SocketAddr,
    /// On SIGTERM, how long in-flight jobs may take to finish, seconds.
    #[arg(long, env = "VARGPT_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

#[derive(Args, Debug)]
pub struct EmbeddedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// JSONL file, one job per line.
    #[arg(long)]
    pub jobs: PathBuf,
    /// Output folder: results.jsonl, dead-letter.jsonl, images/.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Folder whose sub-folders serve `s3://bucket/key` inputs (bucket = sub-folder).
    #[arg(long)]
    pub store_root: Option<PathBuf>,
    /// Attempts for transient failures, the first included.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
}

/// Configuration errors, reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {what} from {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl LimitArgs {
    pub fn limits(&self, always_allowed: Option<&str>) -> Result<Limits, ConfigError> {
        let mut allowed: Vec<String> = self
            .allowed_buckets
            .iter()
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty())
            .collect();
        if let Some(b) = always_allowed {
            if !allowed.iter().any(|a| a == b) {
                allowed.push(b.to_string());
            }
        }
        if self.max_job_bytes == 0 || self.max_image_bytes == 0 || self.max_new_tokens == 0 {
            return Err(ConfigError::Invalid("size limits must be positive".into()));
        }
        Ok(Limits {
            max_job_bytes: self.max_job_bytes,
            max_prompt_bytes: self.max_prompt_bytes,
            max_new_tokens: self.max_new_tokens,
            max_image_bytes: self.max_image_bytes,
            max_image_pixels: self.max_image_pixels,
            allowed_buckets: allowed,
        })
    }
}

impl PipelineArgs {
    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".into());
            format!("{host}-{}", std::process::id())
        })
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        if self.batch_max == 0 || self.batch_max > 64 {
            return Err(ConfigError::Invalid("--batch-max must be in 1..=64".into()));
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            return Err(ConfigError::Invalid(
                "--concurrency must be in 1..=256".into(),
            ));
        }
        Ok(())
    }
}

impl ServeArgs {
    /// The broker URL: the secret file, else AMQP_URL / --amqp-url, else local.
    pub fn amqp_url(&self) -> Result<Secret, ConfigError> {
        if let Some(path) = &self.amqp_url_file {
            let s = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                what: "the AMQP URL",
                path: path.clone(),
                source,
            })?;
            return Ok(Secret::new(s.trim()));
        }
        Ok(Secret::new(
            self.amqp_url
                .clone()
                .unwrap_or_else(|| "amqp://127.0.0.1:5672/%2f".into()),
        ))
    }

    pub fn amqp_ca_pem(&self) -> Result<Option<String>, ConfigError> {
        self.amqp_ca_file
            .as_ref()
            .map(|path| {
                std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                    what: "the AMQP CA certificates",
                    path: path.clone(),
                    source,
                })
            })
            .transpose()
    }

    pub fn retry_delays(&self) -> Result<Vec<Duration>, ConfigError> {
        self.retry_delays_ms
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s.parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                _ => Err(ConfigError::Invalid(format!(
                    "--retry-delays-ms: {s:?} is not a positive number of ms"
                ))),
            })
            .collect()
    }

    pub fn prefetch(&self) -> u16 {
        self.prefetch
            .unwrap_or_else(|| {
                (self.pipeline.concurrency * self.pipeline.batch_max).min(u32::from(u16::MAX))
                    as u16
            })
            .max(1)
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        self.pipeline.check()?;
        let ok_prefix = !self.queue_prefix.is_empty()
            && self
                .queue_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok_prefix {
            return Err(ConfigError::Invalid(
                "--queue-prefix must be [A-Za-z0-9._-]+".into(),
            ));
        }
        if self.delivery_limit == 0 {
            return Err(ConfigError::Invalid(
                "--delivery-limit must be at least 1".into(),
            ));
        }
        self.retry_delays()?;
        if self.s3_bucket.is_empty() {
            return Err(ConfigError::Invalid(
                "--s3-bucket / VARGPT_S3_BUCKET is required".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("amqp://u:hunter2@h");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn serve_defaults_parse() {
        let cli = Cli::try_parse_from(["vargpt-worker", "serve", "--s3-bucket", "out"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!()
        };
        args.check().unwrap();
        assert_eq!(args.retry_delays().unwrap().len(), 3);
        assert_eq!(args.prefetch(), 1);
        assert_eq!(
            args.limits.limits(Some("out")).unwrap().allowed_buckets,
            vec!["out".to_string()]
        );
        assert_eq!(
            args.amqp_url().unwrap().expose(),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert!(args.s3_path_style);
        let none =
            Cli::try_parse_from(["w", "serve", "--s3-bucket", "out", "--retry-delays-ms", ""])
                .unwrap();
        let Command::Serve(none) = none.command else {
            panic!()
        };
        assert!(none.retry_delays().unwrap().is_empty());
        let bad = Cli::try_parse_from([
            "w",
            "serve",
            "--s3-bucket",
            "out",
            "--retry-delays-ms",
            "5,x",
        ])
        .unwrap();
        let Command::Serve(bad) = bad.command else {
            panic!()
        };
        assert!(bad.check().is_err());
    }
}
