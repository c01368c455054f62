//! One batched step: a single LLM forward over the new rows of every sequence
//! (prompts, single decode tokens, image stages), then one VAR forward over all
//! image stages. Sequences move through their state machines independently.

use super::{Phase, Sequence};
use crate::error::EngineError;
use crate::request::Task;
use candle_core::Tensor;
use std::time::Instant;
use vargpt_model::{KvCache, VargptModel};

/// What a step reads besides the sequences.
pub(crate) struct StepModel<'m> {
    pub model: &'m VargptModel,
    /// Token ids that end text generation.
    pub eos: &'m [u32],
}

pub(crate) fn step(ctx: &StepModel, seqs: &mut [&mut Sequence]) -> Result<(), EngineError> {
    let m = ctx.model;
    let t0 = Instant::now();
    let mut inputs = Vec::new();
    for s in seqs.iter() {
        if let Some(x) = s.llm_input(m)? {
            inputs.push(x);
        }
    }
    if inputs.is_empty() {
        return Ok(());
    }
    let x = if inputs.len() == 1 {
        inputs.pop().expect("one")
    } else {
        Tensor::cat(&inputs, 0)?
    };
    let rows: Vec<usize> = seqs.iter().map(|s| s.next_rows()).collect();
    let was_prefill: Vec<bool> = seqs
        .iter()
        .map(|s| matches!(s.phase, Phase::Prefill(_)))
        .collect();
    let was_image: Vec<bool> = seqs
        .iter()
        .map(|s| matches!(s.phase, Phase::Image(_)))
        .collect();
    let hidden = {
        let mut segments: Vec<(&mut KvCache, usize)> = seqs
            .iter_mut()
            .zip(&rows)
            .filter(|(_, r)| **r > 0)
            .map(|(s, r)| (&mut s.cache, *r))
            .collect();
        m.llm.forward_ragged(&x, &mut segments)?
    };
    // Row offsets of each sequence in `hidden`.
    let mut offsets = Vec::with_capacity(rows.len());
    let mut acc = 0;
    for r in &rows {
        offsets.push(acc);
        acc += r;
    }
    // Text sequences: logits of their last row, in one lm_head call.
    let text: Vec<usize> = (0..seqs.len())
        .filter(|&i| seqs[i].wants_text_logits())
        .collect();
    if !text.is_empty() {
        let last: Vec<u32> = text
            .iter()
            .map(|&i| (offsets[i] + rows[i] - 1) as u32)
            .collect();
        let sel = hidden.index_select(&Tensor::new(last.as_slice(), m.device())?, 0)?;
        let logits: Vec<Vec<f32>> = m.llm.logits(&sel)?.to_vec2()?;
        for (&i, l) in text.iter().zip(logits) {
            seqs[i].after_text(ctx, l)?;
        }
    }
    for (s, was) in seqs.iter_mut().zip(&was_prefill) {
        if *was && s.task == Task::GenerateImage {
            s.begin_image(m, None)?;
        }
    }
    super::image_step::image_half(m, seqs, &rows, &offsets, &hidden, &was_image)?;
    let elapsed = t0.elapsed().as_secs_f64();
    for (s, was) in seqs.iter_mut().zip(&was_prefill) {
        if *was {
            s.timings.prefill_s = elapsed;
        }
    }
    Ok(())
}

impl Sequence<'_> {
    /// The rows this sequence feeds to the LLM in the next step, `[l, hidden]`.
    fn llm_input(&self, m: &VargptModel) -> Result<Option<Tensor>, EngineError> {
        Ok(match &self.phase {
            Phase::Prefill(e) => Some(e.clone()),
            Phase::Decode(t) | Phase::FeedGenStart(t) => Some(
                m.llm
                    .embed(&Tensor::new(&[[*t]], m.device())?)?
                    .squeeze(0)?,
            ),
            Phase::Image(st) => Some(st.input().clone()),
            Phase::Done => None,
        })
    }

    /// Whether this step's last row chooses a text token (a text-to-image prompt
    /// goes straight to the picture).
    fn wants_text_logits(&self) -> bool {
        match self.phase {
            Phase::Prefill(_) => self.task != Task::GenerateImage,
            Phase::Decode(_) | Phase::FeedGenStart(_) => true,
            Phase::Image(_) | Phase::Done => false,
        }
    }
}
