//! Multi-scale VQVAE: the residual quantizer (codebook, Φ convolutions, the
//! bicubic/area resamplers between scales) and the decoder.

use crate::config::{VarConfig, VAE_CH_MULT, VAE_NUM_RES_BLOCKS};
use crate::error::Result;
use crate::nn::{silu, softmax_last};
use crate::weights::Vb;
use candle_core::{DType, Device, Tensor, D};

/// Conv2d with bias and "same" padding for 3×3 (or none for 1×1).
#[derive(Debug, Clone)]
struct Conv {
    w: Tensor,
    b: Tensor,
    pad: usize,
}

impl Conv {
    fn load(vb: &Vb) -> Result<Self> {
        let w = vb.get("weight")?;
        let pad = w.dim(3)? / 2;
        Ok(Self {
            w,
            b: vb.get("bias")?,
            pad,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return crate::conv::conv2d_same_f32(x, &self.w, &self.b);
        }
        let y = x.conv2d(&self.w, self.pad, 1, 1, 1)?;
        Ok(y.broadcast_add(&self.b.reshape((1, (), 1, 1))?)?)
    }
}

/// GroupNorm(32, eps 1e-6, affine), statistics in f32.
#[derive(Debug, Clone)]
struct GroupNorm {
    w: Tensor,
    b: Tensor,
}

impl GroupNorm {
    const GROUPS: usize = 32;
    fn load(vb: &Vb) -> Result<Self> {
        Ok(Self {
            w: vb.get("weight")?,
            b: vb.get("bias")?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, false)
    }
    /// GroupNorm, then SiLU when `then_silu` (fused into one pass on CPU f32).
    fn forward_act(&self, x: &Tensor, then_silu: bool) -> Result<Tensor> {
        if let Some(y) =
            crate::cpu_ops::group_norm(x, Self::GROUPS, &self.w, &self.b, 1e-6, then_silu)?
        {
            return Ok(y);
        }
        let y = self.forward_plain(x)?;
        if then_silu {
            silu(&y)
        } else {
            Ok(y)
        }
    }
    fn forward_plain(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let dt = x.dtype();
        let g = x
            .to_dtype(DType::F32)?
            .reshape((n, Self::GROUPS, (c / Self::GROUPS) * h * w))?;
        let mean = g.mean_keepdim(D::Minus1)?;
        let gc = g.broadcast_sub(&mean)?;
        let var = gc.sqr()?.mean_keepdim(D::Minus1)?;
        let y = gc
            .broadcast_div(&(var + 1e-6)?.sqrt()?)?
            .reshape((n, c, h, w))?
            .to_dtype(dt)?;
        Ok(y.broadcast_mul(&self.w.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.b.reshape((1, c, 1, 1))?)?)
    }
}

struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv,
    norm2: GroupNorm,
    conv2: Conv,
    shortcut: Option<Conv>,
}

impl ResnetBlock {
    fn load(vb: &Vb) -> Result<Self> {
        let shortcut = if vb.weights().contains(&vb.name("nin_shortcut.weight")) {
            Some(Conv::load(&vb.pp("nin_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::load(&vb.pp("norm1"))?,
            conv1: Conv::load(&vb.pp("conv1"))?,
            norm2: GroupNorm::load(&vb.pp("norm2"))?,
            conv2: Conv::load(&vb.pp("conv2"))?,
            shortcut,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_act(x, true)?)?;
        let h = self.conv2.forward(&self.norm2.forward_act(&h, true)?)?;
        let s = match &self.shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        Ok((s + h)?)
    }
}

/// Single-head self-attention over all spatial positions.
struct AttnBlock {
    norm: GroupNorm,
    qkv: Conv,
    proj_out: Conv,
}

impl AttnBlock {
    fn load(vb: &Vb) -> Result<Self> {
        Ok(Self {
            norm: GroupNorm::load(&vb.pp("norm"))?,
            qkv: Conv::load(&vb.pp("qkv"))?,
            proj_out: Conv::load(&vb.pp("proj_out"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let qkv = self
            .qkv
            .forward(&self.norm.forward(x)?)?
            .reshape((n, 3, c, h * w))?;
        let q = qkv
            .narrow(1, 0, 1)?
            .squeeze(1)?
            .transpose(1, 2)?
            .contiguous()?; // [n, hw, c]
        let k = qkv.narrow(1, 1, 1)?.squeeze(1)?.contiguous()?; // [n, c, hw]
        let v = qkv.narrow(1, 2, 1)?.squeeze(1)?.contiguous()?; // [n, c, hw]
        let att = softmax_last(&(q.matmul(&k)? * (c as f64).powf(-0.5))?)?; // [n, hw_q, hw_k]
        let o = v
            .matmul(&att.transpose(1, 2)?.contiguous()?)?
            .reshape((n, c, h, w))?;
        Ok((x + self.proj_out.forward(&o)?)?)
    }
}

struct UpLevel {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
    upsample: Option<Conv>,
}

pub struct Decoder {
    conv_in: Conv,
    mid1: ResnetBlock,
    mid_attn: AttnBlock,
    mid2: ResnetBlock,
    /// Levels in processing order (lowest resolution first).
    levels: Vec<UpLevel>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl Decoder {
    fn load(vb: &Vb) -> Result<Self> {
        let n_levels = VAE_CH_MULT.len();
        let mut levels = Vec::new();
        for lvl in (0..n_levels).rev() {
            let up = vb.pp("up").pp(lvl);
            let mut blocks = Vec::new();
            let mut attns = Vec::new();
            for j in 0..=VAE_NUM_RES_BLOCKS {
                blocks.push(ResnetBlock::load(&up.pp("block").pp(j))?);
                if lvl == n_levels - 1 {
                    attns.push(AttnBlock::load(&up.pp("attn").pp(j))?);
                }
            }
            let upsample = if lvl != 0 {
                Some(Conv::load(&up.pp("upsample.conv"))?)
            } else {
                None
            };
            levels.push(UpLevel {
                blocks,
                attns,
                upsample,
            });
        }
        Ok(Self {
            conv_in: Conv::load(&vb.pp("conv_in"))?,
            mid1: ResnetBlock::load(&vb.pp("mid.block_1"))?,
            mid_attn: AttnBlock::load(&vb.pp("mid.attn_1"))?,
            mid2: ResnetBlock::load(&vb.pp("mid.block_2"))?,
            levels,
            norm_out: GroupNorm::load(&vb.pp("norm_out"))?,
            conv_out: Conv::load(&vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(z)?;
        h = self
            .mid2
            .forward(&self.mid_attn.forward(&self.mid1.forward(&h)?)?)?;
        for level in &self.levels {
            for (j, block) in level.blocks.iter().enumerate() {
                h = block.forward(&h)?;
                if let Some(a) = level.attns.get(j) {
                    h = a.forward(&h)?;
                }
            }
            if let Some(up) = &level.upsample {
                let (_, _, hh, ww) = h.dims4()?;
                h = up.forward(&h.upsample_nearest2d(hh * 2, ww * 2)?)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_act(&h, true)?)
    }
}

/// PyTorch `F.interpolate(mode='bicubic', align_corners=False)` as a `[out, in]` matrix
/// (A = −0.75, half-pixel centres, unclamped source coordinate, clamped taps).
pub fn bicubic_matrix(input: usize, output: usize) -> Vec<f32> {
    const A: f32 = -0.75;
    let w1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let w2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = input as f32 / output as f32;
    let mut m = vec![0f32; output * input];
    for o in 0..output {
        let src = scale * (o as f32 + 0.5) - 0.5;
        let i0 = src.floor();
        let t = (src - i0).clamp(0.0, 1.0);
        let weights = [w2(t + 1.0), w1(t), w1(1.0 - t), w2(2.0 - t)];
        for (tap, wt) in weights.iter().enumerate() {
            let idx = (i0 as i64 - 1 + tap as i64).clamp(0, input as i64 - 1) as usize;
            m[o * input + idx] += wt;
        }
    }
    m
}

/// `adaptive_avg_pool` (`mode='area'`) as a `[out, in]` averaging matrix.
pub fn area_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; output * input];
    for o in 0..output {
        let start = (o * input) / output;
        let end = ((o + 1) * input).div_ceil(output);
        let n = (end - start) as f32;
        for i in start..end {
            m[o * input + i] = 1.0 / n;
        }
    }
    m
}

/// `ticks` of `PhiPartiallyShared` and the Φ index of each stage, in float64 as numpy does.
pub fn phi_indices(stages: usize, k: usize) -> Vec<usize> {
    let (start, stop) = if k == 4 {
        (1.0 / 3.0 / k as f64, 1.0 - 1.0 / 3.0 / k as f64)
    } else {
        (1.0 / 2.0 / k as f64, 1.0 - 1.0 / 2.0 / k as f64)
    };
    let ticks: Vec<f64> = if k == 1 {
        vec![start]
    } else {
        let step = (stop - start) / (k - 1) as f64;
        (0..k)
            .map(|i| {
                if i == k - 1 {
                    stop
                } else {
                    i as f64 * step + start
                }
            })
            .collect()
    };
    (0..stages)
        .map(|si| {
            let r = if stages > 1 {
                si as f64 / (stages - 1) as f64
            } else {
                0.0
            };
            let mut best = 0;
            for (i, t) in ticks.iter().enumerate() {
                if (t - r).abs() < (ticks[best] - r).abs() {
                    best = i;
                }
            }
            best
        })
        .collect()
}

pub struct Vqvae {
    /// Codebook `[V, Cv]`.
    pub codebook: Tensor,
    phi: Vec<Conv>,
    phi_index: Vec<usize>,
    post_quant_conv: Conv,
    decoder: Decoder,
    /// Per stage: bicubic up `[side, pn]` and area down `[pn, side]` matrices.
    up: Vec<Tensor>,
    down: Vec<Tensor>,
    cfg: VarConfig,
}

/// Resampling is done in f32 whatever the compute dtype (it is tiny).
fn mat(v: Vec<f32>, r: usize, c: usize, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, (r, c), dev)?)
}

impl Vqvae {
    pub fn load(vb: &Vb, cfg: &VarConfig) -> Result<Self> {
        let q = vb.pp("quantize");
        let mut phi = Vec::new();
        for k in 0..cfg.share_quant_resi {
            phi.push(Conv::load(&q.pp("quant_resi.qresi_ls").pp(k))?);
        }
        let side = cfg.latent_side();
        let dev = vb.device();
        let mut up = Vec::new();
        let mut down = Vec::new();
        for &pn in &cfg.patch_nums {
            up.push(mat(bicubic_matrix(pn, side), side, pn, dev)?);
            down.push(mat(area_matrix(side, pn), pn, side, dev)?);
        }
        Ok(Self {
            codebook: q.get_f32("embedding.weight")?,
            phi,
            phi_index: phi_indices(cfg.stages(), cfg.share_quant_resi),
            post_quant_conv: Conv::load(&vb.pp("post_quant_conv"))?,
            decoder: Decoder::load(&vb.pp("decoder"))?,
            up,
            down,
            cfg: cfg.clone(),
        })
    }

    pub fn phi_index(&self) -> &[usize] {
        &self.phi_index
    }

    /// Empty accumulated feature map `[1, Cv, side, side]` (f32).
    pub fn zero_fhat(&self) -> Result<Tensor> {
        let s = self.cfg.latent_side();
        Ok(Tensor::zeros(
            (1, self.cfg.z_channels, s, s),
            DType::F32,
            self.codebook.device(),
        )?)
    }

    /// Codes `[pn²]` of stage `k` → `[1, Cv, pn, pn]` (token j ↦ row j/pn, col j%pn).
    pub fn embed_codes(&self, k: usize, codes: &Tensor) -> Result<Tensor> {
        let pn = self.cfg.patch_nums[k];
        let e = self.codebook.index_select(codes, 0)?; // [pn², Cv]
        Ok(e.t()?.reshape((1, self.cfg.z_channels, pn, pn))?)
    }

    /// Φ_k(h) = ½·h + ½·conv(h).
    fn phi(&self, k: usize, h: &Tensor) -> Result<Tensor> {
        let conv = &self.phi[self.phi_index[k]];
        let dt = conv.w.dtype();
        let c = conv.forward(&h.to_dtype(dt)?)?.to_dtype(DType::F32)?;
        Ok(((h * 0.5)? + (c * 0.5)?)?)
    }

    /// `f̂ += Φ(bicubic(h_k → side))` (no resize at the last stage).
    pub fn add_stage(&self, k: usize, fhat: &Tensor, hk: &Tensor) -> Result<Tensor> {
        let last = k + 1 == self.cfg.stages();
        let h = if last {
            hk.clone()
        } else {
            let u = &self.up[k];
            u.broadcast_matmul(hk)?.broadcast_matmul(&u.t()?)?
        };
        Ok((fhat + self.phi(k, &h)?)?)
    }

    /// `f̂` plus stage `k`'s chosen codes `[pn²]`.
    pub fn add_codes(&self, k: usize, fhat: &Tensor, codes: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(codes, self.codebook.device())?;
        self.add_stage(k, fhat, &self.embed_codes(k, &ids)?)
    }

    /// Area-downsample f̂ to stage `k`'s grid: `[1, Cv, pn, pn]`.
    pub fn downsample(&self, k: usize, fhat: &Tensor) -> Result<Tensor> {
        let d = &self.down[k];
        Ok(d.broadcast_matmul(fhat)?.broadcast_matmul(&d.t()?)?)
    }

    /// Codes of every stage (concatenated, Σpn² long) → f̂ (`idxBl_to_img` with `last_one`).
    pub fn codes_to_fhat(&self, codes: &[u32]) -> Result<Tensor> {
        let offsets = self.cfg.stage_offsets();
        if codes.len() != *offsets.last().unwrap_or(&0) {
            return Err(crate::error::ModelError::Input(format!(
                "expected {} codes, got {}",
                offsets.last().unwrap_or(&0),
                codes.len()
            )));
        }
        if let Some(bad) = codes.iter().find(|&&c| c as usize >= self.cfg.vocab_size) {
            return Err(crate::error::ModelError::Input(format!(
                "code {bad} out of range for codebook of {}",
                self.cfg.vocab_size
            )));
        }
        let mut fhat = self.zero_fhat()?;
        for k in 0..self.cfg.stages() {
            let ids = Tensor::new(&codes[offsets[k]..offsets[k + 1]], self.codebook.device())?;
            fhat = self.add_stage(k, &fhat, &self.embed_codes(k, &ids)?)?;
        }
        Ok(fhat)
    }

    /// f̂ → image `[1, 3, H, W]` in [−1, 1] (f32).
    pub fn decode(&self, fhat: &Tensor) -> Result<Tensor> {
        let dt = self.post_quant_conv.w.dtype();
        let z = self.post_quant_conv.forward(&fhat.to_dtype(dt)?)?;
        Ok(self
            .decoder
            .forward(&z)?
            .to_dtype(DType::F32)?
            .clamp(-1.0, 1.0)?)
    }
}

/// `[1, 3, H, W]` in [−1, 1] → RGB8 HWC, truncating like the reference
/// (`((x + 1) · 0.5) · 255` then `astype(uint8)`).
pub fn to_rgb8(img: &Tensor) -> Result<(u32, u32, Vec<u8>)> {
    let (_, _, h, w) = img.dims4()?;
    let hwc = img.squeeze(0)?.permute((1, 2, 0))?.contiguous()?;
    let v: Vec<f32> = hwc.flatten_all()?.to_vec1()?;
    let px = v.iter().map(|&x| ((x + 1.0) * 0.5 * 255.0) as u8).collect();
    Ok((w as u32, h as u32, px))
}
