//! The AVX2 and AVX-512 bodies of one attention block (x86_64 only): the same
//! lanes, order and fused operations as the portable [`block_body`], so the same
//! bits. Callers check the features at run time.
//!
//! [`block_body`]: super::block_body

use super::softmax_rows;

/// The scores of [`block_avx2`]: `scores[r·tmax + j] = (q_r · k_j) · scale` for
/// every query row and every key of the block (beyond a query's visible keys they
/// are computed and then ignored by the softmax).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn scores_avx2(qs: &[&[f32]], k: &[f32], d: usize, scale: f32, scores: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = qs.len();
    let tmax = k.len() / d;
    // Scores: tiles of 4 queries × 2 keys (8 independent FMA chains; each key
    // vector load feeds four queries, each query load two keys).
    let mut j = 0;
    while j < tmax {
        let two = j + 1 < tmax;
        let k0 = k.as_ptr().add(j * d);
        let k1 = if two { k0.add(d) } else { k0 };
        let mut r = 0;
        while r < n {
            let nq = (n - r).min(4);
            let qp: [*const f32; 4] = core::array::from_fn(|u| qs[r + u.min(nq - 1)].as_ptr());
            let mut a0 = [_mm256_setzero_ps(); 4];
            let mut a1 = [_mm256_setzero_ps(); 4];
            let mut x = 0;
            while x < d {
                let kv0 = _mm256_loadu_ps(k0.add(x));
                let kv1 = _mm256_loadu_ps(k1.add(x));
                for u in 0..4 {
                    let qv = _mm256_loadu_ps(qp[u].add(x));
                    a0[u] = _mm256_fmadd_ps(qv, kv0, a0[u]);
                    a1[u] = _mm256_fmadd_ps(qv, kv1, a1[u]);
                }
                x += 8;
            }
            // The eight lane sums at once, each in `hsum8`'s order (so the same
            // bits): lanes l and l+4, then (0+2) and (1+3), then those two.
            let half = |x: __m256, y: __m256| {
                _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(x, y),
                    _mm256_permute2f128_ps::<0x31>(x, y),
                )
            };
            let quarter = |x: __m256, y: __m256| {
                _mm256_add_ps(
                    _mm256_shuffle_ps::<0b01_00_01_00>(x, y),
                    _mm256_shuffle_ps::<0b11_10_11_10>(x, y),
                )
            };
            let p = quarter(half(a0[0], a0[1]), half(a0[2], a0[3])); // key j
            let q = quarter(half(a1[0], a1[1]), half(a1[2], a1[3])); // key j + 1
            let sums = _mm256_add_ps(
                _mm256_shuffle_ps::<0b10_00_10_00>(p, q),
                _mm256_shuffle_ps::<0b11_01_11_01>(p, q),
            );
            // Lanes: (q0,j) (q2,j) (q0,j+1) (q2,j+1) | (q1,j) (q3,j) (q1,j+1) (q3,j+1).
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(sums, _mm256_set1_ps(scale)));
            const AT: [(usize, usize); 8] = [
                (0, 0),
                (2, 0),
                (0, 1),
                (2, 1),
                (1, 0),
                (3, 0),
                (1, 1),
                (3, 1),
            ];
            for (&val, &(u, dj)) in out.iter().zip(&AT) {
                if u < nq && (dj == 0 || two) {
                    scores[(r + u) * tmax + j + dj] = val;
                }
            }
            r += nq;
        }
        j += if two { 2 } else { 1 };
    }
}

/// [`block_body`] with 256-bit FMA registers and the same bits (each score and
/// each output element is accumulated in the same order with the same fused
/// operations): scores in tiles of 4 queries × 2 keys, weighted value sums two
/// queries at a time, outputs kept in registers.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block_avx2(
    qs: &[&[f32]],
    ts: &[usize],
    k: &[f32],
    v: &[f32],
    d: usize,
    scale: f32,
    scores: &mut [f32],
    o: &mut [f32],
) {
    use std::arch::x86_64::*;
    let n = qs.len();
    let tmax = k.len() / d;
    scores_avx2(qs, k, d, scale, scores);
    softmax_rows(ts, tmax, scores);
    // o_r = Σ_j p_rj·v_j, sequential in j per element (the portable order): two
    // queries at a time share each value-row load, 32 outputs per query in
    // registers (or 8 for the remainder). The head's value rows stay in L2.
    let mut r = 0;
    while r < n {
        let pair = r + 1 < n;
        let r1 = if pair { r + 1 } else { r };
        let (t0, t1) = (ts[r], ts[r1]);
        let p0 = scores.as_ptr().add(r * tmax);
        let p1 = scores.as_ptr().add(r1 * tmax);
        let (o0, o1) = (o.as_mut_ptr().add(r * d), o.as_mut_ptr().add(r1 * d));
        let mut c0 = 0;
        while c0 < d {
            let lanes = if c0 + 32 <= d { 4 } else { 1 };
            let mut acc0 = [_mm256_setzero_ps(); 4];
            let mut acc1 = [_mm256_setzero_ps(); 4];
            for jj in 0..t0.max(t1) {
                let row = v.as_ptr().add(jj * d + c0);
                let (in0, in1) = (jj < t0, jj < t1);
                let (w0, w1) = (_mm256_set1_ps(*p0.add(jj)), _mm256_set1_ps(*p1.add(jj)));
                for u in 0..lanes {
                    let vv = _mm256_loadu_ps(row.add(8 * u));
                    if in0 {
                        acc0[u] = _mm256_fmadd_ps(w0, vv, acc0[u]);
                    }
                    if in1 {
                        acc1[u] = _mm256_fmadd_ps(w1, vv, acc1[u]);
                    }
                }
            }
            for u in 0..lanes {
                _mm256_storeu_ps(o0.add(c0 + 8 * u), acc0[u]);
                if pair {
                    _mm256_storeu_ps(o1.add(c0 + 8 * u), acc1[u]);
                }
            }
            c0 += 8 * lanes;
        }
        r += if pair { 2 } else { 1 };
    }
}

/// [`block_avx2`]'s scores (the same code, so the same bits), with the weighted
/// value sums in 512-bit registers: four queries × 64 outputs in 16
/// accumulators, each value-row load feeding four queries. Every output element
/// still adds its terms in key order with one fused multiply-add each, so the
/// bits are those of the AVX2 and portable paths.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block_avx512(
    qs: &[&[f32]],
    ts: &[usize],
    k: &[f32],
    v: &[f32],
    d: usize,
    scale: f32,
    scores: &mut [f32],
    o: &mut [f32],
) {
    let n = qs.len();
    let tmax = k.len() / d;
    scores_avx2(qs, k, d, scale, scores);
    softmax_rows(ts, tmax, scores);
    let mut r = 0;
    while r < n {
        let nq = (n - r).min(4);
        // Rows past the block repeat its last query (computed, not stored).
        let rr: [usize; 4] = core::array::from_fn(|u| r + u.min(nq - 1));
        let p: [*const f32; 4] = core::array::from_fn(|u| scores.as_ptr().add(rr[u] * tmax));
        let mut c0 = 0;
        while c0 < d {
            let lanes = ((d - c0) / 16).min(4);
            let o_at: [*mut f32; 4] = core::array::from_fn(|u| o.as_mut_ptr().add(rr[u] * d + c0));
            let vc = v.as_ptr().add(c0);
            match lanes {
                4 => value_sums::<4>(vc, d, &p, ts, &rr, nq, &o_at),
                3 => value_sums::<3>(vc, d, &p, ts, &rr, nq, &o_at),
                2 => value_sums::<2>(vc, d, &p, ts, &rr, nq, &o_at),
                _ => value_sums::<1>(vc, d, &p, ts, &rr, nq, &o_at),
            }
            c0 += 16 * lanes;
        }
        r += nq;
    }
}

/// `L × 16` output columns (starting at `v`'s first column) for the four query
/// rows `rr` of [`block_avx512`]: `o_u += Σ_j p_u[j] · v_j`, in key order.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn value_sums<const L: usize>(
    v: *const f32,
    d: usize,
    p: &[*const f32; 4],
    ts: &[usize],
    rr: &[usize; 4],
    nq: usize,
    o: &[*mut f32; 4],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); L]; 4];
    // Keys every query of the group sees (`ts` is non-decreasing), then each
    // query's own remaining keys.
    let common = ts[rr[0]];
    for jj in 0..common {
        let row = v.add(jj * d);
        let w: [__m512; 4] = core::array::from_fn(|u| _mm512_set1_ps(*p[u].add(jj)));
        for c in 0..L {
            let vv = _mm512_loadu_ps(row.add(16 * c));
            for u in 0..4 {
                acc[u][c] = _mm512_fmadd_ps(w[u], vv, acc[u][c]);
            }
        }
    }
    for u in 1..nq {
        for jj in common..ts[rr[u]] {
            let row = v.add(jj * d);
            let w = _mm512_set1_ps(*p[u].add(jj));
            for c in 0..L {
                acc[u][c] = _mm512_fmadd_ps(w, _mm512_loadu_ps(row.add(16 * c)), acc[u][c]);
            }
        }
    }
    for u in 0..nq {
        for c in 0..L {
            _mm512_storeu_ps(o[u].add(16 * c), acc[u][c]);
        }
    }
}
