//! Hooks and types of the decoding loop (the loop itself is [`crate::Engine::step`]),
//! and a plain prefill used by tests and benchmarks.

use crate::error::EngineError;
use candle_core::Tensor;
use vargpt_model::{KvCache, VargptModel};

/// Observes the loop (token streaming, progress bars, parity tests).
pub trait Observer {
    fn on_token(&mut self, _id: u32) {}
    /// Called once per image stage with the CFG-mixed logits `[pn², V]` and the chosen codes.
    fn on_stage(&mut self, _stage: usize, _stages: usize, _logits: &Tensor, _codes: &[u32]) {}
    /// Called when a picture is complete with f̂ `[1, Cv, s, s]` and the image `[1, 3, H, W]` in [−1, 1].
    fn on_image(&mut self, _fhat: &Tensor, _image: &Tensor) {}
}

/// An observer that does nothing.
pub struct NoObserver;
impl Observer for NoObserver {}

/// Image-head knobs.
#[derive(Debug, Clone, Copy)]
pub struct ImageSampling {
    pub cfg_scale: f64,
    pub top_k: usize,
    pub top_p: f64,
}

/// Output of the image loop.
pub struct ImageOutput {
    /// Codes of all stages, in order.
    pub codes: Vec<u32>,
    /// Accumulated VQ feature map `[1, Cv, side, side]` (f32).
    pub fhat: Tensor,
    /// Decoded picture `[1, 3, H, W]` in [−1, 1] (f32).
    pub image: Tensor,
}

/// Runs the prompt embeddings through the LLM; returns the f32 logits of the last position.
pub fn prefill(
    model: &VargptModel,
    embeds: &Tensor,
    cache: &mut KvCache,
) -> Result<Vec<f32>, EngineError> {
    let h = model.llm.forward(embeds, cache)?;
    let l = h.dim(1)?;
    last_logits(model, &h.narrow(1, l - 1, 1)?)
}

fn last_logits(model: &VargptModel, h: &Tensor) -> Result<Vec<f32>, EngineError> {
    Ok(model.llm.logits(h)?.flatten_all()?.to_vec1::<f32>()?)
}
