//! [`Client`]: publish jobs, await their results.
//!
//! Replies come back on a private reply queue: server-named, exclusive and
//! auto-deleted, one per `Client` (not per request), consumed with acks and a
//! prefetch limit. We prefer it to RabbitMQ direct reply-to
//! (`amq.rabbitmq.reply-to`) because
//! * it is an ordinary queue to the worker, which needs no special case for
//!   it (direct reply-to names cannot be declared or inspected, and its
//!   replies are dropped silently when the caller is gone);
//! * acks and `basic.qos` give flow control, where direct reply-to forces
//!   no-ack consumption and the broker pushes without limit;
//! * publishing and consuming can use separate channels (direct reply-to ties
//!   them to one), so a channel error on publish does not lose replies.
//!
//! Its cost, one queue declaration per connection, is paid once at connect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vargpt_proto::json::Timestamp;
use vargpt_proto::{Job, JobResult};

use crate::config::ClientConfig;
use crate::error::{redact_url, Error, Result};
use crate::wire;

type Waiter = oneshot::Sender<Result<JobResult>>;

/// Jobs waiting for their result, by correlation id.
#[derive(Default)]
struct Waiters {
    state: Mutex<WaitState>,
}

#[derive(Default)]
struct WaitState {
    by_correlation: HashMap<String, Waiter>,
    /// Set once the reply consumer is gone: why.
    closed: Option<String>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, WaitState> {
        // A panic while holding this lock leaves the map consistent (each
        // operation is one insert or remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(
        &self,
        job_id: &str,
        correlation_id: &str,
    ) -> Result<oneshot::Receiver<Result<JobResult>>> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(Error::Disconnected {
                job_id: job_id.to_string(),
                reason: reason.clone(),
            });
        }
        if state.by_correlation.contains_key(correlation_id) {
            return Err(Error::DuplicateCorrelationId(correlation_id.to_string()));
        }
        let (tx, rx) = oneshot::channel();
        state.by_correlation.insert(correlation_id.to_string(), tx);
        Ok(rx)
    }

    fn take(&self, correlation_id: &str) -> Option<Waiter> {
        self.lock().by_correlation.remove(correlation_id)
    }

    /// Fails every waiting job: its result can no longer arrive.
    fn close(&self, reason: String) {
        let waiting = {
            let mut state = self.lock();
            state.closed = Some(reason.clone());
            std::mem::take(&mut state.by_correlation)
        };
        for (_, tx) in waiting {
            // The job id is filled in by `submit`, which knows it.
            let _ = tx.send(Err(Error::Disconnected {
                job_id: String::new(),
                reason: reason.clone(),
            }));
        }
    }
}

/// Removes a waiter when its `submit` ends for any reason (result, timeout,
/// error, or the future being dropped).
struct WaiterGuard<'a> {
    waiters: &'a Waiters,
    correlation_id: String,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.waiters.take(&self.correlation_id);
    }
}

struct Inner {
    connection: Connection,
    /// In confirm mode; replaced when a channel-level error closed it.
    publish: tokio::sync::Mutex<Channel>,
    reply_queue: String,
    config: ClientConfig,
    waiters: Arc<Waiters>,
    correlation_prefix: String,
    counter: AtomicU64,
    reply_task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The consumer task holds the reply channel; once it is gone the
        // connection closes itself when dropped.
        self.reply_task.abort();
    }
}

/// A connection to the broker that submits jobs and awaits their results.
/// Cheap to clone; clones share the connection and the reply queue.
///
/// The client does not reconnect: after [`Error::Disconnected`] or a
/// connection-level [`Error::Broker`], create a new one.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects, declares the private reply queue and starts consuming it.
    pub async fn connect(amqp_url: &str, config: ClientConfig) -> Result<Client> {
        let props = ConnectionProperties::default()
            .with_connection_name(config.connection_name.clone().into());
        let connection = Connection::connect(amqp_url, props)
            .await
            .map_err(|source| Error::Connect {
                url: redact_url(amqp_url),
                source,
            })?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;

        let replies = connection.create_channel().await?;
        replies
            .basic_qos(config.reply_prefetch.max(1), BasicQosOptions::default())
            .await?;
        let queue_options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = replies
            .queue_declare("".into(), queue_options, FieldTable::default())
            .await?;
        let correlation_prefix = unique_prefix();
        let consumer = replies
            .basic_consume(
                queue.name().clone(),
                format!("vargpt-client-{correlation_prefix}").into(),
                BasicConsumeOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let waiters = Arc::new(Waiters::default());
        let reply_task = tokio::spawn(reply_loop(consumer, Arc::clone(&waiters)));
        Ok(Client {
            inner: Arc::new(Inner {
                connection,
                publish: tokio::sync::Mutex::new(publish),
                reply_queue: queue.name().to_string(),
                config,
                waiters,
                correlation_prefix,
                counter: AtomicU64::new(0),
                reply_task,
            }),
        })
    }

    /// The private queue results come back on (set as every job's `replyTo`).
    pub fn reply_queue(&self) -> &str {
        &self.inner.reply_queue
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Submits one job and waits for its result, up to the configured
    /// timeout. An error *result* (status `error`) is an `Ok` here: the job
    /// was answered; see [`crate::check`] to turn it into an `Err`.
    ///
    /// The job's `replyTo` is replaced by this client's reply queue; an empty
    /// `correlationId` is filled with a unique one.
    pub async fn submit(&self, job: Job) -> Result<JobResult> {
        self.submit_with_timeout(job, self.inner.config.timeout)
            .await
    }

    /// [`submit`](Self::submit) with its own timeout.
    pub async fn submit_with_timeout(&self, mut job: Job, timeout: Duration) -> Result<JobResult> {
        if job.id.is_empty() {
            return Err(Error::InvalidJob {
                job_id: String::new(),
                reason: "id is required".into(),
            });
        }
        if job.correlation_id.is_empty() {
            job.correlation_id = self.next_correlation_id();
        }
        job.reply_to = self.inner.reply_queue.clone();
        if self.inner.config.set_deadline && job.deadline.is_none() {
            job.deadline = Some(Timestamp(time::OffsetDateTime::now_utc() + timeout));
        }
        let props = wire::job_properties(&job.id, &job.correlation_id, &job.reply_to)?;

        let waiters = &*self.inner.waiters;
        let rx = waiters.register(&job.id, &job.correlation_id)?;
        let _guard = WaiterGuard {
            waiters,
            correlation_id: job.correlation_id.clone(),
        };
        let channel = self.publish_channel(&job.id).await?;
        let config = &self.inner.config;
        wire::publish_confirmed(
            &channel,
            &config.exchange,
            &config.job_queue,
            &job.to_json(),
            props,
            &job.id,
        )
        .await?;

        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(Error::Disconnected { reason, .. }))) => Err(Error::Disconnected {
                job_id: job.id,
                reason,
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(Error::Disconnected {
                job_id: job.id,
                reason: "client shut down".into(),
            }),
            Err(_) => Err(Error::Timeout {
                job_id: job.id,
                timeout,
            }),
        }
    }

    /// Submits jobs with at most `max_in_flight` of them waiting at once and
    /// yields each outcome as it arrives (not in input order). Jobs are taken
    /// from the iterator only as slots free up.
    pub fn submit_many<I>(&self, jobs: I) -> impl Stream<Item = Result<JobResult>> + Send + 'static
    where
        I: IntoIterator<Item = Job>,
        I::IntoIter: Send + 'static,
    {
        self.submit_stream(futures::stream::iter(jobs))
    }

    /// [`submit_many`](Self::submit_many) over a stream of jobs.
    pub fn submit_stream<S>(
        &self,
        jobs: S,
    ) -> impl Stream<Item = Result<JobResult>> + Send + 'static
    where
        S: Stream<Item = Job> + Send + 'static,
    {
        let client = self.clone();
        let limit = self.inner.config.max_in_flight.max(1);
        jobs.map(move |job| {
            let client = client.clone();
            async move { client.submit(job).await }
        })
        .buffer_unordered(limit)
    }

    /// Closes the connection; waiting submits fail with [`Error::Disconnected`].
    pub async fn close(&self) -> Result<()> {
        self.inner
            .connection
            .close(200, "client closed".into())
            .await?;
        Ok(())
    }

    async fn publish_channel(&self, job_id: &str) -> Result<Channel> {
        let mut channel = self.inner.publish.lock().await;
        if !channel.status().connected() {
            if !self.inner.connection.status().connected() {
                return Err(Error::Disconnected {
                    job_id: job_id.to_string(),
                    reason: "connection closed".into(),
                });
            }
            let fresh = self.inner.connection.create_channel().await?;
            fresh
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            *channel = fresh;
        }
        Ok(channel.clone())
    }

    fn next_correlation_id(&self) -> String {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n}", self.inner.correlation_prefix)
    }
}

/// 12 hex digits that differ between processes and clients, so correlation
/// ids of two clients never collide in logs.
fn unique_prefix() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = Sha256::new();
    h.update(std::process::id().to_le_bytes());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    h.update(now.as_nanos().to_le_bytes());
    h.update(SEQ.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hex::encode(&h.finalize()[..6])
}

async fn reply_loop(mut consumer: Consumer, waiters: Arc<Waiters>) {
    let reason = loop {
        match consumer.next().await {
            Some(Ok(delivery)) => {
                hand_over(&waiters, &delivery);
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    break format!("cannot ack a reply: {e}");
                }
            }
            Some(Err(e)) => break e.to_string(),
            None => break "the reply consumer was cancelled".to_string(),
        }
    };
    tracing::debug!(%reason, "reply consumer stopped");
    waiters.close(reason);
}

fn hand_over(waiters: &Waiters, delivery: &Delivery) {
    let Some(correlation_id) = wire::reply_correlation_id(delivery) else {
        tracing::warn!(
            bytes = delivery.data.len(),
            "reply without a correlation id dropped"
        );
        return;
    };
    match waiters.take(&correlation_id) {
        Some(tx) => {
            let _ = tx.send(wire::decode_result(&correlation_id, &delivery.data));
        }
        // A duplicate (redelivered job) or a result that came after its timeout.
        None => tracing::debug!(%correlation_id, "reply for no waiting job dropped"),
    }
}

/// `Ok` for a result with status `ok`, else [`Error::JobFailed`] with its code.
pub fn check(result: JobResult) -> Result<JobResult> {
    if result.is_ok() {
        return Ok(result);
    }
    let (code, message) = match &result.error {
        Some(e) => (e.code, e.message.clone()),
        None => (
            vargpt_proto::ErrorCode::Unspecified,
            format!("status {}", result.status),
        ),
    };
    Err(Error::JobFailed {
        job_id: result.job_id,
        code,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vargpt_proto::{ErrorCode, ErrorInfo, ResultStatus};

    #[test]
    fn waiters_fail_when_closed_and_refuse_duplicates() {
        let w = Waiters::default();
        let mut rx = w.register("a", "c1").unwrap();
        assert!(matches!(
            w.register("b", "c1"),
            Err(Error::DuplicateCorrelationId(_))
        ));
        w.close("gone".into());
        assert!(matches!(rx.try_recv(), Ok(Err(Error::Disconnected { .. }))));
        assert!(matches!(
            w.register("c", "c2"),
            Err(Error::Disconnected { .. })
        ));
    }

    #[test]
    fn prefixes_differ() {
        assert_ne!(unique_prefix(), unique_prefix());
        assert_eq!(unique_prefix().len(), 12);
    }

    #[test]
    fn check_maps_error_results() {
        let ok = JobResult {
            job_id: "a".into(),
            status: ResultStatus::Ok,
            ..Default::default()
        };
        assert!(check(ok).is_ok());
        let failed = JobResult {
            job_id: "b".into(),
            status: ResultStatus::Error,
            error: Some(ErrorInfo::new(ErrorCode::InvalidImage, "not a png")),
            ..Default::default()
        };
        let err = check(failed).unwrap_err();
        assert!(
            matches!(
                err,
                Error::JobFailed {
                    code: ErrorCode::InvalidImage,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.job_id(), Some("b"));
    }
}
