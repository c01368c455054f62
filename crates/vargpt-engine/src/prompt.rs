//! Turning a request into model inputs: checking its knobs, rendering the chat
//! template, tokenizing, preprocessing the image and embedding the prompt.

use crate::engine::Engine;
use crate::error::EngineError;
use crate::observer::Observer;
use crate::options::EngineLimits;
use crate::request::{Request, SamplingParams, Task};
use crate::sampling::NoiseSource;
use crate::sequence::{Sequence, Start};
use candle_core::Tensor;
use std::time::Instant;
use vargpt_model::Message;
use vargpt_proto::limits::ranges;

/// A request turned into model inputs.
pub struct Prepared {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub pixel_values: Option<Tensor>,
}

impl Engine {
    /// Renders the chat template for one user turn.
    pub fn render_prompt(&self, text: &str, with_image: bool) -> Result<String, EngineError> {
        self.files()
            .template
            .render(&[Message::user(text, with_image)], true)
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))
    }

    /// Tokenizes a rendered prompt, expanding each `<image>` to the tower's token count.
    pub fn tokenize_prompt(&self, prompt: &str) -> Result<Vec<u32>, EngineError> {
        let cfg = &self.files().config;
        let tok = &self.files().tokenizer;
        let image_tok = tok
            .id_to_token(cfg.image_token_index)
            .ok_or_else(|| EngineError::Load("tokenizer has no image token".into()))?;
        let expanded = prompt.replace(&image_tok, &image_tok.repeat(cfg.image_tokens_per_image()));
        tok.encode(&expanded)
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))
    }

    /// Decodes and preprocesses an encoded image into `pixel_values [1, 3, H, W]`.
    pub fn pixel_values(&self, bytes: &[u8]) -> Result<Tensor, EngineError> {
        let pv = vargpt_imageproc::preprocess_bytes(
            bytes,
            &self.files().preprocessor,
            &self.limits().image,
        )
        .map_err(|e| EngineError::InvalidImage(e.to_string()))?;
        Ok(Tensor::from_vec(
            pv.data,
            (1, 3, pv.height, pv.width),
            self.model().device(),
        )?)
    }

    pub fn prepare(&self, req: &Request) -> Result<Prepared, EngineError> {
        let needs_image = matches!(req.task, Task::Caption | Task::Vqa);
        if needs_image && req.image.is_none() {
            return Err(EngineError::InvalidRequest(format!(
                "{:?} needs an image",
                req.task
            )));
        }
        if req.task == Task::GenerateImage && req.image.is_some() {
            return Err(EngineError::InvalidRequest(
                "generate_image takes no input image".into(),
            ));
        }
        let text = match req.task {
            Task::Caption if req.text.trim().is_empty() => {
                vargpt_proto::limits::DEFAULT_CAPTION_PROMPT
            }
            _ if req.text.trim().is_empty() => {
                return Err(EngineError::InvalidRequest("prompt is empty".into()));
            }
            _ => req.text.as_str(),
        };
        let pixel_values = match &req.image {
            Some(b) => Some(self.pixel_values(b)?),
            None => None,
        };
        let prompt = self.render_prompt(text, pixel_values.is_some())?;
        let mut prompt_ids = self.tokenize_prompt(&prompt)?;
        if req.task == Task::GenerateImage {
            prompt_ids.push(self.files().config.special_tokens.image_gen_start_token_id);
        }
        let limit = self
            .limits()
            .max_prompt_tokens
            .min(self.model().llm.max_positions());
        if prompt_ids.len() > limit {
            return Err(EngineError::PromptTooLong {
                tokens: prompt_ids.len(),
                limit,
            });
        }
        Ok(Prepared {
            prompt,
            prompt_ids,
            pixel_values,
        })
    }

    /// Prompt embeddings `[T, hidden]` with the image features in the `<image>` rows.
    fn embed(&self, prep: &Prepared) -> Result<Tensor, EngineError> {
        let m = self.model();
        let features = match &prep.pixel_values {
            Some(pv) => Some(m.image_features(pv)?),
            None => None,
        };
        // A mismatch of image tokens and features (`ModelError::Input`) comes
        // from the prompt's text: an invalid request.
        Ok(m.embed_prompt(&prep.prompt_ids, features.as_ref())?
            .squeeze(0)?)
    }

    /// Validates and prepares a request: preprocessing, vision tower, prompt
    /// embeddings; the returned sequence is ready for its first [`Engine::step`].
    pub fn start<'a>(
        &self,
        req: &Request,
        noise: Box<dyn NoiseSource + 'a>,
        observer: Box<dyn Observer + 'a>,
    ) -> Result<Sequence<'a>, EngineError> {
        validate_params(&req.params, self.limits())?;
        let started = Instant::now();
        let prep = self.prepare(req)?;
        let embeds = self.embed(&prep)?;
        let start = Start {
            prompt: prep.prompt,
            prompt_ids: prep.prompt_ids,
            embeds,
            cache: self.model().llm.new_cache(),
            started,
        };
        Ok(Sequence::new(req, start, noise, observer))
    }
}

/// Checks the knobs are in range before any work is done (the ranges are the
/// contract's, [`vargpt_proto::limits::ranges`]).
pub fn validate_params(p: &SamplingParams, limits: &EngineLimits) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::InvalidRequest(m));
    if p.max_new_tokens == 0 || p.max_new_tokens > limits.max_new_tokens {
        return bad(format!(
            "max_new_tokens must be in 1..={}",
            limits.max_new_tokens
        ));
    }
    let open_closed = |(lo, hi): (f64, f64)| format!("({lo}, {hi}]");
    if !p.greedy && !ranges::in_open_closed(p.temperature, ranges::TEMPERATURE) {
        return bad(format!(
            "temperature must be in {}",
            open_closed(ranges::TEMPERATURE)
        ));
    }
    if !ranges::in_open_closed(p.top_p, ranges::TOP_P)
        || !ranges::in_open_closed(p.image_top_p, ranges::TOP_P)
    {
        return bad(format!(
            "top_p and image_top_p must be in {}",
            open_closed(ranges::TOP_P)
        ));
    }
    if !ranges::in_open_closed(p.repetition_penalty, ranges::REPETITION_PENALTY) {
        return bad(format!(
            "repetition_penalty must be in {}",
            open_closed(ranges::REPETITION_PENALTY)
        ));
    }
    if !ranges::in_closed(p.cfg_scale, ranges::CFG_SCALE) {
        let (lo, hi) = ranges::CFG_SCALE;
        return bad(format!("cfg_scale must be in [{lo}, {hi}]"));
    }
    let top_k_max = ranges::TOP_K_MAX as usize;
    if p.top_k > top_k_max {
        return bad(format!("top_k must be in [0, {top_k_max}]"));
    }
    let image_min = ranges::IMAGE_TOP_K_MIN as usize;
    if !(image_min..=top_k_max).contains(&p.image_top_k) {
        return bad(format!("image_top_k must be in [{image_min}, {top_k_max}]"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_are_checked_against_the_contract_ranges() {
        let limits = EngineLimits::default();
        let ok = SamplingParams::default();
        assert!(validate_params(&ok, &limits).is_ok());
        let cases = [
            SamplingParams {
                greedy: false,
                temperature: 0.0,
                ..ok.clone()
            },
            SamplingParams {
                top_p: 1.5,
                ..ok.clone()
            },
            SamplingParams {
                repetition_penalty: f64::NAN,
                ..ok.clone()
            },
            SamplingParams {
                cfg_scale: 50.5,
                ..ok.clone()
            },
            SamplingParams {
                image_top_k: 0,
                ..ok.clone()
            },
            SamplingParams {
                top_k: ranges::TOP_K_MAX as usize + 1,
                ..ok.clone()
            },
            SamplingParams {
                max_new_tokens: 0,
                ..ok.clone()
            },
        ];
        for p in cases {
            let e = validate_params(&p, &limits).unwrap_err();
            assert!(matches!(e, EngineError::InvalidRequest(_)), "{p:?}: {e}");
        }
        // Greedy decoding ignores the temperature, as the reference does.
        let greedy = SamplingParams {
            temperature: 0.0,
            ..ok
        };
        assert!(validate_params(&greedy, &limits).is_ok());
    }
}
