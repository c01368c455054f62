//! The image half of the state machine (reference §4.2): each step runs one VAR
//! stage of every picture in progress, with classifier-free guidance against a
//! noise branch, and adds the chosen codes to the picture's f̂.

use super::{Phase, Sequence};
use crate::error::EngineError;
use crate::request::FinishReason;
use crate::sampling::sample_image_code;
use candle_core::Tensor;
use std::time::Instant;
use vargpt_model::{VarCache, VargptModel};

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

/// Image-loop state of one sequence.
pub(super) struct ImageState {
    /// Current stage.
    k: usize,
    /// LLM input of the current stage `[pn², hidden]`.
    e: Tensor,
    fhat: Tensor,
    codes: Vec<u32>,
    cond_cache: VarCache,
    /// The noise branch of CFG (absent when cfg = 0).
    uncond_cache: Option<VarCache>,
    /// The token X chosen after `<|image_gen_start|>`, appended again at the end (reference quirk).
    x_token: Option<u32>,
    started: Instant,
}

impl ImageState {
    pub(super) fn input(&self) -> &Tensor {
        &self.e
    }

    pub(super) fn rows(&self) -> usize {
        self.e.dim(0).unwrap_or(0)
    }
}

impl Sequence<'_> {
    pub(super) fn begin_image(
        &mut self,
        m: &VargptModel,
        x_token: Option<u32>,
    ) -> Result<(), EngineError> {
        self.phase = Phase::Image(Box::new(ImageState {
            k: 0,
            e: m.image_first_input()?,
            fhat: m.vqvae.zero_fhat()?,
            codes: Vec::with_capacity(m.var.config().total_tokens()),
            cond_cache: m.var.new_cache(),
            uncond_cache: (self.image_sampling.cfg_scale != 0.0).then(|| m.var.new_cache()),
            x_token,
            started: Instant::now(),
        }));
        Ok(())
    }

    /// The LLM rows of this step and, with CFG, as many rows of noise: the
    /// VAR inputs of this sequence, one per branch.
    fn branches(
        &mut self,
        h: Tensor,
        hd: usize,
        m: &VargptModel,
    ) -> Result<Vec<Tensor>, EngineError> {
        let Phase::Image(st) = &self.phase else {
            return Err(EngineError::Internal(
                "image step of a sequence not drawing".into(),
            ));
        };
        let l = h.dim(0)?;
        // Drawn at every stage (also when unused) so a seed gives the same stream.
        let n = self.noise.normal(st.k, l * hd, &mut self.rng);
        let mut out = vec![h];
        if self.image_sampling.cfg_scale != 0.0 {
            out.push(Tensor::from_vec(n, (l, hd), m.device())?.to_dtype(m.dtype())?);
        }
        Ok(out)
    }

    /// Mixes this sequence's VAR logits (`cond` and, with CFG, `uncond`), samples
    /// the stage's codes and moves to the next stage or finishes the picture.
    fn after_stage(
        &mut self,
        m: &VargptModel,
        cond: Tensor,
        uncond: Option<Tensor>,
    ) -> Result<(), EngineError> {
        let stages = m.var.config().stages();
        let Phase::Image(st) = &mut self.phase else {
            return Err(EngineError::Internal(
                "image step of a sequence not drawing".into(),
            ));
        };
        let k = st.k;
        let ratio = if stages > 1 {
            k as f64 / (stages - 1) as f64
        } else {
            0.0
        };
        let t = self.image_sampling.cfg_scale * ratio;
        let mixed = match uncond {
            Some(uncond) => ((cond * (1.0 + t))? - (uncond * t)?)?,
            None => cond,
        };
        let mut codes = Vec::with_capacity(mixed.dim(0)?);
        for mut r in mixed.to_vec2::<f32>()? {
            codes.push(sample_image_code(
                &mut r,
                self.image_sampling.top_k,
                self.image_sampling.top_p,
                &mut self.rng,
            ));
        }
        self.observer.on_stage(k, stages, &mixed, &codes);
        st.fhat = m.vqvae.add_codes(k, &st.fhat, &codes)?;
        st.codes.extend_from_slice(&codes);
        if k + 1 < stages {
            st.e = m.image_stage_input(k + 1, &st.fhat)?;
            st.k += 1;
            return Ok(());
        }
        let image = m.vqvae.decode(&st.fhat)?;
        self.observer.on_image(&st.fhat, &image);
        if let Some(x) = st.x_token {
            self.ids.push(x);
        }
        self.timings.image_s = st.started.elapsed().as_secs_f64();
        self.image = Some(ImageOutput {
            codes: std::mem::take(&mut st.codes),
            fhat: st.fhat.clone(),
            image,
        });
        self.finish = Some(FinishReason::Image);
        self.phase = Phase::Done;
        Ok(())
    }

    fn image_caches(&mut self) -> Option<(&mut VarCache, Option<&mut VarCache>)> {
        match &mut self.phase {
            Phase::Image(st) => {
                let st = &mut **st;
                Some((&mut st.cond_cache, st.uncond_cache.as_mut()))
            }
            _ => None,
        }
    }
}

/// The VAR half of a step for every sequence whose stage tokens went through the
/// LLM in this step (`was_image`): one VAR forward over all their branches.
pub(super) fn image_half(
    m: &VargptModel,
    seqs: &mut [&mut Sequence],
    rows: &[usize],
    offsets: &[usize],
    hidden: &Tensor,
    was_image: &[bool],
) -> Result<(), EngineError> {
    let img: Vec<usize> = (0..seqs.len()).filter(|&i| was_image[i]).collect();
    if img.is_empty() {
        return Ok(());
    }
    let hd = hidden.dim(1)?;
    let mut parts = Vec::new();
    for &i in &img {
        let h = hidden.narrow(0, offsets[i], rows[i])?;
        parts.extend(seqs[i].branches(h, hd, m)?);
    }
    let logits = {
        let mut segments: Vec<(&mut VarCache, usize)> = Vec::new();
        for (i, s) in seqs.iter_mut().enumerate() {
            if !was_image[i] {
                continue;
            }
            let l = rows[i];
            if let Some((cond, uncond)) = s.image_caches() {
                segments.push((cond, l));
                if let Some(u) = uncond {
                    segments.push((u, l));
                }
            }
        }
        m.image_logits(&Tensor::cat(&parts, 0)?, &mut segments)?
    };
    let mut row = 0;
    for &i in &img {
        let l = rows[i];
        let cond = logits.narrow(0, row, l)?;
        row += l;
        let uncond = if seqs[i].image_sampling.cfg_scale != 0.0 {
            let u = logits.narrow(0, row, l)?;
            row += l;
            Some(u)
        } else {
            None
        };
        seqs[i].after_stage(m, cond, uncond)?;
    }
    Ok(())
}
