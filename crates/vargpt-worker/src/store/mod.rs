//! Object storage behind [`crate::pipeline::ImageStore`]: S3 for the service,
//! a local directory for the embedded mode.

pub mod local;
pub mod s3;

pub use local::LocalStore;
pub use s3::{S3Settings, S3Store};
