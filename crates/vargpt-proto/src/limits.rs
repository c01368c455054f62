//! Input bounds. Every job is checked against one `Limits` value before any
//! work is done, so a hostile or buggy client cannot make a worker allocate,
//! fetch or compute without bound.

/// Configurable ceilings (the worker exposes each as a flag).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Whole message body, bytes. Inline images travel base64-encoded, so
    /// this must leave room for `max_image_bytes * 4 / 3`.
    pub max_job_bytes: usize,
    /// Prompt, bytes of UTF-8 (tokens are checked by the engine).
    pub max_prompt_bytes: usize,
    /// Upper bound for `params.maxNewTokens`.
    pub max_new_tokens: u32,
    /// Encoded input image, bytes (inline or fetched).
    pub max_image_bytes: usize,
    /// Decoded input image, width × height.
    pub max_image_pixels: u64,
    /// Buckets an `image.uri` may name. Empty: no `s3://` inputs at all.
    pub allowed_buckets: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_job_bytes: 16 << 20,
            max_prompt_bytes: 16 << 10,
            max_new_tokens: 2048,
            max_image_bytes: 10 << 20,
            max_image_pixels: 4096 * 4096,
            allowed_buckets: Vec::new(),
        }
    }
}

/// The instruction of a caption job whose prompt is empty.
pub const DEFAULT_CAPTION_PROMPT: &str = "Describe the image.";

/// Fixed sanity ranges of the sampling knobs (not configurable: outside them
/// the engine's behaviour is meaningless, not just expensive). Defined here
/// once: the validator and the engine both check against them.
pub mod ranges {
    /// `(lo, hi]`: see [`in_open_closed`].
    pub const TEMPERATURE: (f64, f64) = (0.0, 100.0);
    /// `(lo, hi]`, for `top_p` and `image_top_p`.
    pub const TOP_P: (f64, f64) = (0.0, 1.0);
    /// `(lo, hi]`.
    pub const REPETITION_PENALTY: (f64, f64) = (0.0, 10.0);
    /// `[lo, hi]`: see [`in_closed`]; 0 turns classifier-free guidance off.
    pub const CFG_SCALE: (f64, f64) = (0.0, 50.0);
    /// Largest `top_k` / `image_top_k`. Text top-k 0 disables it.
    pub const TOP_K_MAX: u32 = 100_000;
    /// The image head always samples from at least one code.
    pub const IMAGE_TOP_K_MIN: u32 = 1;
    pub const ID_MAX_LEN: usize = 128;

    /// `lo < v <= hi` and finite.
    pub fn in_open_closed(v: f64, (lo, hi): (f64, f64)) -> bool {
        v.is_finite() && v > lo && v <= hi
    }

    /// `lo <= v <= hi` and finite.
    pub fn in_closed(v: f64, (lo, hi): (f64, f64)) -> bool {
        v.is_finite() && v >= lo && v <= hi
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn open_closed_excludes_the_low_end_and_non_finite() {
            assert!(!in_open_closed(0.0, TEMPERATURE));
            assert!(in_open_closed(100.0, TEMPERATURE));
            assert!(!in_open_closed(100.5, TEMPERATURE));
            assert!(!in_open_closed(f64::NAN, TOP_P));
            assert!(in_closed(0.0, CFG_SCALE));
            assert!(!in_closed(f64::INFINITY, CFG_SCALE));
        }
    }
}
