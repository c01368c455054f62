//! The `Job` message as it travels (unvalidated). See [`crate::validate`] for
//! the checked form.

use serde::{Deserialize, Serialize};

use crate::json::{is_zero, opt_u64, Timestamp};

proto_enum! {
    /// The `JobKind` enum of the `.proto`.
    #[derive(Default)]
    pub enum JobKind: "JobKind" {
        #[default]
        Unspecified = 0 => "kind_unspecified",
        Caption = 1 => "caption",
        Vqa = 2 => "vqa",
        Chat = 3 => "chat",
        GenerateImage = 4 => "generate_image",
    }
}

/// A job as published by a client. Unknown fields are rejected (a typo such
/// as `maxTokens` must not be silently ignored).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Job {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u32,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub kind: JobKind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<SamplingParams>,
    #[serde(default, alias = "reply_to", skip_serializing_if = "String::is_empty")]
    pub reply_to: String,
    #[serde(
        default,
        alias = "correlation_id",
        skip_serializing_if = "String::is_empty"
    )]
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
}

/// The `ImageInput` oneof: exactly one of `{"data": base64}` or `{"uri": "s3://…"}`.
/// `data` stays a string here so that bad base64 is reported by validation
/// with its own code instead of failing the whole parse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ImageInput {
    Data(String),
    Uri(String),
}

/// Every engine knob; `None` takes the engine default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SamplingParams {
    #[serde(
        default,
        alias = "max_new_tokens",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_new_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greedy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, alias = "top_k", skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, alias = "top_p", skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(
        default,
        alias = "repetition_penalty",
        skip_serializing_if = "Option::is_none"
    )]
    pub repetition_penalty: Option<f64>,
    #[serde(default, with = "opt_u64", skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, alias = "cfg_scale", skip_serializing_if = "Option::is_none")]
    pub cfg_scale: Option<f64>,
    #[serde(
        default,
        alias = "image_top_k",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_top_k: Option<u32>,
    #[serde(
        default,
        alias = "image_top_p",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_top_p: Option<f64>,
    #[serde(
        default,
        alias = "allow_image",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_image: Option<bool>,
}

impl Job {
    /// The JSON body to publish.
    pub fn to_json(&self) -> Vec<u8> {
        // A Job holds only strings, numbers and maps: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case_out_and_both_cases_in() {
        let job = Job {
            id: "j1".into(),
            kind: JobKind::GenerateImage,
            prompt: "a cat".into(),
            reply_to: "replies".into(),
            params: Some(SamplingParams {
                max_new_tokens: Some(8),
                seed: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = String::from_utf8(job.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"id":"j1","kind":"generate_image","prompt":"a cat","params":{"maxNewTokens":8,"seed":"3"},"replyTo":"replies"}"#
        );
        let snake = r#"{"id":"j1","kind":"generate_image","prompt":"a cat","params":{"max_new_tokens":8,"seed":3},"reply_to":"replies"}"#;
        assert_eq!(serde_json::from_str::<Job>(snake).unwrap(), job);
    }

    #[test]
    fn image_oneof_and_unknown_fields() {
        let j: Job = serde_json::from_str(r#"{"image":{"uri":"s3://b/k"}}"#).unwrap();
        assert_eq!(j.image, Some(ImageInput::Uri("s3://b/k".into())));
        let j: Job = serde_json::from_str(r#"{"image":{"data":"AAAA"}}"#).unwrap();
        assert_eq!(j.image, Some(ImageInput::Data("AAAA".into())));
        assert!(serde_json::from_str::<Job>(r#"{"image":{"url":"http://x"}}"#).is_err());
        assert!(serde_json::from_str::<Job>(r#"{"maxTokens":3}"#).is_err());
        assert!(serde_json::from_str::<Job>(r#"{"params":{"topK":1,"topk":2}}"#).is_err());
        let by_number: Job = serde_json::from_str(r#"{"kind":2}"#).unwrap();
        assert_eq!(by_number.kind, JobKind::Vqa);
    }
}
