//! One dispatcher run: read the input, keep at most `max_in_flight` jobs
//! between publish and result, write each result once, re-send what times
//! out, stop cleanly on Ctrl-C.
//!
//! Results come back on a reply queue owned by the output file (its name is
//! derived from the output path). The queue is durable and outlives the
//! dispatcher for `reply_queue_ttl`, so the answers to jobs that were in
//! flight when a run crashed wait there and are written by the next run.
//! A result is acked only after its line is flushed to the output.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use sha2::{Digest, Sha256};
use vargpt_client::wire;
use vargpt_proto::json::Timestamp;
use vargpt_proto::ErrorCode;

use crate::input::{self, Input};
use crate::ledger::{Ledger, Recorded};
use crate::prepare::{local_failure, Prepared, Preparer, Upload};
use crate::progress::Progress;
use crate::routing::Router;
use crate::s3::{self, S3Options};
use crate::spec::{JobSpec, Template};
use crate::summary::Stats;

/// Everything a run needs, checked.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub input: Input,
    pub output: PathBuf,
    pub amqp_url: String,
    pub router: Router,
    pub template: Template,
    /// `s3://bucket/prefix` to upload local images to, instead of inlining them.
    pub upload_to: Option<String>,
    pub s3: S3Options,
    pub max_in_flight: usize,
    /// A job with no result this long after its publish is re-sent; also its
    /// `deadline` for the worker.
    pub job_timeout: Duration,
    /// Attempts per job before it is given up as `deadline_exceeded`.
    pub max_attempts: u32,
    /// Default: derived from the output path.
    pub reply_queue: Option<String>,
    pub reply_queue_ttl: Duration,
    /// Re-send jobs whose result in the output is an error.
    pub retry_failed: bool,
    pub progress: bool,
    pub max_inline_bytes: u64,
    pub prepare_concurrency: usize,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Report {
    pub stats: Stats,
    pub interrupted: bool,
    pub output: PathBuf,
    /// Written when the output holds failed jobs.
    pub failures_file: Option<PathBuf>,
}

impl Report {
    /// 0: every job in the output succeeded; 1: some failed (see the
    /// failures file); 130: interrupted (re-run to resume).
    pub fn exit_code(&self) -> i32 {
        if self.interrupted {
            130
        } else if self.stats.failures_in_output > 0 {
            1
        } else {
            0
        }
    }
}

/// The reply queue of an output file: the same file always gets the same
/// queue, so a re-run finds the results of the run before.
pub fn default_reply_queue(output: &Path) -> String {
    let absolute = std::fs::canonicalize(output)
        .or_else(|_| std::path::absolute(output))
        .unwrap_or_else(|_| output.to_path_buf());
    let digest = Sha256::digest(absolute.to_string_lossy().as_bytes());
    format!("vargpt.dispatch.{}", &hex::encode(digest)[..16])
}

/// A job between admission and result.
struct InFlight {
    spec: Arc<JobSpec>,
    queue: String,
    attempt: u32,
    first_sent: Option<Instant>,
    /// When to give up on the current attempt; `None` while it is being prepared.
    deadline: Option<Instant>,
    /// Why the last attempt went nowhere, when known (for the final error).
    last_problem: Option<String>,
}

type Preparing = Pin<Box<dyn Future<Output = (String, u32, anyhow::Result<Prepared>)> + Send>>;

struct Dispatch<'a> {
    cfg: &'a RunConfig,
    ledger: Ledger,
    stats: Stats,
    in_flight: HashMap<String, InFlight>,
    preparer: Arc<Preparer>,
    publish: Channel,
    reply_queue: String,
    progress: Progress,
}

/// Runs until the input is done and every job has a result, or until
/// `shutdown` resolves (Ctrl-C): then it stops at once, and a re-run resumes.
pub async fn run(cfg: RunConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<Report> {
    let started = Instant::now();
    let ledger = Ledger::open(&cfg.output)?;
    if ledger.repaired_bytes > 0 {
        tracing::warn!(
            bytes = ledger.repaired_bytes,
            "cut a torn last line off {}",
            cfg.output.display()
        );
    }
    if ledger.unreadable_lines > 0 {
        tracing::warn!(
            lines = ledger.unreadable_lines,
            "{} has lines that are not results; ignored",
            cfg.output.display()
        );
    }
    if !matches!(cfg.input, Input::Manifest(_)) {
        cfg.template
            .check_for_images()
            .map_err(anyhow::Error::msg)
            .context("--kind / --prompt")?;
    }
    // The first pass reads the whole folder or manifest: off the async threads.
    let (ledger, scan) = {
        let (input, template, retry) = (cfg.input.clone(), cfg.template.clone(), cfg.retry_failed);
        tokio::task::spawn_blocking(move || {
            let scan = input::scan(&input, &template, |id| ledger.is_done(id, retry));
            (ledger, scan)
        })
        .await
        .context("the input scan panicked")?
    };
    let scan = scan?;

    let needs_s3 = cfg.upload_to.is_some() || matches!(cfg.input, Input::S3Prefix { .. });
    let s3_client = if needs_s3 {
        Some(s3::client(&cfg.s3).await)
    } else {
        None
    };
    let upload = match (&cfg.upload_to, &s3_client) {
        (Some(uri), Some(client)) => Some(Upload::new(client.clone(), uri)?),
        _ => None,
    };
    let preparer = Arc::new(Preparer {
        upload,
        max_inline_bytes: cfg.max_inline_bytes,
    });

    let props = ConnectionProperties::default().with_connection_name("vargpt-dispatcher".into());
    let connection = Connection::connect(&cfg.amqp_url, props)
        .await
        .with_context(|| format!("cannot connect to {}", redact(&cfg.amqp_url)))?;
    check_job_queues(&connection, &cfg.router).await?;
    let reply_queue = cfg
        .reply_queue
        .clone()
        .unwrap_or_else(|| default_reply_queue(&cfg.output));
    let (mut consumer, backlog) = consume_replies(&connection, &reply_queue, &cfg).await?;
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let stats = Stats {
        total: scan.map(|s| s.total),
        ..Default::default()
    };
    let progress = Progress::new(cfg.progress, scan.map(|s| s.to_do));
    let mut dispatch = Dispatch {
        cfg: &cfg,
        ledger,
        stats,
        in_flight: HashMap::new(),
        preparer,
        publish,
        reply_queue: reply_queue.clone(),
        progress,
    };

    let outcome = async {
        dispatch.drain_backlog(&mut consumer, backlog).await?;
        let specs = input::spawn_reader(cfg.input.clone(), cfg.template.clone(), s3_client.clone());
        dispatch.main_loop(&mut consumer, specs, shutdown).await
    }
    .await;

    // Whatever happened, the failures file matches the output.
    dispatch.progress.finish();
    let failures = dispatch
        .ledger
        .write_failures_file()
        .context("cannot write the failures file")?;
    let interrupted = outcome?;
    let finished = !interrupted && dispatch.in_flight.is_empty();
    if finished {
        delete_reply_queue(&connection, &reply_queue).await;
    }
    let _ = connection.close(200, "dispatcher done".into()).await;

    let mut stats = dispatch.stats;
    stats.elapsed = started.elapsed();
    stats.failures_in_output = failures as u64;
    stats.results_in_output = dispatch.ledger.len() as u64;
    let failures_file = (failures > 0).then(|| dispatch.ledger.failures_path());
    Ok(Report {
        stats,
        interrupted,
        output: cfg.output.clone(),
        failures_file,
    })
}

impl Dispatch<'_> {
    /// Writes the results an earlier run left on the reply queue before
    /// sending anything, so those jobs are not sent again.
    async fn drain_backlog(&mut self, consumer: &mut Consumer, backlog: u32) -> anyhow::Result<()> {
        if backlog == 0 {
            return Ok(());
        }
        tracing::info!(backlog, queue = %self.reply_queue, "collecting results left by an earlier run");
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        for _ in 0..backlog {
            match tokio::time::timeout_at(give_up, consumer.next()).await {
                Err(_) => break,
                Ok(Some(delivery)) => self.on_reply(delivery?).await?,
                Ok(None) => bail!("the reply consumer was cancelled"),
            }
        }
        Ok(())
    }

    /// Returns whether the run was interrupted.
    async fn main_loop(
        &mut self,
        consumer: &mut Consumer,
        mut specs: tokio::sync::mpsc::Receiver<anyhow::Result<JobSpec>>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<bool> {
        let mut preparing: FuturesUnordered<Preparing> = FuturesUnordered::new();
        let mut input_done = false;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            if input_done && preparing.is_empty() && self.in_flight.is_empty() {
                return Ok(false);
            }
            let room = self.in_flight.len() < self.cfg.max_in_flight
                && preparing.len() < self.cfg.prepare_concurrency;
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(true),
                delivery = consumer.next() => match delivery {
                    Some(delivery) => self.on_reply(delivery.context("reply consumer failed")?).await?,
                    None => bail!("the reply consumer was cancelled (was {} deleted?)", self.reply_queue),
                },
                Some((id, attempt, prepared)) = preparing.next(), if !preparing.is_empty() => {
                    self.on_prepared(&id, attempt, prepared?).await?;
                }
                spec = specs.recv(), if room && !input_done => match spec {
                    None => input_done = true,
                    Some(spec) => preparing.extend(self.admit(spec?)),
                },
                _ = tick.tick() => {
                    preparing.extend(self.expire()?);
                    self.progress.update(&self.stats, self.in_flight.len());
                }
            }
        }
    }

    /// Takes a job from the input unless it is done already.
    fn admit(&mut self, spec: JobSpec) -> Option<Preparing> {
        if self.ledger.is_done(&spec.id, self.cfg.retry_failed) {
            self.stats.skipped += 1;
            return None;
        }
        if self.in_flight.contains_key(&spec.id) {
            tracing::warn!(id = %spec.id, origin = %spec.origin, "the same job appears twice in the input; sent once");
            return None;
        }
        let spec = Arc::new(spec);
        let queue = self
            .cfg
            .router
            .queue_for(spec.kind, spec.model.as_deref())
            .to_string();
        let job = InFlight {
            spec: Arc::clone(&spec),
            queue,
            attempt: 1,
            first_sent: None,
            deadline: None,
            last_problem: None,
        };
        self.in_flight.insert(spec.id.clone(), job);
        Some(self.prepare(spec, 1))
    }

    fn prepare(&self, spec: Arc<JobSpec>, attempt: u32) -> Preparing {
        let preparer = Arc::clone(&self.preparer);
        Box::pin(async move {
            let prepared = preparer.prepare(&spec).await;
            (spec.id.clone(), attempt, prepared)
        })
    }

    /// Publishes a prepared job (or records why it cannot be sent).
    async fn on_prepared(
        &mut self,
        id: &str,
        attempt: u32,
        prepared: Prepared,
    ) -> anyhow::Result<()> {
        let Some(entry) = self.in_flight.get(id).filter(|e| e.attempt == attempt) else {
            return Ok(()); // answered while this attempt was being prepared
        };
        let mut job = match prepared {
            Prepared::Job(job) => job,
            Prepared::Refused(result) => {
                self.in_flight.remove(id);
                return self.write_result(&result.to_json(), None);
            }
        };
        job.correlation_id = format!("{id}/{attempt}");
        job.reply_to = self.reply_queue.clone();
        job.deadline = Some(Timestamp(
            time::OffsetDateTime::now_utc() + self.cfg.job_timeout,
        ));
        let props = wire::job_properties(&job.id, &job.correlation_id, &job.reply_to)?;
        let queue = entry.queue.clone();
        let published =
            wire::publish_confirmed(&self.publish, "", &queue, &job.to_json(), props, id).await;
        let Some(entry) = self.in_flight.get_mut(id) else {
            return Ok(());
        };
        match published {
            Ok(()) => {
                let now = Instant::now();
                entry.first_sent.get_or_insert(now);
                entry.deadline = Some(now + self.cfg.job_timeout);
                if attempt == 1 {
                    self.stats.sent += 1;
                }
                Ok(())
            }
            Err(vargpt_client::Error::Nacked { .. }) => {
                // The broker refused it for now (e.g. a full queue): try again soon.
                tracing::warn!(id, queue, "the broker refused a job (nack); retrying");
                entry.last_problem = Some("the broker refused the job (nack)".into());
                entry.deadline =
                    Some(Instant::now() + Duration::from_secs(1).min(self.cfg.job_timeout));
                Ok(())
            }
            Err(e @ vargpt_client::Error::Unroutable { .. }) => {
                Err(anyhow::Error::new(e).context(format!("job queue {queue:?} is gone")))
            }
            Err(e) => Err(anyhow::Error::new(e).context("cannot publish")),
        }
    }

    /// Re-sends jobs past their deadline; gives up on those out of attempts.
    fn expire(&mut self) -> anyhow::Result<Vec<Preparing>> {
        let now = Instant::now();
        let due: Vec<String> = self
            .in_flight
            .iter()
            .filter(|(_, e)| e.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        let mut again = Vec::new();
        for id in due {
            let Some(entry) = self.in_flight.get_mut(&id) else {
                continue;
            };
            if entry.attempt >= self.cfg.max_attempts {
                let entry = self.in_flight.remove(&id).expect("present");
                let why = entry.last_problem.unwrap_or_else(|| "no result".into());
                let message = format!(
                    "{why} after {} attempt(s), {:?} each ({})",
                    entry.attempt, self.cfg.job_timeout, entry.spec.origin
                );
                let result =
                    local_failure(&id, entry.spec.kind, ErrorCode::DeadlineExceeded, message);
                self.write_result(&result.to_json(), entry.first_sent)?;
                continue;
            }
            entry.attempt += 1;
            entry.deadline = None;
            self.stats.resent += 1;
            tracing::debug!(%id, attempt = entry.attempt, "no result in time; re-sending");
            let (spec, attempt) = (Arc::clone(&entry.spec), entry.attempt);
            again.push(self.prepare(spec, attempt));
        }
        Ok(again)
    }

    /// One reply: written if it is the first result of its job, dropped
    /// otherwise; acked once its line is on disk.
    async fn on_reply(&mut self, delivery: Delivery) -> anyhow::Result<()> {
        let correlation_id = wire::reply_correlation_id(&delivery);
        let value: Option<serde_json::Value> = serde_json::from_slice(&delivery.data).ok();
        let from_body = value
            .as_ref()
            .and_then(|v| v.get("jobId").or_else(|| v.get("job_id")))
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let from_correlation = correlation_id
            .as_deref()
            .and_then(|c| c.rsplit_once('/'))
            .map(|(id, _)| id.to_owned());
        let code = value
            .as_ref()
            .and_then(|v| v.pointer("/error/code"))
            .and_then(|v| v.as_str());
        match (from_body.or(from_correlation), &value) {
            (Some(id), Some(_)) if code == Some(ErrorCode::DeadlineExceeded.as_str()) => {
                // The worker found this attempt past its deadline. Not final:
                // our own timer has re-sent the job or gives up on it.
                tracing::debug!(%id, "deadline_exceeded answer dropped");
                self.stats.expired += 1;
            }
            (Some(id), Some(_)) => {
                if let Some(entry) = self.in_flight.remove(&id) {
                    self.write_result(&delivery.data, entry.first_sent)?;
                } else if self.ledger.get(&id).is_some() {
                    self.stats.duplicates += 1;
                } else {
                    // Sent by an earlier run of this output; its answer counts.
                    self.stats.recovered += 1;
                    self.write_result(&delivery.data, None)?;
                }
            }
            _ => {
                tracing::warn!(
                    ?correlation_id,
                    bytes = delivery.data.len(),
                    "a reply that is not a result of ours; dropped"
                );
                self.stats.unmatched += 1;
            }
        }
        delivery
            .ack(BasicAckOptions::default())
            .await
            .context("cannot ack a result")?;
        Ok(())
    }

    fn write_result(&mut self, body: &[u8], first_sent: Option<Instant>) -> anyhow::Result<()> {
        match self.ledger.record(body)? {
            Recorded::Ok => self.stats.ok += 1,
            Recorded::Failed { code, .. } => self.stats.record_failure(&code),
        }
        if let Some(sent) = first_sent {
            self.stats.record_latency(sent.elapsed());
        }
        self.progress.update(&self.stats, self.in_flight.len());
        Ok(())
    }
}

/// Fails early, with a clear message, when a job queue does not exist (jobs
/// are published `mandatory`, so they would come back unroutable anyway).
async fn check_job_queues(connection: &Connection, router: &Router) -> anyhow::Result<()> {
    for queue in router.queues() {
        // A failed passive declare closes its channel: one channel per check.
        let channel = connection.create_channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let name = ShortString::try_new(queue).map_err(anyhow::Error::msg)?;
        if let Err(e) = channel
            .queue_declare(name, options, FieldTable::default())
            .await
        {
            bail!(
                "job queue {queue:?} does not exist on the broker (is the worker deployed?): {e}"
            );
        }
        let _ = channel.close(200, "checked".into()).await;
    }
    Ok(())
}

/// Declares the reply queue and consumes it alone; returns the consumer and
/// how many results were already waiting.
async fn consume_replies(
    connection: &Connection,
    queue: &str,
    cfg: &RunConfig,
) -> anyhow::Result<(Consumer, u32)> {
    let channel = connection.create_channel().await?;
    let prefetch = u16::try_from(cfg.max_in_flight.saturating_mul(2).max(32)).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut args = FieldTable::default();
    let ttl_ms = i64::try_from(cfg.reply_queue_ttl.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    args.insert("x-expires".into(), AMQPValue::LongLongInt(ttl_ms));
    let name = ShortString::try_new(queue).map_err(anyhow::Error::msg)?;
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(name.clone(), options, args)
        .await
        .with_context(|| format!("cannot declare the reply queue {queue:?}"))?;
    let consumer = channel
        .basic_consume(
            name,
            "vargpt-dispatcher".into(),
            BasicConsumeOptions { exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .with_context(|| {
            format!("cannot consume the reply queue {queue:?}: is another dispatcher writing the same output?")
        })?;
    Ok((consumer, declared.message_count()))
}

async fn delete_reply_queue(connection: &Connection, queue: &str) {
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let Ok(name) = ShortString::try_new(queue) else {
        return;
    };
    let options = QueueDeleteOptions {
        if_empty: true,
        ..Default::default()
    };
    if let Err(e) = channel.queue_delete(name, options).await {
        tracing::debug!(queue, "reply queue kept: {e}");
    }
}

fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(_)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://***@{host}")
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_queue_follows_the_output_path() {
        let dir = tempfile::tempdir().unwrap();
        let a = default_reply_queue(&dir.path().join("a.jsonl"));
        assert_eq!(a, default_reply_queue(&dir.path().join("a.jsonl")));
        assert_ne!(a, default_reply_queue(&dir.path().join("b.jsonl")));
        assert!(a.starts_with("vargpt.dispatch."));
        assert_eq!(a.len(), "vargpt.dispatch.".len() + 16);
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("amqp://u:p@h:5672/%2f"), "amqp://***@h:5672/%2f");
        assert_eq!(redact("amqp://h"), "amqp://h");
    }
}
