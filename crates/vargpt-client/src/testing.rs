//! A fake worker for integration tests (feature `testing`): it consumes a job
//! queue and answers each job the way the real worker routes results (to the
//! job's `replyTo`, else the AMQP `reply_to`, with the correlation id), with a
//! result that echoes the job. Tests of the client and the dispatcher use it
//! so they do not depend on the model or on the worker crate.
//!
//! Directives in the prompt, as in the worker's fake backend:
//! * `__fail__`        an error result with code `inference_failed`;
//! * `__drop__`        the job is acked and never answered (a lost result);
//! * `__sleep_ms=N__`  the job takes N more milliseconds.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use vargpt_proto::{ErrorCode, ErrorInfo, ImageInput, Job, JobResult, ResultStatus, Timings};

/// How a [`FakeWorker`] behaves.
#[derive(Debug, Clone)]
pub struct FakeWorkerOptions {
    /// Written to every result's `workerId`.
    pub worker_id: String,
    /// Time spent on each job.
    pub delay: Duration,
    /// Every n-th job id this worker sees for the first time (1-based) is
    /// acked without an answer, like a worker that lost the result. A job id
    /// seen before (a redelivery, a re-send) is always answered.
    pub drop_every: Option<usize>,
    /// Unacked jobs this worker holds at once.
    pub prefetch: u16,
    /// Declare the job queue (durable, expiring after 5 idle minutes) first.
    pub declare_queue: bool,
}

impl Default for FakeWorkerOptions {
    fn default() -> Self {
        FakeWorkerOptions {
            worker_id: "fake-worker".into(),
            delay: Duration::ZERO,
            drop_every: None,
            prefetch: 4,
            declare_queue: true,
        }
    }
}

/// What a fake worker saw of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct SeenJob {
    pub job: Job,
    pub redelivered: bool,
    pub answered: bool,
}

/// A running fake worker; stops when dropped.
pub struct FakeWorker {
    connection: Connection,
    task: tokio::task::JoinHandle<()>,
    seen: Arc<Mutex<Vec<SeenJob>>>,
    taken: Arc<AtomicUsize>,
    killed: Arc<AtomicBool>,
}

/// Declares a test job queue the way [`FakeWorker`] does (durable, deleted
/// after 5 minutes without consumers), so tests can publish before a worker runs.
pub async fn declare_test_queue(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(300_000));
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel.queue_declare(queue.into(), options, args).await?;
    Ok(())
}

/// A queue name no other test (or test run) uses.
pub fn unique_name(tag: &str) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "test.{tag}.{}.{nanos}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

impl FakeWorker {
    /// Connects and starts consuming `queue`.
    pub async fn start(
        amqp_url: &str,
        queue: &str,
        options: FakeWorkerOptions,
    ) -> Result<FakeWorker, lapin::Error> {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        if options.declare_queue {
            declare_test_queue(&channel, queue).await?;
        }
        channel
            .basic_qos(options.prefetch.max(1), BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                ShortString::from(format!("{}-{}", options.worker_id, unique_name("c"))),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let taken = Arc::new(AtomicUsize::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let task = {
            let (seen, taken, killed) =
                (Arc::clone(&seen), Arc::clone(&taken), Arc::clone(&killed));
            tokio::spawn(async move {
                let mut consumer = consumer;
                let mut ids = std::collections::HashSet::new();
                while let Some(Ok(delivery)) = consumer.next().await {
                    if killed.load(Ordering::SeqCst) {
                        return;
                    }
                    taken.fetch_add(1, Ordering::SeqCst);
                    let job: Option<Job> = serde_json::from_slice(&delivery.data).ok();
                    let prompt = job.as_ref().map_or("", |j| j.prompt.as_str());
                    let delay = options.delay + sleep_directive(prompt).unwrap_or_default();
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if killed.load(Ordering::SeqCst) {
                        return;
                    }
                    let new_id = job.as_ref().is_some_and(|j| ids.insert(j.id.clone()));
                    let drop_it = new_id
                        && options
                            .drop_every
                            .is_some_and(|k| k > 0 && ids.len() % k == 0);
                    answer(&channel, &delivery, &options.worker_id, drop_it, &seen).await;
                    if delivery.ack(BasicAckOptions::default()).await.is_err() {
                        return;
                    }
                }
            })
        };
        Ok(FakeWorker {
            connection,
            task,
            seen,
            taken,
            killed,
        })
    }

    /// Jobs taken from the queue so far (answered, failed or dropped).
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::SeqCst)
    }

    /// Every job seen, in order (a job is noted before its answer is published).
    pub fn seen(&self) -> Vec<SeenJob> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Dies like a crashed worker: the jobs it holds are not acked and go
    /// back to the queue for another worker.
    pub async fn kill(self) {
        self.killed.store(true, Ordering::SeqCst);
        self.task.abort();
        let _ = self
            .connection
            .close(320, "fake worker killed".into())
            .await;
    }

    /// Stops consuming and closes the connection.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self
            .connection
            .close(200, "fake worker stopped".into())
            .await;
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn sleep_directive(prompt: &str) -> Option<Duration> {
    let rest = &prompt[prompt.find("__sleep_ms=")? + "__sleep_ms=".len()..];
    rest[..rest.find("__")?]
        .parse()
        .ok()
        .map(Duration::from_millis)
}

/// Publishes the echo result of one job, after noting it in `seen` (so a
/// test that has the result also finds the job there).
async fn answer(
    channel: &Channel,
    delivery: &Delivery,
    worker_id: &str,
    drop_it: bool,
    seen: &Mutex<Vec<SeenJob>>,
) {
    let job: Job = match serde_json::from_slice(&delivery.data) {
        Ok(job) => job,
        Err(e) => {
            tracing::warn!("fake worker: not a job: {e}");
            return;
        }
    };
    let prop = |p: &Option<ShortString>| p.as_ref().map(|s| s.to_string()).unwrap_or_default();
    let reply_to = if job.reply_to.is_empty() {
        prop(delivery.properties.reply_to())
    } else {
        job.reply_to.clone()
    };
    let correlation_id = if job.correlation_id.is_empty() {
        prop(delivery.properties.correlation_id())
    } else {
        job.correlation_id.clone()
    };
    let drop_it = drop_it || job.prompt.contains("__drop__");
    let answered = !drop_it && !reply_to.is_empty();
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(SeenJob {
            job: job.clone(),
            redelivered: delivery.redelivered,
            answered,
        });
    if !answered {
        return;
    }
    let image = match &job.image {
        Some(ImageInput::Data(b64)) => format!("inline:{}", b64.len()),
        Some(ImageInput::Uri(uri)) => uri.clone(),
        None => "none".into(),
    };
    let mut result = JobResult {
        version: 1,
        job_id: job.id.clone(),
        status: ResultStatus::Ok,
        kind: job.kind,
        text: format!("echo {} image={image}", job.id),
        timings: Timings {
            total_seconds: 0.001,
            ..Default::default()
        },
        model_id: "fake-model".into(),
        worker_id: worker_id.to_string(),
        correlation_id: correlation_id.clone(),
        attempt: if delivery.redelivered { 2 } else { 1 },
        finish_reason: "eos".into(),
        tokens_generated: 3,
        ..Default::default()
    };
    if job.prompt.contains("__fail__") {
        result.status = ResultStatus::Error;
        result.text.clear();
        result.error = Some(ErrorInfo::new(
            ErrorCode::InferenceFailed,
            "fake worker: __fail__ directive",
        ));
    }
    let mut props = BasicProperties::default().with_content_type(vargpt_proto::CONTENT_TYPE.into());
    if let Ok(c) = ShortString::try_new(correlation_id) {
        props = props.with_correlation_id(c);
    }
    let Ok(routing_key) = ShortString::try_new(reply_to) else {
        return;
    };
    let published = channel
        .basic_publish(
            "".into(),
            routing_key,
            BasicPublishOptions::default(),
            &result.to_json(),
            props,
        )
        .await;
    if let Err(e) = published {
        tracing::warn!("fake worker: cannot publish a result: {e}");
    }
}
