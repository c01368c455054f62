//! vargpt-client: submit jobs to the VARGPT worker fleet over RabbitMQ and
//! await their results, for backend services written in Rust.
//!
//! * Jobs and results are the contract types of [`vargpt_proto`] (re-exported
//!   as [`proto`]), sent as proto3 JSON.
//! * Every publish waits for the broker's confirm and is `mandatory`: a job
//!   the broker refuses ([`Error::Nacked`]) or cannot route, e.g. to a queue
//!   that does not exist ([`Error::Unroutable`]), fails at once instead of
//!   timing out.
//! * Results come back on a reply queue of the client's, private by default
//!   or durable and named by the caller ([`ReplyQueue`]), and are matched by
//!   correlation id (see [`client`] for why not direct reply-to).
//! * A lost connection is re-opened and failed publishes are tried again,
//!   bounded, with back-off ([`RetryPolicy`]).
//!
//! Submit one job and wait for its answer:
//!
//! ```no_run
//! use std::time::Duration;
//! use vargpt_client::proto::{ImageInput, Job, JobKind};
//! use vargpt_client::{Client, ClientConfig};
//!
//! # async fn demo() -> Result<(), vargpt_client::Error> {
//! let config = ClientConfig::with_queue("vargpt.jobs").timeout(Duration::from_secs(60));
//! let client = Client::connect("amqp://guest:guest@127.0.0.1:5672/%2f", config).await?;
//! let job = Job {
//!     id: "photo-42".into(),
//!     kind: JobKind::Caption,
//!     image: Some(ImageInput::Uri("s3://uploads/photo-42.jpg".into())),
//!     ..Default::default()
//! };
//! let result = vargpt_client::check(client.submit(job).await?)?;
//! println!("{}", result.text);
//! # Ok(()) }
//! ```
//!
//! Many jobs, at most `max_in_flight` at a time, outcomes as they arrive:
//!
//! ```no_run
//! use futures::StreamExt;
//! use vargpt_client::proto::{Job, JobKind};
//! use vargpt_client::{Client, ClientConfig, Error};
//!
//! # async fn demo(client: Client) {
//! let jobs = (0..100).map(|i| Job {
//!     id: format!("prompt-{i}"),
//!     kind: JobKind::GenerateImage,
//!     prompt: format!("a watercolor of lighthouse number {i}"),
//!     ..Default::default()
//! });
//! let mut results = client.submit_many(jobs);
//! while let Some(outcome) = results.next().await {
//!     match outcome {
//!         Ok(r) if r.is_ok() => println!("{}: {:?}", r.job_id, r.image.map(|i| i.url)),
//!         Ok(r) => eprintln!("{} failed: {:?}", r.job_id, r.error),
//!         Err(Error::Timeout { job_id, .. }) => eprintln!("{job_id}: no answer in time"),
//!         Err(e) => eprintln!("{e}"),
//!     }
//! }
//! # }
//! ```
//!
//! Errors are typed, so a caller can tell a slow fleet from a broken setup:
//!
//! ```
//! use std::time::Duration;
//! use vargpt_client::Error;
//!
//! fn retryable(e: &Error) -> bool {
//!     matches!(e, Error::Timeout { .. } | Error::Nacked { .. } | Error::Disconnected { .. })
//! }
//! let e = Error::Timeout { job_id: "a".into(), timeout: Duration::from_secs(1) };
//! assert!(retryable(&e));
//! assert_eq!(e.job_id(), Some("a"));
//! ```

pub mod client;
pub mod config;
pub mod error;
mod link;
#[cfg(feature = "testing")]
pub mod testing;
mod waiters;
pub mod wire;

pub use client::{check, Client};
pub use config::{ClientConfig, ReplyQueue, RetryPolicy, DEFAULT_JOB_QUEUE};
pub use error::{Error, Result};

/// The contract types (`Job`, `JobResult`, …).
pub use vargpt_proto as proto;
