//! The whole VARGPT-LLaVA network: components wired as the authors' model class.

use crate::clip::ClipVision;
use crate::config::VargptConfig;
use crate::error::{ModelError, Result};
use crate::llama::Llama;
use crate::projector::Mlp2;
use crate::tp::Shard;
use crate::var::{Var, VarCache};
use crate::vqvae::Vqvae;
use crate::weights::{Vb, Weights};
use candle_core::{DType, Device, Tensor};

pub struct VargptModel {
    pub config: VargptConfig,
    pub vision: ClipVision,
    pub projector: Mlp2,
    pub llm: Llama,
    pub var: Var,
    pub vqvae: Vqvae,
    /// `image_gen_projector`: VAR width → LLM hidden.
    pub gen_in: Mlp2,
    /// `image_gen_projector_out`: LLM hidden → VAR width.
    pub gen_out: Mlp2,
    dtype: DType,
    device: Device,
}

impl VargptModel {
    pub fn load(weights: &Weights, config: &VargptConfig) -> Result<Self> {
        Self::load_sharded(weights, config, &[Shard::single(weights.device().clone())])
    }

    /// Loads with the LLaMA and VAR blocks split over tensor-parallel `shards`
    /// (rank 0 first; the replicated parts live on rank 0's device).
    pub fn load_sharded(
        weights: &Weights,
        config: &VargptConfig,
        shards: &[Shard],
    ) -> Result<Self> {
        let vb = Vb::root(weights);
        let var_cfg = config.var();
        Ok(Self {
            vision: ClipVision::load(
                &vb.pp("vision_tower.vision_model"),
                &config.vision_config,
                config.feature_layer_index(),
                config.vision_feature_select_strategy == "default",
            )?,
            projector: Mlp2::llava(&vb.pp("multi_modal_projector"))?,
            llm: Llama::load(&vb.pp("language_model"), &config.text_config, shards)?,
            var: Var::load(&vb.pp("vargpt_gen"), &var_cfg, shards)?,
            vqvae: Vqvae::load(&vb.pp("vae_local"), &var_cfg)?,
            gen_in: Mlp2::gen_patch_merger(&vb.pp("image_gen_projector"))?,
            gen_out: Mlp2::gen_patch_merger(&vb.pp("image_gen_projector_out"))?,
            config: config.clone(),
            dtype: weights.dtype(),
            device: weights.device().clone(),
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `pixel_values [n, 3, H, W]` → projected image features `[n, tokens, hidden]`.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let f = self.vision.forward(pixel_values)?;
        self.projector.forward(&f)
    }

    /// Embeds `ids` and scatters the image feature rows into the `<image>` positions
    /// in order (LLaVA's `masked_scatter`). The counts must match exactly.
    pub fn embed_prompt(&self, ids: &[u32], image_features: Option<&Tensor>) -> Result<Tensor> {
        let image_id = self.config.image_token_index;
        let ids_t = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let emb = self.llm.embed(&ids_t)?.squeeze(0)?; // [T, H]
        let n_tokens = ids.iter().filter(|&&t| t == image_id).count();
        let feats = match image_features {
            Some(f) => f.reshape(((), f.dim(candle_core::D::Minus1)?))?,
            None if n_tokens == 0 => return Ok(emb.unsqueeze(0)?),
            None => {
                return Err(ModelError::Input(format!(
                    "prompt has {n_tokens} image tokens but no image was given"
                )))
            }
        };
        let n_feats = feats.dim(0)?;
        if n_feats != n_tokens {
            return Err(ModelError::Input(format!(
                "image features and image tokens do not match: tokens {n_tokens}, features {n_feats}"
            )));
        }
        // Rebuild the sequence from runs of text rows and image rows.
        let feats = feats.to_dtype(emb.dtype())?;
        let mut parts = Vec::new();
        let (mut i, mut f) = (0usize, 0usize);
        while i < ids.len() {
            let is_img = ids[i] == image_id;
            let start = i;
            while i < ids.len() && (ids[i] == image_id) == is_img {
                i += 1;
            }
            let n = i - start;
            if is_img {
                parts.push(feats.narrow(0, f, n)?);
                f += n;
            } else {
                parts.push(emb.narrow(0, start, n)?);
            }
        }
        Ok(Tensor::cat(&parts, 0)?.unsqueeze(0)?)
    }

    // The image head's stage arithmetic (reference §4.2), so that callers step a
    // picture without wiring `gen_in`, `gen_out`, VAR and the VQVAE themselves.

    /// LLM input of stage 0 of a new picture, `[pn₀², hidden]`.
    pub fn image_first_input(&self) -> Result<Tensor> {
        let cls = self.var.class_embedding(self.config.gen_class_index())?;
        Ok(self
            .gen_in
            .forward(&self.var.first_tokens(&cls)?)?
            .squeeze(0)?)
    }

    /// VAR logits `[Σlᵢ, V]` (f32) of several pictures' stages: `hidden [Σlᵢ, hidden]`
    /// holds the LLM outputs (and CFG noise rows) back to back, one segment per
    /// `(cache, lᵢ)`.
    pub fn image_logits(
        &self,
        hidden: &Tensor,
        segments: &mut [(&mut VarCache, usize)],
    ) -> Result<Tensor> {
        let lens: Vec<usize> = segments.iter().map(|(_, l)| *l).collect();
        let x = self.gen_out.forward_seqs(hidden, &lens)?;
        let cls = self.var.class_embedding(self.config.gen_class_index())?;
        self.var.forward_ragged(&x, &cls, segments)
    }

    /// LLM input of stage `k` (`k ≥ 1`) from the accumulated f̂: `[pn_k², hidden]`.
    pub fn image_stage_input(&self, k: usize, fhat: &Tensor) -> Result<Tensor> {
        let nxt = self.vqvae.downsample(k, fhat)?;
        Ok(self
            .gen_in
            .forward(&self.var.stage_tokens(k, &nxt)?)?
            .squeeze(0)?)
    }
}
