//! The job pipeline, shared by the AMQP and the embedded modes.
//!
//! A transport supplies a [`JobSource`] (messages with an [`Acker`]) and a
//! [`ResultSink`]; storage is an [`ImageStore`]. [`process`] turns a batch of
//! messages into [`Disposition`]s, [`settle`] carries each out in the one
//! order that keeps at-least-once (result out and confirmed, then ack), and
//! [`runner`] drives the loop with bounded concurrency and a drain on shutdown.

pub mod job_request;
pub mod preprocess;
pub mod process;
pub mod runner;
pub mod settle;

use std::any::Any;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use tracing::Span;
use vargpt_proto::{ErrorInfo, JobKind, JobResult};

pub use process::Pipeline;

/// One message as it came off the queue.
pub struct Envelope {
    pub body: Vec<u8>,
    pub meta: Meta,
    /// The job's tracing span; `job_id` is recorded once the body is parsed.
    pub span: Span,
    /// Transport-specific data the sink needs to republish the message
    /// unchanged (for AMQP: the original properties and headers).
    pub transport: Option<Arc<dyn Any + Send + Sync>>,
}

impl Envelope {
    pub fn new(body: Vec<u8>, meta: Meta, transport: Option<Arc<dyn Any + Send + Sync>>) -> Self {
        let span = tracing::info_span!(
            "job",
            job_id = tracing::field::Empty,
            message_id = tracing::field::Empty,
            attempt = meta.attempt,
        );
        if let Some(id) = &meta.message_id {
            span.record("message_id", id.as_str());
        }
        Envelope {
            body,
            meta,
            span,
            transport,
        }
    }
}

/// What the transport knows about a message besides its body.
#[derive(Debug, Clone)]
pub struct Meta {
    pub message_id: Option<String>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    /// Processing attempt, 1 for the first; the retry path increments it.
    pub attempt: u32,
    /// Earlier deliveries of this very message that ended without an ack
    /// (the worker died or lost its connection): RabbitMQ's `x-delivery-count`.
    pub previous_deliveries: u32,
    /// When the client published it, if it said so.
    pub enqueued_at: Option<SystemTime>,
    /// Delivered from the suspect queue: it was in flight when a worker died,
    /// so it runs alone and its deliveries count as its own crashes.
    pub isolated: bool,
    pub received_at: Instant,
    pub received_at_wall: SystemTime,
}

impl Meta {
    pub fn new() -> Self {
        Meta {
            message_id: None,
            reply_to: None,
            correlation_id: None,
            attempt: 1,
            previous_deliveries: 0,
            enqueued_at: None,
            isolated: false,
            received_at: Instant::now(),
            received_at_wall: SystemTime::now(),
        }
    }
}

impl Default for Meta {
    fn default() -> Self {
        Meta::new()
    }
}

/// A failure of the transport (broker connection, file I/O in embedded mode).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connection lost: {0}")]
    Disconnected(String),
    #[error("publish not confirmed: {0}")]
    NotConfirmed(String),
    /// The broker is up but will not take this result (nacked or unroutable
    /// after the bounded tries): retrying the job would not help.
    #[error("result undeliverable: {0}")]
    Undeliverable(String),
    #[error("{0}")]
    Other(String),
}

/// Settles one message with the transport.
#[async_trait]
pub trait Acker: Send + Sync {
    /// The message is done; it will not be delivered again.
    async fn ack(&self) -> Result<(), TransportError>;
    /// Give the message back to the queue for another delivery.
    async fn requeue(&self) -> Result<(), TransportError>;
}

/// A message and the handle that settles it.
pub struct Incoming {
    pub envelope: Envelope,
    pub acker: Box<dyn Acker>,
}

/// Where messages come from. `next` must be cancel-safe (the runner polls it
/// without waiting to fill a batch).
#[async_trait]
pub trait JobSource: Send {
    /// `Ok(None)`: no more messages will ever come (embedded mode's end).
    async fn next(&mut self) -> Result<Option<Incoming>, TransportError>;
}

/// Where a result should go.
#[derive(Debug, Clone, Default)]
pub struct Route {
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
}

/// Where results, dead letters and retries go. Each call returns only when
/// the message is safely stored (publisher confirm / file written).
#[async_trait]
pub trait ResultSink: Send + Sync {
    async fn publish(&self, result: &JobResult, route: &Route) -> Result<(), TransportError>;
    /// Keeps the original message, annotated with why it failed.
    async fn dead_letter(&self, env: &Envelope, error: &ErrorInfo) -> Result<(), TransportError>;
    /// Schedules the original message for `attempt` after the back-off for it.
    async fn retry(&self, env: &Envelope, attempt: u32) -> Result<(), TransportError>;
    /// Moves a message that was in flight when a worker died to the suspect
    /// queue, where it runs alone (transports without redelivery never
    /// see such a message).
    async fn quarantine(&self, env: &Envelope) -> Result<(), TransportError> {
        let _ = env;
        Err(TransportError::Other(
            "this transport has no suspect queue".into(),
        ))
    }
}

/// Object storage: input images in, generated images out.
#[async_trait]
pub trait ImageStore: Send + Sync {
    /// Reads an input object, refusing anything larger than `max_bytes`.
    async fn fetch(&self, bucket: &str, key: &str, max_bytes: usize)
        -> Result<Vec<u8>, StoreError>;
    /// Writes a generated PNG under `key` (overwriting: a key names one
    /// request, see `Pipeline::image_key`).
    async fn put_png(
        &self,
        key: &str,
        png: Vec<u8>,
        sha256_hex: &str,
    ) -> Result<StoredObject, StoreError>;
    /// Is the output location reachable and writable-looking?
    async fn check(&self) -> Result<(), StoreError>;
    /// Where outputs go, for logs and readiness messages.
    fn describe(&self) -> String;
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    pub bucket: String,
    pub key: String,
    pub url: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} does not exist")]
    NotFound(String),
    #[error("object is {size} bytes, limit {limit}")]
    TooLarge { size: u64, limit: usize },
    /// Worth retrying: timeouts, connection errors, 5xx, throttling.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Not worth retrying: access denied, bad request.
    #[error("storage refused the request: {0}")]
    Refused(String),
}

/// What to do with a message once it has been processed.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// Publish the result, then ack.
    Complete(Box<JobResult>, Route),
    /// Publish the error result, dead-letter the original, then ack.
    DeadLetter(Box<JobResult>, Route),
    /// Publish the error result, then ack: the message is not poison (its
    /// deadline passed), so it stays out of the dead-letter queue.
    Answer(Box<JobResult>, Route),
    /// Republish for another attempt, then ack (no result yet).
    Retry {
        attempt: u32,
        error: ErrorInfo,
        kind: JobKind,
    },
    /// In flight when a worker died: move to the suspect queue, then ack.
    Quarantine,
    /// The worker, not the job, failed (its engine died): no result, no
    /// ack; the message goes back when the dying worker's connection closes.
    Release,
}

/// The `kind` label of a message whose kind could not be read.
pub const UNKNOWN_KIND_LABEL: &str = "unknown";

pub fn kind_label(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Unspecified => UNKNOWN_KIND_LABEL,
        k => k.as_str(),
    }
}
