//! Settings of a [`crate::Client`].

use std::time::Duration;

/// The job queue workers consume by default (`VARGPT_JOB_QUEUE` of the worker).
pub const DEFAULT_JOB_QUEUE: &str = "vargpt.jobs";

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

    /// The same settings with another in-flight limit for `submit_many` (at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
}
