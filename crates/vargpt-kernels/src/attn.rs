//! Softmax attention of query rows over one sequence's cached keys and values (f32),
//! for the decode steps and prefill chunks of the LLaMA and the VAR head, and CLIP.
//!
//! One task is one head and a block of up to [`QUERY_BLOCK`] consecutive queries:
//! scores against the visible keys, a max-subtracted softmax per query, and the
//! weighted sum of values, read in place from the cache buffers. Blocking queries
//! matters: a head's keys and values (~0.5 MB for 1k positions) are streamed once per
//! block instead of once per query, which otherwise makes long prefills memory-bound.
//! The block body is compiled for AVX2 (chosen at run time) and for the baseline
//! target; both give the same bits (same lanes, same order, correctly rounded
//! fused multiply-adds: `f32::mul_add` on the portable path).

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
use x86::{block_avx2, block_avx512};

/// Queries per task (they share each key/value row while it is in L1).
pub const QUERY_BLOCK: usize = 8;

/// Below this many multiply-adds per score pass (queries × visible keys × heads ×
/// head size), [`attend`] runs on the calling thread.
const SERIAL_MAX_WORK: usize = 1 << 21;

/// Attention of `l` query rows `q [l, heads·d]` (row-major, already multiplied by any
/// per-head scale) over the cache `kc, vc [kv_heads, cap, d]`. Query `i` sees cache
/// positions `0 .. visible(i)` (non-decreasing in `i`); scores are multiplied by
/// `scale`. Query heads map onto key/value heads in groups of `heads / kv_heads`
/// (GQA). Returns `[l, heads·d]`.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    l: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
    kc: &[f32],
    vc: &[f32],
    cap: usize,
    visible: impl Fn(usize) -> usize + Sync,
    scale: f32,
) -> Vec<f32> {
    assert!(
        heads.is_multiple_of(kv_heads),
        "attend: {heads} heads over {kv_heads} kv heads"
    );
    assert_eq!(q.len(), l * heads * d, "attend: q is not [l, heads·d]");
    let rep = heads / kv_heads;
    let width = heads * d;
    let blocks = l.div_ceil(QUERY_BLOCK);
    let avx2 = crate::Isa::detect().has_avx2();
    let avx512 = crate::Isa::detect() == crate::Isa::Avx512;
    let task = |scores: &mut Vec<f32>, task: usize| {
        let (h, b) = (task / blocks, task % blocks);
        let i0 = b * QUERY_BLOCK;
        let n = QUERY_BLOCK.min(l - i0);
        let ts: Vec<usize> = (i0..i0 + n).map(&visible).collect();
        let tmax = ts[n - 1];
        assert!(
            tmax <= cap,
            "attend: {tmax} visible positions in a cache of {cap}"
        );
        assert!(
            ts.windows(2).all(|w| w[0] <= w[1]),
            "attend: visible() decreases"
        );
        let base = (h / rep) * cap * d;
        let (k, v) = (&kc[base..base + tmax * d], &vc[base..base + tmax * d]);
        let qs: Vec<&[f32]> = (i0..i0 + n)
            .map(|i| &q[i * width + h * d..i * width + (h + 1) * d])
            .collect();
        let mut o = vec![0f32; n * d];
        scores.resize(n * tmax, 0.0);
        #[cfg(target_arch = "x86_64")]
        if avx512 && d.is_multiple_of(16) {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked at run time).
            unsafe { block_avx512(&qs, &ts, k, v, d, scale, scores, &mut o) };
            return o;
        }
        #[cfg(target_arch = "x86_64")]
        if avx2 && d.is_multiple_of(8) {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time).
            unsafe { block_avx2(&qs, &ts, k, v, d, scale, scores, &mut o) };
            return o;
        }
        let _ = (avx2, avx512);
        block_body(&qs, &ts, k, v, d, scale, scores, &mut o, dot8);
        o
    };
    // A decode step's attention (one query over a few hundred keys) is a few
    // microseconds of arithmetic, less than handing tasks to the thread pool and
    // waiting for them (measured: 0.17 ms per call, 64 calls per step of a batch
    // of 8 on the 8-layer bench model). Small problems stay on this thread.
    if l == 0 {
        return Vec::new();
    }
    let work = l * visible(l - 1).max(1) * heads * d;
    let results: Vec<Vec<f32>> = if work < SERIAL_MAX_WORK {
        let mut scores = Vec::new();
        (0..heads * blocks).map(|t| task(&mut scores, t)).collect()
    } else {
        (0..heads * blocks)
            .into_par_iter()
            .map_init(Vec::new, |scores, t| task(scores, t))
            .collect()
    };
    let mut out = vec![0f32; l * width];
    for (task, o) in results.iter().enumerate() {
        let (h, b) = (task / blocks, task % blocks);
        for (r, row) in o.chunks_exact(d).enumerate() {
            let i = b * QUERY_BLOCK + r;
            out[i * width + h * d..i * width + (h + 1) * d].copy_from_slice(row);
        }
    }
    out
}

/// One block, portable: query `r` (row `qs[r]`) sees keys `0 .. ts[r]`; `scores` holds
/// `qs.len() × max(ts)` values, `o` gets `qs.len() × d`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn block_body(
    qs: &[&[f32]],
    ts: &[usize],
    k: &[f32],
    v: &[f32],
    d: usize,
    scale: f32,
    scores: &mut [f32],
    o: &mut [f32],
    dot: impl Fn(&[f32], &[f32]) -> f32,
) {
    let tmax = k.len() / d;
    for (r, (q, &t)) in qs.iter().zip(ts).enumerate() {
        let s = &mut scores[r * tmax..r * tmax + t];
        for (sc, kj) in s.iter_mut().zip(k.chunks_exact(d)) {
            *sc = dot(q, kj) * scale;
        }
    }
    softmax_rows(ts, tmax, scores);
    for (r, &t) in ts.iter().enumerate() {
        let or = &mut o[r * d..(r + 1) * d];
        for (p, vj) in scores[r * tmax..r * tmax + t].iter().zip(v.chunks_exact(d)) {
            for (oi, vi) in or.iter_mut().zip(vj) {
                *oi = p.mul_add(*vi, *oi);
            }
        }
    }
}

/// Row `r` of `scores` (first `ts[r]` entries) → softmax weights, in place:
/// `exp(s − max) · (1 / Σ)`, the sum taken sequentially.
#[inline(always)]
fn softmax_rows(ts: &[usize], tmax: usize, scores: &mut [f32]) {
    for (r, &t) in ts.iter().enumerate() {
        let s = &mut scores[r * tmax..r * tmax + t];
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        for x in s.iter_mut() {
            *x = crate::act::exp_scalar(*x - max);
        }
        let inv = 1.0 / s.iter().sum::<f32>();
        for x in s.iter_mut() {
            *x *= inv;
        }
    }
}

/// `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))` of one register (the order the
/// score tiles reproduce eight at a time; kept for the reference dot product).
#[cfg(test)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn hsum8(acc: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
}

#[cfg(test)]
/// [`dot8`] with 256-bit registers: the same lanes, the same order, the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot8_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n8 = a.len().min(b.len()) / 8 * 8;
    let mut acc = _mm256_setzero_ps();
    let mut x = 0;
    while x < n8 {
        acc = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(x)),
            _mm256_loadu_ps(b.as_ptr().add(x)),
            acc,
        );
        x += 8;
    }
    let tail: f32 = a[n8..].iter().zip(&b[n8..]).map(|(x, y)| x * y).sum();
    hsum8(acc) + tail
}

/// Dot product in eight independent lanes of fused multiply-adds, summed pairwise
/// (fixed order and correctly rounded FMA, so every instruction set gives the same
/// bits).
#[inline(always)]
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        let x: &[f32; 8] = x.try_into().expect("8");
        let y: &[f32; 8] = y.try_into().expect("8");
        for l in 0..8 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward f64 attention for comparison.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        q: &[f32],
        l: usize,
        heads: usize,
        kv_heads: usize,
        d: usize,
        kc: &[f32],
        vc: &[f32],
        cap: usize,
        visible: &dyn Fn(usize) -> usize,
        scale: f32,
    ) -> Vec<f32> {
        let mut out = vec![0f32; l * heads * d];
        for i in 0..l {
            for h in 0..heads {
                let kvh = h / (heads / kv_heads);
                let t = visible(i);
                let s: Vec<f64> = (0..t)
                    .map(|j| {
                        (0..d)
                            .map(|x| {
                                q[i * heads * d + h * d + x] as f64
                                    * kc[(kvh * cap + j) * d + x] as f64
                            })
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for x in 0..d {
                    let v: f64 = (0..t)
                        .map(|j| e[j] / z * vc[(kvh * cap + j) * d + x] as f64)
                        .sum();
                    out[i * heads * d + h * d + x] = v as f32;
                }
            }
        }
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_dot_has_the_scalar_bits() {
        if !crate::Isa::detect().has_avx2() {
            return;
        }
        for n in [1usize, 7, 8, 9, 64, 100, 129] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.021)
                .collect();
            // SAFETY: AVX2 and FMA checked above.
            let fast = unsafe { dot8_avx2(&a, &b) };
            assert_eq!(fast.to_bits(), dot8(&a, &b).to_bits(), "n = {n}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_block_has_the_portable_bits() {
        if !crate::Isa::detect().has_avx2() {
            return;
        }
        for (d, ts) in [
            (64usize, vec![1usize]),
            (64, vec![3, 4, 5, 6, 7]),
            (128, vec![13; 8]),
            (16, vec![2, 5]),
            (72, vec![9, 9, 10]),
            (64, vec![5, 6, 6, 7, 9, 9, 12, 30]),
            (48, vec![1, 2, 3]),
        ] {
            let n = ts.len();
            let tmax = ts[n - 1];
            let qv: Vec<f32> = (0..n * d)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
                .collect();
            let qs: Vec<&[f32]> = qv.chunks(d).collect();
            let k: Vec<f32> = (0..tmax * d)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.021)
                .collect();
            let v: Vec<f32> = (0..tmax * d)
                .map(|i| ((i * 29 % 89) as f32 - 44.0) * 0.017)
                .collect();
            let (mut s1, mut s2) = (vec![0f32; n * tmax], vec![0f32; n * tmax]);
            let (mut o1, mut o2) = (vec![0f32; n * d], vec![0f32; n * d]);
            block_body(&qs, &ts, &k, &v, d, 0.125, &mut s1, &mut o1, dot8);
            // SAFETY: AVX2 and FMA checked above.
            unsafe { block_avx2(&qs, &ts, &k, &v, d, 0.125, &mut s2, &mut o2) };
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&o1), bits(&o2), "d = {d}, ts = {ts:?}");
            if crate::Isa::detect() == crate::Isa::Avx512 && d.is_multiple_of(16) {
                let mut o3 = vec![0f32; n * d];
                // SAFETY: AVX-512F, AVX2 and FMA checked.
                unsafe { block_avx512(&qs, &ts, &k, &v, d, 0.125, &mut s2, &mut o3) };
                assert_eq!(bits(&o1), bits(&o3), "avx512: d = {d}, ts = {ts:?}");
            }
        }
    }

    #[test]
    fn no_queries_give_no_rows() {
        let kv = vec![0.5f32; 2 * 4 * 8];
        let out = attend(&[], 0, 2, 2, 8, &kv, &kv, 4, |i| i + 1, 1.0);
        assert!(out.is_empty());
    }

    #[test]
    fn matches_naive_attention_causal_and_gqa() {
        let mut seed = 7u64;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
                })
                .collect()
        };
        for (l, heads, kv_heads, d, pos) in [
            (1, 4, 4, 16, 9),
            (5, 4, 2, 12, 3),
            (7, 6, 3, 64, 0),
            (19, 4, 4, 64, 5),
        ] {
            let cap = pos + l + 3;
            let q = rnd(l * heads * d);
            let kc = rnd(kv_heads * cap * d);
            let vc = rnd(kv_heads * cap * d);
            let vis = move |i: usize| pos + i + 1;
            let got = attend(&q, l, heads, kv_heads, d, &kc, &vc, cap, vis, 0.3);
            let want = naive(&q, l, heads, kv_heads, d, &kc, &vc, cap, &vis, 0.3);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-5,
                    "{l} {heads} {kv_heads} {d}: {g} vs {w}"
                );
            }
        }
    }
}
