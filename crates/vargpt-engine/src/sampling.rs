//! Token selection: HF-style logits processors for text, the reference's
//! top-k/top-p sampler for image codes, and the noise source of the CFG branch.

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// Index of the first maximum (torch.argmax semantics).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best
}

/// HF `RepetitionPenaltyLogitsProcessor`: divide positive / multiply negative scores
/// of tokens already in the sequence.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f64) {
    if (penalty - 1.0).abs() < f64::EPSILON {
        return;
    }
    let p = penalty as f32;
    let mut done = std::collections::HashSet::new();
    for &t in seen {
        let i = t as usize;
        if i < logits.len() && done.insert(i) {
            let v = logits[i];
            logits[i] = if v < 0.0 { v * p } else { v / p };
        }
    }
}

/// Keeps the `k` largest entries (ties with the k-th kept, as `logits < thr` removes).
pub fn top_k_filter(logits: &mut [f32], k: usize) {
    if k == 0 || k >= logits.len() {
        return;
    }
    let mut sorted: Vec<f32> = logits.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let thr = sorted[k - 1];
    for v in logits.iter_mut() {
        if *v < thr {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// Nucleus filter as HF and the VAR sampler do: sort ascending, remove entries whose
/// cumulative probability is ≤ 1 − p, never the largest one.
pub fn top_p_filter(logits: &mut [f32], p: f64) {
    if p >= 1.0 {
        return;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]));
    let probs = softmax(logits);
    let limit = (1.0 - p) as f32;
    let mut cum = 0f32;
    let last = order.len() - 1;
    for (rank, &i) in order.iter().enumerate() {
        cum += probs[i];
        if cum <= limit && rank != last {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|&v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Draws an index from softmax(logits) (entries at −∞ have zero mass).
pub fn sample_categorical(logits: &[f32], rng: &mut StdRng) -> usize {
    let probs = softmax(logits);
    let u: f32 = rng.random::<f32>();
    let mut cum = 0f32;
    let mut last_nonzero = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            last_nonzero = i;
        }
        cum += p;
        if u < cum {
            return i;
        }
    }
    last_nonzero
}

/// Text token choice with HF's processor order: repetition penalty, then (when
/// sampling) temperature, top-k, top-p.
pub struct TextSampler {
    pub greedy: bool,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub repetition_penalty: f64,
}

impl TextSampler {
    pub fn choose(&self, logits: &mut [f32], seen: &[u32], rng: &mut StdRng) -> u32 {
        apply_repetition_penalty(logits, seen, self.repetition_penalty);
        if self.greedy {
            return argmax(logits) as u32;
        }
        if (self.temperature - 1.0).abs() > f64::EPSILON && self.temperature > 0.0 {
            let t = self.temperature as f32;
            logits.iter_mut().for_each(|v| *v /= t);
        }
        top_k_filter(logits, self.top_k);
        top_p_filter(logits, self.top_p);
        sample_categorical(logits, rng) as u32
    }
}

/// The VAR sampler (`sample_with_top_k_top_p_`), no temperature. `top_k == 1` is argmax.
pub fn sample_image_code(logits: &mut [f32], top_k: usize, top_p: f64, rng: &mut StdRng) -> u32 {
    if top_k == 1 {
        return argmax(logits) as u32;
    }
    top_k_filter(logits, top_k);
    top_p_filter(logits, top_p);
    sample_categorical(logits, rng) as u32
}

/// Where the "unconditional" LLM hidden states of CFG come from.
pub trait NoiseSource {
    /// Standard-normal values for stage `stage`, `len` of them (row-major `[l, hidden]`).
    fn normal(&mut self, stage: usize, len: usize, rng: &mut StdRng) -> Vec<f32>;
}

impl<N: NoiseSource + ?Sized> NoiseSource for &mut N {
    fn normal(&mut self, stage: usize, len: usize, rng: &mut StdRng) -> Vec<f32> {
        (**self).normal(stage, len, rng)
    }
}

/// The default: N(0, 1) from the request's RNG.
pub struct RngNoise;

impl NoiseSource for RngNoise {
    fn normal(&mut self, _stage: usize, len: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..len).map(|_| StandardNormal.sample(rng)).collect()
    }
}

/// Replays recorded noise (tests feed the reference's tensors).
pub struct RecordedNoise(pub Vec<Vec<f32>>);

impl NoiseSource for RecordedNoise {
    fn normal(&mut self, stage: usize, len: usize, _rng: &mut StdRng) -> Vec<f32> {
        let v = self.0.get(stage).cloned().unwrap_or_default();
        assert_eq!(
            v.len(),
            len,
            "recorded noise for stage {stage} has the wrong size"
        );
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn argmax_takes_first_max() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn top_k_keeps_ties() {
        let mut l = vec![1.0, 5.0, 3.0, 3.0, 0.0];
        top_k_filter(&mut l, 2);
        assert_eq!(l.iter().filter(|v| v.is_finite()).count(), 3);
        assert!(l[0].is_infinite() && l[4].is_infinite());
    }

    #[test]
    fn top_p_keeps_the_nucleus_and_the_max() {
        // probs ≈ [0.032, 0.087, 0.237, 0.644]
        let mut l = vec![0.0, 1.0, 2.0, 3.0];
        top_p_filter(&mut l, 0.9);
        assert!(l[0].is_infinite(), "smallest removed");
        assert!(l[1].is_finite() && l[3].is_finite());
        let mut l = vec![0.0, 0.0, 10.0];
        top_p_filter(&mut l, 0.01);
        assert_eq!(l.iter().filter(|v| v.is_finite()).count(), 1);
        assert!(l[2].is_finite());
    }

    #[test]
    fn repetition_penalty_matches_hf() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn sampling_is_deterministic_per_seed_and_follows_probabilities() {
        let logits = vec![0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let mut counts = [0usize; 3];
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..4000 {
            counts[sample_categorical(&logits, &mut rng)] += 1;
        }
        assert_eq!(counts[2], 0);
        let frac = counts[1] as f64 / 4000.0;
        assert!((frac - 0.75).abs() < 0.03, "{frac}");
        let a: Vec<usize> = {
            let mut r = StdRng::seed_from_u64(1);
            (0..20)
                .map(|_| sample_categorical(&logits, &mut r))
                .collect()
        };
        let b: Vec<usize> = {
            let mut r = StdRng::seed_from_u64(1);
            (0..20)
                .map(|_| sample_categorical(&logits, &mut r))
                .collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn image_sampler_restricts_to_top_k() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let mut l: Vec<f32> = (0..50).map(|i| i as f32 * 0.01).collect();
            let c = sample_image_code(&mut l, 5, 1.0, &mut rng);
            assert!(c >= 45);
        }
        let mut l = vec![0.0, 2.0, 1.0];
        assert_eq!(sample_image_code(&mut l, 1, 0.96, &mut rng), 1);
    }
}
