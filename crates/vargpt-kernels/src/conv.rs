//! Stride-1 "same" 2-D convolutions of one image in f32, for the VQVAE decoder
//! (`vargpt-model`'s `conv` picks the algorithm and wraps these in tensors).
//!
//! A general im2col materialises 9·C_in·H·W floats (380 MB per 160-channel
//! conv at 256×256) before its GEMM. Instead:
//! - [`conv3x3_winograd`]: Winograd F(4×4, 3×3) ([`Tile::F4`], 4× fewer
//!   multiply-adds than direct) or F(2×2, 3×3) ([`Tile::F2`], 2.25×), computed
//!   block by block so the transformed tiles stay in cache;
//! - [`conv_shifted_gemm`]: any odd kernel as a sum of shifted GEMMs: the input
//!   is zero-padded once and each tap is one GEMM reading the padded plane in
//!   place (computing the output over the padded width turns every shifted
//!   window into a plain strided matrix); two garbage columns per row are
//!   dropped at the end. A 1×1 kernel is one plain GEMM.
//!
//! Layouts are PyTorch's: input `[C_in, H, W]`, weight `[C_out, C_in, k, k]`,
//! bias `[C_out]`, output `[C_out, H, W]`, all row-major. Both run on the
//! current rayon pool.

mod shifted;
mod winograd;
mod winograd_f2;
mod winograd_f4;

pub use winograd::Tile;

/// The sizes of one convolution: `C_in × H × W` in, `C_out × H × W` out, a
/// `k × k` kernel (odd), stride 1, zero padding `k / 2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Image height.
    pub h: usize,
    /// Image width.
    pub w: usize,
    /// Kernel side (odd).
    pub k: usize,
}

impl ConvShape {
    /// Panics unless the slices have the sizes of this shape (the kernels
    /// write through raw pointers sized from it).
    fn check(&self, x: &[f32], weight: &[f32], bias: &[f32], out: &[f32]) {
        let ConvShape { cin, cout, h, w, k } = *self;
        assert!(k % 2 == 1, "conv: even kernel side {k}");
        assert_eq!(x.len(), cin * h * w, "conv: input is not [C_in, H, W]");
        assert_eq!(weight.len(), cout * cin * k * k, "conv: weight shape");
        assert_eq!(bias.len(), cout, "conv: bias is not [C_out]");
        assert_eq!(out.len(), cout * h * w, "conv: output is not [C_out, H, W]");
    }
}

/// `out = x ⊛ weight + bias` for a 3×3 kernel with Winograd tiles of size
/// `tile`. Panics if `shape.k != 3` or a slice does not match `shape`.
pub fn conv3x3_winograd(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    out: &mut [f32],
    shape: ConvShape,
    tile: Tile,
) {
    shape.check(x, weight, bias, out);
    assert_eq!(shape.k, 3, "conv3x3_winograd: kernel side {}", shape.k);
    let ConvShape {
        cin, cout, h, w, ..
    } = shape;
    winograd::conv3x3_winograd(x, cin, h, w, weight, cout, bias, out, tile);
}

/// `out = x ⊛ weight + bias` as one GEMM per kernel tap (any odd side). Panics
/// if a slice does not match `shape`.
pub fn conv_shifted_gemm(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    out: &mut [f32],
    shape: ConvShape,
) {
    shape.check(x, weight, bias, out);
    let ConvShape { cin, cout, h, w, k } = shape;
    shifted::conv_shifted_gemm(x, cin, h, w, weight, cout, k, bias, out);
}
