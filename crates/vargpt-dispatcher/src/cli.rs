//! The command line. Every setting also reads the environment variable
//! `VARGPT_<FLAG>` ([`crate::env_compat`]); flags shared with the worker
//! mean the same thing there (`--amqp-url`, `--queue-prefix`,
//! `--s3-endpoint`, `--s3-path-style`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use vargpt_proto::wire::{self, Names};
use vargpt_proto::{JobKind, SamplingParams};

use crate::input::Input;
use crate::routing::Router;
use crate::run::RunConfig;
use crate::s3::S3Options;
use crate::spec::Template;

#[derive(Debug, Parser)]
#[command(
    name = "vargpt-dispatcher",
    version,
    about = "Fan a dataset out as VARGPT jobs and collect the results"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send every job of the input and write one result line per job.
    /// Re-running the same command resumes: jobs with a result are skipped.
    Run(Box<RunArgs>),
    /// Write the CSV table of an existing output (what `run --table` writes).
    Table(TableArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TableArgs {
    /// The JSONL output of a run.
    #[arg(long, short, env = "VARGPT_OUTPUT")]
    pub output: PathBuf,
    /// The CSV file to write.
    #[arg(long, env = "VARGPT_TABLE")]
    pub table: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// A folder of images (walked recursively: png, jpg, jpeg, webp), a JSONL
    /// manifest (one job per line), or an S3 prefix (s3://bucket/prefix/).
    #[arg(long, short, env = "VARGPT_INPUT")]
    pub input: String,

    /// Results, one JSON line per job; failures also go to `<output>.failures.jsonl`.
    #[arg(long, short, env = "VARGPT_OUTPUT")]
    pub output: PathBuf,

    /// Also write the run as a CSV table (source, kind, prompt, text,
    /// image_uri, status, error_code, provenance, …) that pandas and
    /// Hugging Face `datasets` load directly.
    #[arg(long, env = "VARGPT_TABLE")]
    pub table: Option<PathBuf>,

    /// RabbitMQ URL.
    #[arg(
        long,
        env = "VARGPT_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,

    /// Queue prefix, as the worker's: jobs go to `{prefix}.jobs` (when no
    /// routing rule matches).
    #[arg(long, env = "VARGPT_QUEUE_PREFIX", default_value = wire::DEFAULT_PREFIX)]
    pub queue_prefix: String,

    /// Deprecated: a job queue by its full name; use --queue-prefix.
    #[arg(long, env = "VARGPT_JOB_QUEUE", hide = true)]
    pub queue: Option<String>,

    /// Routing rules (TOML, or JSON when the name ends in .json): queues by kind / model.
    #[arg(long, env = "VARGPT_ROUTES")]
    pub routes: Option<PathBuf>,

    /// Kind of the jobs made from images (and of manifest lines without one).
    #[arg(long, env = "VARGPT_KIND", default_value = "caption", value_parser = parse_kind)]
    pub kind: JobKind,

    /// Prompt of the jobs made from images (the question for vqa).
    #[arg(long, env = "VARGPT_PROMPT", default_value = "")]
    pub prompt: String,

    /// Sampling params as proto JSON, e.g. '{"maxNewTokens":64,"greedy":true}'.
    #[arg(long, env = "VARGPT_PARAMS", value_parser = parse_params)]
    pub params: Option<SamplingParams>,

    /// Model name for routing rules (not sent).
    #[arg(long, env = "VARGPT_MODEL")]
    pub model: Option<String>,

    /// Upload local images to s3://bucket/prefix and send their URIs instead
    /// of inline bytes (the bucket must be on the workers' allow-list).
    #[arg(long, env = "VARGPT_UPLOAD_TO")]
    pub upload_to: Option<String>,

    /// Jobs between publish and result at most.
    #[arg(long, env = "VARGPT_MAX_IN_FLIGHT", default_value_t = 32)]
    pub max_in_flight: usize,

    /// Re-send a job that has no result this long after it was sent (also
    /// its deadline for the worker): 90s, 10m, 1h.
    #[arg(long, env = "VARGPT_JOB_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub job_timeout: Duration,

    /// Attempts per job before it is recorded as failed (deadline_exceeded).
    #[arg(long, env = "VARGPT_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,

    /// Queue results come back on. Default: derived from the output path,
    /// so a re-run finds results that arrived while the dispatcher was down.
    #[arg(long, env = "VARGPT_REPLY_QUEUE")]
    pub reply_queue: Option<String>,

    /// How long an unused reply queue is kept by the broker.
    #[arg(long, env = "VARGPT_REPLY_QUEUE_TTL", default_value = "24h", value_parser = parse_duration)]
    pub reply_queue_ttl: Duration,

    /// Also re-send jobs whose result in the output is an error.
    #[arg(long)]
    pub retry_failed: bool,

    /// No progress bar (nor progress log lines).
    #[arg(long)]
    pub no_progress: bool,

    /// Local images larger than this are not sent inline (image_too_large).
    #[arg(long, env = "VARGPT_MAX_INLINE_BYTES", default_value_t = 10 << 20)]
    pub max_inline_bytes: u64,

    /// Images read (or uploaded) at once ahead of publishing.
    #[arg(long, env = "VARGPT_PREPARE_CONCURRENCY", default_value_t = 4)]
    pub prepare_concurrency: usize,

    /// S3-compatible endpoint (MinIO, s3s-fs); AWS when unset.
    #[arg(long, env = "VARGPT_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// Path-style S3 addressing (http://host/bucket/key), needed by most
    /// self-hosted servers: `--s3-path-style false` for AWS virtual hosts.
    #[arg(
        long,
        env = "VARGPT_S3_PATH_STYLE",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub s3_path_style: bool,

    /// Deprecated: --s3-path-style.
    #[arg(long, hide = true)]
    pub s3_force_path_style: bool,

    /// S3 region (default: from the AWS environment, else us-east-1).
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,
}

impl RunArgs {
    /// Checks the flags and reads the routing rules. Warnings about
    /// deprecated flags are logged.
    pub fn into_config(self) -> anyhow::Result<RunConfig> {
        anyhow::ensure!(
            wire::valid_prefix(&self.queue_prefix),
            "--queue-prefix must be [A-Za-z0-9._-]+"
        );
        let names = Names::new(&self.queue_prefix);
        let default_queue = match &self.queue {
            Some(queue) => {
                tracing::warn!(
                    "--queue / VARGPT_JOB_QUEUE is deprecated: use --queue-prefix (jobs go to {{prefix}}.jobs)"
                );
                queue.clone()
            }
            None => names.jobs_queue(),
        };
        if self.s3_force_path_style {
            tracing::warn!("--s3-force-path-style is deprecated: use --s3-path-style");
        }
        let input = Input::parse(&self.input)?;
        let router = match &self.routes {
            Some(path) => Router::load(path, &default_queue)?,
            None => Router::parse("", false, &default_queue)
                .map_err(anyhow::Error::msg)
                .context("--queue-prefix")?,
        };
        if let Some(uri) = &self.upload_to {
            crate::s3::parse_uri(uri)
                .map_err(anyhow::Error::msg)
                .context("--upload-to")?;
        }
        anyhow::ensure!(self.max_in_flight > 0, "--max-in-flight must be at least 1");
        anyhow::ensure!(self.max_attempts > 0, "--max-attempts must be at least 1");
        anyhow::ensure!(
            !self.job_timeout.is_zero(),
            "--job-timeout must be more than 0"
        );
        Ok(RunConfig {
            input,
            output: self.output,
            amqp_url: self.amqp_url,
            names,
            router,
            template: Template {
                kind: self.kind,
                prompt: self.prompt,
                params: self.params,
                model: self.model,
            },
            upload_to: self.upload_to,
            s3: S3Options {
                endpoint: self.s3_endpoint,
                force_path_style: self.s3_path_style || self.s3_force_path_style,
                region: self.s3_region,
            },
            max_in_flight: self.max_in_flight,
            job_timeout: self.job_timeout,
            max_attempts: self.max_attempts,
            reply_queue: self.reply_queue,
            reply_queue_ttl: self.reply_queue_ttl,
            retry_failed: self.retry_failed,
            progress: !self.no_progress,
            max_inline_bytes: self.max_inline_bytes,
            prepare_concurrency: self.prepare_concurrency.max(1),
            table: self.table,
        })
    }
}

fn parse_kind(s: &str) -> Result<JobKind, String> {
    match JobKind::from_name(s) {
        Some(JobKind::Unspecified) | None => Err(format!(
            "{s:?} is not one of caption, vqa, chat, generate_image"
        )),
        Some(kind) => Ok(kind),
    }
}

fn parse_params(s: &str) -> Result<SamplingParams, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid SamplingParams JSON: {e}"))
}

/// `250ms`, `30s`, `10m`, `2h`, `1d`, or plain seconds (`90`, `1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 10m, 1h)"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => return Err(format!("unknown unit {other:?} in {s:?} (ms, s, m, h, d)")),
    };
    Duration::try_from_secs_f64(n * scale).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn flags_become_a_config() {
        let dir = tempfile::tempdir().unwrap();
        let cli = Cli::try_parse_from([
            "vargpt-dispatcher",
            "run",
            "--input",
            dir.path().to_str().unwrap(),
            "--output",
            "out.jsonl",
            "--kind",
            "vqa",
            "--prompt",
            "What is it?",
            "--params",
            r#"{"maxNewTokens":16}"#,
            "--queue-prefix",
            "q",
            "--job-timeout",
            "90s",
            "--table",
            "out.csv",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        let cfg = args.into_config().unwrap();
        assert_eq!(cfg.template.kind, JobKind::Vqa);
        assert_eq!(cfg.template.params.unwrap().max_new_tokens, Some(16));
        assert_eq!(cfg.router.queue_for(JobKind::Vqa, None), "q.jobs");
        assert_eq!(cfg.names.prefix(), "q");
        assert_eq!(cfg.table, Some(PathBuf::from("out.csv")));
        assert!(cfg.s3.force_path_style, "the worker's default");
        assert_eq!(cfg.job_timeout, Duration::from_secs(90));
        assert!(matches!(cfg.input, Input::Dir(_)));
    }

    #[test]
    fn bad_flags_are_refused() {
        let base = ["vargpt-dispatcher", "run", "-i", ".", "-o", "o.jsonl"];
        let with = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra).copied());
        assert!(with(&["--kind", "drawing"]).is_err());
        assert!(with(&["--kind", "kind_unspecified"]).is_err());
        assert!(with(&["--params", r#"{"topK":"x"}"#]).is_err());
        let config = |extra: &[&str]| match with(extra).unwrap().command {
            Command::Run(args) => args.into_config(),
            Command::Table(_) => panic!("run"),
        };
        assert!(config(&["--max-in-flight", "0"]).is_err());
        assert!(config(&["--upload-to", "http://x"]).is_err());
        assert!(config(&["--queue-prefix", "a b"]).is_err());
    }

    #[test]
    fn the_old_queue_flag_still_works_and_shared_flags_read_like_the_workers() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().to_str().unwrap();
        let base = ["vargpt-dispatcher", "run", "-i", input, "-o", "o.jsonl"];
        let config = |extra: &[&str]| match Cli::try_parse_from(base.iter().chain(extra).copied())
            .unwrap()
            .command
        {
            Command::Run(args) => args.into_config().unwrap(),
            Command::Table(_) => panic!("run"),
        };
        let old = config(&["--queue", "legacy.jobs"]);
        assert_eq!(old.router.queue_for(JobKind::Caption, None), "legacy.jobs");
        let default = config(&[]);
        assert_eq!(
            default.router.queue_for(JobKind::Caption, None),
            Names::default().jobs_queue()
        );
        assert!(!config(&["--s3-path-style", "false"]).s3.force_path_style);
        assert!(config(&["--s3-path-style"]).s3.force_path_style);
    }
}
