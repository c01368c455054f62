//! One request in flight: its KV caches, RNG, generated ids and where it is in the
//! text → image state machine. [`crate::Engine::step`] advances many of them at once.

use crate::generate::{ImageSampling, Observer};
use crate::request::{FinishReason, Request, Timings};
use crate::sampling::{NoiseSource, TextSampler};
use candle_core::Tensor;
use rand::rngs::StdRng;
use std::time::Instant;
use vargpt_model::{KvCache, VarCache};

/// Image-loop state of one sequence.
pub(crate) struct ImageState {
    /// Current stage.
    pub k: usize,
    /// LLM input of the current stage `[pn², hidden]`.
    pub e: Tensor,
    pub fhat: Tensor,
    pub codes: Vec<u32>,
    pub cond_cache: VarCache,
    /// The noise branch of CFG (absent when cfg = 0).
    pub uncond_cache: Option<VarCache>,
    /// The token X chosen after `<|image_gen_start|>`, appended again at the end (reference quirk).
    pub x_token: Option<u32>,
    pub started: Instant,
}

pub(crate) enum Phase {
    /// Prompt embeddings `[T, hidden]` not yet run.
    Prefill(Tensor),
    /// Feed this token; then choose the next one.
    Decode(u32),
    /// Feed `<|image_gen_start|>` as text, then choose X and start the image.
    FeedGenStart(u32),
    Image(Box<ImageState>),
    Done,
}

pub struct Sequence<'a> {
    pub(crate) task: crate::request::Task,
    pub(crate) max_new_tokens: usize,
    pub(crate) allow_image: bool,
    pub(crate) sampler: TextSampler,
    pub(crate) image_sampling: ImageSampling,
    pub(crate) rng: StdRng,
    pub(crate) noise: Box<dyn NoiseSource + 'a>,
    pub(crate) observer: Box<dyn Observer + 'a>,
    pub(crate) prompt: String,
    pub(crate) prompt_ids: Vec<u32>,
    pub(crate) seen: Vec<u32>,
    pub(crate) ids: Vec<u32>,
    pub(crate) cache: KvCache,
    pub(crate) phase: Phase,
    pub(crate) image: Option<crate::generate::ImageOutput>,
    pub(crate) finish: Option<FinishReason>,
    pub(crate) timings: Timings,
    pub(crate) started: Instant,
}

impl<'a> Sequence<'a> {
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Rows this sequence feeds to the LLM in the next step.
    pub fn next_rows(&self) -> usize {
        match &self.phase {
            Phase::Prefill(e) => e.dim(0).unwrap_or(0),
            Phase::Decode(_) | Phase::FeedGenStart(_) => 1,
            Phase::Image(st) => st.e.dim(0).unwrap_or(0),
            Phase::Done => 0,
        }
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn new_parts(req: &Request) -> (TextSampler, ImageSampling) {
        let p = &req.params;
        (
            TextSampler {
                greedy: p.greedy,
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
                repetition_penalty: p.repetition_penalty,
            },
            ImageSampling {
                cfg_scale: p.cfg_scale,
                top_k: p.image_top_k,
                top_p: p.image_top_p,
            },
        )
    }
}

impl<N: NoiseSource + ?Sized> NoiseSource for &mut N {
    fn normal(&mut self, stage: usize, len: usize, rng: &mut StdRng) -> Vec<f32> {
        (**self).normal(stage, len, rng)
    }
}

impl<O: Observer + ?Sized> Observer for &mut O {
    fn on_token(&mut self, id: u32) {
        (**self).on_token(id)
    }
    fn on_stage(&mut self, stage: usize, stages: usize, logits: &Tensor, codes: &[u32]) {
        (**self).on_stage(stage, stages, logits, codes)
    }
    fn on_image(&mut self, fhat: &Tensor, image: &Tensor) {
        (**self).on_image(fhat, image)
    }
}
