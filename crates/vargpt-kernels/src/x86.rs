//! AVX2 + FMA + F16C kernels (x86_64 only). Every function here requires
//! those features; callers check `Isa::Avx2.is_available()` first.

// Register tiles are indexed [row][token] with constant bounds; index loops
// read better than iterator chains here and compile to the same code.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;

use crate::{Weight, WeightKind};

/// Software prefetch distance, in weights ahead of the current position in
/// each weight row (512 B of f32, 256 B of f16/bf16: ~16 steps of the inner
/// loop). Measured on the 2-vCPU dev VM, single thread, LM-head GEMV with
/// weights beyond the LLC: f16 9.1 → 12.4 GB/s, bf16 7.3 → 11 GB/s, f32
/// 14.5 → 15.5 GB/s. The hardware prefetchers alone leave too few misses in
/// flight, most of all for the 2-byte types whose inner loop spends more
/// instructions per byte.
pub(crate) const PF_ELEMS: usize = 128;

/// Activation bytes per token block (see `rows`). Prefill m = 267 on the
/// dev VM (2 MiB L2): k = 2816 goes from 106–124 to 193–201 GFLOP/s with
/// 512 KiB blocks (1 MiB: 193–198, 256 KiB: 196–200); k = 1024 unchanged.
pub(crate) const X_BLOCK_BYTES: usize = 512 << 10;

// Under debug assertions, `core::arch` loads such as `_mm256_loadu_ps` carry
// UB checks (and spill) in the inner loop, and a plain `*ptr` dereference gets
// a null check. The workspace turns debug assertions off for this crate
// (Cargo.toml), and these AVX2 loops are also written to be immune: `vlddqu`
// loads (an LLVM intrinsic, as fast as `vmovdqu` on every AVX2 CPU),
// `wrapping_*` pointer arithmetic and register-only intrinsics.

/// Unaligned load of 8 `f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld_ps(p: *const f32) -> __m256 {
    _mm256_castsi256_ps(_mm256_lddqu_si256(p as *const __m256i))
}

/// Unaligned load of 16 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld_si128<T>(p: *const T) -> __m128i {
    _mm_lddqu_si128(p as *const __m128i)
}

/// Loads 8 weights as `f32` (exact widening for f16 / bf16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8<W: Weight>(p: *const W) -> __m256 {
    match W::KIND {
        WeightKind::F32 => ld_ps(p as *const f32),
        WeightKind::F16 => _mm256_cvtph_ps(ld_si128(p)),
        WeightKind::Bf16 => {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(ld_si128(p))))
        }
    }
}

/// Lane sum in the fixed order `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`
/// (same as `scalar::hsum`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// `R` weight rows × `G` tokens of full-`k` dot products, all accumulators in
/// registers. `w`: first row of the tile (row stride `k`), `x`: first token
/// (stride `k`), `out`: `out[g0·ldo + r0]`.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<W: Weight, const R: usize, const G: usize>(
    w: *const W,
    x: *const f32,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    let wr: [*const W; R] = core::array::from_fn(|r| w.wrapping_add(r.wrapping_mul(k)));
    let xr: [*const f32; G] = core::array::from_fn(|g| x.wrapping_add(g.wrapping_mul(k)));
    let mut acc = [[_mm256_setzero_ps(); G]; R];
    let k8 = k & !7;
    let mut off = 0usize;
    // Weights per 64-byte cache line: prefetch once per line and row.
    let line_mask = 64 / core::mem::size_of::<W>() - 1;
    while off < k8 {
        if off & line_mask == 0 {
            for r in 0..R {
                _mm_prefetch::<_MM_HINT_T0>(
                    wr[r].wrapping_add(off.wrapping_add(PF_ELEMS)) as *const i8
                );
            }
        }
        // Every accumulator gets exactly one FMA per step, so the two loop
        // orders give identical results; pick the one needing fewer registers.
        if G == 1 {
            let xv = ld_ps(xr[0].wrapping_add(off));
            for r in 0..R {
                acc[r][0] = _mm256_fmadd_ps(load8(wr[r].wrapping_add(off)), xv, acc[r][0]);
            }
        } else {
            let mut wv = [_mm256_setzero_ps(); R];
            for r in 0..R {
                wv[r] = load8(wr[r].wrapping_add(off));
            }
            for g in 0..G {
                let xv = ld_ps(xr[g].wrapping_add(off));
                for r in 0..R {
                    acc[r][g] = _mm256_fmadd_ps(wv[r], xv, acc[r][g]);
                }
            }
        }
        off = off.wrapping_add(8);
    }
    if k8 < k {
        // Zero-padded last step (same order as the scalar path).
        let rem = k - k8;
        let mut wv = [_mm256_setzero_ps(); R];
        for r in 0..R {
            let mut buf = [W::ZERO; 8];
            for (l, b) in buf.iter_mut().enumerate().take(rem) {
                *b = *wr[r].wrapping_add(k8 + l);
            }
            wv[r] = load8(buf.as_ptr());
        }
        for g in 0..G {
            let mut buf = [0f32; 8];
            for (l, b) in buf.iter_mut().enumerate().take(rem) {
                *b = *xr[g].wrapping_add(k8 + l);
            }
            let xv = ld_ps(buf.as_ptr());
            for r in 0..R {
                acc[r][g] = _mm256_fmadd_ps(wv[r], xv, acc[r][g]);
            }
        }
    }
    for r in 0..R {
        for g in 0..G {
            *out.wrapping_add(g.wrapping_mul(ldo).wrapping_add(r)) = hsum(acc[r][g]);
        }
    }
}

/// `nr` rows × `G` tokens as register tiles of at most 4 rows (for `G ≥ 2`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_g<W: Weight, const G: usize>(
    nr: usize,
    w: *const W,
    x: *const f32,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut r = 0;
    while r < nr {
        let (wp, op) = (w.wrapping_add(r * k), out.wrapping_add(r));
        r += match nr - r {
            1 => {
                tile::<W, 1, G>(wp, x, k, op, ldo);
                1
            }
            2 => {
                tile::<W, 2, G>(wp, x, k, op, ldo);
                2
            }
            3 => {
                tile::<W, 3, G>(wp, x, k, op, ldo);
                3
            }
            _ => {
                tile::<W, 4, G>(wp, x, k, op, ldo);
                4
            }
        };
    }
}

/// `nr` rows × 1 token as register tiles of at most 16 rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_1<W: Weight>(
    nr: usize,
    w: *const W,
    x: *const f32,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut r = 0;
    while r < nr {
        let (wp, op) = (w.wrapping_add(r * k), out.wrapping_add(r));
        r += match nr - r {
            1 => {
                tile::<W, 1, 1>(wp, x, k, op, ldo);
                1
            }
            2 => {
                tile::<W, 2, 1>(wp, x, k, op, ldo);
                2
            }
            3 => {
                tile::<W, 3, 1>(wp, x, k, op, ldo);
                3
            }
            4..=7 => {
                tile::<W, 4, 1>(wp, x, k, op, ldo);
                4
            }
            8..=15 => {
                tile::<W, 8, 1>(wp, x, k, op, ldo);
                8
            }
            _ => {
                tile::<W, 16, 1>(wp, x, k, op, ldo);
                16
            }
        };
    }
}

/// (row block, max tokens per register tile) for a batch of `m` tokens.
///
/// * `m = 1` is purely bandwidth-bound: stream many rows at once (8 rows of
///   f32, 16 rows of 2-byte weights: the same bytes per step, ~8 concurrent
///   4 KiB pages for k = 1024), which measurably raises the DRAM throughput
///   a core gets on this class of machine.
/// * `m ≥ 2`: register tiles of 8–12 accumulators (rows × tokens); every
///   weight row block is reused for all token groups while it is in L1/L2.
///   (3 rows × 4 tokens measured best for m = 4..16 among 1×6, 2×4, 2×6,
///   3×4, 4×3, 4×4.)
#[inline]
fn blocking<W: Weight>(m: usize) -> (usize, usize) {
    match m {
        1 if core::mem::size_of::<W>() == 2 => (16, 1),
        1 => (8, 1),
        2 => (4, 2),
        3 => (4, 3),
        _ => (3, 4),
    }
}

/// Rows `r0..r1` of `out [m, n]` for all `m` tokens: for each block of rows,
/// loop over the token groups while those weight rows are hot in L1/L2.
///
/// # Safety
/// AVX2/FMA/F16C available; see `crate::rows` for the pointer contract.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows<W: Weight>(
    w: *const W,
    x: *const f32,
    out: *mut f32,
    n: usize,
    k: usize,
    m: usize,
    r0: usize,
    r1: usize,
) {
    let (rb, gmax) = blocking::<W>(m);
    // Token blocks small enough for their activations to stay in L2 while
    // every weight row block of this chunk is swept over them (only matters
    // for prefill-sized m: one block whenever m·k·4 ≤ X_BLOCK_BYTES).
    let blocks = (m * k * 4).div_ceil(X_BLOCK_BYTES).max(1);
    let mb = m.div_ceil(blocks).div_ceil(4) * 4;
    let mut t0 = 0;
    while t0 < m {
        let t1 = (t0 + mb).min(m);
        let mut r = r0;
        while r < r1 {
            let nr = (r1 - r).min(rb);
            let wp = w.wrapping_add(r * k);
            let mut g = t0;
            while g < t1 {
                let ng = (t1 - g).min(gmax);
                let (xp, op) = (x.wrapping_add(g * k), out.wrapping_add(g * n + r));
                match ng {
                    1 => tile_1::<W>(nr, wp, xp, k, op, n),
                    2 => tile_g::<W, 2>(nr, wp, xp, k, op, n),
                    3 => tile_g::<W, 3>(nr, wp, xp, k, op, n),
                    _ => tile_g::<W, 4>(nr, wp, xp, k, op, n),
                }
                g += ng;
            }
            r += nr;
        }
        t0 = t1;
    }
}

/// Widens `len` weights to `f32`.
///
/// # Safety
/// AVX2/FMA/F16C available; `src` and `dst` valid for `len` elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn widen<W: Weight>(src: *const W, dst: *mut f32, len: usize) {
    let len8 = len & !7;
    let mut i = 0usize;
    while i < len8 {
        _mm256_storeu_ps(dst.wrapping_add(i), load8(src.wrapping_add(i)));
        i = i.wrapping_add(8);
    }
    while i < len {
        *dst.wrapping_add(i) = (*src.wrapping_add(i)).to_f32();
        i += 1;
    }
}

/// Sum of `len` f32 (a memory-bandwidth probe for the benchmark), read with
/// the access pattern of the 8-row f32 GEMV tile: rows of 1024 floats, 8
/// adjacent rows streamed at once, same software prefetch.
///
/// # Safety
/// AVX2 available; `p` valid for `len` elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn sum_f32(p: *const f32, len: usize) -> f32 {
    const ROW: usize = 1024;
    const S: usize = 8;
    let mut total = _mm256_setzero_ps();
    let mut base = 0usize;
    while base + S * ROW <= len {
        let ps: [*const f32; S] = core::array::from_fn(|j| p.wrapping_add(base + j * ROW));
        let mut a = [_mm256_setzero_ps(); S];
        let mut i = 0usize;
        while i < ROW {
            if i & 15 == 0 {
                for q in ps {
                    _mm_prefetch::<_MM_HINT_T0>(
                        q.wrapping_add(i.wrapping_add(PF_ELEMS)) as *const i8
                    );
                }
            }
            for j in 0..S {
                a[j] = _mm256_add_ps(a[j], ld_ps(ps[j].wrapping_add(i)));
            }
            i = i.wrapping_add(8);
        }
        for acc in a {
            total = _mm256_add_ps(total, acc);
        }
        base += S * ROW;
    }
    let mut s = hsum(total);
    while base < len {
        s += *p.wrapping_add(base);
        base += 1;
    }
    s
}
