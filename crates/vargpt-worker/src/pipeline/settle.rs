//! Carrying out a disposition in the order that makes delivery at-least-once:
//! everything the job produces is published and confirmed first, and only
//! then is the message acknowledged. If the transport fails the message is
//! given back, so it is processed again rather than lost (duplicates are
//! harmless: image keys and seeds derive from the request). A result the
//! broker refuses for good is not a transport failure: the message is then
//! dead-lettered and acked, never run again for it.

use std::time::Duration;

use tracing::{error, info, warn, Instrument};
use vargpt_proto::{ErrorCode, ErrorInfo, JobResult};

use super::{kind_label, Acker, Disposition, Envelope, ResultSink, Route, TransportError};
use crate::metrics::Metrics;

/// Pause before giving a message back after a transport failure, so a
/// persistent fault does not spin.
const REQUEUE_PAUSE: Duration = Duration::from_millis(500);

pub async fn settle(
    env: &Envelope,
    acker: &dyn Acker,
    d: Disposition,
    sink: &dyn ResultSink,
    metrics: &Metrics,
) {
    let span = env.span.clone();
    async {
        match carry_out(env, acker, &d, sink, metrics).await {
            Ok(()) => {}
            Err(e) => {
                error!(error = %e, "could not settle the job; giving it back to the queue");
                tokio::time::sleep(REQUEUE_PAUSE).await;
                // If the channel is gone the broker requeues it by itself.
                if let Err(e) = acker.requeue().await {
                    info!(error = %e, "requeue failed (the broker will redeliver on its own)");
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Publishes a result. If the broker will not take it (after the sink's
/// bounded tries), the message is dead-lettered with why, so it ends here.
/// `Ok(true)`: published; `Ok(false)`: dead-lettered instead.
async fn publish_or_dead_letter(
    env: &Envelope,
    result: &JobResult,
    route: &Route,
    sink: &dyn ResultSink,
    metrics: &Metrics,
) -> Result<bool, TransportError> {
    match sink.publish(result, route).await {
        Ok(()) => Ok(true),
        Err(TransportError::Undeliverable(why)) => {
            warn!(error = %why, "the result cannot be delivered; dead-lettering the job");
            let info = ErrorInfo::new(
                ErrorCode::Internal,
                format!("the result could not be delivered: {why}"),
            );
            sink.dead_letter(env, &info).await?;
            metrics
                .dead_lettered_total
                .with_label_values(&[info.code.as_str()])
                .inc();
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

async fn carry_out(
    env: &Envelope,
    acker: &dyn Acker,
    d: &Disposition,
    sink: &dyn ResultSink,
    metrics: &Metrics,
) -> Result<(), TransportError> {
    let observe = |kind: &str| {
        metrics
            .job_duration_seconds
            .with_label_values(&[kind])
            .observe(env.meta.received_at.elapsed().as_secs_f64())
    };
    match d {
        Disposition::Complete(result, route) => {
            let published = publish_or_dead_letter(env, result, route, sink, metrics).await?;
            acker.ack().await?;
            let kind = kind_label(result.kind);
            let status = if published { "ok" } else { "error" };
            metrics.jobs_total.with_label_values(&[kind, status]).inc();
            observe(kind);
        }
        Disposition::DeadLetter(result, route) | Disposition::Answer(result, route) => {
            let error = result.error.clone().unwrap_or_else(|| {
                ErrorInfo::new(ErrorCode::Internal, "error result without an error")
            });
            let published = publish_or_dead_letter(env, result, route, sink, metrics).await?;
            let dead = matches!(d, Disposition::DeadLetter(..));
            if published && dead {
                sink.dead_letter(env, &error).await?;
            }
            acker.ack().await?;
            let kind = kind_label(result.kind);
            let code = error.code.as_str();
            metrics.jobs_total.with_label_values(&[kind, "error"]).inc();
            metrics.job_errors_total.with_label_values(&[code]).inc();
            if published && dead {
                metrics.dead_lettered_total.with_label_values(&[code]).inc();
            }
            observe(kind);
            info!(code, dead_lettered = dead, "error result published");
        }
        Disposition::Retry {
            attempt,
            kind,
            error,
        } => {
            sink.retry(env, *attempt).await?;
            acker.ack().await?;
            metrics
                .job_retries_total
                .with_label_values(&[kind_label(*kind)])
                .inc();
            info!(next_attempt = attempt, code = %error.code, "job scheduled for retry");
        }
        Disposition::Quarantine => {
            sink.quarantine(env).await?;
            acker.ack().await?;
        }
        // Left unacked on purpose: the worker is about to exit, and closing
        // its connection returns the message. A nack now would free the
        // prefetch slot for another job to be charged with this death.
        Disposition::Release => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use vargpt_proto::{JobKind, ResultStatus};

    use super::*;
    use crate::pipeline::Meta;

    /// A sink whose result publishes fail as told; records what it did.
    struct Sink {
        publish: fn() -> Result<(), TransportError>,
        log: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl ResultSink for Sink {
        async fn publish(&self, _: &JobResult, _: &Route) -> Result<(), TransportError> {
            self.log.lock().unwrap().push("publish".into());
            (self.publish)()
        }
        async fn dead_letter(&self, _: &Envelope, e: &ErrorInfo) -> Result<(), TransportError> {
            self.log.lock().unwrap().push(format!("dead:{}", e.code));
            Ok(())
        }
        async fn retry(&self, _: &Envelope, _: u32) -> Result<(), TransportError> {
            self.log.lock().unwrap().push("retry".into());
            Ok(())
        }
    }

    #[derive(Default)]
    struct Ack(Mutex<Vec<&'static str>>);

    #[async_trait]
    impl Acker for Ack {
        async fn ack(&self) -> Result<(), TransportError> {
            self.0.lock().unwrap().push("ack");
            Ok(())
        }
        async fn requeue(&self) -> Result<(), TransportError> {
            self.0.lock().unwrap().push("requeue");
            Ok(())
        }
    }

    async fn run(publish: fn() -> Result<(), TransportError>) -> (Vec<String>, Vec<&'static str>) {
        let sink = Sink {
            publish,
            log: Mutex::default(),
        };
        let ack = Ack::default();
        let env = Envelope::new(b"{}".to_vec(), Meta::new(), None);
        let result = JobResult {
            job_id: "j".into(),
            status: ResultStatus::Ok,
            kind: JobKind::Chat,
            ..Default::default()
        };
        let d = Disposition::Complete(Box::new(result), Route::default());
        let metrics = Metrics::new().unwrap();
        settle(&env, &ack, d, &sink, &metrics).await;
        let log = sink.log.lock().unwrap().clone();
        let acks = ack.0.lock().unwrap().clone();
        (log, acks)
    }

    #[tokio::test]
    async fn an_undeliverable_result_dead_letters_the_job_instead_of_rerunning_it() {
        let (log, acks) = run(|| Err(TransportError::Undeliverable("nacked 3 times".into()))).await;
        assert_eq!(log, ["publish", "dead:internal"]);
        assert_eq!(acks, ["ack"], "never requeued: no loop");
    }

    #[tokio::test]
    async fn a_lost_connection_gives_the_job_back() {
        let (log, acks) = run(|| Err(TransportError::Disconnected("gone".into()))).await;
        assert_eq!(log, ["publish"]);
        assert_eq!(acks, ["requeue"]);
        let (_, acks) = run(|| Ok(())).await;
        assert_eq!(acks, ["ack"]);
    }
}
