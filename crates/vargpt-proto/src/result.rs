//! The `JobResult` message and its parts.

use serde::{Deserialize, Serialize};

use crate::code::ErrorCode;
use crate::job::{JobKind, SamplingParams};
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
    /// Set on successful results: what produced them, enough to reproduce them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

/// Which model, numerics and worker build produced a result, with the seed
/// and the effective sampling parameters (proto `Provenance`). Resubmitting
/// with `seed` and `params` to the same model revision, dtype and device
/// reproduces the result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    #[serde(default, alias = "model_id")]
    pub model_id: String,
    /// The hub commit sha, or `sha256:<hex>` of the model directory's config
    /// and weight headers when loaded from a directory.
    #[serde(default, alias = "model_revision")]
    pub model_revision: String,
    #[serde(default)]
    pub dtype: String,
    #[serde(default)]
    pub device: String,
    #[serde(default, alias = "tensor_parallel")]
    pub tensor_parallel: u32,
    /// `<crate version>+<git commit>`.
    #[serde(default, alias = "worker_version")]
    pub worker_version: String,
    /// The seed actually used (a JSON string, as every uint64).
    #[serde(default, with = "u64_string")]
    pub seed: u64,
    /// The effective sampling parameters: every field set, defaults filled in.
    #[serde(default)]
    pub params: SamplingParams,
}

/// `uint64` (not optional): a JSON string out, a string or a number in.
mod u64_string {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Ok(crate::json::opt_u64::deserialize(d)?.unwrap_or(0))
    }
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
        assert!(!json.contains("provenance"), "{json}");
    }

    fn provenance() -> Provenance {
        Provenance {
            model_id: "owner/model".into(),
            model_revision: "0123abcd".into(),
            dtype: "bf16".into(),
            device: "cuda:0".into(),
            tensor_parallel: 2,
            worker_version: "0.1.0+abc1234".into(),
            seed: u64::MAX,
            params: SamplingParams {
                max_new_tokens: Some(512),
                greedy: Some(true),
                seed: Some(u64::MAX),
                ..Default::default()
            },
        }
    }

    #[test]
    fn provenance_round_trips_with_the_seed_as_a_string() {
        let r = JobResult {
            version: 1,
            job_id: "a".into(),
            status: ResultStatus::Ok,
            provenance: Some(provenance()),
            ..Default::default()
        };
        let json = String::from_utf8(r.to_json()).unwrap();
        assert!(
            json.contains(r#""seed":"18446744073709551615","params""#),
            "{json}"
        );
        assert!(json.contains(r#""modelRevision":"0123abcd""#), "{json}");
        assert!(json.contains(r#""tensorParallel":2"#), "{json}");
        let back: JobResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn provenance_reads_snake_case_and_numeric_seeds() {
        let p: Provenance = serde_json::from_str(
            r#"{"model_id":"m","model_revision":"r","tensor_parallel":1,
                "worker_version":"v","seed":7,"params":{"max_new_tokens":3}}"#,
        )
        .unwrap();
        assert_eq!(p.model_id, "m");
        assert_eq!(p.model_revision, "r");
        assert_eq!(p.worker_version, "v");
        assert_eq!(p.seed, 7);
        assert_eq!(p.params.max_new_tokens, Some(3));
        assert!(serde_json::from_str::<Provenance>(r#"{"seed":"-1"}"#).is_err());
    }
}
