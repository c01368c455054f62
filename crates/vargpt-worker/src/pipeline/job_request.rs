//! A valid job as the engine sees it: its task, prompt and effective
//! sampling parameters (defaults filled in, seed fixed), the key of its image,
//! and how an engine answer or panic reads back.

use sha2::{Digest, Sha256};
use vargpt_engine::{Request, Response, Task};
use vargpt_proto::{ErrorCode, JobKind, SamplingParams, ValidJob};

use super::Envelope;
use crate::failure::Failure;

/// Where a job's image goes: `{prefix}{job id}-{digest}.png`, the digest
/// taken over the whole message body. A redelivery of the same message
/// writes the same key (idempotent); another client reusing the id with a
/// different request gets a different key and never overwrites this image.
pub fn image_key(prefix: &str, job_id: &str, body: &[u8]) -> String {
    let digest = hex::encode(&Sha256::digest(body)[..8]);
    format!("{prefix}{job_id}-{digest}.png")
}

pub(super) fn take_request(r: &mut Request) -> Request {
    Request {
        task: r.task,
        text: std::mem::take(&mut r.text),
        image: r.image.take(),
        params: r.params.clone(),
    }
}

pub(super) fn panic_failure(e: tokio::task::JoinError) -> Failure {
    let what = match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into()),
        Err(e) => e.to_string(),
    };
    Failure::new(
        ErrorCode::InferenceFailed,
        format!("the engine panicked: {what}"),
    )
}

pub(super) fn queue_wait(env: &Envelope) -> f64 {
    env.meta
        .enqueued_at
        .and_then(|t| env.meta.received_at_wall.duration_since(t).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(super) fn task_of(kind: JobKind) -> Task {
    match kind {
        JobKind::Caption | JobKind::Unspecified => Task::Caption,
        JobKind::Vqa => Task::Vqa,
        JobKind::Chat => Task::Chat,
        JobKind::GenerateImage => Task::GenerateImage,
    }
}

pub(super) fn prompt_of(job: &ValidJob) -> String {
    if job.kind == JobKind::Caption && job.prompt.trim().is_empty() {
        vargpt_proto::limits::DEFAULT_CAPTION_PROMPT.to_string()
    } else {
        job.prompt.clone()
    }
}

/// Unset knobs take the engine defaults, except the seed: it defaults to a
/// hash of the job id, so a redelivered job gets the same answer and image.
pub fn engine_params(
    p: &SamplingParams,
    job_id: &str,
    max_new_tokens_limit: u32,
) -> vargpt_engine::SamplingParams {
    let d = vargpt_engine::SamplingParams::default();
    vargpt_engine::SamplingParams {
        max_new_tokens: p
            .max_new_tokens
            .map_or(d.max_new_tokens.min(max_new_tokens_limit as usize), |v| {
                v as usize
            }),
        greedy: p.greedy.unwrap_or(d.greedy),
        temperature: p.temperature.unwrap_or(d.temperature),
        top_k: p.top_k.map_or(d.top_k, |v| v as usize),
        top_p: p.top_p.unwrap_or(d.top_p),
        repetition_penalty: p.repetition_penalty.unwrap_or(d.repetition_penalty),
        seed: Some(p.seed.unwrap_or_else(|| seed_of(job_id))),
        cfg_scale: p.cfg_scale.unwrap_or(d.cfg_scale),
        image_top_k: p.image_top_k.map_or(d.image_top_k, |v| v as usize),
        image_top_p: p.image_top_p.unwrap_or(d.image_top_p),
        allow_image: p.allow_image.unwrap_or(d.allow_image),
    }
}

fn seed_of(job_id: &str) -> u64 {
    let d = Sha256::digest(job_id.as_bytes());
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

pub(super) fn finish_reason(r: &Response) -> String {
    match r.finish_reason {
        vargpt_engine::FinishReason::Eos => "eos",
        vargpt_engine::FinishReason::Length => "length",
        vargpt_engine::FinishReason::Image => "image",
    }
    .to_string()
}
