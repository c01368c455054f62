//! The `JobResult` message and its parts.

use serde::{Deserialize, Serialize};

use crate::code::ErrorCode;
use crate::job::JobKind;
use crate::json::{is_false, is_zero};

proto_enum! {
    /// The `ResultStatus` enum of the `.proto`.
    #[derive(Default)]
    pub enum ResultStatus: "ResultStatus" {
        #[default]
        Unspecified = 0 => "status_unspecified",
        Ok = 1 => "ok",
        Error = 2 => "error",
    }
}

/// The answer to one job. Readers ignore unknown fields (newer workers may add some).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    pub version: u32,
    #[serde(alias = "job_id")]
    pub job_id: String,
    pub status: ResultStatus,
    #[serde(default)]
    pub kind: JobKind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageLocation>,
    #[serde(default)]
    pub timings: Timings,
    #[serde(default, alias = "model_id", skip_serializing_if = "String::is_empty")]
    pub model_id: String,
    #[serde(default, alias = "worker_id", skip_serializing_if = "String::is_empty")]
    pub worker_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(
        default,
        alias = "correlation_id",
        skip_serializing_if = "String::is_empty"
    )]
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    #[serde(
        default,
        alias = "finish_reason",
        skip_serializing_if = "String::is_empty"
    )]
    pub finish_reason: String,
    #[serde(default, alias = "tokens_generated", skip_serializing_if = "is_zero")]
    pub tokens_generated: u32,
}

/// Where a generated image was stored (proto `ImageLocation`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageLocation {
    pub bucket: String,
    pub key: String,
    pub url: String,
    pub width: u32,
    pub height: u32,
    pub sha256: String,
}

/// Seconds per phase (proto `Timings`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    #[serde(default, alias = "queue_wait_seconds")]
    pub queue_wait_seconds: f64,
    #[serde(default, alias = "preprocess_seconds")]
    pub preprocess_seconds: f64,
    #[serde(default, alias = "inference_seconds")]
    pub inference_seconds: f64,
    #[serde(default, alias = "upload_seconds")]
    pub upload_seconds: f64,
    #[serde(default, alias = "total_seconds")]
    pub total_seconds: f64,
}

/// Why a job failed (proto `Error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorInfo {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub retryable: bool,
}

impl ErrorInfo {
    /// The message is bounded and escaped ([`crate::bounded`]).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorInfo {
            code,
            message: crate::bounded::message(&message.into()),
            retryable: code.is_transient(),
        }
    }
}

impl JobResult {
    /// The JSON body to publish.
    pub fn to_json(&self) -> Vec<u8> {
        // Non-finite timings would make serde_json fail; they are clamped at
        // the source, so this never falls back in practice.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn is_ok(&self) -> bool {
        self.status == ResultStatus::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_result_round_trips() {
        let r = JobResult {
            version: 1,
            job_id: "a".into(),
            status: ResultStatus::Error,
            error: Some(ErrorInfo::new(ErrorCode::InvalidBase64, "bad")),
            ..Default::default()
        };
        let json = String::from_utf8(r.to_json()).unwrap();
        assert!(json.contains(r#""status":"error""#), "{json}");
        assert!(
            json.contains(r#""error":{"code":"invalid_base64","message":"bad"}"#),
            "{json}"
        );
        assert!(json.contains(r#""jobId":"a""#), "{json}");
        let back: JobResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}
