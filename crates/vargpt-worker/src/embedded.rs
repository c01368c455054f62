//! The embedded mode: the same pipeline with an in-process queue fed from a
//! JSONL file, a local directory as the store, and files as the sinks
//! (`results.jsonl`, `dead-letter.jsonl`, `images/`). No services needed.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use async_trait::async_trait;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::info;
use vargpt_proto::{ErrorInfo, JobResult};

use crate::config::EmbeddedArgs;
use crate::metrics::Metrics;
use crate::pipeline::process::PipelineConfig;
use crate::pipeline::runner::Runner;
use crate::pipeline::{
    Acker, Envelope, ImageStore, Incoming, JobSource, Meta, Pipeline, ResultSink, Route,
    TransportError,
};
use crate::store::LocalStore;

/// How the run went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub ok: usize,
    pub errors: usize,
}

pub async fn run(args: EmbeddedArgs) -> anyhow::Result<Summary> {
    args.pipeline.check()?;
    let limits = args.limits.limits(None)?;
    let text = std::fs::read_to_string(&args.jobs)
        .with_context(|| format!("reading {}", args.jobs.display()))?;
    let shutdown = crate::shutdown::on_signals().context("installing signal handlers")?;

    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let on_gpu = args.model.on_gpu();
    let (concurrency, batch_max) = args.pipeline.slots(on_gpu);
    for w in args.pipeline.deprecations(&args.model) {
        tracing::warn!("{w}");
    }
    let engine = crate::load::EngineSettings {
        max_batch: args.pipeline.max_batch(on_gpu) as usize,
        job_timeout: Duration::from_secs(args.pipeline.job_timeout_secs),
    };
    let backend = crate::load::load(
        &args.model,
        &limits,
        args.limits.max_prompt_tokens,
        engine,
        &metrics,
    )
    .await
    .context("loading the model")?;
    let store = Arc::new(LocalStore::new(args.store_root.clone(), args.out.clone()));
    store.check().await.context("preparing the output folder")?;

    let queue = Arc::new(Queue::new());
    let mut source = QueueSource {
        rx: queue.take_receiver(),
        queue: queue.clone(),
    };
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let meta = Meta {
            message_id: Some(format!("line-{}", i + 1)),
            enqueued_at: Some(SystemTime::now()),
            ..Meta::new()
        };
        queue.push(line.as_bytes().to_vec(), meta);
    }
    let sink = Arc::new(FileSink::create(&args.out, queue.clone())?);
    let pipeline = Arc::new(Pipeline::new(
        backend,
        store,
        metrics,
        PipelineConfig {
            limits,
            worker_id: args.pipeline.worker_id(),
            image_prefix: args.pipeline.image_prefix.clone(),
            max_attempts: args.max_attempts.max(1),
            // Only a pipeline bug requeues in-process; stop after a few.
            max_deliveries: 3,
            isolate_suspects: false,
            dead_letter_expired: false,
        },
    ));
    let runner = Runner::new(pipeline, concurrency, batch_max as usize);
    let end = runner.run(&mut source, sink.clone(), &shutdown).await;
    runner.drain(Duration::from_secs(3600)).await;
    let summary = *sink.summary.lock().unwrap_or_else(|e| e.into_inner());
    info!(?end, ok = summary.ok, errors = summary.errors, out = %args.out.display(), "embedded run finished");
    let _ = writeln!(
        std::io::stdout().lock(),
        "{} jobs: {} ok, {} error — results in {}",
        summary.ok + summary.errors,
        summary.ok,
        summary.errors,
        args.out.join("results.jsonl").display()
    );
    Ok(summary)
}

/// An in-process queue that knows when every message is settled.
struct Queue {
    tx: mpsc::UnboundedSender<Envelope>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Envelope>>>,
    /// Messages enqueued (or waiting for a retry) and not yet acked.
    outstanding: AtomicUsize,
}

impl Queue {
    fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Queue {
            tx,
            rx: Mutex::new(Some(rx)),
            outstanding: AtomicUsize::new(0),
        }
    }

    fn take_receiver(&self) -> mpsc::UnboundedReceiver<Envelope> {
        self.rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("receiver taken once")
    }

    fn push(&self, body: Vec<u8>, meta: Meta) {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        self.send(body, meta);
    }

    /// Re-sends a message that is already counted as outstanding.
    fn send(&self, body: Vec<u8>, meta: Meta) {
        // The receiver lives as long as the run: a send cannot fail before the end.
        let _ = self.tx.send(Envelope::new(body, meta, None));
    }
}

struct QueueSource {
    rx: mpsc::UnboundedReceiver<Envelope>,
    queue: Arc<Queue>,
}

#[async_trait]
impl JobSource for QueueSource {
    async fn next(&mut self) -> Result<Option<Incoming>, TransportError> {
        loop {
            if let Ok(env) = self.rx.try_recv() {
                let acker = LocalAcker {
                    queue: self.queue.clone(),
                    body: env.body.clone(),
                    meta: env.meta.clone(),
                };
                return Ok(Some(Incoming {
                    envelope: env,
                    acker: Box::new(acker),
                }));
            }
            if self.queue.outstanding.load(Ordering::SeqCst) == 0 {
                return Ok(None);
            }
            // Wait for a retry to come back or for the last jobs to settle.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct LocalAcker {
    queue: Arc<Queue>,
    body: Vec<u8>,
    meta: Meta,
}

#[async_trait]
impl Acker for LocalAcker {
    async fn ack(&self) -> Result<(), TransportError> {
        self.queue.outstanding.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    async fn requeue(&self) -> Result<(), TransportError> {
        let meta = Meta {
            previous_deliveries: self.meta.previous_deliveries + 1,
            ..Meta::new()
        };
        self.queue.send(
            self.body.clone(),
            Meta {
                attempt: self.meta.attempt,
                ..meta
            },
        );
        Ok(())
    }
}

/// Results and dead letters as JSON lines; retries back into the queue.
struct FileSink {
    results: Mutex<std::fs::File>,
    dead: Mutex<std::fs::File>,
    queue: Arc<Queue>,
    summary: Mutex<Summary>,
}

impl FileSink {
    fn create(out: &Path, queue: Arc<Queue>) -> anyhow::Result<Self> {
        let open = |name: &str| {
            let p = out.join(name);
            std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))
        };
        Ok(FileSink {
            results: Mutex::new(open("results.jsonl")?),
            dead: Mutex::new(open("dead-letter.jsonl")?),
            queue,
            summary: Mutex::new(Summary::default()),
        })
    }
}

fn append(file: &Mutex<std::fs::File>, line: &[u8]) -> Result<(), TransportError> {
    let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
    f.write_all(line)
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.flush())
        .map_err(|e| TransportError::Other(e.to_string()))
}

#[async_trait]
impl ResultSink for FileSink {
    async fn publish(&self, result: &JobResult, _route: &Route) -> Result<(), TransportError> {
        append(&self.results, &result.to_json())?;
        let mut s = self.summary.lock().unwrap_or_else(|e| e.into_inner());
        let what = match (&result.error, &result.image) {
            (Some(e), _) => format!("{}: {}", e.code, e.message),
            (None, Some(img)) => format!("{}x{} image at {}", img.width, img.height, img.url),
            (None, None) => format!("{:?}", result.text),
        };
        if result.is_ok() {
            s.ok += 1;
        } else {
            s.errors += 1;
        }
        // Not println!: a closed stdout must not fail the job (println! panics).
        let _ = writeln!(
            std::io::stdout().lock(),
            "{:<5} {:<14} {:<20} {what}",
            result.status.as_str(),
            result.kind.as_str(),
            result.job_id
        );
        Ok(())
    }

    async fn dead_letter(&self, env: &Envelope, error: &ErrorInfo) -> Result<(), TransportError> {
        let line = json!({ "error": error, "body": String::from_utf8_lossy(&env.body) });
        append(&self.dead, line.to_string().as_bytes())
    }

    async fn retry(&self, env: &Envelope, attempt: u32) -> Result<(), TransportError> {
        let delay = Duration::from_millis(500u64 << attempt.saturating_sub(2).min(6));
        let queue = self.queue.clone();
        let body = env.body.clone();
        let meta = Meta {
            attempt,
            message_id: env.meta.message_id.clone(),
            enqueued_at: env.meta.enqueued_at,
            ..Meta::new()
        };
        queue.outstanding.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.send(body, meta);
        });
        Ok(())
    }
}
