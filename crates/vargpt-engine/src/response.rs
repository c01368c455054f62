//! Turning a finished sequence into the caller's [`Response`].

use crate::engine::Engine;
use crate::error::EngineError;
use crate::request::{FinishReason, GeneratedImage, Response};
use crate::sequence::Sequence;

impl Engine {
    /// Turns a finished sequence into the response.
    pub fn finish(&self, s: Sequence) -> Result<Response, EngineError> {
        let s = s.into_outcome();
        // The ids are the model's own output: failing to decode them is our fault.
        let text = self
            .files()
            .tokenizer
            .decode(&s.ids, true)
            .map_err(|e| EngineError::Internal(format!("decoding the output: {e}")))?;
        let image = match s.image {
            Some(out) => {
                let (width, height, rgb) = vargpt_model::vqvae::to_rgb8(&out.image)?;
                Some(GeneratedImage {
                    width,
                    height,
                    rgb,
                    codes: out.codes,
                })
            }
            None => None,
        };
        let mut timings = s.timings;
        timings.total_s = s.started.elapsed().as_secs_f64();
        timings.decode_s =
            (timings.total_s - timings.preprocess_s - timings.prefill_s - timings.image_s).max(0.0);
        Ok(Response {
            prompt: s.prompt,
            prompt_ids: s.prompt_ids,
            ids: s.ids,
            text,
            image,
            finish_reason: s.finish.unwrap_or(FinishReason::Length),
            timings,
            positions: s.positions,
        })
    }
}
