//! The two-layer MLPs that bridge CLIP → LLaMA (`multi_modal_projector`) and
//! LLaMA ↔ VAR (`image_gen_projector`, `image_gen_projector_out`).

use crate::error::Result;
use crate::nn::{gelu_erf, Linear};
use crate::weights::Vb;
use candle_core::Tensor;

/// `second(gelu_erf(first(x)))`; `ln_q` of the GenPatchMergers is stored but never applied.
pub struct Mlp2 {
    first: Linear,
    second: Linear,
}

impl Mlp2 {
    /// LlavaMultiModalProjector: `linear_1`, `linear_2`.
    pub fn llava(vb: &Vb) -> Result<Self> {
        Ok(Self {
            first: Linear::load(&vb.pp("linear_1"), true)?,
            second: Linear::load(&vb.pp("linear_2"), true)?,
        })
    }
    /// GenPatchMerger: `mlp.0`, `mlp.2`.
    pub fn gen_patch_merger(vb: &Vb) -> Result<Self> {
        Ok(Self {
            first: Linear::load(&vb.pp("mlp.0"), true)?,
            second: Linear::load(&vb.pp("mlp.2"), true)?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_seqs(x, &[])
    }
    /// `x`'s rows as sequences of the given lengths ([`Linear::forward_seqs`]).
    pub fn forward_seqs(&self, x: &Tensor, seqs: &[usize]) -> Result<Tensor> {
        let h = gelu_erf(&self.first.forward_seqs(x, seqs)?)?;
        self.second.forward_seqs(&h, seqs)
    }
}
