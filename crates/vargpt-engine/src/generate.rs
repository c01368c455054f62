//! The unified decoding loop: prefill, text tokens, and — when the model emits
//! `<|image_gen_start|>` or the request asks for a picture — the next-scale image
//! loop on the same LLM KV cache (reference §3–§4).

use crate::error::EngineError;
use crate::sampling::{sample_image_code, NoiseSource};
use candle_core::{DType, IndexOp, Tensor};
use rand::rngs::StdRng;
use vargpt_model::{KvCache, VargptModel};

/// Observes the loop (token streaming, progress bars, parity tests).
pub trait Observer {
    fn on_token(&mut self, _id: u32) {}
    /// Called once per image stage with the CFG-mixed logits `[pn², V]` and the chosen codes.
    fn on_stage(&mut self, _stage: usize, _stages: usize, _logits: &Tensor, _codes: &[u32]) {}
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
pub fn prefill(model: &VargptModel, embeds: &Tensor, cache: &mut KvCache) -> Result<Vec<f32>, EngineError> {
    let h = model.llm.forward(embeds, cache)?;
    let l = h.dim(1)?;
    last_logits(model, &h.narrow(1, l - 1, 1)?)
}

/// Feeds one token id; returns its f32 logits.
pub fn step(model: &VargptModel, id: u32, cache: &mut KvCache) -> Result<Vec<f32>, EngineError> {
    let ids = Tensor::new(&[[id]], model.device())?;
    let h = model.llm.forward(&model.llm.embed(&ids)?, cache)?;
    last_logits(model, &h)
}

fn last_logits(model: &VargptModel, h: &Tensor) -> Result<Vec<f32>, EngineError> {
    Ok(model.llm.logits(h)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The next-scale loop (reference §4.1–4.2). The LLM cache must end with
/// `<|image_gen_start|>`; stage tokens are appended to it.
pub fn generate_image(
    model: &VargptModel,
    cache: &mut KvCache,
    sampling: ImageSampling,
    noise: &mut dyn NoiseSource,
    rng: &mut StdRng,
    observer: &mut dyn Observer,
) -> Result<ImageOutput, EngineError> {
    let var = &model.var;
    let vq = &model.vqvae;
    let cfg = var.config().clone();
    let stages = cfg.stages();
    let dt = model.dtype();
    // Both CFG halves use the "null" class row g+1; only the LLM states differ.
    let cls = var.class_embedding(model.config.gen_class_index())?;
    let mut var_cache = var.new_cache();
    let use_cfg = sampling.cfg_scale != 0.0;
    let mut e = model.gen_in.forward(&var.first_tokens(&cls)?)?;
    let mut fhat = vq.zero_fhat()?;
    let mut codes = Vec::with_capacity(cfg.total_tokens());
    for (k, &pn) in cfg.patch_nums.iter().enumerate() {
        let l = pn * pn;
        let ratio = if stages > 1 { k as f64 / (stages - 1) as f64 } else { 0.0 };
        let t = sampling.cfg_scale * ratio;
        let h = model.llm.forward(&e, cache)?; // [1, l, Hd]
        let hd = h.dim(2)?;
        // Drawn at every stage (also when unused) so a seed gives the same stream.
        let n = noise.normal(k, l * hd, rng);
        let x = if use_cfg {
            let n = Tensor::from_vec(n, (1, l, hd), model.device())?.to_dtype(dt)?;
            Tensor::cat(&[&h, &n], 0)?
        } else {
            h
        };
        let x = model.gen_out.forward(&x)?;
        let logits2 = var.forward(&x, &cls, &mut var_cache)?; // [B, l, V] f32
        let logits = if use_cfg {
            ((logits2.i(0)? * (1.0 + t))? - (logits2.i(1)? * t)?)?
        } else {
            logits2.i(0)?
        };
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut stage_codes = Vec::with_capacity(l);
        for mut row in rows {
            stage_codes.push(sample_image_code(&mut row, sampling.top_k, sampling.top_p, rng));
        }
        observer.on_stage(k, stages, &logits, &stage_codes);
        let ids = Tensor::new(stage_codes.as_slice(), model.device())?;
        fhat = vq.add_stage(k, &fhat, &vq.embed_codes(k, &ids)?)?;
        codes.extend_from_slice(&stage_codes);
        if k + 1 < stages {
            let nxt = vq.downsample(k + 1, &fhat)?;
            e = model.gen_in.forward(&var.stage_tokens(k + 1, &nxt)?)?;
        }
    }
    let image = vq.decode(&fhat)?;
    Ok(ImageOutput {
        codes,
        fhat: fhat.to_dtype(DType::F32)?,
        image,
    })
}
