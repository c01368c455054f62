//! The wire vocabulary: every queue, exchange, routing key and header name the
//! worker, the client and the dispatcher agree on. Written once here so the
//! crates cannot drift apart (they once did: the client stamped
//! `x-enqueued-at-ms` while the worker read `x-vargpt-enqueued-at-ms`).
//!
//! ```text
//! client ──► (default exchange) ──► {p}.jobs     (DLX {p}.dlx, key "dead")
//!   result ──► reply_to queue, or ──► {p}.results exchange, key "{kind}.{status}"
//!                                       ──► {p}.results queue (bound with "#")
//!   bad job ──► {p}.dlx ── "dead" ──► {p}.dead
//!   transient ─► {p}.jobs.retry.{ms}ms.quorum ──► back to {p}.jobs
//!   suspect ──► {p}.jobs.suspect (in flight when a worker died; run alone)
//! ```

/// The queue prefix every binary uses unless told otherwise
/// (`--queue-prefix` / `VARGPT_QUEUE_PREFIX`).
pub const DEFAULT_PREFIX: &str = "vargpt";

/// The jobs queue of [`DEFAULT_PREFIX`], for `const` contexts (checked
/// against [`Names::jobs_queue`] by a test).
pub const DEFAULT_JOBS_QUEUE: &str = "vargpt.jobs";

/// Routing key of dead letters on the dead-letter exchange.
pub const DEAD_ROUTING_KEY: &str = "dead";

/// Binding key of the results queue on the results exchange: every result.
pub const RESULTS_BINDING_KEY: &str = "#";

/// Header names. The `x-vargpt-` ones are ours; the others are set by RabbitMQ.
pub mod headers {
    /// Publish time in Unix milliseconds, set by clients (and kept across
    /// retries) for an exact queue wait; the AMQP `timestamp` has seconds only.
    pub const ENQUEUED_AT_MS: &str = "x-vargpt-enqueued-at-ms";
    /// What clients before the shared vocabulary sent instead of
    /// [`ENQUEUED_AT_MS`]; readers still accept it.
    pub const LEGACY_ENQUEUED_AT_MS: &str = "x-enqueued-at-ms";
    /// Processing attempt (1 when absent); the retry path increments it.
    pub const ATTEMPT: &str = "x-vargpt-attempt";
    /// On dead letters: why the job was given up, and by whom, when.
    pub const ERROR_CODE: &str = "x-vargpt-error-code";
    pub const ERROR_MESSAGE: &str = "x-vargpt-error-message";
    pub const WORKER_ID: &str = "x-vargpt-worker-id";
    pub const FAILED_AT_MS: &str = "x-vargpt-failed-at-ms";
    /// On results: the job id and the status, to filter without parsing.
    pub const JOB_ID: &str = "x-vargpt-job-id";
    pub const STATUS: &str = "x-vargpt-status";
    /// Set by quorum queues: earlier deliveries that were not acked.
    pub const DELIVERY_COUNT: &str = "x-delivery-count";
    /// RabbitMQ 4.x: earlier acquisitions of any kind.
    pub const ACQUIRED_COUNT: &str = "x-acquired-count";

    /// Every header name above, for tests and for tools that strip ours.
    pub const ALL: &[&str] = &[
        ENQUEUED_AT_MS,
        LEGACY_ENQUEUED_AT_MS,
        ATTEMPT,
        ERROR_CODE,
        ERROR_MESSAGE,
        WORKER_ID,
        FAILED_AT_MS,
        JOB_ID,
        STATUS,
        DELIVERY_COUNT,
        ACQUIRED_COUNT,
    ];
}

pub use headers::{ENQUEUED_AT_MS, LEGACY_ENQUEUED_AT_MS};

/// Whether `prefix` is usable in queue names: non-empty, `[A-Za-z0-9._-]+`.
pub fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The names derived from one queue prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Names {
    prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Names::new(DEFAULT_PREFIX)
    }
}

impl Names {
    pub fn new(prefix: impl Into<String>) -> Self {
        Names {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The queue workers consume jobs from.
    pub fn jobs_queue(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// The topic exchange results go to when they have no reply queue.
    pub fn results_exchange(&self) -> String {
        format!("{}.results", self.prefix)
    }

    /// The queue bound to [`Self::results_exchange`] with `#`.
    pub fn results_queue(&self) -> String {
        format!("{}.results", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// A dispatcher's durable reply queue, `{p}.dispatch.{tag}`.
    pub fn dispatch_reply_queue(&self, tag: &str) -> String {
        format!("{}.dispatch.{tag}", self.prefix)
    }

    /// The delay queue of a retry after `delay_ms` milliseconds. Queue
    /// arguments are part of a queue's identity, so what they set is in the
    /// name: the delay, and `quorum` (before it these queues were classic).
    pub fn retry_queue(&self, delay_ms: u128) -> String {
        format!("{}.jobs.retry.{delay_ms}ms.quorum", self.prefix)
    }

    /// Jobs that were in flight when a worker died, run one at a time.
    pub fn suspect_queue(&self) -> String {
        format!("{}.jobs.suspect", self.prefix)
    }
}

/// Routing key of a result on the results exchange: `{kind}.{status}`, both
/// as their proto value names (e.g. `caption.ok`).
pub fn result_routing_key(kind: &str, status: &str) -> String {
    format!("{kind}.{status}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let n = Names::new("t");
        assert_eq!(n.jobs_queue(), "t.jobs");
        assert_eq!(n.results_exchange(), "t.results");
        assert_eq!(n.results_queue(), "t.results");
        assert_eq!(n.dead_letter_exchange(), "t.dlx");
        assert_eq!(n.dead_queue(), "t.dead");
        assert_eq!(n.retry_queue(250), "t.jobs.retry.250ms.quorum");
        assert_eq!(n.suspect_queue(), "t.jobs.suspect");
        assert_eq!(n.dispatch_reply_queue("ab12"), "t.dispatch.ab12");
        assert_eq!(Names::default().jobs_queue(), "vargpt.jobs");
        assert_eq!(Names::default().jobs_queue(), DEFAULT_JOBS_QUEUE);
        assert_eq!(Names::default().prefix(), DEFAULT_PREFIX);
    }

    #[test]
    fn routing_keys() {
        assert_eq!(result_routing_key("caption", "ok"), "caption.ok");
        assert_eq!(DEAD_ROUTING_KEY, "dead");
    }

    #[test]
    fn enqueue_header_is_the_one_the_worker_reads() {
        assert_eq!(ENQUEUED_AT_MS, "x-vargpt-enqueued-at-ms");
        assert_eq!(LEGACY_ENQUEUED_AT_MS, "x-enqueued-at-ms");
    }

    #[test]
    fn header_names_are_distinct_lowercase_and_short() {
        let mut seen = std::collections::HashSet::new();
        for h in headers::ALL {
            assert!(seen.insert(*h), "{h} twice");
            assert!(h.starts_with("x-"), "{h}");
            assert_eq!(h.to_ascii_lowercase(), *h);
            // AMQP field names are short strings.
            assert!(h.len() <= 255);
        }
        assert_eq!(
            headers::ALL
                .iter()
                .filter(|h| h.starts_with("x-vargpt-"))
                .count(),
            8
        );
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(valid_prefix("vargpt"));
        assert!(valid_prefix("a.b-c_1"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("a b"));
        assert!(!valid_prefix("ä"));
    }
}
