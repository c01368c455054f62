//! Every way a job can fail inside the worker, mapped to the contract's
//! [`ErrorCode`] in one place.

use vargpt_engine::EngineError;
use vargpt_proto::{ErrorCode, ErrorInfo, ValidationError};

use crate::pipeline::StoreError;

/// A failed job: a stable code and a message for humans. Messages never carry
/// credentials (store and broker errors are reduced to their kind).
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    /// The message is bounded and escaped: it may quote the job's input.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: vargpt_proto::bounded::message(&message.into()),
        }
    }

    pub fn info(&self) -> ErrorInfo {
        ErrorInfo::new(self.code, self.message.clone())
    }
}

impl From<ValidationError> for Failure {
    fn from(e: ValidationError) -> Self {
        Failure {
            code: e.code,
            message: e.message,
        }
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::InvalidImage(_) => ErrorCode::InvalidImage,
            EngineError::PromptTooLong { .. } => ErrorCode::PromptTooLong,
            EngineError::InvalidRequest(_) => ErrorCode::InvalidField,
            // A load error at run time means the engine is broken, not the job.
            EngineError::Load(_) => ErrorCode::Internal,
            EngineError::Inference(_) => ErrorCode::InferenceFailed,
            // The engine's own fault, never the client's.
            EngineError::Internal(_) => ErrorCode::Internal,
            EngineError::Timeout { .. } => ErrorCode::JobTimeout,
        };
        Failure::new(code, e.to_string())
    }
}

/// Input-image fetch errors (output uploads map to `storage_unavailable`
/// or `storage_error` in the pipeline).
pub fn fetch_failure(bucket: &str, key: &str, e: StoreError) -> Failure {
    match e {
        StoreError::NotFound(_) => Failure::new(
            ErrorCode::ImageNotFound,
            format!("s3://{bucket}/{key} does not exist"),
        ),
        StoreError::TooLarge { size, limit } => Failure::new(
            ErrorCode::ImageTooLarge,
            format!("s3://{bucket}/{key} is {size} bytes, limit {limit}"),
        ),
        StoreError::Unavailable(m) => Failure::new(ErrorCode::StorageUnavailable, m),
        StoreError::Refused(m) => Failure::new(ErrorCode::StorageError, m),
    }
}

pub fn upload_failure(e: StoreError) -> Failure {
    match e {
        StoreError::Refused(m) => {
            Failure::new(ErrorCode::StorageError, format!("upload refused: {m}"))
        }
        other => Failure::new(
            ErrorCode::StorageUnavailable,
            format!("upload failed: {other}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_codes() {
        let f: Failure = EngineError::PromptTooLong {
            tokens: 10,
            limit: 5,
        }
        .into();
        assert_eq!(f.code, ErrorCode::PromptTooLong);
        assert!(f.message.contains("10"));
        let f: Failure = EngineError::Internal("rank panicked".into()).into();
        assert_eq!(f.code, ErrorCode::Internal);
        let f: Failure = EngineError::Timeout {
            limit: std::time::Duration::from_secs(5),
        }
        .into();
        assert_eq!(f.code, ErrorCode::JobTimeout);
        let f: Failure = EngineError::InvalidImage("x".into()).into();
        assert_eq!(f.code, ErrorCode::InvalidImage);
        assert_eq!(
            fetch_failure("b", "k", StoreError::NotFound("k".into())).code,
            ErrorCode::ImageNotFound
        );
        assert!(upload_failure(StoreError::Unavailable("down".into()))
            .code
            .is_transient());
    }
}
