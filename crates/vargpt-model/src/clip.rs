//! CLIP ViT vision tower (only the layers the feature selection needs).

use crate::config::VisionConfig;
use crate::error::Result;
use crate::nn::{quick_gelu, softmax_last, LayerNorm, Linear};
use crate::weights::Vb;
use candle_core::{DType, Tensor, D};

struct ClipAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    scale: f64,
}

impl ClipAttention {
    fn load(vb: &Vb, cfg: &VisionConfig) -> Result<Self> {
        Ok(Self {
            q: Linear::load(&vb.pp("q_proj"), true)?,
            k: Linear::load(&vb.pp("k_proj"), true)?,
            v: Linear::load(&vb.pp("v_proj"), true)?,
            out: Linear::load(&vb.pp("out_proj"), true)?,
            heads: cfg.num_attention_heads,
            scale: (cfg.head_dim() as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, t, c) = x.dims3()?;
        let d = c / self.heads;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((n, t, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = (self.q.forward(x)? * self.scale)?;
        let (k, v) = (self.k.forward(x)?, self.v.forward(x)?);
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            // Plain-loop attention (see `vargpt_kernels::attn`), image by image.
            let mut outs = Vec::with_capacity(n);
            for b in 0..n {
                let rows =
                    |y: &Tensor| -> Result<Vec<f32>> { Ok(y.get(b)?.flatten_all()?.to_vec1()?) };
                let heads_major = |y: &Tensor| -> Result<Vec<f32>> {
                    Ok(y.get(b)?
                        .reshape((t, self.heads, d))?
                        .transpose(0, 1)?
                        .flatten_all()?
                        .to_vec1()?)
                };
                let o = vargpt_kernels::attn::attend(
                    &rows(&q)?,
                    t,
                    self.heads,
                    self.heads,
                    d,
                    &heads_major(&k)?,
                    &heads_major(&v)?,
                    t,
                    |_| t,
                    1.0,
                );
                outs.push(Tensor::from_vec(o, (t, c), x.device())?);
            }
            return self.out.forward(&Tensor::stack(&outs, 0)?);
        }
        let q = split(q)?;
        let (k, v) = (split(k)?, split(v)?);
        let att = softmax_last(&q.matmul(&k.transpose(2, 3)?.contiguous()?)?)?;
        let o = att.matmul(&v)?.transpose(1, 2)?.reshape((n, t, c))?;
        self.out.forward(&o)
    }
}

struct ClipLayer {
    ln1: LayerNorm,
    attn: ClipAttention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    quick: bool,
}

impl ClipLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln1.forward(x)?)?)?;
        let m = self.fc1.forward(&self.ln2.forward(&h)?)?;
        let m = if self.quick {
            quick_gelu(&m)?
        } else {
            m.gelu_erf()?
        };
        Ok((h + self.fc2.forward(&m)?)?)
    }
}

/// The vision tower truncated to the hidden state the projector reads.
pub struct ClipVision {
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_ln: LayerNorm,
    layers: Vec<ClipLayer>,
    patch: usize,
    drop_cls: bool,
}

impl ClipVision {
    /// `layers_used`: how many encoder layers precede the selected hidden state.
    pub fn load(vb: &Vb, cfg: &VisionConfig, layers_used: usize, drop_cls: bool) -> Result<Self> {
        let e = vb.pp("embeddings");
        let mut layers = Vec::with_capacity(layers_used);
        for i in 0..layers_used {
            let l = vb.pp("encoder.layers").pp(i);
            layers.push(ClipLayer {
                ln1: LayerNorm::load(&l.pp("layer_norm1"), cfg.layer_norm_eps)?,
                attn: ClipAttention::load(&l.pp("self_attn"), cfg)?,
                ln2: LayerNorm::load(&l.pp("layer_norm2"), cfg.layer_norm_eps)?,
                fc1: Linear::load(&l.pp("mlp.fc1"), true)?,
                fc2: Linear::load(&l.pp("mlp.fc2"), true)?,
                quick: cfg.hidden_act == "quick_gelu",
            });
        }
        Ok(Self {
            patch_weight: e.get("patch_embedding.weight")?,
            class_embedding: e.get("class_embedding")?,
            position_embedding: e.get("position_embedding.weight")?,
            pre_ln: LayerNorm::load(&vb.pp("pre_layrnorm"), cfg.layer_norm_eps)?,
            layers,
            patch: cfg.patch_size,
            drop_cls,
        })
    }

    /// `pixel_values [n, 3, H, W]` → features `[n, tokens, hidden]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let pv = pixel_values.to_dtype(self.patch_weight.dtype())?;
        let n = pv.dim(0)?;
        let patches = pv.conv2d(&self.patch_weight, 0, self.patch, 1, 1)?; // [n, C, g, g]
        let c = patches.dim(1)?;
        let patches = patches.flatten_from(2)?.transpose(1, 2)?; // [n, g², C]
        let cls = self.class_embedding.reshape((1, 1, c))?.repeat((n, 1, 1))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?;
        let t = x.dim(1)?;
        let x = x.broadcast_add(&self.position_embedding.narrow(0, 0, t)?.unsqueeze(0)?)?;
        let mut x = self.pre_ln.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        if self.drop_cls {
            x = x.narrow(D::Minus2, 1, t - 1)?;
        }
        Ok(x)
    }
}
