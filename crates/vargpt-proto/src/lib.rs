//! vargpt-proto: the Rust side of `proto/vargpt/v1/jobs.proto`.
//!
//! * [`Job`] / [`JobResult`] and friends: serde types that read and write the
//!   proto3 JSON mapping (lowerCamelCase out, snake_case accepted in, enums as
//!   strings, 64-bit integers as strings).
//! * [`validate`]: turns raw message bytes into a [`ValidJob`] under
//!   [`Limits`], or a typed rejection carrying an [`ErrorCode`].
//! * [`schema`]: field names and numbers of every message, checked against the
//!   `.proto` file by `tests/proto_sync.rs` so the two cannot drift.

#[macro_use]
mod enum_macro;

pub mod bounded;
pub mod code;
pub mod env_names;
pub mod exit_code;
pub mod job;
pub mod json;
pub mod limits;
pub mod result;
pub mod schema;
pub mod validate;
pub mod wire;

pub use code::ErrorCode;
pub use job::{ImageInput, Job, JobKind, SamplingParams};
pub use limits::Limits;
pub use result::{ErrorInfo, ImageLocation, JobResult, Provenance, ResultStatus, Timings};
pub use validate::{
    check_id, parse_job, ImageSource, JobHints, Rejected, ValidJob, ValidationError,
};

/// The schema version this crate reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The content type of every message on the wire.
pub const CONTENT_TYPE: &str = "application/json";

/// Longest job id the contract allows (see [`check_id`]).
pub const JOB_ID_MAX_LEN: usize = limits::ranges::ID_MAX_LEN;
