//! A plain prefill outside the batched loop, for tests and benchmarks.

use crate::error::EngineError;
use candle_core::Tensor;
use vargpt_model::{KvCache, VargptModel};

/// Runs the prompt embeddings through the LLM; returns the f32 logits of the last position.
pub fn prefill(
    model: &VargptModel,
    embeds: &Tensor,
    cache: &mut KvCache,
) -> Result<Vec<f32>, EngineError> {
    let h = model.llm.forward(embeds, cache)?;
    let l = h.dim(1)?;
    Ok(model
        .llm
        .logits(&h.narrow(1, l - 1, 1)?)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}
