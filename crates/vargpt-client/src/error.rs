//! What can go wrong between a job and its result.

use std::time::Duration;

use vargpt_proto::ErrorCode;

/// Errors of [`crate::Client`] and of the [`crate::wire`] helpers. Each
/// variant that concerns one job names it, so a caller of
/// [`crate::Client::submit_many`] knows which job an error belongs to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker could not be reached or refused the login.
    #[error("cannot connect to the broker at {url}: {source}")]
    Connect {
        /// The AMQP URL with any password removed.
        url: String,
        #[source]
        source: lapin::Error,
    },

    /// Any other AMQP failure (channel or connection closed, protocol error).
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),

    /// No result arrived within the timeout. The job may still run: a late
    /// result is dropped.
    #[error("job {job_id}: no result within {timeout:?}")]
    Timeout { job_id: String, timeout: Duration },

    /// The broker refused to take the message (publisher confirm `nack`),
    /// e.g. a queue length limit with `reject-publish` overflow.
    #[error("job {job_id}: the broker refused the message (nack)")]
    Nacked { job_id: String },

    /// The message was returned because nothing is bound to its routing key:
    /// usually a job queue that does not exist.
    #[error("job {job_id}: no queue for routing key {routing_key:?} on exchange {exchange:?} ({reply_code} {reply_text})")]
    Unroutable {
        job_id: String,
        exchange: String,
        routing_key: String,
        reply_code: u16,
        reply_text: String,
    },

    /// A reply arrived but its body is not a `JobResult`.
    #[error("result for correlation id {correlation_id:?} is not a valid JobResult: {source}")]
    Decode {
        correlation_id: String,
        #[source]
        source: serde_json::Error,
    },

    /// The connection or the reply consumer went away before the result came.
    #[error("job {job_id}: the connection to the broker was lost ({reason})")]
    Disconnected { job_id: String, reason: String },

    /// The job cannot be sent as it is (empty id, a field too long for AMQP, …).
    #[error("job {job_id:?}: {reason}")]
    InvalidJob { job_id: String, reason: String },

    /// The reply queue cannot be declared (a durable one that exists with
    /// other arguments) or does not exist (an existing one).
    #[error("reply queue {queue:?}: {source}")]
    ReplyQueue {
        queue: String,
        #[source]
        source: lapin::Error,
    },

    /// The [`crate::ClientConfig`] cannot work (e.g. a durable reply queue without a name).
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),

    /// A job with this correlation id is already waiting for its result.
    #[error("correlation id {0:?} is already in flight")]
    DuplicateCorrelationId(String),

    /// The worker answered with an error result (only from [`crate::check`]).
    #[error("job {job_id} failed: {code}: {message}")]
    JobFailed {
        job_id: String,
        code: ErrorCode,
        message: String,
    },
}

impl Error {
    /// The job this error is about, when it is about one.
    pub fn job_id(&self) -> Option<&str> {
        match self {
            Error::Timeout { job_id, .. }
            | Error::Nacked { job_id }
            | Error::Unroutable { job_id, .. }
            | Error::Disconnected { job_id, .. }
            | Error::InvalidJob { job_id, .. }
            | Error::JobFailed { job_id, .. } => Some(job_id),
            _ => None,
        }
    }
}

impl Error {
    /// Whether trying again later may work: the broker was unreachable or
    /// the connection (or a channel of it) broke. A refused job, a missing
    /// queue or a bad job is not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Disconnected { .. } => true,
            Error::Broker(e) => transient_amqp(e),
            _ => false,
        }
    }
}

/// I/O errors, lost heartbeats, closed connections or channels, and
/// connection-level (hard) protocol errors such as a forced close; a
/// channel-level (soft) error such as "no such exchange" would only repeat.
fn transient_amqp(e: &lapin::Error) -> bool {
    use lapin::ErrorKind as K;
    match e.kind() {
        K::IOError(_)
        | K::MissingHeartbeatError
        | K::InvalidChannel(_)
        | K::InvalidChannelState(..)
        | K::InvalidConnectionState(_) => true,
        K::ProtocolError(_) => e.is_amqp_hard_error(),
        _ => false,
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `amqp://user:secret@host/vhost` → `amqp://user@host/vhost`, for messages.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://host"), "amqp://host");
        assert_eq!(redact_url("nonsense"), "nonsense");
        assert_eq!(redact_url("amqps://u:p@w@h/v"), "amqps://u@h/v");
    }

    #[test]
    fn only_connection_trouble_is_transient() {
        let io = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(Error::Broker(io).is_transient());
        assert!(Error::Disconnected {
            job_id: "a".into(),
            reason: "x".into()
        }
        .is_transient());
        assert!(!Error::Nacked { job_id: "a".into() }.is_transient());
        assert!(!Error::InvalidConfig("x".into()).is_transient());
    }
}
