//! A deterministic stand-in for the engine, for unit tests and for the
//! fault-injection integration tests (hidden `--fake-backend` flag).
//!
//! Its answers depend only on the request, like the real engine under a fixed
//! seed. Directives inside the prompt inject faults, and only here — the real
//! backend has no such behaviour:
//! * `__abort__`        the whole process aborts (a job that kills its worker),
//! * `__panic__`        the inference call panics,
//! * `__fail__`         an `EngineError::Inference`,
//! * `__too_long__`     an `EngineError::PromptTooLong`,
//! * `__sleep_ms=N__`   inference takes N more milliseconds,
//! * `__kill_engine__`  the engine dies for good, as when the real engine's
//!   batching thread is gone: this and every later call fail, and
//!   [`Backend::is_alive`] turns false.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use vargpt_engine::{EngineError, FinishReason, GeneratedImage, Request, Response, Task, Timings};

use crate::backend::Backend;

pub struct FakeBackend {
    model_id: String,
    dead: AtomicBool,
}

impl FakeBackend {
    pub fn new(model_id: impl Into<String>) -> Self {
        FakeBackend {
            model_id: model_id.into(),
            dead: AtomicBool::new(false),
        }
    }
}

fn sleep_directive(prompt: &str) -> Option<u64> {
    let rest = &prompt[prompt.find("__sleep_ms=")? + "__sleep_ms=".len()..];
    rest[..rest.find("__")?].parse().ok()
}

/// 64×64 RGB noise seeded by the request: same request, same picture.
fn picture(req: &Request) -> GeneratedImage {
    let mut h = Sha256::new();
    h.update(req.text.as_bytes());
    h.update(req.params.seed.unwrap_or(0).to_le_bytes());
    let digest = h.finalize();
    let mut state = u64::from_le_bytes(digest[..8].try_into().unwrap_or([1; 8])) | 1;
    let (width, height) = (64u32, 64u32);
    let rgb = (0..width * height * 3)
        .map(|_| {
            // xorshift64: cheap, deterministic, good enough for test pixels.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect();
    GeneratedImage {
        width,
        height,
        rgb,
        codes: (0..30).collect(),
    }
}

impl Backend for FakeBackend {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn is_alive(&self) -> bool {
        !self.dead.load(Ordering::SeqCst)
    }

    fn run(&self, req: &Request) -> Result<Response, EngineError> {
        let start = Instant::now();
        let prompt = req.text.as_str();
        if prompt.contains("__kill_engine__") {
            self.dead.store(true, Ordering::SeqCst);
        }
        if !self.is_alive() {
            return Err(EngineError::Inference("batching thread stopped".into()));
        }
        if prompt.contains("__abort__") {
            eprintln!("fake backend: __abort__ directive, aborting the process");
            std::process::abort();
        }
        if prompt.contains("__panic__") {
            panic!("fake backend: __panic__ directive");
        }
        if prompt.contains("__fail__") {
            return Err(EngineError::Inference(
                "fake backend: __fail__ directive".into(),
            ));
        }
        if prompt.contains("__too_long__") {
            return Err(EngineError::PromptTooLong {
                tokens: 4096,
                limit: 2048,
            });
        }
        if let Some(ms) = sleep_directive(prompt) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let (text, image, finish_reason) = match req.task {
            Task::Caption => (
                "a fake caption of the image".to_string(),
                None,
                FinishReason::Eos,
            ),
            Task::Vqa => (
                format!("a fake answer to: {prompt}"),
                None,
                FinishReason::Eos,
            ),
            Task::Chat => (
                format!("a fake reply to: {prompt}"),
                None,
                FinishReason::Eos,
            ),
            Task::GenerateImage => (String::new(), Some(picture(req)), FinishReason::Image),
        };
        let n = text
            .split_whitespace()
            .count()
            .min(req.params.max_new_tokens)
            .max(1);
        let total = start.elapsed().as_secs_f64();
        let prompt_ids = vec![1; prompt.len().min(64)];
        let ids: Vec<u32> = (0..n as u32).collect();
        Ok(Response {
            prompt: prompt.to_string(),
            positions: prompt_ids.len() + ids.len(),
            prompt_ids,
            ids,
            text,
            image,
            finish_reason,
            timings: Timings {
                total_s: total,
                decode_s: total,
                ..Default::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vargpt_engine::SamplingParams;

    fn req(task: Task, text: &str, seed: u64) -> Request {
        Request {
            task,
            text: text.into(),
            image: None,
            params: SamplingParams {
                seed: Some(seed),
                ..Default::default()
            },
        }
    }

    #[test]
    fn deterministic_and_seeded() {
        let b = FakeBackend::new("fake");
        let a1 = b.run(&req(Task::GenerateImage, "a cat", 1)).unwrap();
        let a2 = b.run(&req(Task::GenerateImage, "a cat", 1)).unwrap();
        let a3 = b.run(&req(Task::GenerateImage, "a cat", 2)).unwrap();
        let (i1, i2, i3) = (a1.image.unwrap(), a2.image.unwrap(), a3.image.unwrap());
        assert_eq!(i1.rgb, i2.rgb);
        assert_ne!(i1.rgb, i3.rgb);
        assert_eq!(i1.rgb.len(), 64 * 64 * 3);
        assert!(b.run(&req(Task::Chat, "__fail__", 0)).is_err());
        assert_eq!(sleep_directive("x __sleep_ms=25__ y"), Some(25));
        assert_eq!(sleep_directive("x __sleep_ms=__"), None);
        assert!(b.is_alive());
        assert!(b.run(&req(Task::Chat, "__kill_engine__", 0)).is_err());
        assert!(!b.is_alive());
        assert!(b.run(&req(Task::Chat, "hello", 0)).is_err());
    }
}
