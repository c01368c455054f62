//! 3×3 (and 1×1) convolutions for the VQVAE decoder as sums of shifted GEMMs.
//!
//! candle's CPU conv2d materialises an im2col matrix (9·C_in·H·W floats — 380 MB per
//! 160-channel conv at 256×256) before its GEMM. Here the input is zero-padded once
//! and each of the 9 taps is one GEMM reading the padded plane in place: computing
//! the output over the padded width turns every shifted window into a plain strided
//! matrix, so no copy per tap is needed. Two garbage columns per row are dropped at
//! the end. Same arithmetic (f32 accumulate), a fraction of the memory traffic.

use crate::error::Result;
use candle_core::{DType, Tensor};

/// `x [1, C_in, H, W]` (f32) ⊛ `w [C_out, C_in, k, k]` + `b`, stride 1, "same" padding.
pub fn conv2d_same_f32(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, cin, h, wd) = x.dims4()?;
    let (cout, cin_w, kh, kw) = w.dims4()?;
    if n != 1
        || cin != cin_w
        || kh != kw
        || kh % 2 == 0
        || x.dtype() != DType::F32
        || w.dtype() != DType::F32
    {
        // Unusual cases: candle's general path.
        let y = x.conv2d(w, kh / 2, 1, 1, 1)?;
        return Ok(y.broadcast_add(&b.reshape((1, (), 1, 1))?)?);
    }
    let pad = kh / 2;
    let (hp, wp) = (h + 2 * pad, wd + 2 * pad);
    let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
    let bv: Vec<f32> = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    // Padded input with one extra row so the last tap's window stays in bounds.
    let plane = (hp + 1) * wp;
    let mut xp = vec![0f32; cin * plane];
    for c in 0..cin {
        for y in 0..h {
            let src = &xv[(c * h + y) * wd..(c * h + y + 1) * wd];
            let dst = c * plane + (y + pad) * wp + pad;
            xp[dst..dst + wd].copy_from_slice(src);
        }
    }
    let p = h * wp; // output positions over the padded width
    let mut out = vec![0f32; cout * p];
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    for dy in 0..kh {
        for dx in 0..kw {
            let tap = dy * kw + dx;
            let off = dy * wp + dx;
            // SAFETY: lhs is w[:, :, dy, dx] (cout × cin, row stride cin·k², col stride k²),
            // rhs is the padded input shifted by `off` (cin × p, row stride `plane`, col
            // stride 1; off + p ≤ plane thanks to the extra row), dst is cout × p.
            unsafe {
                gemm::gemm(
                    cout,
                    p,
                    cin,
                    out.as_mut_ptr(),
                    1,
                    p as isize,
                    tap > 0,
                    wv.as_ptr().add(tap),
                    (kh * kw) as isize,
                    (cin * kh * kw) as isize,
                    xp.as_ptr().add(off),
                    1,
                    plane as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            }
        }
    }
    // Drop the padding columns and add the bias.
    let mut y = vec![0f32; cout * h * wd];
    for co in 0..cout {
        for r in 0..h {
            let src = &out[co * p + r * wp..co * p + r * wp + wd];
            let dst = &mut y[(co * h + r) * wd..(co * h + r + 1) * wd];
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s + bv[co];
            }
        }
    }
    Ok(Tensor::from_vec(y, (1, cout, h, wd), x.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_conv2d() {
        let dev = Device::Cpu;
        for (cin, cout, h, w, k) in [(3, 5, 7, 9, 3), (8, 4, 4, 4, 1), (16, 16, 5, 3, 3)] {
            let x = Tensor::randn(0f32, 1.0, (1, cin, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (cout, cin, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
            let want = x
                .conv2d(&wt, k / 2, 1, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, cout, 1, 1)).unwrap())
                .unwrap();
            let got = conv2d_same_f32(&x, &wt, &b).unwrap();
            let err = (want - got)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(err < 1e-4, "{cin}x{cout} {h}x{w} k{k}: {err}");
        }
    }
}
