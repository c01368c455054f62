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

/// Fixed sanity ranges of the sampling knobs (not configurable: outside them
/// the engine's behaviour is meaningless, not just expensive).
pub(crate) mod ranges {
    pub const TEMPERATURE: (f64, f64) = (0.0, 100.0); // (exclusive, inclusive]
    pub const TOP_P: (f64, f64) = (0.0, 1.0); // (exclusive, inclusive]
    pub const REPETITION_PENALTY: (f64, f64) = (0.0, 10.0); // (exclusive, inclusive]
    pub const CFG_SCALE: (f64, f64) = (0.0, 50.0); // [inclusive, inclusive]
    pub const TOP_K_MAX: u32 = 100_000;
    pub const ID_MAX_LEN: usize = 128;
}
