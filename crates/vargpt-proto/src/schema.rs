//! The shape of each message as the `.proto` declares it: proto field name
//! and number. `tests/proto_sync.rs` parses `proto/vargpt/v1/jobs.proto` and
//! compares it with these tables, and checks that serde writes exactly the
//! lowerCamelCase of these names, so the file, the tables and the types agree.

use crate::{
    ErrorInfo, ImageInput, ImageLocation, Job, JobResult, Provenance, SamplingParams, Timings,
};

/// A message type of the contract.
pub trait ProtoMessage {
    /// The message name in the `.proto`.
    const PROTO_NAME: &'static str;
    /// (proto field name, field number), in declaration order.
    const FIELDS: &'static [(&'static str, u32)];
}

/// An enum type of the contract.
pub trait ProtoEnum {
    const PROTO_NAME: &'static str;
    /// (value name, number), in declaration order.
    fn values() -> Vec<(&'static str, i32)>;
}

/// proto3 JSON field name: lowerCamelCase of the proto field name.
pub fn json_name(proto_name: &str) -> String {
    let mut out = String::with_capacity(proto_name.len());
    let mut upper = false;
    for c in proto_name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

impl ProtoMessage for Job {
    const PROTO_NAME: &'static str = "Job";
    const FIELDS: &'static [(&'static str, u32)] = &[
        ("version", 1),
        ("id", 2),
        ("kind", 3),
        ("prompt", 4),
        ("image", 5),
        ("params", 6),
        ("reply_to", 7),
        ("correlation_id", 8),
        ("deadline", 9),
    ];
}

impl ProtoMessage for ImageInput {
    const PROTO_NAME: &'static str = "ImageInput";
    const FIELDS: &'static [(&'static str, u32)] = &[("data", 1), ("uri", 2)];
}

impl ProtoMessage for SamplingParams {
    const PROTO_NAME: &'static str = "SamplingParams";
    const FIELDS: &'static [(&'static str, u32)] = &[
        ("max_new_tokens", 1),
        ("greedy", 2),
        ("temperature", 3),
        ("top_k", 4),
        ("top_p", 5),
        ("repetition_penalty", 6),
        ("seed", 7),
        ("cfg_scale", 8),
        ("image_top_k", 9),
        ("image_top_p", 10),
        ("allow_image", 11),
    ];
}

impl ProtoMessage for JobResult {
    const PROTO_NAME: &'static str = "JobResult";
    const FIELDS: &'static [(&'static str, u32)] = &[
        ("version", 1),
        ("job_id", 2),
        ("status", 3),
        ("kind", 4),
        ("text", 5),
        ("image", 6),
        ("timings", 7),
        ("model_id", 8),
        ("worker_id", 9),
        ("error", 10),
        ("correlation_id", 11),
        ("attempt", 12),
        ("finish_reason", 13),
        ("tokens_generated", 14),
        ("provenance", 15),
    ];
}

impl ProtoMessage for Provenance {
    const PROTO_NAME: &'static str = "Provenance";
    const FIELDS: &'static [(&'static str, u32)] = &[
        ("model_id", 1),
        ("model_revision", 2),
        ("dtype", 3),
        ("device", 4),
        ("tensor_parallel", 5),
        ("worker_version", 6),
        ("seed", 7),
        ("params", 8),
    ];
}

impl ProtoMessage for ImageLocation {
    const PROTO_NAME: &'static str = "ImageLocation";
    const FIELDS: &'static [(&'static str, u32)] = &[
        ("bucket", 1),
        ("key", 2),
        ("url", 3),
        ("width", 4),
        ("height", 5),
        ("sha256", 6),
    ];
}

impl ProtoMessage for Timings {
    const PROTO_NAME: &'static str = "Timings";
    const FIELDS: &'static [(&'static str, u32)] = &[
        ("queue_wait_seconds", 1),
        ("preprocess_seconds", 2),
        ("inference_seconds", 3),
        ("upload_seconds", 4),
        ("total_seconds", 5),
    ];
}

impl ProtoMessage for ErrorInfo {
    const PROTO_NAME: &'static str = "Error";
    const FIELDS: &'static [(&'static str, u32)] = &[("code", 1), ("message", 2), ("retryable", 3)];
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_names_are_lower_camel_case() {
        assert_eq!(super::json_name("max_new_tokens"), "maxNewTokens");
        assert_eq!(super::json_name("sha256"), "sha256");
        assert_eq!(super::json_name("queue_wait_seconds"), "queueWaitSeconds");
    }
}
