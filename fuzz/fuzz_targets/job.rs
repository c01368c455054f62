//! Message body bytes -> `vargpt_proto::parse_job`, as the worker calls it.
//!
//! Properties, under the default limits and under small ones:
//! * no panic;
//! * a rejection's message is bounded and inert, its hints short;
//! * an accepted job satisfies every documented limit, and what a client
//!   writes for it (`Job::to_json`) is accepted again as the same job.

#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use vargpt_proto::bounded::MAX_MESSAGE_BYTES;
use vargpt_proto::validate::parse_s3_uri;
use vargpt_proto::{
    check_id, parse_job, ErrorCode, ErrorInfo, ImageInput, ImageSource, Job, JobKind, Limits,
    Rejected, SamplingParams, ValidJob,
};

/// Longest id / reply queue / correlation id a rejection may echo.
const HINT_MAX: usize = 255;

fn small_limits() -> Limits {
    Limits {
        max_job_bytes: 2048,
        max_prompt_bytes: 32,
        max_new_tokens: 16,
        max_image_bytes: 64,
        max_image_pixels: 64,
        allowed_buckets: vec!["inputs".into(), "b.c-d".into()],
    }
}

fuzz_target!(|data: &[u8]| {
    for limits in [Limits::default(), small_limits()] {
        match parse_job(data, &limits) {
            Ok(job) => check_accepted(data, &job, &limits),
            Err(rejected) => check_rejected(&rejected),
        }
    }
});

fn check_rejected(r: &Rejected) {
    let msg = &r.error.message;
    assert!(
        msg.len() <= MAX_MESSAGE_BYTES,
        "{:?} message of {} bytes (bound {MAX_MESSAGE_BYTES}): {:?}",
        r.error.code,
        msg.len(),
        msg.get(..200).unwrap_or("")
    );
    assert!(
        !msg.chars().any(char::is_control),
        "control character in {:?} message {msg:?}",
        r.error.code
    );
    for hint in [&r.hints.id, &r.hints.reply_to, &r.hints.correlation_id]
        .into_iter()
        .flatten()
    {
        assert!(!hint.is_empty() && hint.len() <= HINT_MAX, "hint {hint:?}");
    }
    // What the worker publishes for it.
    let info = ErrorInfo::new(r.error.code, msg.clone());
    assert!(info.message.len() <= MAX_MESSAGE_BYTES);
}

fn check_accepted(data: &[u8], job: &ValidJob, limits: &Limits) {
    assert!(data.len() <= limits.max_job_bytes);
    assert!(check_id(&job.id).is_ok(), "id {:?}", job.id);
    assert_ne!(job.kind, JobKind::Unspecified);
    assert!(job.prompt.len() <= limits.max_prompt_bytes);
    if matches!(
        job.kind,
        JobKind::Vqa | JobKind::Chat | JobKind::GenerateImage
    ) {
        assert!(!job.prompt.trim().is_empty());
    }
    match (&job.image, job.kind) {
        (None, JobKind::Caption | JobKind::Vqa) => panic!("{} without an image", job.kind),
        (Some(_), JobKind::GenerateImage) => panic!("generate_image with an image"),
        (Some(ImageSource::Inline(b)), _) => assert!(b.len() <= limits.max_image_bytes),
        (Some(ImageSource::S3 { bucket, key }), _) => {
            assert!(limits.allowed_buckets.contains(bucket), "bucket {bucket:?}");
            let uri = format!("s3://{bucket}/{key}");
            assert_eq!(
                parse_s3_uri(&uri).ok(),
                Some((bucket.as_str(), key.as_str()))
            );
        }
        (None, _) => {}
    }
    for s in [&job.reply_to, &job.correlation_id].into_iter().flatten() {
        assert!(!s.is_empty() && s.len() <= 255, "{s:?}");
    }
    if let Some(n) = job.params.max_new_tokens {
        assert!(n >= 1 && n <= limits.max_new_tokens);
    }
    round_trip(job, limits);
}

/// A client writing this job back out must get it accepted as the same job.
fn round_trip(job: &ValidJob, limits: &Limits) {
    let image = job.image.as_ref().map(|src| match src {
        ImageSource::Inline(b) => {
            ImageInput::Data(base64::engine::general_purpose::STANDARD.encode(b))
        }
        ImageSource::S3 { bucket, key } => ImageInput::Uri(format!("s3://{bucket}/{key}")),
    });
    let out = Job {
        version: 1,
        id: job.id.clone(),
        kind: job.kind,
        prompt: job.prompt.clone(),
        image,
        params: Some(job.params.clone()),
        reply_to: job.reply_to.clone().unwrap_or_default(),
        correlation_id: job.correlation_id.clone().unwrap_or_default(),
        deadline: job.deadline,
    };
    let body = out.to_json();
    // Re-encoding may be longer (padding, "1e2" -> "100.0"): size is not the point here.
    let roomy = Limits {
        max_job_bytes: usize::MAX,
        ..limits.clone()
    };
    let again = match parse_job(&body, &roomy) {
        Ok(j) => j,
        // serde_json's default float parsing is best-effort (last-bit errors),
        // which can move a value that sits exactly on a range bound.
        Err(r) if r.error.code == ErrorCode::ParamOutOfRange => return,
        Err(r) => panic!(
            "re-encoded job refused: {} ({})",
            r.error,
            String::from_utf8_lossy(&body)
        ),
    };
    assert!(
        same_params(&again.params, &job.params),
        "{:?} vs {:?}",
        again.params,
        job.params
    );
    let strip = |j: &ValidJob| ValidJob {
        params: SamplingParams::default(),
        ..j.clone()
    };
    assert_eq!(strip(&again), strip(job));
}

fn same_params(a: &SamplingParams, b: &SamplingParams) -> bool {
    let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(1.0),
        (x, y) => x.is_none() && y.is_none(),
    };
    // Destructured so that a new knob fails to compile here until compared.
    let SamplingParams {
        max_new_tokens,
        greedy,
        temperature,
        top_k,
        top_p,
        repetition_penalty,
        seed,
        cfg_scale,
        image_top_k,
        image_top_p,
        allow_image,
    } = a;
    *max_new_tokens == b.max_new_tokens
        && *greedy == b.greedy
        && *top_k == b.top_k
        && *seed == b.seed
        && *image_top_k == b.image_top_k
        && *allow_image == b.allow_image
        && close(*temperature, b.temperature)
        && close(*top_p, b.top_p)
        && close(*repetition_penalty, b.repetition_penalty)
        && close(*cfg_scale, b.cfg_scale)
        && close(*image_top_p, b.image_top_p)
}
