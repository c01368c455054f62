//! How an engine is loaded and what one request may ask for.

use crate::error::EngineError;
use candle_core::{DType, Device};
use vargpt_imageproc::ImageLimits;

/// Where the model comes from and how to hold it.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// A model directory, or a Hugging Face hub id (`owner/name`).
    pub model: String,
    /// Hub revision (branch, tag or commit) when `model` is a hub id.
    pub revision: Option<String>,
    /// Compute dtype: "f32" (default on CPU), "f16", "bf16".
    pub dtype: Option<String>,
    /// Use the GPU with this ordinal (needs the `cuda` feature); with `tp > 1`, the
    /// first of `tp` consecutive GPUs unless `devices` lists them.
    pub cuda_device: Option<usize>,
    /// Tensor-parallel degree: the LLaMA and VAR blocks are split over this many ranks.
    pub tp: usize,
    /// Explicit GPU ordinals of the ranks (length `tp`).
    pub devices: Vec<usize>,
    pub limits: EngineLimits,
}

impl LoadOptions {
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            revision: None,
            dtype: None,
            cuda_device: None,
            tp: 1,
            devices: Vec::new(),
            limits: EngineLimits::default(),
        }
    }
}

/// Bounds on what one request may ask for.
#[derive(Debug, Clone)]
pub struct EngineLimits {
    pub max_prompt_tokens: usize,
    pub max_new_tokens: usize,
    pub image: ImageLimits,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            max_prompt_tokens: 4096,
            max_new_tokens: 4096,
            image: ImageLimits::default(),
        }
    }
}

pub fn parse_dtype(s: &str) -> Result<DType, EngineError> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(EngineError::InvalidRequest(format!(
            "unknown dtype {other:?} (f32, f16, bf16)"
        ))),
    }
}

pub fn select_device(cuda: Option<usize>) -> Result<Device, EngineError> {
    match cuda {
        None => Ok(Device::Cpu),
        Some(i) => Device::new_cuda(i).map_err(|e| EngineError::Load(format!("cuda:{i}: {e}"))),
    }
}
