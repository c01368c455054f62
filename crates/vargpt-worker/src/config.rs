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
    /// Model directory or Hugging Face hub id (required: there is no default
    /// model; the published one is VARGPT-family/VARGPT_LLaVA-v1).
    #[arg(long, env = "VARGPT_MODEL")]
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
    /// Deprecated: `--max-batch` sets the engine's batch too.
    #[arg(long, env = "VARGPT_ENGINE_BATCH", hide = true)]
    pub engine_batch: Option<usize>,
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

impl ModelArgs {
    /// Whether the engine runs on a GPU (decides defaults such as the batch).
    pub fn on_gpu(&self) -> bool {
        self.cuda_device.is_some() || !self.devices.is_empty()
    }
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
    /// Most jobs this worker holds at once. They run together: the engine
    /// steps them as one continuous batch, each leaving as soon as it is
    /// done, and the broker prefetch follows. Default 8 on CPU, 32 on GPU.
    #[arg(long, env = "VARGPT_MAX_BATCH")]
    pub max_batch: Option<u32>,
    /// Deprecated (with --batch-max): use --max-batch.
    #[arg(long, env = "VARGPT_CONCURRENCY", hide = true)]
    pub concurrency: Option<u32>,
    /// Deprecated: use --max-batch.
    #[arg(long, env = "VARGPT_BATCH_MAX", hide = true)]
    pub batch_max: Option<u32>,
    /// Longest a job may run in the engine, seconds; past it the job gets
    /// an error result and its slot is freed.
    #[arg(long, env = "VARGPT_JOB_TIMEOUT_SECS", default_value_t = 1200)]
    pub job_timeout_secs: u64,
    /// Name in results, logs and the broker connection; default host-pid.
    #[arg(long, env = "VARGPT_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Key prefix of generated images: `{prefix}{job id}-{request digest}.png`.
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
    /// Several brokers of one cluster: a comma-separated list, tried in turn.
    #[arg(long, env = "VARGPT_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// File holding the broker URL (a mounted secret); wins over VARGPT_AMQP_URL.
    #[arg(long, env = "VARGPT_AMQP_URL_FILE")]
    pub amqp_url_file: Option<PathBuf>,
    /// PEM file of extra CA certificates for amqps://.
    #[arg(long, env = "VARGPT_AMQP_CA_FILE")]
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
    /// Longest wait for the broker to confirm a publish (or open a channel),
    /// seconds; past it the broker counts as stalled and readiness fails.
    #[arg(long, env = "VARGPT_BROKER_TIMEOUT_SECS", default_value_t = 30)]
    pub broker_timeout_secs: u64,
    /// The broker's `consumer_timeout` (RabbitMQ's default: 30 min): a
    /// delivery unacked for longer closes the worker's channel. The job time
    /// bound must stay below it; raise both together in rabbitmq.conf.
    #[arg(
        long,
        env = "VARGPT_BROKER_CONSUMER_TIMEOUT_SECS",
        default_value_t = 1800
    )]
    pub broker_consumer_timeout_secs: u64,
    /// Dead-letter jobs whose deadline passed before they ran (default: they
    /// get their `deadline_exceeded` result and are acked).
    #[arg(long, env = "VARGPT_DEAD_LETTER_EXPIRED", default_value_t = false, action = ArgAction::Set)]
    pub dead_letter_expired: bool,
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

    /// The default `--max-batch`: what one engine steps well together.
    pub fn default_max_batch(on_gpu: bool) -> u32 {
        if on_gpu {
            32
        } else {
            8
        }
    }

    /// (batches in flight, jobs per pipeline batch). One knob: every job is
    /// its own pipeline batch and the engine batches them, so a job settles
    /// the moment it is done. The deprecated pair still wins when given.
    pub fn slots(&self, on_gpu: bool) -> (u32, u32) {
        if self.max_batch.is_none() && (self.concurrency.is_some() || self.batch_max.is_some()) {
            return (self.concurrency.unwrap_or(1), self.batch_max.unwrap_or(1));
        }
        (self.max_batch(on_gpu), 1)
    }

    /// Warnings for the deprecated batching flags that are set.
    pub fn deprecations(&self, model: &ModelArgs) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.concurrency.is_some() || self.batch_max.is_some() {
            out.push(
                "--concurrency / --batch-max are deprecated: use --max-batch (jobs held at once)",
            );
        }
        if model.engine_batch.is_some() {
            out.push("--engine-batch is deprecated: --max-batch sets the engine's batch too");
        }
        out
    }

    /// How many jobs the worker holds at once.
    pub fn max_batch(&self, on_gpu: bool) -> u32 {
        self.max_batch
            .unwrap_or_else(|| match (self.concurrency, self.batch_max) {
                (None, None) => Self::default_max_batch(on_gpu),
                (c, b) => c.unwrap_or(1) * b.unwrap_or(1),
            })
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        if self.max_batch.is_some_and(|n| n == 0 || n > 256) {
            return Err(ConfigError::Invalid(
                "--max-batch must be in 1..=256".into(),
            ));
        }
        if self.batch_max.is_some_and(|n| n == 0 || n > 64) {
            return Err(ConfigError::Invalid("--batch-max must be in 1..=64".into()));
        }
        if self.concurrency.is_some_and(|n| n == 0 || n > 256) {
            return Err(ConfigError::Invalid(
                "--concurrency must be in 1..=256".into(),
            ));
        }
        if self.max_batch.is_some() && (self.concurrency.is_some() || self.batch_max.is_some()) {
            return Err(ConfigError::Invalid(
                "--max-batch replaces --concurrency and --batch-max: give only --max-batch".into(),
            ));
        }
        Ok(())
    }
}

impl ServeArgs {
    /// The broker URL: the secret file, else VARGPT_AMQP_URL / --amqp-url, else local.
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

    /// Default: the jobs the worker holds (`--max-batch`), so every slot
    /// has its next job at hand and none waits in this worker's buffer.
    pub fn prefetch(&self) -> u16 {
        self.prefetch
            .unwrap_or_else(|| {
                self.pipeline
                    .max_batch(self.model.on_gpu())
                    .min(u32::from(u16::MAX)) as u16
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
        let job = self.pipeline.job_timeout_secs;
        if job == 0 || job >= self.broker_consumer_timeout_secs {
            return Err(ConfigError::Invalid(format!(
                "--job-timeout-secs ({job}) must be positive and below the broker's consumer \
                 timeout (--broker-consumer-timeout-secs {}); raise consumer_timeout in \
                 rabbitmq.conf first",
                self.broker_consumer_timeout_secs
            )));
        }
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
        let cli = Cli::try_parse_from([
            "vargpt-worker",
            "serve",
            "--s3-bucket",
            "out",
            "--model",
            "m",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!()
        };
        args.check().unwrap();
        assert_eq!(args.retry_delays().unwrap().len(), 3);
        // Batching by default: 8 jobs held on CPU, each its own pipeline
        // batch, the prefetch following.
        assert_eq!(args.pipeline.slots(false), (8, 1));
        assert_eq!(args.prefetch(), 8);
        assert_eq!(args.pipeline.slots(true), (32, 1));
        assert_eq!(
            args.limits.limits(Some("out")).unwrap().allowed_buckets,
            vec!["out".to_string()]
        );
        assert_eq!(
            args.amqp_url().unwrap().expose(),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert!(args.s3_path_style);
        let none = Cli::try_parse_from([
            "w",
            "serve",
            "--s3-bucket",
            "out",
            "--model",
            "m",
            "--retry-delays-ms",
            "",
        ])
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
            "--model",
            "m",
            "--retry-delays-ms",
            "5,x",
        ])
        .unwrap();
        let Command::Serve(bad) = bad.command else {
            panic!()
        };
        assert!(bad.check().is_err());
    }

    #[test]
    fn serve_needs_a_model() {
        std::env::remove_var("VARGPT_MODEL");
        assert!(Cli::try_parse_from(["w", "serve", "--s3-bucket", "out"]).is_err());
    }

    #[test]
    fn max_batch_is_the_one_knob_and_old_flags_still_work() {
        let parse = |extra: &[&str]| {
            let mut a = vec!["w", "serve", "--s3-bucket", "o", "--model", "m"];
            a.extend_from_slice(extra);
            let Command::Serve(s) = Cli::try_parse_from(a).unwrap().command else {
                panic!()
            };
            s
        };
        let s = parse(&["--max-batch", "4"]);
        assert_eq!((s.pipeline.slots(true), s.prefetch()), ((4, 1), 4));
        let s = parse(&["--concurrency", "2", "--batch-max", "3"]);
        assert_eq!((s.pipeline.slots(false), s.prefetch()), ((2, 3), 6));
        assert!(parse(&["--max-batch", "4", "--concurrency", "2"])
            .check()
            .is_err());
        assert!(parse(&["--max-batch", "0"]).check().is_err());
    }
}
