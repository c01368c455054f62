//! The consume loop: take messages while a slot is free, hand them to the
//! pipeline in batches, settle each; on shutdown stop taking and drain.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Semaphore;
use tracing::{debug, error, warn};

use super::settle::settle;
use super::{Incoming, JobSource, Pipeline, ResultSink, TransportError};
use crate::shutdown::Shutdown;

/// Why [`Runner::run`] returned.
#[derive(Debug)]
pub enum RunEnd {
    /// Shutdown was requested; in-flight jobs may still be running (drain them).
    Shutdown,
    /// The source said no more messages will come.
    Exhausted,
    /// The source failed (broker connection lost): reconnect and call again.
    Disconnected(TransportError),
}

pub struct Runner {
    pipeline: Arc<Pipeline>,
    /// One permit per batch in flight. Shared across reconnects, so jobs still
    /// running from a dead connection count against the limit.
    slots: Arc<Semaphore>,
    concurrency: u32,
    batch_max: usize,
}

impl Runner {
    pub fn new(pipeline: Arc<Pipeline>, concurrency: u32, batch_max: usize) -> Self {
        let concurrency = concurrency.max(1);
        Runner {
            pipeline,
            slots: Arc::new(Semaphore::new(concurrency as usize)),
            concurrency,
            batch_max: batch_max.max(1),
        }
    }

    /// Consumes until shutdown, the end of the source, or a transport error.
    pub async fn run(
        &self,
        source: &mut dyn JobSource,
        sink: Arc<dyn ResultSink>,
        shutdown: &Shutdown,
    ) -> RunEnd {
        // A suspect met while filling a batch waits here for its own turn.
        let mut held: Option<Incoming> = None;
        loop {
            let mut permit = tokio::select! {
                biased;
                _ = shutdown.wait() => return RunEnd::Shutdown,
                p = self.slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return RunEnd::Shutdown, // semaphore closed: never happens
                },
            };
            if !self.pipeline.backend_alive() {
                // A dead engine takes no job: each would only be returned
                // with its delivery count raised.
                return RunEnd::Shutdown;
            }
            let first = match held.take() {
                Some(m) => m,
                None => tokio::select! {
                    biased;
                    _ = shutdown.wait() => return RunEnd::Shutdown,
                    next = source.next() => match next {
                        Ok(Some(m)) => m,
                        Ok(None) => return RunEnd::Exhausted,
                        Err(e) => return RunEnd::Disconnected(e),
                    },
                },
            };
            let mut batch = vec![first];
            if batch[0].envelope.meta.isolated {
                // Run it alone: wait for every other batch to finish and
                // start none meanwhile, so a crash now is this job's alone.
                let rest = self.concurrency.saturating_sub(1);
                let all = tokio::select! {
                    biased;
                    _ = shutdown.wait() => return RunEnd::Shutdown,
                    p = self.slots.clone().acquire_many_owned(rest) => p,
                };
                if let Ok(all) = all {
                    permit.merge(all);
                }
            } else {
                // Fill the batch only with messages already here: batching
                // must never add latency to a lone job.
                while batch.len() < self.batch_max {
                    match source.next().now_or_never() {
                        Some(Ok(Some(m))) if m.envelope.meta.isolated => {
                            held = Some(m);
                            break;
                        }
                        Some(Ok(Some(m))) => batch.push(m),
                        _ => break,
                    }
                }
            }
            let pipeline = self.pipeline.clone();
            let sink = sink.clone();
            tokio::spawn(async move {
                let _permit = permit;
                run_batch(&pipeline, sink.as_ref(), batch).await;
            });
        }
    }

    /// Waits until no job is in flight, at most `grace`. True if drained.
    pub async fn drain(&self, grace: Duration) -> bool {
        match tokio::time::timeout(grace, self.slots.acquire_many(self.concurrency)).await {
            Ok(Ok(_all)) => true,
            _ => {
                warn!(
                    grace_s = grace.as_secs_f64(),
                    "jobs still running after the grace period"
                );
                false
            }
        }
    }
}

async fn run_batch(pipeline: &Pipeline, sink: &dyn ResultSink, batch: Vec<Incoming>) {
    let metrics = pipeline.metrics().clone();
    let n = batch.len() as i64;
    metrics.jobs_in_flight.add(n);
    debug!(batch = n, "processing batch");
    let work = async {
        let envs: Vec<_> = batch.iter().map(|m| &m.envelope).collect();
        let dispositions = pipeline.process_batch(&envs).await;
        let settles = batch
            .iter()
            .zip(dispositions)
            .map(|(m, d)| settle(&m.envelope, m.acker.as_ref(), d, sink, &metrics));
        futures::future::join_all(settles).await;
    };
    // A bug must not leave messages unsettled on a live channel (they would
    // sit unacked until the connection closes). Give them back instead; the
    // delivery limit stops a message that triggers the bug every time.
    if AssertUnwindSafe(work).catch_unwind().await.is_err() {
        error!(
            batch = n,
            "the pipeline panicked; giving the batch back to the queue"
        );
        for m in &batch {
            let _ = m.acker.requeue().await;
        }
    }
    metrics.jobs_in_flight.sub(n);
}
