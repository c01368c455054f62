//! vargpt-dispatcher: fans a dataset out as VARGPT jobs over RabbitMQ and
//! collects one result per job into a JSONL file.
//!
//! The data path, one module per concern:
//! [`input`] (folder / [`manifest`] / S3 listing) → [`spec`] ([`ids`]) →
//! [`prepare`] (inline or [`s3`] upload) → [`routing`] → [`run`](mod@run) (publish
//! with confirms, bounded in flight, results by correlation id, re-send on
//! timeout; [`broker`] for the reply queue) → [`ledger`] (the output file,
//! resume; [`sources`] names each line's item) → [`summary`], and with
//! `--table` a CSV [`table`].
//!
//! The binary is a thin shell around [`run::run`]; tests and other tools can
//! call it directly with a [`run::RunConfig`].

pub mod broker;
pub mod cli;
pub mod env_compat;
pub mod exit;
pub mod ids;
pub mod input;
pub mod ledger;
pub mod manifest;
pub mod prepare;
pub mod progress;
pub mod routing;
pub mod run;
pub mod s3;
pub mod sources;
pub mod spec;
pub mod summary;
pub mod table;

pub use run::{run, Report, RunConfig};
