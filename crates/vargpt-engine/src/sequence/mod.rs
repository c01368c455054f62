//! One request in flight: its KV caches, RNG, generated ids and where it is in the
//! text → image state machine. The machine's transitions live beside it
//! ([`step`] runs one batched step, `text_step` and `image_step` its two halves),
//! so its state stays private to this module.

mod image_step;
pub(crate) mod step;
mod text_step;

use crate::observer::Observer;
use crate::request::{FinishReason, Request, Timings};
use crate::sampling::{NoiseSource, TextSampler};
use candle_core::Tensor;
use image_step::ImageState;
pub use image_step::{ImageOutput, ImageSampling};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Instant;
use vargpt_model::KvCache;

enum Phase {
    /// Prompt embeddings `[T, hidden]` not yet run.
    Prefill(Tensor),
    /// Feed this token; then choose the next one.
    Decode(u32),
    /// Feed `<|image_gen_start|>` as text, then choose X and start the image.
    FeedGenStart(u32),
    Image(Box<ImageState>),
    Done,
}

/// A request being generated; [`crate::Engine::step`] advances many at once.
pub struct Sequence<'a> {
    task: crate::request::Task,
    max_new_tokens: usize,
    allow_image: bool,
    sampler: TextSampler,
    image_sampling: ImageSampling,
    rng: StdRng,
    noise: Box<dyn NoiseSource + 'a>,
    observer: Box<dyn Observer + 'a>,
    prompt: String,
    prompt_ids: Vec<u32>,
    seen: Vec<u32>,
    ids: Vec<u32>,
    cache: KvCache,
    phase: Phase,
    image: Option<ImageOutput>,
    finish: Option<FinishReason>,
    timings: Timings,
    started: Instant,
}

/// What a finished sequence leaves for the response.
pub(crate) struct Outcome {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    pub image: Option<ImageOutput>,
    pub finish: Option<FinishReason>,
    pub timings: Timings,
    pub started: Instant,
    pub positions: usize,
}

/// The prepared start of a sequence (see [`crate::Engine::start`]).
pub(crate) struct Start {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    /// Prompt embeddings `[T, hidden]`.
    pub embeds: Tensor,
    pub cache: KvCache,
    pub started: Instant,
}

impl<'a> Sequence<'a> {
    pub(crate) fn new(
        req: &Request,
        start: Start,
        noise: Box<dyn NoiseSource + 'a>,
        observer: Box<dyn Observer + 'a>,
    ) -> Self {
        let p = &req.params;
        let timings = Timings {
            preprocess_s: start.started.elapsed().as_secs_f64(),
            ..Default::default()
        };
        Sequence {
            task: req.task,
            max_new_tokens: p.max_new_tokens,
            allow_image: p.allow_image,
            sampler: TextSampler {
                greedy: p.greedy,
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
                repetition_penalty: p.repetition_penalty,
            },
            image_sampling: ImageSampling {
                cfg_scale: p.cfg_scale,
                top_k: p.image_top_k,
                top_p: p.image_top_p,
            },
            rng: StdRng::seed_from_u64(p.seed.unwrap_or_else(rand::random)),
            noise,
            observer,
            prompt: start.prompt,
            seen: start.prompt_ids.clone(),
            prompt_ids: start.prompt_ids,
            ids: Vec::new(),
            cache: start.cache,
            phase: Phase::Prefill(start.embeds),
            image: None,
            finish: None,
            timings,
            started: start.started,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Rows this sequence feeds to the LLM in the next step.
    pub fn next_rows(&self) -> usize {
        match &self.phase {
            Phase::Prefill(e) => e.dim(0).unwrap_or(0),
            Phase::Decode(_) | Phase::FeedGenStart(_) => 1,
            Phase::Image(st) => st.rows(),
            Phase::Done => 0,
        }
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn into_outcome(self) -> Outcome {
        Outcome {
            prompt: self.prompt,
            prompt_ids: self.prompt_ids,
            ids: self.ids,
            image: self.image,
            finish: self.finish,
            timings: self.timings,
            started: self.started,
            positions: self.cache.len(),
        }
    }
}
