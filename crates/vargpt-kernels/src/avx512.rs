//! AVX-512F tiles for `m ≥ 2` tokens with exactly the arithmetic of the AVX2
//! tiles, so both give the same bits (and batch invariance holds across them).
//!
//! One 512-bit register holds the 8-lane accumulators of *two tokens*: lanes
//! 0..8 for token `2p`, lanes 8..16 for token `2p + 1`. Each half does what an
//! AVX2 accumulator does (lane `l` takes the products `j ≡ l (mod 8)` in
//! increasing `j` by FMA, the tail zero-padded), and is reduced with the same
//! `hsum`. The weights' 8-wide chunk is broadcast to both halves (a plain load
//! for f32), and the activations are packed once per call as token pairs, so
//! one aligned-stride load feeds both halves. The point is throughput on CPUs
//! with two 512-bit FMA ports (Intel server cores): twice the FMAs per
//! instruction, and 32 registers allow 24-accumulator tiles.

#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;

// The AVX2 tiles' prefetch distance, and their L2 budget for the activations
// that every weight row block of a chunk sweeps over (here: packed pairs).
use crate::x86::{PF_ELEMS, X_BLOCK_BYTES};
use crate::{Weight, WeightKind};

/// 8-wide chunks per token: `⌈k / 8⌉` (the last one zero-padded).
pub(crate) fn chunks(k: usize) -> usize {
    k.div_ceil(8)
}

/// Activations packed as token pairs, 64-byte aligned (a 512-bit load that
/// straddles two cache lines costs two loads).
pub(crate) struct Packed {
    buf: Vec<f32>,
    start: usize,
}

impl Packed {
    /// Packs `m` tokens of `x [m, k]` as `⌈m/2⌉` pairs: pair `p`, chunk `c` is
    /// 16 floats, `x[2p][8c..8c+8]` then `x[2p+1][8c..8c+8]`, zero where past
    /// `k` or past the last token.
    pub(crate) fn new(x: &[f32], m: usize, k: usize) -> Packed {
        let kc = chunks(k);
        let len = m.div_ceil(2) * kc * 16;
        let mut buf = vec![0f32; len + 16];
        let start = buf.as_ptr().align_offset(64).min(16);
        let packed = &mut buf[start..start + len];
        let k8 = k / 8;
        for t in 0..m {
            let (p, half) = (t / 2, (t % 2) * 8);
            let row = &x[t * k..(t + 1) * k];
            let dst = &mut packed[p * kc * 16..(p + 1) * kc * 16];
            // Fixed-size chunk copies (one 32-byte move each, no memcpy call).
            for (d, s) in dst.chunks_exact_mut(16).zip(row.chunks_exact(8)) {
                d[half..half + 8].copy_from_slice(s);
            }
            let tail = &row[k8 * 8..];
            if !tail.is_empty() {
                dst[k8 * 16 + half..k8 * 16 + half + tail.len()].copy_from_slice(tail);
            }
        }
        Packed { buf, start }
    }

    pub(crate) fn as_ptr(&self) -> *const f32 {
        self.buf[self.start..].as_ptr()
    }
}

/// 8 weights as f32, in both 256-bit halves.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn load8x2<W: Weight>(p: *const W) -> __m512 {
    match W::KIND {
        // (`vbroadcastf64x4` is AVX-512F; the f32x8 form would need DQ.)
        WeightKind::F32 => _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(
            _mm256_loadu_ps(p as *const f32),
        ))),
        WeightKind::F16 => _mm512_cvtph_ps(_mm256_broadcastsi128_si256(_mm_loadu_si128(
            p as *const __m128i,
        ))),
        WeightKind::Bf16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
            _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i)),
        ))),
    }
}

/// `R` weight rows × `P` token pairs over the full `k`. `w`: first row (row
/// stride `k`); `xp`: first packed pair (pair stride `16·⌈k/8⌉`); `out`:
/// `out[t0·ldo + r0]`; `ntok` (≤ 2P) tokens are written.
#[inline(never)]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn tile<W: Weight, const R: usize, const P: usize>(
    w: *const W,
    xp: *const f32,
    k: usize,
    out: *mut f32,
    ldo: usize,
    ntok: usize,
) {
    let kc = chunks(k);
    let wr: [*const W; R] = core::array::from_fn(|r| w.add(r * k));
    let xr: [*const f32; P] = core::array::from_fn(|p| xp.add(p * kc * 16));
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    let k8 = k / 8;
    let line_mask = 64 / core::mem::size_of::<W>() - 1;
    for c in 0..k8 {
        let off = c * 8;
        if off & line_mask == 0 {
            for r in 0..R {
                _mm_prefetch::<_MM_HINT_T0>(wr[r].wrapping_add(off + PF_ELEMS) as *const i8);
            }
        }
        let mut wv = [_mm512_setzero_ps(); R];
        for r in 0..R {
            wv[r] = load8x2(wr[r].add(off));
        }
        for p in 0..P {
            let xv = _mm512_loadu_ps(xr[p].add(c * 16));
            for r in 0..R {
                acc[r][p] = _mm512_fmadd_ps(wv[r], xv, acc[r][p]);
            }
        }
    }
    if k8 < kc {
        // Zero-padded last chunk (the packed activations are zero there too).
        let rem = k - k8 * 8;
        for r in 0..R {
            let mut buf = [W::ZERO; 8];
            for (l, b) in buf.iter_mut().enumerate().take(rem) {
                *b = *wr[r].add(k8 * 8 + l);
            }
            let wv = load8x2(buf.as_ptr());
            for p in 0..P {
                let xv = _mm512_loadu_ps(xr[p].add(k8 * 16));
                acc[r][p] = _mm512_fmadd_ps(wv, xv, acc[r][p]);
            }
        }
    }
    for r in 0..R {
        for p in 0..P {
            let lo = _mm512_castps512_ps256(acc[r][p]);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[r][p])));
            let t = 2 * p;
            if t < ntok {
                *out.add(t * ldo + r) = crate::x86::hsum(lo);
            }
            if t + 1 < ntok {
                *out.add((t + 1) * ldo + r) = crate::x86::hsum(hi);
            }
        }
    }
}

/// `nr` rows × `P` pairs as tiles of at most `RMAX` rows.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows<W: Weight, const P: usize, const RMAX: usize>(
    nr: usize,
    w: *const W,
    xp: *const f32,
    k: usize,
    out: *mut f32,
    ldo: usize,
    ntok: usize,
) {
    let mut r = 0;
    while r < nr {
        let (wp, op) = (w.add(r * k), out.add(r));
        let step = (nr - r).min(RMAX);
        match step {
            1 => tile::<W, 1, P>(wp, xp, k, op, ldo, ntok),
            2 => tile::<W, 2, P>(wp, xp, k, op, ldo, ntok),
            3 => tile::<W, 3, P>(wp, xp, k, op, ldo, ntok),
            4 => tile::<W, 4, P>(wp, xp, k, op, ldo, ntok),
            5 => tile::<W, 5, P>(wp, xp, k, op, ldo, ntok),
            6 => tile::<W, 6, P>(wp, xp, k, op, ldo, ntok),
            7 => tile::<W, 7, P>(wp, xp, k, op, ldo, ntok),
            _ => tile::<W, 8, P>(wp, xp, k, op, ldo, ntok),
        }
        r += step;
    }
}

/// Rows `r0..r1` of `out [m, n]` for all `m ≥ 2` tokens, from activations
/// packed by [`Packed::new`]. Row blocks of up to 6–8 rows, each swept over all
/// pair groups (≤ 4 pairs: at most 24 accumulators) while hot in L1.
///
/// # Safety
/// AVX-512F/AVX2/FMA/F16C available; `w` holds `n·k` weights, `xp` the
/// packing of `m` tokens, `out` `m·n` floats not written concurrently at the
/// rows `r0..r1`; `r0 ≤ r1 ≤ n`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(crate) unsafe fn rows<W: Weight>(
    w: *const W,
    xp: *const f32,
    out: *mut f32,
    n: usize,
    k: usize,
    m: usize,
    r0: usize,
    r1: usize,
) {
    let pairs = m.div_ceil(2);
    let pair_floats = chunks(k) * 16;
    // Pair blocks whose packed activations fit the L2 budget.
    let blocks = (pairs * pair_floats * 4).div_ceil(X_BLOCK_BYTES).max(1);
    let pb = pairs.div_ceil(blocks).div_ceil(4) * 4;
    // Rows per block: 8 when a sweep has one or two pairs (load-bound, the
    // widest tile hides latency best), 6 for three or four pairs.
    let rb = if pairs.min(4) <= 2 { 8 } else { 6 };
    let mut p0 = 0;
    while p0 < pairs {
        let p1 = (p0 + pb).min(pairs);
        let mut r = r0;
        while r < r1 {
            let nr = (r1 - r).min(rb);
            let wp = w.add(r * k);
            let mut p = p0;
            while p < p1 {
                let np = (p1 - p).min(4);
                let ntok = (m - 2 * p).min(2 * np);
                let (xq, op) = (xp.add(p * pair_floats), out.add(2 * p * n + r));
                match np {
                    1 => tile_rows::<W, 1, 8>(nr, wp, xq, k, op, n, ntok),
                    2 => tile_rows::<W, 2, 8>(nr, wp, xq, k, op, n, ntok),
                    3 => tile_rows::<W, 3, 6>(nr, wp, xq, k, op, n, ntok),
                    _ => tile_rows::<W, 4, 6>(nr, wp, xq, k, op, n, ntok),
                }
                p += np;
            }
            r += nr;
        }
        p0 = p1;
    }
}
