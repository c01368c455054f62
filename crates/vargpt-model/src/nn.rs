//! Small building blocks shared by the components: linear layers, norms, activations.

use crate::cpu_ops;
use crate::error::Result;
use crate::tp::Shard;
use crate::weights::Vb;
use candle_core::{DType, Module, Tensor, D};

/// `y = x·Wᵀ + b` over the last dimension of any-rank input.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }
    pub fn load(vb: &Vb, bias: bool) -> Result<Self> {
        let weight = vb.get_linear("weight")?;
        let bias = if bias { Some(vb.get("bias")?) } else { None };
        Ok(Self { weight, bias })
    }
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    pub fn out_features(&self) -> usize {
        self.weight.dim(0).unwrap_or(0)
    }
    /// All rows of `x` as one sequence (see [`Linear::forward_seqs`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_seqs(x, &[])
    }

    /// `x`'s rows as the sequences of a ragged batch, `seqs` their lengths in
    /// order (empty: one sequence). On CPU each sequence's rows go through the
    /// kernel its own length picks, never the batch's total, so a sequence gets
    /// the same bits alone or batched with any others (both kernels compute a
    /// row independently of the other rows in the call).
    pub fn forward_seqs(&self, x: &Tensor, seqs: &[usize]) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_f = *dims.last().unwrap_or(&0);
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_f))?;
        let mut y = match linear_cpu(&x2, &self.weight, seqs)? {
            Some(y) => y,
            // Elsewhere (GPU, or no AVX2 on a CPU): candle's matmul.
            None if self.weight.dtype() != x2.dtype() => {
                x2.matmul(&self.weight.to_dtype(x2.dtype())?.t()?)?
            }
            None => x2.matmul(&self.weight.t()?)?,
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.weight.dim(0)?;
        Ok(y.reshape(out_dims)?)
    }
}

impl Linear {
    /// Column-parallel: this rank's slice of the output features (weight rows, bias).
    pub fn load_column(vb: &Vb, bias: bool, shard: &Shard) -> Result<Self> {
        if shard.world == 1 {
            return Self::load(vb, bias);
        }
        let out = vb.weights().shape_of(&vb.name("weight"))?[0];
        let (start, len) = shard.range(out);
        Self::load_rows(vb, bias, &[(start, len)])
    }

    /// The rows in `ranges` (e.g. one head range in each of a fused q/k/v), concatenated.
    pub fn load_rows(vb: &Vb, bias: bool, ranges: &[(usize, usize)]) -> Result<Self> {
        let pick = |leaf: &str| -> Result<Tensor> {
            let parts = ranges
                .iter()
                .map(|&(s, l)| {
                    if leaf == "weight" {
                        vb.get_narrow_linear(leaf, 0, s, l)
                    } else {
                        vb.get_narrow(leaf, 0, s, l)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(if parts.len() == 1 {
                parts.into_iter().next().expect("one")
            } else {
                Tensor::cat(&parts, 0)?
            })
        };
        let weight = pick("weight")?;
        let bias = if bias { Some(pick("bias")?) } else { None };
        Ok(Self { weight, bias })
    }
}

/// Products on CPU with f32 activations go through the kernels of `vargpt-kernels`.
/// Short sequences (≤ `small_m_limit()` rows, or any length with half-precision
/// weights): the small-m kernel streams every weight row once for all rows and
/// widens f16/bf16 weights in registers. Longer sequences of f32 (prefill, the
/// larger image stages) on AVX2 CPUs: the k-blocked outer-product GEMM `sgemm_nt`,
/// faster there than candle's `gemm` crate. Both compute each row independently
/// of the other rows in the call, and the choice is made per sequence (`seqs`,
/// see [`Linear::forward_seqs`]), so batching never changes a sequence's bits.
fn linear_cpu(x: &Tensor, w: &Tensor, seqs: &[usize]) -> Result<Option<Tensor>> {
    use candle_core::{CpuStorage, Storage};
    let (m, k) = x.dims2()?;
    // f16/bf16 weights take the small-m kernel at any m: it widens them in
    // registers, where a GEMM would first convert the whole matrix on every call.
    let half = w.dtype() != DType::F32;
    let limit = vargpt_kernels::small_m_limit();
    let one = [m];
    let seqs = if seqs.is_empty() { &one[..] } else { seqs };
    if seqs.iter().sum::<usize>() != m {
        return Err(crate::error::ModelError::Internal(format!(
            "ragged rows: sequences of {seqs:?} for {m} rows"
        )));
    }
    let any_long = !half && seqs.iter().any(|&l| l > limit);
    if !x.device().is_cpu()
        || x.dtype() != DType::F32
        || m == 0
        || (any_long && !vargpt_kernels::Isa::Avx2.is_available())
    {
        return Ok(None);
    }
    let n = w.dim(0)?;
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (Some((x0, x1)), Some((w0, w1))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
    else {
        return Ok(None);
    };
    let (Storage::Cpu(CpuStorage::F32(xv)), Storage::Cpu(wv)) = (&*xs, &*ws) else {
        return Ok(None);
    };
    let xv = &xv[x0..x1];
    let mut out = vec![0f32; m * n];
    // Runs of consecutive sequences on the same kernel, each one call.
    let mut runs: Vec<(usize, usize, bool)> = Vec::new(); // (first row, rows, long)
    let mut row = 0;
    for &l in seqs.iter().filter(|&&l| l > 0) {
        let long = !half && l > limit;
        match runs.last_mut() {
            Some((_, rows, was_long)) if *was_long == long => *rows += l,
            _ => runs.push((row, l, long)),
        }
        row += l;
    }
    for (r0, rows, long) in runs {
        let (x, out) = (
            &xv[r0 * k..(r0 + rows) * k],
            &mut out[r0 * n..(r0 + rows) * n],
        );
        match wv {
            CpuStorage::F32(v) if long => {
                let done = vargpt_kernels::sgemm::sgemm_nt(&v[w0..w1], x, out, rows);
                debug_assert!(done, "AVX2 was checked above");
            }
            CpuStorage::F32(v) => vargpt_kernels::gemm_small_m_f32(&v[w0..w1], x, out, rows),
            CpuStorage::F16(v) => vargpt_kernels::gemm_small_m_f16(&v[w0..w1], x, out, rows),
            CpuStorage::BF16(v) => vargpt_kernels::gemm_small_m_bf16(&v[w0..w1], x, out, rows),
            _ => return Ok(None),
        }
    }
    debug_assert_eq!(w1 - w0, n * k);
    Ok(Some(Tensor::from_vec(out, (m, n), x.device())?))
}

/// Row-parallel linear: this rank's slice of the input features; partial products
/// are summed across ranks, then the (replicated) bias is added once.
#[derive(Debug, Clone)]
pub struct RowParallel {
    inner: Linear,
    bias: Option<Tensor>,
    shard: Shard,
}

impl RowParallel {
    /// This rank's [`Shard::range`] of the input features.
    pub fn load(vb: &Vb, bias: bool, shard: &Shard) -> Result<Self> {
        let inp = vb.weights().shape_of(&vb.name("weight"))?[1];
        let (start, len) = shard.range(inp);
        Self::load_cols(vb, bias, shard, start, len)
    }

    /// Input features `[start, start + len)` (e.g. the columns of this rank's
    /// attention heads); `len` may be 0 (a rank without heads adds zeros).
    pub fn load_cols(vb: &Vb, bias: bool, shard: &Shard, start: usize, len: usize) -> Result<Self> {
        let weight = if shard.world == 1 {
            vb.get_linear("weight")?
        } else {
            vb.get_narrow_linear("weight", 1, start, len)?
        };
        let bias = if bias { Some(vb.get("bias")?) } else { None };
        Ok(Self {
            inner: Linear::new(weight, None),
            bias,
            shard: shard.clone(),
        })
    }
    /// All rows of `x` as one sequence.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_seqs(x, &[])
    }
    /// `x`'s rows as sequences of the given lengths ([`Linear::forward_seqs`]).
    pub fn forward_seqs(&self, x: &Tensor, seqs: &[usize]) -> Result<Tensor> {
        let (out, inp) = self.inner.weight().dims2()?;
        let partial = if inp == 0 {
            // No input features on this rank: it still joins the all-reduce.
            Tensor::zeros((x.dim(0)?, out), x.dtype(), x.device())?
        } else {
            self.inner.forward_seqs(x, seqs)?
        };
        let y = self.shard.all_reduce(&partial)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// LayerNorm with biased variance, optional affine parameters.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    pub fn load(vb: &Vb, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: Some(vb.get("weight")?),
            bias: Some(vb.get("bias")?),
            eps,
        })
    }
    /// LayerNorm without affine parameters (VAR's `ln_wo_grad`).
    pub fn plain(eps: f64) -> Self {
        Self {
            weight: None,
            bias: None,
            eps,
        }
    }
    /// `forward(x) · scale + shift` (AdaLN; `scale`, `shift`: one value per feature).
    /// On CPU f32 with a plain norm this is one pass: the normalisation's own
    /// affine step does the same two roundings as the two broadcast ops.
    pub fn forward_modulated(&self, x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
        if self.weight.is_none() && self.bias.is_none() {
            if let Some(y) = cpu_ops::layer_norm(x, Some(scale), Some(shift), self.eps)? {
                return Ok(y);
            }
        }
        Ok(self
            .forward(x)?
            .broadcast_mul(scale)?
            .broadcast_add(shift)?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = cpu_ops::layer_norm(x, self.weight.as_ref(), self.bias.as_ref(), self.eps)?
        {
            return Ok(y);
        }
        let dt = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let mut y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dt)?;
        if let Some(w) = &self.weight {
            y = y.broadcast_mul(w)?;
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        Ok(y)
    }
}

/// LLaMA RMSNorm, computed in f32 like the reference.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn load(vb: &Vb, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight")?,
            eps,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = cpu_ops::rms_norm(x, &self.weight, self.eps)? {
            return Ok(y);
        }
        let dt = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let y = xf.broadcast_div(&(ms + self.eps)?.sqrt()?)?.to_dtype(dt)?;
        Ok(y.broadcast_mul(&self.weight)?)
    }
}

/// Exact (erf) GELU, as `nn.GELU()`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu_erf()?)
}

/// Tanh-approximated GELU, as `nn.GELU(approximate='tanh')`.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if let Some(y) = cpu_ops::unary(x, vargpt_kernels::act::gelu_tanh)? {
        return Ok(y);
    }
    Ok(x.gelu()?)
}

/// CLIP's `quick_gelu`: `x·σ(1.702x)`.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    if let Some(y) = cpu_ops::unary(x, vargpt_kernels::act::quick_gelu)? {
        return Ok(y);
    }
    Ok((x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?)
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    if let Some(y) = cpu_ops::unary(x, vargpt_kernels::act::silu)? {
        return Ok(y);
    }
    Ok(candle_nn::Activation::Silu.forward(x)?)
}

/// `silu(gate) · up`, fused on CPU f32.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if let Some(y) = cpu_ops::silu_mul(gate, up)? {
        return Ok(y);
    }
    Ok((silu(gate)? * up)?)
}

/// Softmax over the last dimension, in f32.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let dt = x.dtype();
    Ok(candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(dt)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Every `Linear` path on CPU (small-m tiles, the large-m GEMM, candle's
    /// matmul where neither runs) against an f64 sum, across the m = 128 split.
    #[test]
    fn linear_matches_f64_at_every_batch_size() -> Result<()> {
        let (n, k) = (70, 300);
        let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
        let w: Vec<f32> = (0..n * k).map(val).collect();
        let b: Vec<f32> = (0..n).map(|i| val(i * 31)).collect();
        let lin = Linear::new(
            Tensor::from_vec(w.clone(), (n, k), &Device::Cpu)?,
            Some(Tensor::from_vec(b.clone(), n, &Device::Cpu)?),
        );
        for m in [1, 8, 128, 129, 300] {
            let x: Vec<f32> = (0..m * k).map(|i| val(i + 17)).collect();
            let y = lin
                .forward(&Tensor::from_vec(x.clone(), (m, k), &Device::Cpu)?)?
                .to_vec2::<f32>()?;
            for (i, row) in y.iter().enumerate() {
                for (j, got) in row.iter().enumerate() {
                    let (mut s, mut mag) = (b[j] as f64, b[j].abs() as f64);
                    for p in 0..k {
                        let t = x[i * k + p] as f64 * w[j * k + p] as f64;
                        s += t;
                        mag += t.abs();
                    }
                    assert!(
                        (*got as f64 - s).abs() <= 1e-6 * mag,
                        "m={m} ({i},{j}): {got} vs {s}"
                    );
                }
            }
        }
        Ok(())
    }

    /// A sequence's rows get the same bits alone and in any ragged batch: short
    /// sequences (decode rows, small stages) beside long ones (prefill) whose
    /// length crosses the small-m limit, and short ones adding up past it. On
    /// AVX2 CPUs (or with `VARGPT_ISA=avx2`) the two lengths take different
    /// kernels, which is what this guards.
    #[test]
    fn ragged_rows_get_the_same_bits_as_alone() -> Result<()> {
        let (n, k) = (48, 96);
        let dev = Device::Cpu;
        let lin = Linear::new(Tensor::randn(0f32, 1.0, (n, k), &dev)?, None);
        for seqs in [
            vec![1, LONG + 5, 3],
            vec![LONG + 5, 1, 1, LONG + 1],
            vec![7; 2 * LONG / 7 + 3],
            vec![0, 2, 0, LONG, 0],
        ] {
            let m: usize = seqs.iter().sum();
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let together = lin.forward_seqs(&x, &seqs)?.to_vec2::<f32>()?;
            let mut row = 0;
            for &l in &seqs {
                let alone = lin.forward(&x.narrow(0, row, l)?)?.to_vec2::<f32>()?;
                assert_eq!(
                    alone,
                    together[row..row + l],
                    "{seqs:?}: sequence at row {row}"
                );
                row += l;
            }
        }
        assert!(lin
            .forward_seqs(&Tensor::zeros((4, k), DType::F32, &dev)?, &[1, 2])
            .is_err());
        Ok(())
    }

    /// Longer than the small-m limit of AVX2 CPUs.
    const LONG: usize = vargpt_kernels::SMALL_M_MAX + 1;
}
