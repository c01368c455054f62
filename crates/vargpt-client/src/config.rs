//! Settings of a [`crate::Client`].

use std::time::Duration;

/// The job queue workers consume by default: `{prefix}.jobs` with the
/// default prefix (`--queue-prefix vargpt` of the worker).
pub const DEFAULT_JOB_QUEUE: &str = vargpt_proto::wire::DEFAULT_JOBS_QUEUE;

/// Where results come back to a [`crate::Client`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ReplyQueue {
    /// A server-named queue, exclusive to the connection and deleted with
    /// it. Results still on their way when the connection drops are lost, so
    /// the jobs waiting then fail with [`crate::Error::Disconnected`].
    #[default]
    Private,
    /// A durable queue of this name, declared by the client (durable, no
    /// arguments; idempotent). Results that arrive while the client is
    /// reconnecting wait there, so waiting jobs survive a connection loss.
    /// Consumed exclusively: one client per queue.
    Durable(String),
    /// A queue the caller declared (any type or arguments); only checked to
    /// exist (passive declare), then consumed as [`ReplyQueue::Durable`].
    Existing(String),
}

impl ReplyQueue {
    /// Whether results survive the connection (the queue is not exclusive).
    pub fn survives_reconnect(&self) -> bool {
        !matches!(self, ReplyQueue::Private)
    }
}

/// Reconnects and publish retries: bounded, with exponential back-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries of one publish (or one reconnect), the first included; 1 turns
    /// reconnecting off.
    pub max_attempts: u32,
    /// Pause before the second try; doubled each time up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// No reconnect, no retry.
    pub fn never() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        }
    }

    /// The pause after failed try `n` (1-based).
    pub fn backoff(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(30);
        self.initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }
}

/// How a [`crate::Client`] publishes and waits.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Routing key jobs are published with: the job queue's name when
    /// [`exchange`](Self::exchange) is the default exchange.
    pub job_queue: String,
    /// Exchange jobs are published to; `""` is the default exchange, which
    /// routes by queue name.
    pub exchange: String,
    /// How long [`crate::Client::submit`] waits for a result after the broker
    /// confirmed the job.
    pub timeout: Duration,
    /// Stamp jobs that have no `deadline` with `now + timeout`, so that a
    /// worker does not spend time on a job nobody waits for any more (it
    /// answers `deadline_exceeded` instead).
    pub set_deadline: bool,
    /// Jobs in flight at once in [`crate::Client::submit_many`].
    pub max_in_flight: usize,
    /// Replies the broker pushes before they are acknowledged (basic.qos of
    /// the reply consumer).
    pub reply_prefetch: u16,
    /// Shown in the RabbitMQ management UI as the connection name.
    pub connection_name: String,
    /// Where results come back.
    pub reply_queue: ReplyQueue,
    /// Reconnecting after a lost connection and re-trying publishes.
    pub retry: RetryPolicy,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            job_queue: DEFAULT_JOB_QUEUE.to_string(),
            exchange: String::new(),
            timeout: Duration::from_secs(300),
            set_deadline: true,
            max_in_flight: 64,
            reply_prefetch: 256,
            connection_name: "vargpt-client".to_string(),
            reply_queue: ReplyQueue::Private,
            retry: RetryPolicy::default(),
        }
    }
}

impl ClientConfig {
    /// The defaults with another job queue.
    pub fn with_queue(queue: impl Into<String>) -> Self {
        ClientConfig {
            job_queue: queue.into(),
            ..Default::default()
        }
    }

    /// The same settings with another timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The job queue of workers started with `--queue-prefix prefix`.
    pub fn with_prefix(prefix: &str) -> Self {
        Self::with_queue(vargpt_proto::wire::Names::new(prefix).jobs_queue())
    }

    /// The same settings with results coming back on `reply_queue`.
    pub fn reply_queue(mut self, reply_queue: ReplyQueue) -> Self {
        self.reply_queue = reply_queue;
        self
    }

    /// The same settings with another reconnect / retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The same settings with another in-flight limit for `submit_many` (at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_queue_is_the_worker_default() {
        assert_eq!(
            DEFAULT_JOB_QUEUE,
            vargpt_proto::wire::Names::default().jobs_queue()
        );
        assert_eq!(ClientConfig::with_prefix("x").job_queue, "x.jobs");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(350));
        assert_eq!(p.backoff(99), Duration::from_millis(350));
        assert_eq!(RetryPolicy::never().max_attempts, 1);
    }

    #[test]
    fn only_private_queues_die_with_the_connection() {
        assert!(!ReplyQueue::Private.survives_reconnect());
        assert!(ReplyQueue::Durable("r".into()).survives_reconnect());
        assert!(ReplyQueue::Existing("r".into()).survives_reconnect());
    }
}
