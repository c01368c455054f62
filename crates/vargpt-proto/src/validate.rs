//! Raw message bytes → a checked [`ValidJob`], or a rejection with the
//! [`ErrorCode`] that names what is wrong. Nothing here panics on any input.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde_json::Value;

use crate::code::ErrorCode;
use crate::job::{ImageInput, Job, JobKind, SamplingParams};
use crate::json::Timestamp;
use crate::limits::{ranges, Limits};
use crate::SCHEMA_VERSION;

/// A job that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    pub id: String,
    /// Never `Unspecified`.
    pub kind: JobKind,
    pub prompt: String,
    pub image: Option<ImageSource>,
    pub params: SamplingParams,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    pub deadline: Option<Timestamp>,
}

/// Where the input image comes from, decoded and bounded.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// Decoded bytes, at most `max_image_bytes`.
    Inline(Vec<u8>),
    /// An object in an allowed bucket (size checked when fetched).
    S3 { bucket: String, key: String },
}

/// What is wrong with a job.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ValidationError {
    pub code: ErrorCode,
    pub message: String,
}

impl ValidationError {
    /// The message is bounded and escaped: it may quote hostile input.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ValidationError {
            code,
            message: crate::bounded::message(&message.into()),
        }
    }
}

/// What could be read from a rejected message, so its error result still
/// reaches the right reply queue with the right ids.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobHints {
    pub id: Option<String>,
    pub kind: Option<JobKind>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
}

/// A rejected message: why, plus whatever ids it carried.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub error: ValidationError,
    pub hints: JobHints,
}

/// Parses and validates one message body.
pub fn parse_job(body: &[u8], limits: &Limits) -> Result<ValidJob, Rejected> {
    let reject = |hints: &JobHints, code, msg: String| Rejected {
        error: ValidationError::new(code, msg),
        hints: hints.clone(),
    };
    let mut hints = JobHints::default();
    if body.len() > limits.max_job_bytes {
        let msg = format!(
            "message is {} bytes, limit {}",
            body.len(),
            limits.max_job_bytes
        );
        return Err(reject(&hints, ErrorCode::JobTooLarge, msg));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        reject(
            &hints,
            ErrorCode::MalformedJson,
            format!("body is not JSON: {e}"),
        )
    })?;
    hints = hints_of(&value);
    precheck(&value).map_err(|e| Rejected {
        error: e,
        hints: hints.clone(),
    })?;
    let job: Job = serde_json::from_value(value).map_err(|e| {
        reject(
            &hints,
            ErrorCode::InvalidSchema,
            format!("not a valid Job: {e}"),
        )
    })?;
    validate(job, limits).map_err(|error| Rejected { error, hints })
}

/// Checks that need the raw JSON: the shape, the version (before the schema,
/// so a v2 job is told "unsupported version" rather than "unknown field"),
/// and the kind (so an unknown kind gets its own code).
fn precheck(value: &Value) -> Result<(), ValidationError> {
    let Some(obj) = value.as_object() else {
        let what = match value {
            Value::Array(_) => "an array",
            Value::String(_) => "a string",
            Value::Number(_) => "a number",
            Value::Bool(_) => "a boolean",
            _ => "null",
        };
        return Err(ValidationError::new(
            ErrorCode::InvalidSchema,
            format!("a job must be a JSON object, got {what}"),
        ));
    };
    if let Some(v) = obj.get("version") {
        if !matches!(v.as_u64(), Some(0) | Some(1)) {
            return Err(ValidationError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "version {v} is not supported (this worker reads version {SCHEMA_VERSION})"
                ),
            ));
        }
    }
    match obj.get("kind") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if JobKind::from_name(s).is_some() => Ok(()),
        Some(Value::Number(n)) if n.as_i64().and_then(JobKind::from_number).is_some() => Ok(()),
        Some(other) => Err(ValidationError::new(
            ErrorCode::UnknownKind,
            format!("kind {other} is not one of caption, vqa, chat, generate_image"),
        )),
    }
}

fn hints_of(value: &Value) -> JobHints {
    // Echo only short, inert strings: an error result (and its headers and
    // log lines) must not amplify or inject junk input.
    let short = |key: &str, alt: &str| {
        value
            .get(key)
            .or_else(|| value.get(alt))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 255 && !s.chars().any(char::is_control))
            .map(str::to_owned)
    };
    JobHints {
        id: short("id", "id").filter(|id| check_id(id).is_ok()),
        kind: match value.get("kind") {
            Some(Value::String(s)) => JobKind::from_name(s),
            Some(Value::Number(n)) => n.as_i64().and_then(JobKind::from_number),
            _ => None,
        },
        reply_to: short("replyTo", "reply_to"),
        correlation_id: short("correlationId", "correlation_id"),
    }
}

fn validate(job: Job, limits: &Limits) -> Result<ValidJob, ValidationError> {
    check_id(&job.id)?;
    if job.kind == JobKind::Unspecified {
        return Err(ValidationError::new(
            ErrorCode::MissingField,
            "kind is required",
        ));
    }
    let prompt_required = matches!(
        job.kind,
        JobKind::Vqa | JobKind::Chat | JobKind::GenerateImage
    );
    if prompt_required && job.prompt.trim().is_empty() {
        return Err(ValidationError::new(
            ErrorCode::MissingField,
            format!("prompt is required for {}", job.kind),
        ));
    }
    if job.prompt.len() > limits.max_prompt_bytes {
        return Err(ValidationError::new(
            ErrorCode::PromptTooLong,
            format!(
                "prompt is {} bytes, limit {}",
                job.prompt.len(),
                limits.max_prompt_bytes
            ),
        ));
    }
    let image = match (&job.image, job.kind) {
        (None, JobKind::Caption | JobKind::Vqa) => {
            return Err(ValidationError::new(
                ErrorCode::MissingField,
                format!("image is required for {}", job.kind),
            ))
        }
        (Some(_), JobKind::GenerateImage) => {
            return Err(ValidationError::new(
                ErrorCode::InvalidField,
                "generate_image takes no input image",
            ))
        }
        (None, _) => None,
        (Some(input), _) => Some(check_image(input, limits)?),
    };
    check_params(job.params.as_ref(), limits)?;
    let amqp_short = |name: &str, v: String| -> Result<Option<String>, ValidationError> {
        if v.len() > 255 {
            return Err(ValidationError::new(
                ErrorCode::InvalidField,
                format!("{name} is longer than 255 bytes"),
            ));
        }
        if v.chars().any(char::is_control) {
            return Err(ValidationError::new(
                ErrorCode::InvalidField,
                format!("{name} has control characters"),
            ));
        }
        Ok((!v.is_empty()).then_some(v))
    };
    Ok(ValidJob {
        id: job.id,
        kind: job.kind,
        prompt: job.prompt,
        image,
        params: job.params.unwrap_or_default(),
        reply_to: amqp_short("replyTo", job.reply_to)?,
        correlation_id: amqp_short("correlationId", job.correlation_id)?,
        deadline: job.deadline,
    })
}

/// Ids become object keys and log fields: keep them short and inert —
/// 1-128 characters of `[A-Za-z0-9._:-]`, not starting with `.`. Clients (the
/// dispatcher) check ids with this same function before sending.
pub fn check_id(id: &str) -> Result<(), ValidationError> {
    let invalid = |m: String| Err(ValidationError::new(ErrorCode::InvalidId, m));
    if id.is_empty() {
        return Err(ValidationError::new(
            ErrorCode::MissingField,
            "id is required",
        ));
    }
    if id.len() > ranges::ID_MAX_LEN {
        return invalid(format!(
            "id is {} characters, at most {} allowed",
            id.len(),
            ranges::ID_MAX_LEN
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._:-".contains(*c)))
    {
        return invalid(format!(
            "id {id:?} has the character {bad:?}; allowed are [A-Za-z0-9._:-]"
        ));
    }
    if id.starts_with('.') {
        return invalid(format!("id {id:?} starts with '.'"));
    }
    Ok(())
}

fn check_image(input: &ImageInput, limits: &Limits) -> Result<ImageSource, ValidationError> {
    match input {
        ImageInput::Data(b64) => {
            if b64.is_empty() {
                return Err(ValidationError::new(
                    ErrorCode::MissingField,
                    "image.data is empty",
                ));
            }
            // Refuse before decoding, so an oversized payload costs nothing more.
            let approx = b64.len() / 4 * 3;
            if approx > limits.max_image_bytes + 3 {
                return Err(ValidationError::new(
                    ErrorCode::ImageTooLarge,
                    format!("image is ~{approx} bytes, limit {}", limits.max_image_bytes),
                ));
            }
            let bytes = decode_base64(b64).map_err(|e| {
                ValidationError::new(
                    ErrorCode::InvalidBase64,
                    format!("image.data is not base64: {e}"),
                )
            })?;
            if bytes.len() > limits.max_image_bytes {
                return Err(ValidationError::new(
                    ErrorCode::ImageTooLarge,
                    format!(
                        "image is {} bytes, limit {}",
                        bytes.len(),
                        limits.max_image_bytes
                    ),
                ));
            }
            Ok(ImageSource::Inline(bytes))
        }
        ImageInput::Uri(uri) => {
            let (bucket, key) = parse_s3_uri(uri)?;
            if !limits.allowed_buckets.iter().any(|b| b == bucket) {
                return Err(ValidationError::new(
                    ErrorCode::BucketNotAllowed,
                    format!("bucket {bucket:?} is not on this worker's allow-list"),
                ));
            }
            Ok(ImageSource::S3 {
                bucket: bucket.into(),
                key: key.into(),
            })
        }
    }
}

/// proto3 JSON `bytes`: standard or URL-safe alphabet, padding optional.
fn decode_base64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let alphabet = if s.contains(['-', '_']) {
        &base64::alphabet::URL_SAFE
    } else {
        &base64::alphabet::STANDARD
    };
    GeneralPurpose::new(alphabet, config).decode(s)
}

/// `s3://bucket/key` only. Keys that could escape a directory (`..`, a
/// leading `/`, backslashes) are refused too, because the local store maps
/// keys to paths.
pub fn parse_s3_uri(uri: &str) -> Result<(&str, &str), ValidationError> {
    let bad = |why: &str| {
        ValidationError::new(
            ErrorCode::InvalidImageUri,
            format!("image.uri must be s3://bucket/key ({why})"),
        )
    };
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| bad("only the s3 scheme is accepted"))?;
    let (bucket, key) = rest.split_once('/').ok_or_else(|| bad("no key"))?;
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !bucket_ok {
        return Err(bad("invalid bucket name"));
    }
    if key.is_empty() || key.len() > 1024 {
        return Err(bad("key must be 1-1024 bytes"));
    }
    if key.starts_with('/')
        || key.contains('\\')
        || key.contains('\0')
        || key.split('/').any(|p| p == ".." || p == ".")
    {
        return Err(bad("key has '.', '..', '\\' or an empty leading segment"));
    }
    Ok((bucket, key))
}

fn check_params(p: Option<&SamplingParams>, limits: &Limits) -> Result<(), ValidationError> {
    let Some(p) = p else { return Ok(()) };
    let out = |name: &str, v: String, range: String| {
        ValidationError::new(
            ErrorCode::ParamOutOfRange,
            format!("params.{name} = {v} is outside {range}"),
        )
    };
    if let Some(n) = p.max_new_tokens {
        if n == 0 || n > limits.max_new_tokens {
            return Err(out(
                "maxNewTokens",
                n.to_string(),
                format!("[1, {}]", limits.max_new_tokens),
            ));
        }
    }
    let open_closed = [
        ("temperature", p.temperature, ranges::TEMPERATURE),
        ("topP", p.top_p, ranges::TOP_P),
        (
            "repetitionPenalty",
            p.repetition_penalty,
            ranges::REPETITION_PENALTY,
        ),
        ("imageTopP", p.image_top_p, ranges::TOP_P),
    ];
    for (name, v, (lo, hi)) in open_closed {
        if let Some(v) = v {
            if !ranges::in_open_closed(v, (lo, hi)) {
                return Err(out(name, v.to_string(), format!("({lo}, {hi}]")));
            }
        }
    }
    if let Some(v) = p.cfg_scale {
        let (lo, hi) = ranges::CFG_SCALE;
        if !ranges::in_closed(v, (lo, hi)) {
            return Err(out("cfgScale", v.to_string(), format!("[{lo}, {hi}]")));
        }
    }
    // Text top-k 0 disables it; the image head always samples from >= 1 code.
    for (name, v, lo) in [("topK", p.top_k, 0), ("imageTopK", p.image_top_k, 1)] {
        if let Some(v) = v {
            if v < lo || v > ranges::TOP_K_MAX {
                return Err(out(
                    name,
                    v.to_string(),
                    format!("[{lo}, {}]", ranges::TOP_K_MAX),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
