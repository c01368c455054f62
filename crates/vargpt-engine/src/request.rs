//! What a caller asks the engine for, and what it gets back.

use serde::{Deserialize, Serialize};

/// The four things the model can be asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Describe an image. `text` is the instruction (default "Describe the image.").
    Caption,
    /// Answer `text` about an image.
    Vqa,
    /// Text-only chat; the model may still decide to draw (mixed output).
    Chat,
    /// Text-to-image: the prompt is followed by `<|image_gen_start|>` directly.
    GenerateImage,
}

/// Sampling knobs, with the reference defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// Argmax decoding for text (the reference scripts' `do_sample=False`).
    pub greedy: bool,
    pub temperature: f64,
    /// 0 disables top-k.
    pub top_k: usize,
    pub top_p: f64,
    pub repetition_penalty: f64,
    /// Seed for every random draw of the request (text sampling, image sampling, CFG noise).
    pub seed: Option<u64>,
    /// Classifier-free guidance scale of the image head.
    pub cfg_scale: f64,
    pub image_top_k: usize,
    pub image_top_p: f64,
    /// When false, `<|image_gen_start|>` is masked out of text sampling.
    pub allow_image: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 512,
            greedy: true,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: None,
            cfg_scale: 1.5,
            image_top_k: 900,
            image_top_p: 0.96,
            allow_image: true,
        }
    }
}

/// One request to the engine.
#[derive(Debug, Clone)]
pub struct Request {
    pub task: Task,
    pub text: String,
    /// Encoded image bytes (PNG/JPEG/WebP) for caption / VQA (optionally chat).
    pub image: Option<Vec<u8>>,
    pub params: SamplingParams,
}

/// Why text generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Eos,
    Length,
    Image,
}

/// A generated picture: RGB8, row-major, plus the codes of every stage in order.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    pub codes: Vec<u32>,
}

impl GeneratedImage {
    /// Encode as PNG.
    pub fn to_png(&self) -> Result<Vec<u8>, image::ImageError> {
        let mut out = Vec::new();
        let enc = image::codecs::png::PngEncoder::new(&mut out);
        image::ImageEncoder::write_image(
            enc,
            &self.rgb,
            self.width,
            self.height,
            image::ExtendedColorType::Rgb8,
        )?;
        Ok(out)
    }
}

/// Wall-clock seconds spent in each phase of a request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub preprocess_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub image_s: f64,
    pub total_s: f64,
}

/// The engine's answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// The prompt as rendered by the chat template (before `<image>` expansion).
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    /// Generated ids, as the reference returns them (for images: `…, g, X, X`).
    pub ids: Vec<u32>,
    pub text: String,
    pub image: Option<GeneratedImage>,
    pub finish_reason: FinishReason,
    pub timings: Timings,
    /// LLM positions used (prompt + generated tokens + image stage tokens).
    pub positions: usize,
}
