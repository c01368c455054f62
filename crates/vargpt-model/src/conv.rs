//! Convolutions for the VQVAE decoder on CPU (f32): the algorithm choice and the
//! tensors around the kernels of [`vargpt_kernels::conv`].
//!
//! candle's CPU conv2d materialises an im2col matrix (9·C_in·H·W floats — 380 MB per
//! 160-channel conv at 256×256) before its GEMM. Here:
//! - 3×3 convolutions on 32×32 and larger use Winograd F(4×4, 3×3) (4× fewer
//!   multiply-adds than direct; F(2×2, 3×3), 2.25×, stays as an explicit choice).
//!   Measured with `bench conv` on a 2-vCPU Zen 5 at 160 channels × 256²: 31
//!   against 41 ms (AVX-512) and 44 against 68 ms (`VARGPT_ISA=avx2`);
//! - other odd kernels (1×1) are sums of shifted GEMMs over the zero-padded input.

use crate::cpu_ops::with_f32;
use crate::error::Result;
use candle_core::{DType, Tensor};
use vargpt_kernels::conv::{conv3x3_winograd, conv_shifted_gemm, ConvShape, Tile};

/// How a 3×3 convolution is computed (`Auto` picks by image size; the others exist
/// for the benchmark and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvAlgo {
    Auto,
    /// Winograd F(2×2, 3×3).
    Winograd,
    /// Winograd F(4×4, 3×3).
    Winograd4,
    ShiftedGemm,
}

/// Below this many output pixels the Winograd GEMMs are too thin (few tiles) to beat
/// the nine shifted GEMMs. Measured with `bench conv` on a 2-vCPU Zen 5, AVX-512
/// and `VARGPT_ISA=avx2` alike: at 16×16 (640 channels) the shifted GEMMs win
/// (6 against 14 ms), from 32×32 on F(4×4, 3×3) does (320 channels: 4.3–4.4 ms
/// against 4.9–8.6).
const WINOGRAD_MIN_PIXELS: usize = 32 * 32;

/// `x [1, C_in, H, W]` (f32) ⊛ `w [C_out, C_in, k, k]` + `b`, stride 1, "same" padding.
pub fn conv2d_same_f32(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    conv2d_same_f32_with(x, w, b, ConvAlgo::Auto)
}

/// [`conv2d_same_f32`] with an explicit algorithm for 3×3 kernels.
pub fn conv2d_same_f32_with(x: &Tensor, w: &Tensor, b: &Tensor, algo: ConvAlgo) -> Result<Tensor> {
    let (n, cin, h, wd) = x.dims4()?;
    let (cout, cin_w, kh, kw) = w.dims4()?;
    if n != 1 || cin != cin_w || kh != kw || kh % 2 == 0 {
        return candle_conv(x, w, b);
    }
    let bv: Vec<f32> = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if bv.len() != cout {
        return candle_conv(x, w, b);
    }
    let shape = ConvShape {
        cin,
        cout,
        h,
        w: wd,
        k: kh,
    };
    let winograd = match algo {
        _ if kh != 3 => None,
        ConvAlgo::Auto if h * wd >= WINOGRAD_MIN_PIXELS => Some(Tile::F4),
        ConvAlgo::Auto | ConvAlgo::ShiftedGemm => None,
        ConvAlgo::Winograd => Some(Tile::F2),
        ConvAlgo::Winograd4 => Some(Tile::F4),
    };
    let y = with_f32(x, |xv| {
        with_f32(w, |wv| {
            let mut y = vec![0f32; cout * h * wd];
            if let Some(tile) = winograd {
                conv3x3_winograd(xv, wv, &bv, &mut y, shape, tile);
            } else {
                conv_shifted_gemm(xv, wv, &bv, &mut y, shape);
            }
            y
        })
    })
    .flatten();
    match y {
        Some(y) => Ok(Tensor::from_vec(y, (1, cout, h, wd), x.device())?),
        // Not CPU f32 (or not contiguous): candle's general path.
        None => candle_conv(x, w, b),
    }
}

fn candle_conv(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = x.conv2d(w, w.dim(2)? / 2, 1, 1, 1)?;
    Ok(y.broadcast_add(&b.reshape((1, (), 1, 1))?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Direct convolution in f64: the ground truth every algorithm is held to.
    #[allow(clippy::too_many_arguments)]
    fn conv_f64(
        x: &[f32],
        cin: usize,
        h: usize,
        w: usize,
        wt: &[f32],
        cout: usize,
        k: usize,
        b: &[f32],
    ) -> Vec<f64> {
        let p = (k / 2) as isize;
        let mut y = vec![0f64; cout * h * w];
        for co in 0..cout {
            for r in 0..h {
                for c in 0..w {
                    let mut acc = b[co] as f64;
                    for ci in 0..cin {
                        for dy in 0..k {
                            for dx in 0..k {
                                let yy = r as isize + dy as isize - p;
                                let xx = c as isize + dx as isize - p;
                                if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                                    continue;
                                }
                                acc += x[(ci * h + yy as usize) * w + xx as usize] as f64
                                    * wt[((co * cin + ci) * k + dy) * k + dx] as f64;
                            }
                        }
                    }
                    y[(co * h + r) * w + c] = acc;
                }
            }
        }
        y
    }

    #[test]
    fn every_algorithm_matches_direct_f64() {
        let dev = Device::Cpu;
        // Sides that are not multiples of 2 or 4, narrower than a tile, one
        // wide row, several blocks per thread; 1×1 and 5×5 take the shifted
        // GEMMs whatever is asked.
        for (cin, cout, h, w, k) in [
            (3, 5, 7, 9, 3),
            (8, 4, 4, 4, 1),
            (16, 16, 5, 3, 3),
            (32, 24, 33, 600, 3),
            (7, 9, 1, 1, 3),
            (6, 5, 2, 3, 3),
            (9, 7, 3, 6, 3),
            (20, 12, 70, 45, 3),
            (13, 11, 37, 38, 3),
            (5, 3, 2, 3, 5),
        ] {
            let x = Tensor::randn(0f32, 1.0, (1, cin, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (cout, cin, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = conv_f64(&flat(&x), cin, h, w, &flat(&wt), cout, k, &flat(&b));
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for algo in [
                ConvAlgo::Auto,
                ConvAlgo::ShiftedGemm,
                ConvAlgo::Winograd,
                ConvAlgo::Winograd4,
            ] {
                let got = flat(&conv2d_same_f32_with(&x, &wt, &b, algo).unwrap());
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
                // f32 rounding over cin·k² terms of this scale. Measured: direct
                // and F(2×2) ≤ 6e-7 of the scale at cin 32, F(4×4) 3–7× that
                // (≤ 1.9e-6), so 4e-7·√(cin·k²) leaves F(4×4) a 3–5× margin
                // while a slip in any transform (an O(1) error) fails.
                let tol = 4e-7 * scale * ((cin * k * k) as f64).sqrt();
                assert!(
                    err <= tol,
                    "{algo:?} {cin}x{cout} {h}x{w} k{k}: {err:.3e} > {tol:.3e}"
                );
            }
        }
    }
}
