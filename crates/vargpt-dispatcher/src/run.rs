//! One dispatcher run: read the input, keep at most `max_in_flight` jobs
//! between publish and result, write each result once, re-send what times
//! out, stop cleanly on Ctrl-C.
//!
//! Results come back on a reply queue owned by the output file (its name is
//! derived from the output path). The queue is durable and outlives the
//! dispatcher for `reply_queue_ttl`, so the answers to jobs that were in
//! flight when a run crashed wait there and are written by the next run.
//! A result is acked only after its line is flushed to the output.
//!
//! Each line gets the item's `source` and `prompt` ([`crate::sources`]);
//! with `--table` the output is also written as a CSV table at the end.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use vargpt_client::wire;
use vargpt_proto::json::Timestamp;
use vargpt_proto::wire::Names;
use vargpt_proto::ErrorCode;

use crate::broker::{self, redact};
use crate::exit::usage;
use crate::input::{self, Input};
use crate::ledger::{Ledger, Recorded};
use crate::prepare::{local_failure, Prepared, Preparer, Upload};
use crate::progress::Progress;
use crate::routing::Router;
use crate::s3::{self, S3Options};
use crate::sources::{annotate, Item, SourceLog};
use crate::spec::{JobSpec, Template};
use crate::summary::Stats;

/// Everything a run needs, checked.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub input: Input,
    pub output: PathBuf,
    pub amqp_url: String,
    /// The queue prefix shared with the workers (`--queue-prefix`).
    pub names: Names,
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
    /// Also write the output as a CSV table here ([`crate::table`]).
    pub table: Option<PathBuf>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Report {
    pub stats: Stats,
    pub interrupted: bool,
    pub output: PathBuf,
    /// Written when the output holds failed jobs.
    pub failures_file: Option<PathBuf>,
    /// The CSV table and its rows, with `--table`.
    pub table: Option<(PathBuf, usize)>,
}

impl Report {
    /// 0: every job in the output succeeded; 1: some failed (see the
    /// failures file); 130: interrupted (re-run to resume). See the README.
    pub fn exit_code(&self) -> i32 {
        if self.interrupted {
            crate::exit::INTERRUPTED
        } else if self.stats.failures_in_output > 0 {
            crate::exit::FAILED
        } else {
            crate::exit::OK
        }
    }
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
    sources: SourceLog,
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
            .context("--kind / --prompt")
            .map_err(usage)?;
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
    let scan = scan.map_err(usage)?;

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
    broker::check_job_queues(&connection, &cfg.router)
        .await
        .map_err(usage)?;
    let reply_queue = cfg
        .reply_queue
        .clone()
        .unwrap_or_else(|| broker::default_reply_queue(&cfg.names, &cfg.output));
    let (mut consumer, backlog) = broker::consume_replies(
        &connection,
        &reply_queue,
        cfg.max_in_flight,
        cfg.reply_queue_ttl,
    )
    .await?;
    // Only now, with the reply queue ours alone: another dispatcher on the
    // same output is refused above and must not have its file rewritten.
    let sources = SourceLog::open(&cfg.output, &ledger).with_context(|| {
        format!(
            "cannot open {}",
            crate::sources::log_path(&cfg.output).display()
        )
    })?;
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
        sources,
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
        broker::delete_reply_queue(&connection, &reply_queue).await;
    }
    let _ = connection.close(200, "dispatcher done".into()).await;
    let table = match &cfg.table {
        Some(path) => {
            let rows = crate::table::write_table(&cfg.output, path)
                .with_context(|| format!("cannot write the table {}", path.display()))?;
            Some((path.clone(), rows))
        }
        None => None,
    };

    let mut stats = dispatch.stats;
    stats.elapsed = started.elapsed();
    stats.failures_in_output = failures as u64;
    stats.results_in_output = dispatch.ledger.len() as u64;
    let failures_file = (failures > 0).then(|| dispatch.ledger.failures_path());
    if finished {
        dispatch.sources.remove();
    }
    Ok(Report {
        stats,
        interrupted,
        output: cfg.output.clone(),
        failures_file,
        table,
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
                let item = item_of(&entry.spec);
                self.in_flight.remove(id);
                return self.write_result(&result.to_json(), None, &item);
            }
        };
        job.correlation_id = format!("{id}/{attempt}");
        job.reply_to = self.reply_queue.clone();
        job.deadline = Some(Timestamp(
            time::OffsetDateTime::now_utc() + self.cfg.job_timeout,
        ));
        let props = wire::job_properties(&job.id, &job.correlation_id, &job.reply_to)?;
        let queue = entry.queue.clone();
        if attempt == 1 {
            let item = item_of(&entry.spec);
            self.sources
                .note(id, &item)
                .context("cannot write the sources file")?;
        }
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
                self.write_result(&result.to_json(), entry.first_sent, &item_of(&entry.spec))?;
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
                    self.write_result(&delivery.data, entry.first_sent, &item_of(&entry.spec))?;
                } else if self.ledger.get(&id).is_some() {
                    self.stats.duplicates += 1;
                } else {
                    // Sent by an earlier run of this output; its answer counts.
                    self.stats.recovered += 1;
                    let item = self.sources.take_pending(&id).unwrap_or_else(|| {
                        tracing::warn!(%id, "the source of an earlier run's job is unknown");
                        Item::default()
                    });
                    self.write_result(&delivery.data, None, &item)?;
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

    fn write_result(
        &mut self,
        body: &[u8],
        first_sent: Option<Instant>,
        item: &Item,
    ) -> anyhow::Result<()> {
        match self.ledger.record(&annotate(body, item))? {
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

fn item_of(spec: &JobSpec) -> Item {
    Item {
        source: spec.source.clone(),
        prompt: spec.prompt.clone(),
    }
}
