//! Softmax attention over a sequence's cached keys and values, in plain loops (CPU,
//! f32). Used by the LLaMA (causal) and the VAR head (bidirectional within a stage).
//!
//! The tensor path runs a dozen candle ops per sequence and layer — copies into the
//! head-major layout, a materialised mask, scaled scores, softmax, two batched
//! matmuls over strided cache views — which cost far more than the arithmetic. Here
//! each (query, head) pair is one task: scores against the visible keys, a
//! max-subtracted softmax in f32, and the weighted sum of values, read in place from
//! the cache buffers.

use rayon::prelude::*;

/// Attention of `l` query rows `q [l, heads·d]` (row-major, already multiplied by
/// any per-head scale) over the cache `kc, vc [kv_heads, cap, d]`. Query `i` sees
/// cache positions `0 .. visible(i)`; scores are multiplied by `scale`. Query heads
/// map onto key/value heads in groups (`heads / kv_heads`, GQA). Returns `[l, heads·d]`.
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
    let rep = heads / kv_heads;
    let width = heads * d;
    let mut out = vec![0f32; l * width];
    out.par_chunks_mut(d).enumerate().for_each(|(task, o)| {
        let (i, h) = (task / heads, task % heads);
        let t = visible(i);
        let base = (h / rep) * cap * d;
        let qh = &q[i * width + h * d..i * width + (h + 1) * d];
        let mut scores = vec![0f32; t];
        let mut max = f32::NEG_INFINITY;
        for (j, sc) in scores.iter_mut().enumerate() {
            *sc = dot(qh, &kc[base + j * d..base + (j + 1) * d]) * scale;
            max = max.max(*sc);
        }
        let mut sum = 0f32;
        for sc in scores.iter_mut() {
            *sc = (*sc - max).exp();
            sum += *sc;
        }
        for (j, p) in scores.iter().enumerate() {
            let w = p / sum;
            let vj = &vc[base + j * d..base + (j + 1) * d];
            for (oi, vi) in o.iter_mut().zip(vj) {
                *oi += w * vi;
            }
        }
    });
    out
}

/// Dot product in eight independent lanes (vectorisable; fixed order).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
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
        for (l, heads, kv_heads, d, pos) in [(1, 4, 4, 16, 9), (5, 4, 2, 12, 3), (7, 6, 3, 64, 0)] {
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
