//! Fused CPU kernels for the elementwise chains around the matmuls: LayerNorm,
//! RMSNorm and GroupNorm(+SiLU). candle runs each op of such a chain (mean, sub,
//! sqr, mean, add, sqrt, div, mul, add) as its own single-threaded pass that
//! allocates its result; here one parallel pass reads the input once and writes the
//! output once. Arithmetic follows the tensor path (f32 values, `(x − μ) / √(σ² + ε)`)
//! with sums accumulated in f64, so results agree to rounding.
//!
//! Each function returns `None` when the input is not a CPU f32 tensor; callers then
//! take the candle path (GPU, half activations).

use crate::error::Result;
use candle_core::{CpuStorage, DType, Storage, Tensor};
use rayon::prelude::*;

/// Below this many elements a single thread is faster than fanning out.
const PAR_MIN: usize = 1 << 15;

fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Runs `f` on the contiguous f32 data of a CPU tensor.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if !is_cpu_f32(t) {
        return None;
    }
    let (s, l) = t.storage_and_layout();
    let (a, b) = l.contiguous_offsets()?;
    match &*s {
        Storage::Cpu(CpuStorage::F32(v)) => Some(f(&v[a..b])),
        _ => None,
    }
}

/// The kernel's output (if it ran) as a tensor of `like`'s shape and device.
fn shaped_like(out: Option<Vec<f32>>, like: &Tensor) -> Result<Option<Tensor>> {
    Ok(out
        .map(|v| Tensor::from_vec(v, like.shape(), like.device()))
        .transpose()?)
}

fn f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

/// Applies `row_fn(row_index, src, dst)` to every `width`-long row, in parallel
/// when large.
fn map_rows(
    x: &[f32],
    width: usize,
    row_fn: impl Fn(usize, &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    if x.len() >= PAR_MIN && x.len() / width > 1 {
        out.par_chunks_mut(width)
            .zip(x.par_chunks(width))
            .enumerate()
            .for_each(|(r, (d, s))| row_fn(r, s, d));
    } else {
        out.chunks_mut(width)
            .zip(x.chunks(width))
            .enumerate()
            .for_each(|(r, (d, s))| row_fn(r, s, d));
    }
    out
}

/// Σ f(v) over `s`: eight f32 lanes per block of 1024 values (vectorised), blocks
/// summed in f64 — far below the tensor path's own rounding, at memory speed.
///
/// Four full blocks are summed side by side (four independent add chains instead
/// of one latency-bound chain); each block's arithmetic, and the order blocks
/// enter the total, are exactly those of summing it alone.
#[inline(always)]
fn blocked_sum(s: &[f32], f: impl Fn(f32) -> f32 + Copy) -> f64 {
    const B: usize = 1024;
    let mut total = 0f64;
    let mut quads = s.chunks_exact(4 * B);
    for quad in &mut quads {
        let mut acc = [[0f32; 8]; 4];
        for i in (0..B).step_by(8) {
            for (b, a) in acc.iter_mut().enumerate() {
                let c = &quad[b * B + i..b * B + i + 8];
                for l in 0..8 {
                    a[l] += f(c[l]);
                }
            }
        }
        for a in &acc {
            total += block_total(a, &[], f); // full blocks have no tail
        }
    }
    for block in quads.remainder().chunks(B) {
        let mut acc = [0f32; 8];
        let mut it = block.chunks_exact(8);
        for c in &mut it {
            for l in 0..8 {
                acc[l] += f(c[l]);
            }
        }
        total += block_total(&acc, it.remainder(), f);
    }
    total
}

/// One block's contribution to [`blocked_sum`]: its eight lanes in f64, plus
/// the f32 sum of its `< 8` trailing values.
#[inline(always)]
fn block_total(lanes: &[f32; 8], tail: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let tail: f32 = tail.iter().map(|&v| f(v)).sum();
    lanes.iter().map(|&a| a as f64).sum::<f64>() + tail as f64
}

#[inline(always)]
fn mean_var(s: &[f32]) -> (f32, f32) {
    let n = s.len() as f64;
    let mean = (blocked_sum(s, |v| v) / n) as f32;
    let var = blocked_sum(s, |v| (v - mean) * (v - mean)) / n;
    (mean, var as f32)
}

/// An element-wise kernel from `vargpt_kernels::act` applied to a CPU f32 tensor.
pub fn unary(x: &Tensor, f: fn(&[f32], &mut [f32])) -> Result<Option<Tensor>> {
    let out = with_f32(x, |xs| {
        let mut out = vec![0f32; xs.len()];
        f(xs, &mut out);
        out
    });
    shaped_like(out, x)
}

/// `silu(gate) · up` in one pass (LLaMA's MLP), for CPU f32 tensors of one shape.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    if gate.shape() != up.shape() {
        return Ok(None);
    }
    let out = with_f32(gate, |g| {
        with_f32(up, |u| {
            let mut out = vec![0f32; g.len()];
            vargpt_kernels::act::silu_mul(g, u, &mut out);
            out
        })
    })
    .flatten();
    shaped_like(out, gate)
}

/// LayerNorm over the last dimension (biased variance), optional affine.
pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Option<Tensor>> {
    // Checked before the weights are read back: on a GPU that would be a device →
    // host copy on every call, for nothing.
    if !is_cpu_f32(x) {
        return Ok(None);
    }
    let width = x.dim(candle_core::D::Minus1)?;
    let w = weight.map(f32_vec).transpose()?;
    let b = bias.map(f32_vec).transpose()?;
    let out = with_f32(x, |xs| {
        map_rows(xs, width, |_, s, d| {
            let (mean, var) = mean_var(s);
            let den = (var + eps as f32).sqrt();
            for (i, (o, &v)) in d.iter_mut().zip(s).enumerate() {
                let mut y = (v - mean) / den;
                if let Some(w) = &w {
                    y *= w[i];
                }
                if let Some(b) = &b {
                    y += b[i];
                }
                *o = y;
            }
        })
    });
    shaped_like(out, x)
}

/// `x + a · g` with `g` broadcast over the rows (`x`, `a`: `[…, width]`, `g`: `width`
/// values), for CPU f32 tensors of one shape: the VAR's gated residual in one pass,
/// with the two roundings (`a·g`, then `+`) of the tensor ops it replaces.
pub fn add_gated(x: &Tensor, a: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
    if !is_cpu_f32(x) || !is_cpu_f32(a) || x.shape() != a.shape() {
        return Ok(None);
    }
    let width = x.dim(candle_core::D::Minus1)?;
    let g = f32_vec(g)?;
    if g.len() != width {
        return Ok(None);
    }
    let out = with_f32(x, |xs| {
        with_f32(a, |av| {
            map_rows(xs, width, |r, s, d| {
                let t = &av[r * width..(r + 1) * width];
                for (((o, &v), &w), &gi) in d.iter_mut().zip(s).zip(t).zip(&g) {
                    *o = v + w * gi;
                }
            })
        })
    })
    .flatten();
    shaped_like(out, x)
}

/// LLaMA RMSNorm over the last dimension: `x / √(mean(x²) + ε) · w`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    if !is_cpu_f32(x) {
        return Ok(None);
    }
    let width = x.dim(candle_core::D::Minus1)?;
    let w = f32_vec(weight)?;
    let out = with_f32(x, |xs| {
        map_rows(xs, width, |_, s, d| {
            let ms =
                (s.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / s.len() as f64) as f32;
            let den = (ms + eps as f32).sqrt();
            for ((o, &v), &wi) in d.iter_mut().zip(s).zip(&w) {
                *o = v / den * wi;
            }
        })
    });
    shaped_like(out, x)
}

/// One group of [`group_norm`]: `s` holds its channels (`hw` values each), `d`
/// receives them normalised (then SiLU'd when `then_silu`); `w`, `b` start at
/// the group's first channel.
#[inline(always)]
fn group_norm_group(
    s: &[f32],
    d: &mut [f32],
    hw: usize,
    w: &[f32],
    b: &[f32],
    eps: f32,
    then_silu: bool,
) {
    let (mean, var) = mean_var(s);
    let den = (var + eps).sqrt();
    for (k, (dc, sc)) in d.chunks_mut(hw).zip(s.chunks(hw)).enumerate() {
        let (wc, bc) = (w[k], b[k]);
        for (o, &v) in dc.iter_mut().zip(sc) {
            *o = (v - mean) / den * wc + bc;
        }
        if then_silu {
            vargpt_kernels::act::silu_inplace_serial(dc);
        }
    }
}

/// [`group_norm_group`] compiled for AVX-512 (the same arithmetic, 16 lanes; the
/// VQVAE's 256×256 maps made this 3× the memory-bound time at SSE width).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn group_norm_group_avx512(
    s: &[f32],
    d: &mut [f32],
    hw: usize,
    w: &[f32],
    b: &[f32],
    eps: f32,
    then_silu: bool,
) {
    group_norm_group(s, d, hw, w, b, eps, then_silu)
}

/// GroupNorm over `[1, C, H, W]` with per-channel affine, optionally followed by SiLU.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    then_silu: bool,
) -> Result<Option<Tensor>> {
    let (n, c, h, wd) = x.dims4()?;
    if !is_cpu_f32(x) || n != 1 || c % groups != 0 {
        return Ok(None);
    }
    let (w, b) = (f32_vec(weight)?, f32_vec(bias)?);
    let hw = h * wd;
    let per_group = c / groups;
    let out = with_f32(x, |xs| {
        let mut out = vec![0f32; xs.len()];
        let group = |g: usize, d: &mut [f32], s: &[f32]| {
            let (ws, bs) = (&w[g * per_group..], &b[g * per_group..]);
            group_norm_group(s, d, hw, ws, bs, eps as f32, then_silu)
        };
        #[cfg(target_arch = "x86_64")]
        let avx512 = vargpt_kernels::Isa::Avx512.is_available();
        out.par_chunks_mut(per_group * hw)
            .zip(xs.par_chunks(per_group * hw))
            .enumerate()
            .for_each(|(g, (d, s))| {
                #[cfg(target_arch = "x86_64")]
                if avx512 {
                    // SAFETY: AVX-512F/AVX2/FMA checked at run time.
                    return unsafe {
                        group_norm_group_avx512(
                            s,
                            d,
                            hw,
                            &w[g * per_group..],
                            &b[g * per_group..],
                            eps as f32,
                            then_silu,
                        )
                    };
                }
                group(g, d, s)
            });
        out
    });
    shaped_like(out, x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::silu;
    use candle_core::{Device, D};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn adaln_and_gated_residual_have_the_tensor_ops_bits() {
        let dev = Device::Cpu;
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        for (rows, width) in [(1, 8), (3, 512), (300, 257)] {
            let x = Tensor::randn(0f32, 1.5, (rows, width), &dev).unwrap();
            let a = Tensor::randn(0f32, 1.0, (rows, width), &dev).unwrap();
            let s = Tensor::randn(0f32, 0.3, (1, width), &dev).unwrap();
            let b = Tensor::randn(0f32, 0.3, (1, width), &dev).unwrap();
            let ln = crate::nn::LayerNorm::plain(1e-6);
            let scale = (&s + 1.0).unwrap();
            let fused = ln.forward_modulated(&x, &scale, &b).unwrap();
            let ops = ln
                .forward(&x)
                .unwrap()
                .broadcast_mul(&scale)
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            assert_eq!(bits(&fused), bits(&ops), "AdaLN {rows}x{width}");
            let fused = add_gated(&x, &a, &s).unwrap().expect("cpu f32");
            let ops = (&x + a.broadcast_mul(&s).unwrap()).unwrap();
            assert_eq!(bits(&fused), bits(&ops), "gated residual {rows}x{width}");
        }
    }

    #[test]
    fn norms_match_the_tensor_path() {
        let dev = Device::Cpu;
        for (rows, width) in [(1, 8), (3, 1024), (300, 257)] {
            let x = (Tensor::randn(0f32, 2.0, (rows, width), &dev).unwrap() + 0.7).unwrap();
            let w = Tensor::randn(0f32, 1.0, width, &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, width, &dev).unwrap();
            // Tensor-path references, written out with candle ops.
            let mean = x.mean_keepdim(D::Minus1).unwrap();
            let xc = x.broadcast_sub(&mean).unwrap();
            let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let ln = xc
                .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&w)
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let got = layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap().unwrap();
            assert!(max_diff(&ln, &got) < 1e-5, "layer_norm {rows}x{width}");
            let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let rms = x
                .broadcast_div(&(ms + 1e-6).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&w)
                .unwrap();
            let got = rms_norm(&x, &w, 1e-6).unwrap().unwrap();
            assert!(max_diff(&rms, &got) < 1e-5, "rms_norm {rows}x{width}");
        }
    }

    #[test]
    fn group_norm_silu_matches_the_tensor_path() {
        let dev = Device::Cpu;
        let (c, h, w) = (64, 9, 7);
        let x = (Tensor::randn(0f32, 3.0, (1, c, h, w), &dev).unwrap() - 0.4).unwrap();
        let wt = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
        let bs = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
        let g = x.reshape((1, 32, (c / 32) * h * w)).unwrap();
        let mean = g.mean_keepdim(D::Minus1).unwrap();
        let gc = g.broadcast_sub(&mean).unwrap();
        let var = gc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let want = gc
            .broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap())
            .unwrap()
            .reshape((1, c, h, w))
            .unwrap()
            .broadcast_mul(&wt.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&bs.reshape((1, c, 1, 1)).unwrap())
            .unwrap();
        let got = group_norm(&x, 32, &wt, &bs, 1e-6, false).unwrap().unwrap();
        assert!(max_diff(&want, &got) < 1e-5);
        let got = group_norm(&x, 32, &wt, &bs, 1e-6, true).unwrap().unwrap();
        assert!(max_diff(&silu(&want).unwrap(), &got) < 1e-5);
    }
}
