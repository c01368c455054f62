//! Carrying out a disposition in the order that makes delivery at-least-once:
//! everything the job produces is published and confirmed first, and only
//! then is the message acknowledged. If any step fails the message is given
//! back, so it is processed again rather than lost (duplicates are harmless:
//! image keys and seeds derive from the job id).

use std::time::Duration;

use tracing::{error, info, Instrument};

use super::{kind_label, Acker, Disposition, Envelope, ResultSink, TransportError};
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

async fn carry_out(
    env: &Envelope,
    acker: &dyn Acker,
    d: &Disposition,
    sink: &dyn ResultSink,
    metrics: &Metrics,
) -> Result<(), TransportError> {
    match d {
        Disposition::Complete(result, route) => {
            sink.publish(result, route).await?;
            acker.ack().await?;
            let kind = kind_label(result.kind);
            metrics.jobs_total.with_label_values(&[kind, "ok"]).inc();
            metrics
                .job_duration_seconds
                .with_label_values(&[kind])
                .observe(env.meta.received_at.elapsed().as_secs_f64());
        }
        Disposition::DeadLetter(result, route) => {
            let error = result.error.clone().unwrap_or_else(|| {
                vargpt_proto::ErrorInfo::new(
                    vargpt_proto::ErrorCode::Internal,
                    "error result without an error",
                )
            });
            sink.publish(result, route).await?;
            sink.dead_letter(env, &error).await?;
            acker.ack().await?;
            let kind = kind_label(result.kind);
            let code = error.code.as_str();
            metrics.jobs_total.with_label_values(&[kind, "error"]).inc();
            metrics.job_errors_total.with_label_values(&[code]).inc();
            metrics.dead_lettered_total.with_label_values(&[code]).inc();
            metrics
                .job_duration_seconds
                .with_label_values(&[kind])
                .observe(env.meta.received_at.elapsed().as_secs_f64());
            info!(code, "error result published, message dead-lettered");
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
    }
    Ok(())
}
