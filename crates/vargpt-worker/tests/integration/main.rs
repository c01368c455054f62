//! Integration tests against a real RabbitMQ and a real S3 server (s3s-fs),
//! with the worker as a child process. Services come from the shared helper
//! crate `vargpt-integration-tests` (`tests/` at the repository root).
//!
//! Tests marked "real model" run the tiny reference model; the others use
//! the fake backend because they need fault injection (aborts, slow jobs).

mod common;

mod bad_input;
mod batching;
mod broker_restart;
mod cluster;
mod crash;
mod embedded;
mod engine_dead;
mod faults;
mod happy_path;
mod hostile;
mod observability;
mod poison;
mod queue_wait;
mod reconnect;
mod retry;
mod secrets;
mod sigterm;
mod tls;
