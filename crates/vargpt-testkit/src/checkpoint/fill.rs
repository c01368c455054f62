//! The values of each tensor: a rule per tensor (its role decides the scale), and
//! two ways to draw the random ones.

use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use vargpt_model::{TensorSpec, VargptConfig};

/// How random values are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fill {
    /// Gaussian, one seeded stream through all tensors in order (serial; the
    /// values every small checkpoint has had so far).
    #[default]
    Normal,
    /// Uniform with the same mean and standard deviation, each value a hash of
    /// (seed, tensor, index): any piece can be made on any thread in any order,
    /// so full-size checkpoints fill all cores.
    Fast,
}

/// What one tensor holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rule {
    Random {
        mean: f32,
        std: f32,
    },
    Const(f32),
    /// VAR's training mask `[L, L]`: 0 where the row's stage ≥ the column's, else -inf.
    StageMask(Vec<usize>),
    /// `lvl_1L`: the stage of each token (int64).
    Stages(Vec<usize>),
}

/// The rule for `spec` (scales as in the authors' initialisation, roughly).
pub(crate) fn rule(spec: &TensorSpec, cfg: &VargptConfig) -> Rule {
    let name = spec.name.as_str();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    if spec.integer {
        return Rule::Stages(cfg.var().token_stages());
    }
    if name.ends_with("attn_bias_for_masking") {
        return Rule::StageMask(cfg.var().token_stages());
    }
    if leaf == "zero_k_bias" || leaf == "ema_vocab_hit_SV" {
        return Rule::Const(0.0);
    }
    if leaf == "scale_mul_1H11" {
        return Rule::Const(4f32.ln());
    }
    let random = |std: f32, mean: f32| Rule::Random { mean, std };
    let is_norm = name.contains("norm") || name.contains("layrnorm") || name.contains("ln_q");
    match (leaf, spec.shape.len()) {
        ("weight", 1) if is_norm => random(0.02, 1.0),
        ("bias", _) => random(0.02, 0.0),
        ("weight", 2) if name.contains("ada_lin") => random(0.02, 0.0),
        ("weight", 2) if name.contains("embed") || name.contains("class_emb") => random(0.02, 0.0),
        ("weight", 2) => random((spec.shape[1] as f32).powf(-0.5), 0.0),
        ("weight", 4) => {
            let fan_in: usize = spec.shape[1..].iter().product();
            random((fan_in as f32).powf(-0.5), 0.0)
        }
        _ => random(0.02, 0.0),
    }
}

impl Rule {
    /// Value `i` of a tensor whose value does not depend on a random stream.
    fn fixed(&self, i: usize) -> f32 {
        match self {
            Rule::Const(v) => *v,
            Rule::StageMask(lvl) => {
                let l = lvl.len();
                if lvl[i / l] >= lvl[i % l] {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            }
            Rule::Stages(lvl) => lvl[i] as f32,
            Rule::Random { mean, .. } => *mean,
        }
    }

    /// All `n` values, Gaussian ones drawn from `rng` (the serial [`Fill::Normal`]).
    pub(crate) fn normal_values(&self, n: usize, rng: &mut StdRng) -> Vec<f32> {
        match self {
            Rule::Random { mean, std } => {
                let d = Normal::new(*mean, *std).expect("finite positive std");
                (0..n).map(|_| d.sample(rng)).collect()
            }
            _ => (0..n).map(|i| self.fixed(i)).collect(),
        }
    }

    /// Values `start .. start + out.len()` under [`Fill::Fast`]; `key` names the
    /// tensor (see [`tensor_key`]).
    pub(crate) fn fast_values(&self, key: u64, start: usize, out: &mut [f32]) {
        match self {
            Rule::Random { mean, std } => {
                // Uniform on [-√3σ, √3σ] has standard deviation σ.
                let half_width = std * 3f32.sqrt();
                for (j, o) in out.iter_mut().enumerate() {
                    let bits = splitmix64(key.wrapping_add((start + j) as u64));
                    let u = (bits >> 40) as f32 * (1.0 / (1u64 << 24) as f32); // [0, 1)
                    *o = mean + half_width * (2.0 * u - 1.0);
                }
            }
            _ => {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = self.fixed(start + j);
                }
            }
        }
    }
}

/// The key of tensor number `index` under `seed` for [`Rule::fast_values`].
pub(crate) fn tensor_key(seed: u64, index: usize) -> u64 {
    splitmix64(seed ^ splitmix64(index as u64 + 1))
}

/// SplitMix64's output function: a cheap, well-mixed hash of a counter.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_values_of_a_piece_equal_that_piece_of_the_whole() {
        let r = Rule::Random {
            mean: 0.5,
            std: 0.1,
        };
        let key = tensor_key(3, 17);
        let mut whole = vec![0f32; 1000];
        r.fast_values(key, 0, &mut whole);
        let mut piece = vec![0f32; 300];
        r.fast_values(key, 450, &mut piece);
        assert_eq!(&whole[450..750], &piece[..]);
        // Another tensor or seed draws other values.
        let mut other = vec![0f32; 1000];
        r.fast_values(tensor_key(3, 18), 0, &mut other);
        assert_ne!(whole, other);
        r.fast_values(tensor_key(4, 17), 0, &mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn fast_values_have_the_rules_mean_and_std() {
        let (mean, std) = (1.0f32, 0.02f32);
        let mut v = vec![0f32; 200_000];
        Rule::Random { mean, std }.fast_values(tensor_key(1, 0), 0, &mut v);
        let n = v.len() as f64;
        let m = v.iter().map(|x| *x as f64).sum::<f64>() / n;
        let s = (v.iter().map(|x| (*x as f64 - m).powi(2)).sum::<f64>() / n).sqrt();
        assert!((m - 1.0).abs() < 1e-3, "mean {m}");
        assert!((s / 0.02 - 1.0).abs() < 0.01, "std {s}");
        let bound = (mean + std * 3f32.sqrt()) as f64;
        assert!(v
            .iter()
            .all(|x| (*x as f64) <= bound && (*x as f64) >= 2.0 - bound));
    }

    #[test]
    fn stage_mask_is_block_causal() {
        let r = Rule::StageMask(vec![0, 1, 1]);
        let mut v = vec![0f32; 9];
        r.fast_values(0, 0, &mut v);
        let inf = f32::NEG_INFINITY;
        assert_eq!(v, vec![0.0, inf, inf, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
