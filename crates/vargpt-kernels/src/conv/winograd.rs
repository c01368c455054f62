//! The Winograd driver shared by both tile sizes: filter transform, blocks of
//! tile rows in parallel (each compiled for the widest vector unit available),
//! and the per-plane GEMMs of a block. The transforms themselves are in
//! `winograd_f2` and `winograd_f4`.

use super::winograd_f2::{winograd2_block, winograd_filters};
use super::winograd_f4::{winograd4_block, winograd4_filters};
use crate::par::SendPtr;

/// The two Winograd variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
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
    pub(super) fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }
    /// Transformed planes (α², α = m + 2).
    pub(super) fn planes(self) -> usize {
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
pub(super) fn conv3x3_winograd(
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
    let avx512 = crate::Isa::Avx512.is_available();
    let avx2 = crate::Isa::Avx2.is_available();
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
pub(super) fn block_gemms(job: &WinogradJob, v: &[f32], nt: usize) -> Vec<f32> {
    let (cin, cout, planes) = (job.cin, job.cout, job.tile.planes());
    let mut mm = vec![0f32; planes * cout * nt];
    for e in 0..planes {
        let ue = &job.u[e * cin..];
        let ve = &v[e * cin * nt..][..cin * nt];
        let me = &mut mm[e * cout * nt..][..cout * nt];
        // AVX-512 CPUs: our micro-kernel (the `gemm` crate is AVX2-only on
        // stable Rust); one thread per block, the blocks run in parallel.
        if job.serial && crate::sgemm::sgemm(cout, nt, cin, ue, planes * cin, ve, nt, me, nt) {
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
pub(super) struct WinogradJob<'a> {
    pub(super) tile: Tile,
    pub(super) x: &'a [f32],
    pub(super) cin: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) u: &'a [f32],
    pub(super) cout: usize,
    pub(super) bias: &'a [f32],
    pub(super) out: &'a SendPtr,
    pub(super) th: usize,
    pub(super) tw: usize,
    pub(super) rows_per_block: usize,
    /// One thread per block (enough blocks for all threads).
    pub(super) serial: bool,
    pub(super) threads: usize,
}

impl WinogradJob<'_> {
    /// Block `b`'s tile rows `r0 .. r1` and its tile count.
    pub(super) fn block_rows(&self, b: usize) -> (usize, usize, usize) {
        let r0 = b * self.rows_per_block;
        let r1 = (r0 + self.rows_per_block).min(self.th);
        (r0, r1, (r1 - r0) * self.tw)
    }
}
