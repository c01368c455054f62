//! The text half of the state machine: choose the next token, then decode on,
//! stop, or turn to a picture.

use super::step::StepModel;
use super::{Phase, Sequence};
use crate::error::EngineError;
use crate::request::FinishReason;

impl Sequence<'_> {
    /// Room left for `<|image_gen_start|>`, X and every image stage.
    fn image_room(&self, ctx: &StepModel) -> bool {
        let m = ctx.model;
        self.cache.len() + 2 + m.var.config().total_tokens() <= m.llm.max_positions()
    }

    /// Chooses the next text token from `logits` and moves the state machine.
    pub(super) fn after_text(
        &mut self,
        ctx: &StepModel,
        mut logits: Vec<f32>,
    ) -> Result<(), EngineError> {
        let m = ctx.model;
        let g = m.config.special_tokens.image_gen_start_token_id;
        if let Phase::FeedGenStart(_) = self.phase {
            // Reference §3.2: X follows g and is appended twice around the image.
            let x = self.sampler.choose(&mut logits, &self.seen, &mut self.rng);
            self.ids.push(x);
            self.seen.push(x);
            return self.begin_image(m, Some(x));
        }
        if !self.allow_image || !self.image_room(ctx) {
            logits[g as usize] = f32::NEG_INFINITY;
        }
        let tok = self.sampler.choose(&mut logits, &self.seen, &mut self.rng);
        self.ids.push(tok);
        self.seen.push(tok);
        self.observer.on_token(tok);
        self.phase = if tok == g {
            Phase::FeedGenStart(g)
        } else if ctx.eos.contains(&tok) {
            self.finish = Some(FinishReason::Eos);
            Phase::Done
        } else if self.ids.len() >= self.max_new_tokens
            || self.cache.len() + 1 >= m.llm.max_positions()
        {
            self.finish = Some(FinishReason::Length);
            Phase::Done
        } else {
            Phase::Decode(tok)
        };
        Ok(())
    }
}
