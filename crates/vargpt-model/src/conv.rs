//! Convolutions for the VQVAE decoder on CPU (f32).
//!
//! candle's CPU conv2d materialises an im2col matrix (9·C_in·H·W floats — 380 MB per
//! 160-channel conv at 256×256) before its GEMM. Here:
//! - 3×3 convolutions on 32×32 and larger use Winograd F(4×4, 3×3) (4× fewer
//!   multiply-adds than direct; F(2×2, 3×3), 2.25×, stays as an explicit choice),
//!   computed block by block so the transformed tiles stay in cache. Measured with
//!   `bench conv` on a 2-vCPU Zen 5 at 160 channels × 256²: 31 against 41 ms
//!   (AVX-512) and 44 against 68 ms (`VARGPT_ISA=avx2`);
//! - other odd kernels (1×1) are sums of shifted GEMMs: the input is zero-padded once
//!   and each tap is one GEMM reading the padded plane in place (computing the output
//!   over the padded width turns every shifted window into a plain strided matrix);
//!   two garbage columns per row are dropped at the end.

use crate::cpu_ops::with_f32;
use crate::error::Result;
use candle_core::{DType, Tensor};

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
                conv3x3_winograd(xv, cin, h, wd, wv, cout, &bv, &mut y, tile);
            } else {
                conv_shifted_gemm(xv, cin, h, wd, wv, cout, kh, &bv, &mut y);
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

/// Sum over the k² taps of one GEMM each (see the module doc); 1×1 is one plain GEMM.
#[allow(clippy::too_many_arguments)]
fn conv_shifted_gemm(
    xv: &[f32],
    cin: usize,
    h: usize,
    wd: usize,
    wv: &[f32],
    cout: usize,
    k: usize,
    bv: &[f32],
    y: &mut [f32],
) {
    let pad = k / 2;
    let (hp, wp) = (h + 2 * pad, wd + 2 * pad);
    // Padded input with one extra row so the last tap's window stays in bounds
    // (no copy at all for 1×1).
    let plane = if pad == 0 { h * wd } else { (hp + 1) * wp };
    let padded;
    let xp: &[f32] = if pad == 0 {
        xv
    } else {
        let mut buf = vec![0f32; cin * plane];
        for c in 0..cin {
            for r in 0..h {
                let src = &xv[(c * h + r) * wd..(c * h + r + 1) * wd];
                let dst = c * plane + (r + pad) * wp + pad;
                buf[dst..dst + wd].copy_from_slice(src);
            }
        }
        padded = buf;
        &padded
    };
    let p = h * wp; // output positions over the padded width
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let run_taps = |out: &mut [f32]| {
        if vargpt_kernels::Isa::Avx512.is_available() {
            return taps_sgemm(out, wv, xp, cin, cout, k, wp, plane, p);
        }
        for dy in 0..k {
            for dx in 0..k {
                let tap = dy * k + dx;
                let off = dy * wp + dx;
                // SAFETY: lhs is w[:, :, dy, dx] (cout × cin, row stride cin·k², col
                // stride k²), rhs is the padded input shifted by `off` (cin × p, row
                // stride `plane`, col stride 1; off + p ≤ plane thanks to the extra
                // row), dst is cout × p.
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
                        (k * k) as isize,
                        (cin * k * k) as isize,
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
    };
    if pad == 0 {
        run_taps(y);
        for (co, row) in y.chunks_mut(h * wd).enumerate() {
            row.iter_mut().for_each(|v| *v += bv[co]);
        }
        return;
    }
    let mut out = vec![0f32; cout * p];
    run_taps(&mut out);
    // Drop the padding columns and add the bias.
    for co in 0..cout {
        for r in 0..h {
            let src = &out[co * p + r * wp..co * p + r * wp + wd];
            let dst = &mut y[(co * h + r) * wd..(co * h + r + 1) * wd];
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s + bv[co];
            }
        }
    }
}

/// The taps of [`conv_shifted_gemm`] with the AVX-512 [`sgemm_strided`]: the
/// output rows (channels) are split over the threads in multiples of the
/// micro-kernel's 12 rows, and each thread accumulates all taps into its rows.
///
/// [`sgemm_strided`]: vargpt_kernels::sgemm::sgemm_strided
#[allow(clippy::too_many_arguments)]
fn taps_sgemm(
    out: &mut [f32],
    wv: &[f32],
    xp: &[f32],
    cin: usize,
    cout: usize,
    k: usize,
    wp: usize,
    plane: usize,
    p: usize,
) {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let rows = cout.div_ceil(threads).div_ceil(12) * 12;
    out.par_chunks_mut(rows * p)
        .enumerate()
        .for_each(|(chunk, dst)| {
            let r0 = chunk * rows;
            let m = dst.len() / p;
            let mut a = vec![0f32; m * cin];
            for tap in 0..k * k {
                let (dy, dx) = (tap / k, tap % k);
                // A = w[r0.., :, dy, dx], gathered contiguous: read in place with its
                // column stride of k² floats, the micro-kernel's broadcasts would
                // touch a new cache line every other step.
                for (dst_row, w_row) in a
                    .chunks_exact_mut(cin)
                    .zip(wv[r0 * cin * k * k..].chunks_exact(cin * k * k))
                {
                    for (d, w) in dst_row.iter_mut().zip(w_row[tap..].iter().step_by(k * k)) {
                        *d = *w;
                    }
                }
                let done = vargpt_kernels::sgemm::sgemm_strided(
                    m,
                    p,
                    cin,
                    &a,
                    (cin, 1),
                    &xp[dy * wp + dx..],
                    plane,
                    dst,
                    p,
                    tap > 0,
                );
                debug_assert!(done, "taps_sgemm runs only with AVX-512");
            }
        });
}

/// The two Winograd variants (see [`ConvAlgo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tile {
    /// F(2×2, 3×3): each 2×2 output tile costs 16 multiply-adds per (C_out, C_in)
    /// pair instead of 36 (2.25× fewer). The transforms only use 0, ±½, ±1, so
    /// rounding stays at the level of the direct convolution.
    F2,
    /// F(4×4, 3×3): 36 products per 16 outputs (4× fewer), points 0, ±1, 2, −½
    /// and ∞ (the set with the smallest error among those tried: about 3–7×
    /// F(2×2, 3×3)'s, ~1e-6 of the output's scale).
    F4,
}

impl Tile {
    /// Output tile side.
    fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }
    /// Transformed planes (α², α = m + 2).
    fn planes(self) -> usize {
        (self.m() + 2) * (self.m() + 2)
    }
    /// Tiles per block (measured best: the block's planes stay in cache).
    fn block_tiles(self) -> usize {
        match self {
            Tile::F2 => 256,
            Tile::F4 => 128,
        }
    }
}

/// Winograd convolution (stride 1, "same" 3×3). Tiles are processed in blocks of
/// whole tile rows, in parallel; per block the α² transformed planes are one
/// GEMM each, kept in cache. The transforms run a tile row at a time over rows
/// split into m phases (column x goes to phase (x + 1) mod m), so the tiles'
/// j-th columns are one contiguous slice and every step is element-wise slice
/// arithmetic the compiler vectorises.
#[allow(clippy::too_many_arguments)]
fn conv3x3_winograd(
    x: &[f32],
    cin: usize,
    h: usize,
    w: usize,
    wt: &[f32],
    cout: usize,
    bias: &[f32],
    out: &mut [f32],
    tile: Tile,
) {
    use rayon::prelude::*;
    let (th, tw) = (h.div_ceil(tile.m()), w.div_ceil(tile.m()));
    let u = match tile {
        Tile::F2 => winograd_filters(wt, cout, cin),
        Tile::F4 => winograd4_filters(wt, cout, cin),
    };
    let threads = rayon::current_num_threads();
    // Tile rows per block: about `block_tiles`, at least one row, and enough
    // blocks to keep every thread busy when the image allows it.
    let rows_per_block = (tile.block_tiles() / tw).clamp(1, th.div_ceil(threads).max(1));
    let blocks = th.div_ceil(rows_per_block);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let job = WinogradJob {
        tile,
        x,
        cin,
        h,
        w,
        u: &u,
        cout,
        bias,
        out: &out_ptr,
        th,
        tw,
        rows_per_block,
        serial: blocks >= threads,
        threads,
    };
    let avx512 = vargpt_kernels::Isa::Avx512.is_available();
    let avx2 = vargpt_kernels::Isa::Avx2.is_available();
    (0..blocks).into_par_iter().for_each(|b| {
        #[cfg(target_arch = "x86_64")]
        {
            if avx512 {
                // SAFETY: AVX-512F/AVX2/FMA checked at run time.
                return unsafe { block_avx512(&job, b) };
            }
            if avx2 {
                // SAFETY: AVX2/FMA checked at run time.
                return unsafe { block_avx2(&job, b) };
            }
        }
        let _ = (avx512, avx2);
        block(&job, b)
    });
}

/// Block `b` of `job`, for its tile size.
#[inline(always)]
fn block(job: &WinogradJob, b: usize) {
    match job.tile {
        Tile::F2 => winograd2_block(job, b),
        Tile::F4 => winograd4_block(job, b),
    }
}

/// [`block`] compiled for AVX-512: the transforms are element-wise slice loops,
/// which the compiler then vectorises 16 wide instead of SSE's 4.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block_avx512(job: &WinogradJob, b: usize) {
    block(job, b)
}

/// [`block`] compiled for AVX2 (8 wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(job: &WinogradJob, b: usize) {
    block(job, b)
}

/// The GEMMs of one block: M[e] = U[e] · V[e] for every plane e, with U in the
/// filters' [co][e][ci] layout (U[e] is cout rows of cin, `planes·cin` apart)
/// and V[e] (cin × nt) dense. Returns M as [e][co][t].
fn block_gemms(job: &WinogradJob, v: &[f32], nt: usize) -> Vec<f32> {
    let (cin, cout, planes) = (job.cin, job.cout, job.tile.planes());
    let mut mm = vec![0f32; planes * cout * nt];
    for e in 0..planes {
        let ue = &job.u[e * cin..];
        let ve = &v[e * cin * nt..][..cin * nt];
        let me = &mut mm[e * cout * nt..][..cout * nt];
        // AVX-512 CPUs: our micro-kernel (the `gemm` crate is AVX2-only on
        // stable Rust); one thread per block, the blocks run in parallel.
        if job.serial
            && vargpt_kernels::sgemm::sgemm(cout, nt, cin, ue, planes * cin, ve, nt, me, nt)
        {
            continue;
        }
        let par = if job.serial {
            gemm::Parallelism::None
        } else {
            gemm::Parallelism::Rayon(job.threads)
        };
        // SAFETY: U[e] is cout rows of cin (row stride planes·cin) inside `u`;
        // V[e] and M[e] are dense row-major blocks of the stated sizes.
        unsafe {
            gemm::gemm(
                cout,
                nt,
                cin,
                me.as_mut_ptr(),
                1,
                nt as isize,
                false,
                ue.as_ptr(),
                1,
                (planes * cin) as isize,
                ve.as_ptr(),
                1,
                nt as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }
    mm
}

/// What every block of one Winograd convolution shares.
struct WinogradJob<'a> {
    tile: Tile,
    x: &'a [f32],
    cin: usize,
    h: usize,
    w: usize,
    u: &'a [f32],
    cout: usize,
    bias: &'a [f32],
    out: &'a SendPtr,
    th: usize,
    tw: usize,
    rows_per_block: usize,
    /// One thread per block (enough blocks for all threads).
    serial: bool,
    threads: usize,
}

impl WinogradJob<'_> {
    /// Block `b`'s tile rows `r0 .. r1` and its tile count.
    fn block_rows(&self, b: usize) -> (usize, usize, usize) {
        let r0 = b * self.rows_per_block;
        let r1 = (r0 + self.rows_per_block).min(self.th);
        (r0, r1, (r1 - r0) * self.tw)
    }
}

/// Block `b` of tile rows for F(2×2, 3×3): input transform (rows in even/odd
/// phases), 16 GEMMs, output transform.
#[inline(always)]
fn winograd2_block(job: &WinogradJob, b: usize) {
    let (r0, r1, nt) = job.block_rows(b);
    let (x, cin, h, w, cout, tw) = (job.x, job.cin, job.h, job.w, job.cout, job.tw);
    let (bias, out_ptr) = (job.bias, job.out);
    // V[e][ci][t]: the transformed input tiles.
    let mut v = vec![0f32; 16 * cin * nt];
    // Per input row i of the tile row: even (x = 2k−1) and odd (x = 2k) columns,
    // k = 0 … tw, zero outside the image; then the same after combining along y.
    let mut raw = vec![0f32; 8 * (tw + 1)];
    let mut comb = vec![0f32; 8 * (tw + 1)];
    for ci in 0..cin {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for tr in r0..r1 {
            raw.fill(0.0);
            for i in 0..4 {
                let y = (2 * tr + i) as isize - 1;
                if y < 0 || y >= h as isize {
                    continue;
                }
                let row = &plane[y as usize * w..(y as usize + 1) * w];
                let (ev, od) = raw[i * 2 * (tw + 1)..][..2 * (tw + 1)].split_at_mut(tw + 1);
                let pairs = row.chunks_exact(2);
                if let [last] = pairs.remainder() {
                    od[w / 2] = *last;
                }
                for ((o, e), pair) in od.iter_mut().zip(&mut ev[1..]).zip(pairs) {
                    *o = pair[0];
                    *e = pair[1];
                }
            }
            // Along y: Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1], on even and odd.
            let n = 2 * (tw + 1);
            let (d0, rest) = raw.split_at(n);
            let (d1, rest) = rest.split_at(n);
            let (d2, d3) = rest.split_at(n);
            let (c0, rest) = comb.split_at_mut(n);
            let (c1, rest) = rest.split_at_mut(n);
            let (c2, c3) = rest.split_at_mut(n);
            for k in 0..n {
                c0[k] = d0[k] - d2[k];
                c1[k] = d1[k] + d2[k];
                c2[k] = d2[k] - d1[k];
                c3[k] = d1[k] - d3[k];
            }
            // Along x, for every tile of the row at once: the tile's columns are
            // (even[tc], odd[tc], even[tc+1], odd[tc+1]).
            let t0 = (tr - r0) * tw;
            for i in 0..4 {
                let (ev, od) = comb[i * n..(i + 1) * n].split_at(tw + 1);
                let (e0, e1, o0, o1) = (&ev[..tw], &ev[1..], &od[..tw], &od[1..tw + 1]);
                let plane_of = |j: usize| ((i * 4 + j) * cin + ci) * nt + t0;
                let dst = &mut v[plane_of(0)..][..tw];
                for (d, (a, b)) in dst.iter_mut().zip(e0.iter().zip(e1)) {
                    *d = a - b;
                }
                let dst = &mut v[plane_of(1)..][..tw];
                for (d, (a, b)) in dst.iter_mut().zip(o0.iter().zip(e1)) {
                    *d = a + b;
                }
                let dst = &mut v[plane_of(2)..][..tw];
                for (d, (a, b)) in dst.iter_mut().zip(e1.iter().zip(o0)) {
                    *d = a - b;
                }
                let dst = &mut v[plane_of(3)..][..tw];
                for (d, (a, b)) in dst.iter_mut().zip(o0.iter().zip(o1)) {
                    *d = a - b;
                }
            }
        }
    }
    let m = block_gemms(job, &v, nt);
    // Aᵀ M A with Aᵀ = [1 1 1 0; 0 1 −1 −1], plus bias, a tile row at a time.

    let mut sy = vec![0f32; 8 * tw];
    let mut row = vec![0f32; 2 * tw];
    for co in 0..cout {
        let bc = bias[co];
        for tr in r0..r1 {
            let t0 = (tr - r0) * tw;
            let plane = |e: usize| &m[(e * cout + co) * nt + t0..][..tw];
            // Along y: sy[a·4 + j] for output row a of the tile.
            for j in 0..4 {
                let (m0, m1, m2, m3) = (plane(j), plane(4 + j), plane(8 + j), plane(12 + j));
                let (top, bottom) = sy.split_at_mut(4 * tw);
                let top = &mut top[j * tw..(j + 1) * tw];
                let bottom = &mut bottom[j * tw..(j + 1) * tw];
                for k in 0..tw {
                    top[k] = m0[k] + m1[k] + m2[k];
                    bottom[k] = m1[k] - m2[k] - m3[k];
                }
            }
            for a in 0..2 {
                let y = 2 * tr + a;
                if y >= h {
                    continue;
                }
                let q = &sy[a * 4 * tw..(a + 1) * 4 * tw];
                let (q0, q1, q2, q3) = (&q[..tw], &q[tw..2 * tw], &q[2 * tw..3 * tw], &q[3 * tw..]);
                for (k, px) in row.chunks_exact_mut(2).enumerate() {
                    px[0] = q0[k] + q1[k] + q2[k] + bc;
                    px[1] = q1[k] - q2[k] - q3[k] + bc;
                }
                // SAFETY: blocks own disjoint tile rows, so disjoint output rows;
                // the row lies inside `out` (cout·h·w).
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add((co * h + y) * w), w) };
                dst.copy_from_slice(&row[..w]);
            }
        }
    }
}

/// U[co][e][ci] = (G g Gᵀ)[e] with G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1].
fn winograd_filters(wt: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * cout * cin];
    for oc in 0..cout * cin {
        let (co, ci) = (oc / cin, oc % cin);
        let g = &wt[oc * 9..oc * 9 + 9];
        // G g: 4×3
        let mut a = [[0f32; 3]; 4];
        for j in 0..3 {
            let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
            a[0][j] = g0;
            a[1][j] = 0.5 * (g0 + g1 + g2);
            a[2][j] = 0.5 * (g0 - g1 + g2);
            a[3][j] = g2;
        }
        for (i, ai) in a.iter().enumerate() {
            let vals = [
                ai[0],
                0.5 * (ai[0] + ai[1] + ai[2]),
                0.5 * (ai[0] - ai[1] + ai[2]),
                ai[2],
            ];
            for (j, val) in vals.into_iter().enumerate() {
                u[(co * 16 + i * 4 + j) * cin + ci] = val;
            }
        }
    }
    u
}

/// `Bᵀ` of F(4×4, 3×3) applied element-wise: `o_a = Σ_i Bᵀ[a][i] d_i`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bt4(
    d: [&[f32]; 6],
    o0: &mut [f32],
    o1: &mut [f32],
    o2: &mut [f32],
    o3: &mut [f32],
    o4: &mut [f32],
    o5: &mut [f32],
) {
    let n = o0.len();
    let [d0, d1, d2, d3, d4, d5] = d.map(|s| &s[..n]);
    let (o1, o2, o3, o4, o5) = (
        &mut o1[..n],
        &mut o2[..n],
        &mut o3[..n],
        &mut o4[..n],
        &mut o5[..n],
    );
    for k in 0..n {
        let (a0, a1, a2, a3, a4, a5) = (d0[k], d1[k], d2[k], d3[k], d4[k], d5[k]);
        o0[k] = a0 + a4 - 2.0 * a2 + 1.5 * (a1 - a3);
        o1[k] = a4 - a1 - 2.5 * a2 - 0.5 * a3;
        o2[k] = a4 + a1 + 0.5 * a2 - 2.5 * a3;
        o3[k] = a4 - a2 + 0.5 * (a3 - a1);
        o4[k] = a4 - a2 + 2.0 * (a1 - a3);
        o5[k] = a5 + a1 - 2.0 * a3 + 1.5 * (a2 - a4);
    }
}

/// `Aᵀ` of F(4×4, 3×3) applied element-wise: `o_a = Σ_i Aᵀ[a][i] m_i`.
#[inline(always)]
fn at4(m: [&[f32]; 6], o0: &mut [f32], o1: &mut [f32], o2: &mut [f32], o3: &mut [f32]) {
    let n = o0.len();
    let [m0, m1, m2, m3, m4, m5] = m.map(|s| &s[..n]);
    let (o1, o2, o3) = (&mut o1[..n], &mut o2[..n], &mut o3[..n]);
    for k in 0..n {
        let (a0, a1, a2, a3, a4, a5) = (m0[k], m1[k], m2[k], m3[k], m4[k], m5[k]);
        let (s, d) = (a1 + a2, a1 - a2);
        o0[k] = a0 + s + a3 + a4;
        o1[k] = d + 2.0 * a3 - 0.5 * a4;
        o2[k] = s + 4.0 * a3 + 0.25 * a4;
        o3[k] = d + 8.0 * a3 - 0.125 * a4 + a5;
    }
}

/// `R` disjoint `len`-runs of `buf` starting at `starts` (increasing, at
/// least `len` apart), as separate slices the transforms can write in one pass.
fn runs<const R: usize>(buf: &mut [f32], starts: [usize; R], len: usize) -> [&mut [f32]; R] {
    let mut rest = buf;
    let mut at = 0;
    let mut out: [&mut [f32]; R] = std::array::from_fn(|_| Default::default());
    for (o, s) in out.iter_mut().zip(starts) {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(s - at);
        let (run, tail) = tail.split_at_mut(len);
        *o = run;
        rest = tail;
        at = s + len;
    }
    out
}

/// Block `b` of tile rows for F(4×4, 3×3): input transform (rows in 4 phases,
/// `Bᵀ` along y then x), 36 GEMMs, output transform (`Aᵀ` along y then x),
/// interleaved into the output rows with the bias.
#[inline(always)]
fn winograd4_block(job: &WinogradJob, b: usize) {
    let (r0, r1, nt) = job.block_rows(b);
    let (x, cin, h, w, cout, tw) = (job.x, job.cin, job.h, job.w, job.cout, job.tw);
    let (bias, out_ptr) = (job.bias, job.out);
    let t1 = tw + 1;
    let n = 4 * t1;
    // V[e][ci][t]: the transformed input tiles.
    let mut v = vec![0f32; 36 * cin * nt];
    let mut raw = vec![0f32; 6 * n];
    let mut comb = vec![0f32; 6 * n];
    for ci in 0..cin {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for tr in r0..r1 {
            // Input row i (y = 4·tr + i − 1) in 4 phases: phase r, entry k is
            // column 4k + r − 1.
            for (i, dst) in raw.chunks_exact_mut(n).enumerate() {
                dst.fill(0.0);
                let y = (4 * tr + i) as isize - 1;
                if y < 0 || y >= h as isize {
                    continue;
                }
                let row = &plane[y as usize * w..(y as usize + 1) * w];
                let (p0, rest) = dst.split_at_mut(t1);
                let (p1, rest) = rest.split_at_mut(t1);
                let (p2, p3) = rest.split_at_mut(t1);
                for (r, &val) in row.iter().take(3).enumerate() {
                    [&mut *p1, &mut *p2, &mut *p3][r][0] = val;
                }
                if w > 3 {
                    let body = &row[3..];
                    let runs = body.chunks_exact(4);
                    let tail = runs.remainder();
                    for ((((c, a), b_), c_), d_) in runs
                        .zip(&mut p0[1..])
                        .zip(&mut p1[1..])
                        .zip(&mut p2[1..])
                        .zip(&mut p3[1..])
                    {
                        *a = c[0];
                        *b_ = c[1];
                        *c_ = c[2];
                        *d_ = c[3];
                    }
                    let k = body.len() / 4 + 1;
                    for (r, &val) in tail.iter().enumerate() {
                        [&mut *p0, &mut *p1, &mut *p2][r][k] = val;
                    }
                }
            }
            // Along y, all phases at once.
            {
                let d: [&[f32]; 6] = std::array::from_fn(|i| &raw[i * n..(i + 1) * n]);
                let [o0, o1, o2, o3, o4, o5] = runs(&mut comb, std::array::from_fn(|a| a * n), n);
                bt4(d, o0, o1, o2, o3, o4, o5);
            }
            // Along x: tile tc's column j is phase j mod 4, entry tc + j / 4.
            let t0 = (tr - r0) * tw;
            for a in 0..6 {
                let c = &comb[a * n..(a + 1) * n];
                let cols: [&[f32]; 6] = std::array::from_fn(|j| &c[(j % 4) * t1 + j / 4..][..tw]);
                let starts = std::array::from_fn(|bb| ((a * 6 + bb) * cin + ci) * nt + t0);
                let [o0, o1, o2, o3, o4, o5] = runs(&mut v, starts, tw);
                bt4(cols, o0, o1, o2, o3, o4, o5);
            }
        }
    }
    let mm = block_gemms(job, &v, nt);
    // Aᵀ M A plus bias, a tile row at a time.
    let mut sy = vec![0f32; 24 * tw]; // sy[a][j], a < 4, j < 6
    let mut ph = vec![0f32; 4 * tw];
    for co in 0..cout {
        let bc = bias[co];
        for tr in r0..r1 {
            let t0 = (tr - r0) * tw;
            for j in 0..6 {
                let src: [&[f32]; 6] =
                    std::array::from_fn(|i| &mm[((i * 6 + j) * cout + co) * nt + t0..][..tw]);
                let starts = std::array::from_fn(|a| (a * 6 + j) * tw);
                let [o0, o1, o2, o3] = runs(&mut sy, starts, tw);
                at4(src, o0, o1, o2, o3);
            }
            for a in 0..4 {
                let y = 4 * tr + a;
                if y >= h {
                    continue;
                }
                let src: [&[f32]; 6] = std::array::from_fn(|j| &sy[(a * 6 + j) * tw..][..tw]);
                let (q0, rest) = ph.split_at_mut(tw);
                let (q1, rest) = rest.split_at_mut(tw);
                let (q2, q3) = rest.split_at_mut(tw);
                at4(src, q0, q1, q2, q3);
                // SAFETY: blocks own disjoint tile rows, so disjoint output rows;
                // the row lies inside `out` (cout·h·w).
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add((co * h + y) * w), w) };
                let (q0, q1, q2, q3) = (
                    &ph[..tw],
                    &ph[tw..2 * tw],
                    &ph[2 * tw..3 * tw],
                    &ph[3 * tw..],
                );
                let full = dst.chunks_exact_mut(4);
                let k_tail = full.len();
                for ((((px, a0), a1), a2), a3) in full.zip(q0).zip(q1).zip(q2).zip(q3) {
                    px[0] = a0 + bc;
                    px[1] = a1 + bc;
                    px[2] = a2 + bc;
                    px[3] = a3 + bc;
                }
                let q = [q0, q1, q2, q3];
                for (c, p) in dst[4 * k_tail..].iter_mut().enumerate() {
                    *p = q[c][k_tail] + bc;
                }
            }
        }
    }
}

/// U[co][e][ci] = (G g Gᵀ)[e] for F(4×4, 3×3), in f64 rounded once, in parallel
/// over the output channels. G row j = (1, p_j, p_j²) / Π_{l≠j}(p_j − p_l).
fn winograd4_filters(wt: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const T: f64 = 1.0 / 3.0;
    const F: f64 = 1.0 / 15.0;
    const G: [[f64; 3]; 6] = [
        [1.0, 0.0, 0.0],
        [-T, -T, -T],
        [T, -T, T],
        [F, 2.0 * F, 4.0 * F],
        [-16.0 * F, 8.0 * F, -4.0 * F],
        [0.0, 0.0, 1.0],
    ];
    let mut u = vec![0f32; 36 * cout * cin];
    u.par_chunks_mut(36 * cin).enumerate().for_each(|(co, uc)| {
        for ci in 0..cin {
            let k = &wt[(co * cin + ci) * 9..][..9];
            let mut gk = [[0f64; 3]; 6];
            for (i, row) in gk.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = G[i][0] * k[j] as f64
                        + G[i][1] * k[3 + j] as f64
                        + G[i][2] * k[6 + j] as f64;
                }
            }
            for i in 0..6 {
                for j in 0..6 {
                    let val = gk[i][0] * G[j][0] + gk[i][1] * G[j][1] + gk[i][2] * G[j][2];
                    uc[(i * 6 + j) * cin + ci] = val as f32;
                }
            }
        }
    });
    u
}

/// A raw output pointer shared by the parallel blocks (each writes its own pixels).
struct SendPtr(*mut f32);
// SAFETY: only used for disjoint writes, see `conv3x3_winograd`.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

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
