//! A Rust port of Pillow's separable resampling (`src/libImaging/Resample.c`,
//! Pillow 10.4.0) for 8-bit interleaved images, reproducing `Image.resize`
//! bit for bit.
//!
//! The algorithm, as Pillow implements it:
//!
//! * For each axis a set of filter weights is computed per output index:
//!   `scale = in / out`, `filterscale = max(scale, 1)` (so downscaling
//!   antialiases), `support = filter_support * filterscale`, sample centre
//!   `(i + 0.5) * scale`, taps `[trunc(centre - support + 0.5),
//!   trunc(centre + support + 0.5))` clipped to the image, weight of tap `x` =
//!   `filter((x - centre + 0.5) / filterscale)`, normalised to sum 1 (in
//!   `f64`).
//! * The weights are converted to fixed point with 22 fractional bits
//!   (`PRECISION_BITS = 32 - 8 - 2`), rounding half away from zero.
//! * Horizontal pass first (only when the width changes), producing an 8-bit
//!   intermediate image of just the rows the vertical pass needs, then the
//!   vertical pass (only when the height changes). Every pass accumulates in
//!   `i32` starting at `1 << 21` (rounding), shifts right arithmetically by 22
//!   and clamps to `0..=255`.
//!
//! Because the two passes are separable and every output pixel only depends on
//! its own row/column weights, any rectangular window of the output can be
//! computed on its own with results identical to resizing the whole image and
//! cropping afterwards; [`pil_resize_region`] exploits this so that "resize then
//! center crop" never materialises the full resized image.

use std::ops::Range;

use image::RgbImage;

/// Number of fractional bits of the fixed-point weights (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Initial accumulator value: one half in fixed point, i.e. round to nearest.
const ROUND_HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Pillow's resampling filters (the ones `Resample.c` implements).
///
/// `Image.NEAREST` is not a convolution filter in Pillow (it goes through an
/// affine transform) and is not provided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PilFilter {
    /// `Image.BOX` (4): support 0.5.
    Box,
    /// `Image.BILINEAR` (2): triangle, support 1.
    Bilinear,
    /// `Image.HAMMING` (5): Hamming-windowed sinc, support 1.
    Hamming,
    /// `Image.BICUBIC` (3): Keys cubic with `a = -0.5`, support 2.
    Bicubic,
    /// `Image.LANCZOS` (1): Lanczos-3, support 3.
    Lanczos,
}

impl PilFilter {
    /// Maps PIL's integer resampling code (as stored in `preprocessor_config.json`
    /// under `resample`) to a filter. Returns `None` for `NEAREST` (0) and unknown codes.
    pub fn from_pil_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::Lanczos),
            2 => Some(Self::Bilinear),
            3 => Some(Self::Bicubic),
            4 => Some(Self::Box),
            5 => Some(Self::Hamming),
            _ => None,
        }
    }

    /// PIL's integer code of this filter.
    pub fn pil_code(self) -> u32 {
        match self {
            Self::Lanczos => 1,
            Self::Bilinear => 2,
            Self::Bicubic => 3,
            Self::Box => 4,
            Self::Hamming => 5,
        }
    }

    fn support(self) -> f64 {
        match self {
            Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    /// The filter kernel, with Pillow's exact floating-point expressions.
    fn eval(self, x: f64) -> f64 {
        match self {
            Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes the window constants as C `float` literals.
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Self::Bicubic => {
                // Keys' cubic convolution with a = -0.5 ((a + 2) = 1.5, (a + 3) = 2.5).
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    (1.5 * x - 2.5) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Fixed-point filter weights of one axis, for a contiguous range of output indices.
#[derive(Debug)]
struct AxisCoeffs {
    /// Maximum taps per output index (row stride of `weights`).
    ksize: usize,
    /// Per output index: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `bounds.len() * ksize` weights, 22-bit fixed point.
    weights: Vec<i32>,
}

impl AxisCoeffs {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full-extent box
    /// `(0, in_size)`, restricted to output indices `outputs` (which must lie in `0..out_size`).
    fn new(in_size: usize, out_size: usize, outputs: Range<usize>, filter: PilFilter) -> Self {
        // Pillow passes the box as C floats, so the input extent goes through f32.
        let extent = f64::from(in_size as f32);
        let scale = extent / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = (support.ceil() as usize) * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;

        let n = outputs.len();
        let mut bounds = Vec::with_capacity(n);
        let mut weights = vec![0i32; n * ksize];
        let mut taps = vec![0f64; ksize];
        for (row, xx) in weights.chunks_exact_mut(ksize).zip(outputs) {
            let center = (xx as f64 + 0.5) * scale;
            // C `(int)` truncates toward zero; `as` does the same (and saturates).
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let len = ((xmax - xmin).max(0) as usize).min(ksize);
            let xmin = xmin as usize;

            let mut total = 0.0;
            for (x, tap) in taps[..len].iter_mut().enumerate() {
                let w = filter.eval(((x + xmin) as f64 - center + 0.5) * inv_filterscale);
                *tap = w;
                total += w;
            }
            for (tap, out) in taps[..len].iter().zip(row.iter_mut()) {
                let k = if total != 0.0 { tap / total } else { *tap };
                *out = to_fixed(k);
            }
            bounds.push((xmin, len));
        }
        Self {
            ksize,
            bounds,
            weights,
        }
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (start, len) = self.bounds[i];
        (start, &self.weights[i * self.ksize..i * self.ksize + len])
    }

    /// Range of input indices touched by all outputs (they are monotone in the output index).
    fn input_span(&self) -> Range<usize> {
        match (self.bounds.first(), self.bounds.last()) {
            (Some(&(first, _)), Some(&(last, len))) => first..(last + len).max(first),
            _ => 0..0,
        }
    }
}

/// `normalize_coeffs_8bpc`: round half away from zero to 22-bit fixed point.
fn to_fixed(k: f64) -> i32 {
    let scaled = k * f64::from(1u32 << PRECISION_BITS);
    if k < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Pillow's `clip8`: arithmetic shift out the fraction, clamp to a byte.
#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A borrowed interleaved 8-bit image with `C` channels.
#[derive(Clone, Copy)]
struct View<'a, const C: usize> {
    data: &'a [u8],
    width: usize,
    height: usize,
}

impl<const C: usize> View<'_, C> {
    fn row(&self, y: usize) -> &[u8] {
        let stride = self.width * C;
        &self.data[y * stride..(y + 1) * stride]
    }
}

/// Horizontal pass over input rows `rows`; output is `rows.len() x coeffs.bounds.len()`.
///
/// Accumulation uses wrapping arithmetic like the C code; with normalised
/// weights the sums stay far below `i32::MAX` (|sum| < 1.2 * 255 * 2^22).
fn horizontal<const C: usize>(
    src: View<'_, C>,
    rows: Range<usize>,
    coeffs: &AxisCoeffs,
) -> Vec<u8> {
    let out_w = coeffs.bounds.len();
    let mut out = vec![0u8; rows.len() * out_w * C];
    if out.is_empty() {
        return out;
    }
    for (out_row, y) in out.chunks_exact_mut(out_w * C).zip(rows) {
        let in_row = src.row(y);
        for (xx, px) in out_row.chunks_exact_mut(C).enumerate() {
            let (xmin, k) = coeffs.taps(xx);
            let taps = &in_row[xmin * C..(xmin + k.len()) * C];
            let mut acc = [ROUND_HALF; C];
            for (p, &w) in taps.chunks_exact(C).zip(k) {
                for c in 0..C {
                    acc[c] = acc[c].wrapping_add(i32::from(p[c]).wrapping_mul(w));
                }
            }
            for c in 0..C {
                px[c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// Vertical pass. `src` rows are indexed relative to `row_base` (the coefficient
/// bounds are absolute input rows); only pixel columns `cols` of `src` are used.
fn vertical<const C: usize>(
    src: View<'_, C>,
    row_base: usize,
    cols: Range<usize>,
    coeffs: &AxisCoeffs,
) -> Vec<u8> {
    let out_h = coeffs.bounds.len();
    let row_len = cols.len() * C;
    let mut out = vec![0u8; out_h * row_len];
    if out.is_empty() {
        return out;
    }
    let byte_cols = cols.start * C..cols.end * C;
    let mut acc = vec![0i32; row_len];
    for (yy, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let (ymin, k) = coeffs.taps(yy);
        acc.fill(ROUND_HALF);
        for (dy, &w) in k.iter().enumerate() {
            let in_row = &src.row(ymin + dy - row_base)[byte_cols.clone()];
            for (a, &p) in acc.iter_mut().zip(in_row) {
                *a = a.wrapping_add(i32::from(p).wrapping_mul(w));
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Computes the window `xs x ys` of Pillow's `resize((out_w, out_h), filter)` of `src`.
///
/// Returns `ys.len() * xs.len() * C` bytes. Ranges must lie within the output size.
fn resample_window<const C: usize>(
    src: View<'_, C>,
    out_w: usize,
    out_h: usize,
    xs: Range<usize>,
    ys: Range<usize>,
    filter: PilFilter,
) -> Vec<u8> {
    debug_assert!(xs.end <= out_w && ys.end <= out_h);
    if xs.is_empty() || ys.is_empty() {
        return Vec::new();
    }
    // Pillow skips a pass when that dimension is unchanged (full-image box).
    let need_horizontal = out_w != src.width;
    let need_vertical = out_h != src.height;

    let vert = need_vertical.then(|| AxisCoeffs::new(src.height, out_h, ys.clone(), filter));
    // Input rows the vertical pass reads (or the output rows themselves if it is skipped).
    let rows = match &vert {
        Some(v) => v.input_span(),
        None => ys.clone(),
    };

    // After the horizontal pass, `stage` holds rows `rows` and columns `cols` of
    // an image whose width is `stage.width`.
    let hbuf;
    let (stage, cols) = if need_horizontal {
        let horiz = AxisCoeffs::new(src.width, out_w, xs.clone(), filter);
        hbuf = horizontal(src, rows.clone(), &horiz);
        let view = View::<C> {
            data: &hbuf,
            width: xs.len(),
            height: rows.len(),
        };
        (view, 0..xs.len())
    } else {
        let stride = src.width * C;
        let view = View::<C> {
            data: &src.data[rows.start * stride..rows.end * stride],
            width: src.width,
            height: rows.len(),
        };
        (view, xs.clone())
    };

    match &vert {
        Some(v) => vertical(stage, rows.start, cols, v),
        None => {
            let mut out = Vec::with_capacity(ys.len() * cols.len() * C);
            for y in 0..stage.height {
                out.extend_from_slice(&stage.row(y)[cols.start * C..cols.end * C]);
            }
            out
        }
    }
}

fn rgb_view(img: &RgbImage) -> View<'_, 3> {
    View {
        data: img.as_raw(),
        width: img.width() as usize,
        height: img.height() as usize,
    }
}

/// `PIL.Image.resize((width, height), filter)` of an RGB image, bit-exact with Pillow 10.4.
///
/// A resize to the same size returns a copy (Pillow does the same). Resizing an
/// empty image to a non-empty size yields black pixels (what Pillow's
/// arithmetic gives: no taps, sum of weights 0).
pub fn pil_resize(img: &RgbImage, width: u32, height: u32, filter: PilFilter) -> RgbImage {
    pil_resize_region(img, width, height, 0, 0, width, height, filter)
}

/// The window `[left, left + crop_w) x [top, top + crop_h)` of
/// `pil_resize(img, full_w, full_h, filter)`, computed without resizing the
/// rest of the image. The window is clipped to the resized image, so the
/// returned image may be smaller than `crop_w x crop_h`.
#[allow(clippy::too_many_arguments)]
pub fn pil_resize_region(
    img: &RgbImage,
    full_w: u32,
    full_h: u32,
    left: u32,
    top: u32,
    crop_w: u32,
    crop_h: u32,
    filter: PilFilter,
) -> RgbImage {
    let clip = |start: u32, len: u32, full: u32| -> Range<usize> {
        let s = start.min(full) as usize;
        let e = (u64::from(start) + u64::from(len)).min(u64::from(full)) as usize;
        s..e
    };
    let xs = clip(left, crop_w, full_w);
    let ys = clip(top, crop_h, full_h);
    let (w, h) = (xs.len() as u32, ys.len() as u32);
    let data = resample_window(
        rgb_view(img),
        full_w as usize,
        full_h as usize,
        xs,
        ys,
        filter,
    );
    RgbImage::from_raw(w, h, data).expect("resample_window returns w*h*3 bytes")
}

/// Output `(width, height)` of transformers' `get_resize_output_image_size(image,
/// shortest_edge, default_to_square=False)`: the short side becomes
/// `shortest_edge`, the long side `int(shortest_edge * long / short)` (the
/// quotient computed in `f64` as Python's true division does, then truncated).
/// Ties (square images) count as "width is the short side", as in transformers.
///
/// Returns `(0, 0)` for an empty input.
pub fn shortest_edge_output_size(width: u32, height: u32, shortest_edge: u32) -> (u64, u64) {
    if width == 0 || height == 0 {
        return (0, 0);
    }
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    // The integer product is exact in f64 (< 2^64 but we only need < 2^53: u32 * u32
    // can exceed that, in which case Python would also round the int -> float).
    let product = u64::from(shortest_edge) * u64::from(long);
    let new_long = python_true_div(product, u64::from(short)) as u64;
    let new_short = u64::from(shortest_edge);
    if width <= height {
        (new_short, new_long)
    } else {
        (new_long, new_short)
    }
}

/// Python's `int / int` (correctly rounded quotient) for the operand sizes we meet.
fn python_true_div(a: u64, b: u64) -> f64 {
    const EXACT: u64 = 1 << 53;
    if a < EXACT && b < EXACT {
        // Both exactly representable: IEEE division is correctly rounded.
        a as f64 / b as f64
    } else {
        // Split into integer quotient and remainder; the result is only used after
        // truncation, and the integer part is exact below 2^53.
        let q = a / b;
        let r = a % b;
        q as f64 + r as f64 / b as f64
    }
}

/// Resize so that the shortest edge equals `shortest_edge`, exactly as
/// transformers' `CLIPImageProcessor.resize` does with `size={"shortest_edge": s}`
/// and `resample=BICUBIC` (PIL `Image.resize`).
///
/// The whole resized image is materialised: for an extreme aspect ratio the
/// long side can be huge (and the allocation can fail). [`crate::preprocess`]
/// avoids this by only computing the center-cropped window; prefer it.
pub fn resize_shortest_edge_pil_bicubic(img: &RgbImage, shortest_edge: u32) -> RgbImage {
    let (w, h) = shortest_edge_output_size(img.width(), img.height(), shortest_edge);
    let w = u32::try_from(w).unwrap_or(u32::MAX);
    let h = u32::try_from(h).unwrap_or(u32::MAX);
    pil_resize(img, w, h, PilFilter::Bicubic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_kernel_values() {
        let f = PilFilter::Bicubic;
        assert_eq!(f.eval(0.0), 1.0);
        assert_eq!(f.eval(1.0), 0.0);
        assert_eq!(f.eval(-2.0), 0.0);
        assert_eq!(f.eval(0.5), 0.5625);
        assert_eq!(f.eval(1.5), -0.0625);
    }

    #[test]
    fn fixed_point_rounding_is_half_away_from_zero() {
        assert_eq!(to_fixed(1.0), 1 << 22);
        assert_eq!(to_fixed(-0.0625), -(1 << 18));
        assert_eq!(to_fixed(0.5 / f64::from(1u32 << 22)), 1);
        assert_eq!(to_fixed(-0.5 / f64::from(1u32 << 22)), -1);
    }

    #[test]
    fn clip8_clamps() {
        assert_eq!(clip8(ROUND_HALF), 0);
        assert_eq!(clip8(-5 << 22), 0);
        assert_eq!(clip8(300 << 22), 255);
        assert_eq!(clip8((17 << 22) + ROUND_HALF), 17);
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for &(i, o) in &[(97usize, 56usize), (10, 33), (1000, 7), (3, 3), (1, 5)] {
            let c = AxisCoeffs::new(i, o, 0..o, PilFilter::Bicubic);
            for j in 0..o {
                let (start, k) = c.taps(j);
                assert!(start + k.len() <= i);
                let s: i32 = k.iter().sum();
                assert!(
                    (s - (1 << 22)).abs() <= k.len() as i32,
                    "{i}->{o} [{j}]: {s}"
                );
            }
        }
    }

    #[test]
    fn shortest_edge_sizes() {
        assert_eq!(shortest_edge_output_size(97, 61, 56), (89, 56));
        assert_eq!(shortest_edge_output_size(61, 97, 56), (56, 89));
        assert_eq!(shortest_edge_output_size(640, 480, 336), (448, 336));
        assert_eq!(shortest_edge_output_size(500, 500, 336), (336, 336));
        assert_eq!(shortest_edge_output_size(0, 5, 336), (0, 0));
        // 336 * 1000 / 3 = 112000 exactly; 336 * 1001 / 3 = 112112 exactly.
        assert_eq!(shortest_edge_output_size(1001, 3, 336), (112_112, 336));
        assert_eq!(
            shortest_edge_output_size(u32::MAX, 1, 336).0,
            336 * u64::from(u32::MAX)
        );
    }

    #[test]
    fn region_equals_full_resize_crop() {
        let img = RgbImage::from_fn(37, 23, |x, y| {
            image::Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, ((x ^ y) * 9) as u8])
        });
        for &(w, h) in &[(50u32, 31u32), (12, 9), (37, 11), (20, 23), (37, 23)] {
            let full = pil_resize(&img, w, h, PilFilter::Bicubic);
            for &(l, t, cw, ch) in &[(0u32, 0u32, w, h), (3, 2, 5, 4), (w - 1, h - 1, 9, 9)] {
                let win = pil_resize_region(&img, w, h, l, t, cw, ch, PilFilter::Bicubic);
                let ew = cw.min(w - l);
                let eh = ch.min(h - t);
                assert_eq!(win.dimensions(), (ew, eh));
                for y in 0..eh {
                    for x in 0..ew {
                        assert_eq!(win.get_pixel(x, y), full.get_pixel(x + l, y + t));
                    }
                }
            }
        }
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let empty = RgbImage::new(0, 0);
        let out = pil_resize(&empty, 3, 2, PilFilter::Bicubic);
        assert_eq!(out.dimensions(), (3, 2));
        assert!(out.as_raw().iter().all(|&v| v == 0));
        let one = RgbImage::from_pixel(1, 1, image::Rgb([200, 100, 50]));
        assert_eq!(
            pil_resize(&one, 0, 0, PilFilter::Bicubic).dimensions(),
            (0, 0)
        );
        let big = pil_resize(&one, 4, 3, PilFilter::Bicubic);
        assert!(big.pixels().all(|p| p.0 == [200, 100, 50]));
    }
}
