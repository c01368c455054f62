//! [`Client`]: publish jobs, await their results.
//!
//! Replies come back on a reply queue of the client's (see
//! [`ReplyQueue`](crate::ReplyQueue)): by default a private one, server-named, exclusive and
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
//!
//! When the connection is lost the client opens a new one: at once in the
//! background with a durable reply queue (jobs waiting for results keep
//! waiting), else on the next publish (a private queue dies with its
//! connection, so the jobs waiting then fail with [`Error::Disconnected`]).
//! A publish that fails on a broken connection is tried again, bounded by
//! [`RetryPolicy`]; a job may then reach the queue twice, which the contract
//! allows (the job id is the idempotency key).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::Consumer;
use sha2::{Digest, Sha256};
use vargpt_proto::json::Timestamp;
use vargpt_proto::{Job, JobResult};

use crate::config::{ClientConfig, RetryPolicy};
use crate::error::{Error, Result};
use crate::link::{self, Link};
use crate::waiters::{WaiterGuard, Waiters};
use crate::wire;

struct Inner {
    amqp_url: String,
    config: ClientConfig,
    waiters: Arc<Waiters>,
    correlation_prefix: String,
    counter: AtomicU64,
    link: tokio::sync::Mutex<Link>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The consumer task holds the reply channel; once it is gone the
        // connection closes itself when dropped.
        self.link.get_mut().stop();
    }
}

/// A connection to the broker that submits jobs and awaits their results.
/// Cheap to clone; clones share the connection and the reply queue.
///
/// A lost connection is re-opened (see the [module docs](self)); after
/// [`Client::close`] the client refuses new jobs.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects, declares the reply queue and starts consuming it. The first
    /// connection is tried once, so a wrong URL fails at once.
    pub async fn connect(amqp_url: &str, config: ClientConfig) -> Result<Client> {
        let correlation_prefix = unique_prefix();
        let (link, consumer) =
            link::open(amqp_url, &config, consumer_tag(&correlation_prefix, 0), 0).await?;
        let inner = Arc::new(Inner {
            amqp_url: amqp_url.to_string(),
            config,
            waiters: Arc::new(Waiters::default()),
            correlation_prefix,
            counter: AtomicU64::new(0),
            link: tokio::sync::Mutex::new(link),
        });
        let task = spawn_reply_loop(consumer, &inner, 0);
        inner.link.lock().await.reply_task = Some(task);
        Ok(Client { inner })
    }

    /// The queue results come back on (set as every submitted job's
    /// `replyTo`). A private queue gets a new name after a reconnect.
    pub async fn reply_queue(&self) -> String {
        self.inner.link.lock().await.reply_queue.clone()
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Submits one job and waits for its result, up to the configured
    /// timeout. An error *result* (status `error`) is an `Ok` here: the job
    /// was answered; see [`crate::check`] to turn it into an `Err`.
    ///
    /// The result comes back on this client's reply queue: an empty `replyTo`
    /// is set to it, and a job whose `replyTo` names another queue is refused
    /// (use [`Client::publish`] to have results delivered elsewhere). An
    /// empty `correlationId` is filled with a unique one.
    pub async fn submit(&self, job: Job) -> Result<JobResult> {
        self.submit_with_timeout(job, self.inner.config.timeout)
            .await
    }

    /// [`submit`](Self::submit) with its own timeout.
    pub async fn submit_with_timeout(&self, mut job: Job, timeout: Duration) -> Result<JobResult> {
        check_id(&job)?;
        if job.correlation_id.is_empty() {
            job.correlation_id = self.next_correlation_id();
        }
        if self.inner.config.set_deadline && job.deadline.is_none() {
            job.deadline = Some(Timestamp(time::OffsetDateTime::now_utc() + timeout));
        }
        let waiters = &*self.inner.waiters;
        let rx = waiters.register(&job.id, &job.correlation_id)?;
        let _guard = WaiterGuard {
            waiters,
            correlation_id: job.correlation_id.clone(),
        };
        self.publish_with_retry(&mut job, true).await?;

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

    /// Publishes a job (confirmed, retried like [`submit`](Self::submit))
    /// without waiting for its result, which goes where the job says: its
    /// `replyTo` queue, or with no `replyTo` the results exchange
    /// (`{prefix}.results`). Returns the job's correlation id (generated
    /// when empty). A deadline is not added.
    pub async fn publish(&self, mut job: Job) -> Result<String> {
        check_id(&job)?;
        if job.correlation_id.is_empty() {
            job.correlation_id = self.next_correlation_id();
        }
        self.publish_with_retry(&mut job, false).await?;
        Ok(job.correlation_id)
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

    /// Closes the connection; waiting submits fail with
    /// [`Error::Disconnected`] and new ones are refused.
    pub async fn close(&self) -> Result<()> {
        self.inner.waiters.close("client closed");
        let link = self.inner.link.lock().await;
        if link.connection.status().connected() {
            link.connection.close(200, "client closed".into()).await?;
        }
        Ok(())
    }

    /// One job to the job queue, tried again (after a pause, on a new
    /// channel or connection) while the failure is transient. With
    /// `to_us`, the job's `replyTo` must be empty or our reply queue.
    async fn publish_with_retry(&self, job: &mut Job, to_us: bool) -> Result<()> {
        let retry = &self.inner.config.retry;
        if to_us && !job.reply_to.is_empty() {
            let ours = self.reply_queue().await;
            if job.reply_to != ours {
                return Err(Error::InvalidJob {
                    job_id: job.id.clone(),
                    reason: format!(
                        "replyTo {:?} is not this client's reply queue {ours:?}: use \
                         Client::publish, or ClientConfig::reply_queue",
                        job.reply_to
                    ),
                });
            }
        }
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = self.publish_once(job, to_us).await;
            match outcome {
                Err(e) if e.is_transient() && tries < retry.max_attempts.max(1) => {
                    if let Some(reason) = self.inner.waiters.closed() {
                        return Err(Error::Disconnected {
                            job_id: job.id.clone(),
                            reason,
                        });
                    }
                    let pause = retry.backoff(tries);
                    tracing::warn!(job_id = %job.id, tries, ?pause, "publish failed, trying again: {e}");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    async fn publish_once(&self, job: &mut Job, to_us: bool) -> Result<()> {
        if let Some(reason) = self.inner.waiters.closed() {
            return Err(Error::Disconnected {
                job_id: job.id.clone(),
                reason,
            });
        }
        let (channel, reply_queue, generation) = self.current_link(&job.id).await?;
        if to_us {
            // A private reply queue is renamed by a reconnect: follow it.
            job.reply_to = reply_queue;
        }
        let props = wire::job_properties(&job.id, &job.correlation_id, &job.reply_to)?;
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
        if to_us && !config.reply_queue.survives_reconnect() {
            // Its result can only come to this link's private queue. Noted
            // under the link lock, so that a loss of the link either fails
            // this job later or is seen now (and the job is sent again).
            let link = self.inner.link.lock().await;
            if link.generation != generation || link.broken {
                return Err(Error::Disconnected {
                    job_id: job.id.clone(),
                    reason: "the reply queue was lost with the connection".into(),
                });
            }
            self.inner.waiters.mark(&job.correlation_id, generation);
        }
        Ok(())
    }

    /// The publishing channel and reply queue of a working link, opening a
    /// new link (one try) when the connection is gone.
    async fn current_link(&self, job_id: &str) -> Result<(lapin::Channel, String, u64)> {
        let mut link = self.inner.link.lock().await;
        if !link.connected() {
            if self.inner.config.retry.max_attempts <= 1 {
                return Err(Error::Disconnected {
                    job_id: job_id.to_string(),
                    reason: "connection lost (reconnecting is off)".into(),
                });
            }
            self.inner.reopen(&mut link).await?;
        }
        let channel = link.publish_channel().await?;
        Ok((channel, link.reply_queue.clone(), link.generation))
    }

    fn next_correlation_id(&self) -> String {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n}", self.inner.correlation_prefix)
    }
}

impl Inner {
    /// Replaces a broken link by a new one (one try).
    async fn reopen(self: &Arc<Self>, link: &mut Link) -> Result<()> {
        let generation = link.generation + 1;
        let tag = consumer_tag(&self.correlation_prefix, generation);
        let (mut fresh, consumer) =
            link::open(&self.amqp_url, &self.config, tag, generation).await?;
        fresh.reply_task = Some(spawn_reply_loop(consumer, self, generation));
        tracing::info!(generation, reply_queue = %fresh.reply_queue, "reconnected to the broker");
        let mut old = std::mem::replace(link, fresh);
        old.stop();
        if old.connection.status().connected() {
            // In the background: a half-dead connection may not answer.
            tokio::spawn(async move {
                let _ = old.connection.close(200, "replaced".into()).await;
            });
        }
        Ok(())
    }

    /// The reply consumer of link `generation` stopped: `reason`.
    async fn link_lost(self: Arc<Self>, generation: u64, reason: String) {
        if self.waiters.closed().is_some() {
            return;
        }
        tracing::warn!(generation, %reason, "lost the connection to the broker");
        {
            // Without its consumer the link is of no use, even if the
            // connection itself is still up (e.g. the queue was deleted).
            let mut link = self.link.lock().await;
            if link.generation == generation {
                link.broken = true;
            }
        }
        if !self.config.reply_queue.survives_reconnect() {
            // Results to a private queue died with it.
            self.waiters.fail_link(generation, &reason);
            return;
        }
        if self.config.retry.max_attempts <= 1 {
            self.waiters.fail_all(&reason);
            return;
        }
        // Results wait in the durable queue: consume it again, now.
        let retry: &RetryPolicy = &self.config.retry;
        for tries in 1..=retry.max_attempts {
            {
                let mut link = self.link.lock().await;
                if link.generation != generation || self.waiters.closed().is_some() {
                    return; // a publish reconnected first, or the client was closed
                }
                match self.reopen(&mut link).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(tries, "reconnect failed: {e}"),
                }
            }
            tokio::time::sleep(retry.backoff(tries)).await;
        }
        self.waiters.fail_all(&reason);
    }
}

fn check_id(job: &Job) -> Result<()> {
    if job.id.is_empty() {
        return Err(Error::InvalidJob {
            job_id: String::new(),
            reason: "id is required".into(),
        });
    }
    Ok(())
}

fn consumer_tag(prefix: &str, generation: u64) -> String {
    format!("vargpt-client-{prefix}-{generation}")
}

fn spawn_reply_loop(
    consumer: Consumer,
    inner: &Arc<Inner>,
    generation: u64,
) -> tokio::task::JoinHandle<()> {
    let waiters = Arc::clone(&inner.waiters);
    let durable = inner.config.reply_queue.survives_reconnect();
    let weak: Weak<Inner> = Arc::downgrade(inner);
    tokio::spawn(async move {
        let reason = reply_loop(consumer, &waiters, durable).await;
        tracing::debug!(%reason, generation, "reply consumer stopped");
        match weak.upgrade() {
            // Not in this task: the new link's drop of the old one aborts it.
            Some(inner) => {
                tokio::spawn(inner.link_lost(generation, reason));
            }
            None => waiters.close(&reason),
        }
    })
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

/// Hands each reply to its waiting job until the consumer stops; returns why.
async fn reply_loop(mut consumer: Consumer, waiters: &Waiters, durable: bool) -> String {
    loop {
        match consumer.next().await {
            Some(Ok(delivery)) => {
                hand_over(waiters, &delivery, durable);
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    return format!("cannot ack a reply: {e}");
                }
            }
            Some(Err(e)) => return e.to_string(),
            None => return "the reply consumer was cancelled".to_string(),
        }
    }
}

fn hand_over(waiters: &Waiters, delivery: &Delivery, durable: bool) {
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
        // A duplicate (redelivered job), a result that came after its
        // timeout, or on a durable queue one for an earlier process.
        None if durable => tracing::info!(%correlation_id, "reply for no waiting job dropped"),
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
