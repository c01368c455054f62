//! `Engine`: a loaded model plus the request → response logic.

use crate::error::EngineError;
use crate::generate::{self, ImageSampling, NoObserver, Observer};
use crate::request::{FinishReason, GeneratedImage, Request, Response, SamplingParams, Task, Timings};
use crate::sampling::{NoiseSource, RngNoise, TextSampler};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Instant;
use vargpt_imageproc::ImageLimits;
use vargpt_model::{expected_tensors, Message, ModelFiles, VargptModel, Weights};

/// Where the model comes from and how to hold it.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// A model directory, or a Hugging Face hub id (`owner/name`).
    pub model: String,
    /// Hub revision (branch, tag or commit) when `model` is a hub id.
    pub revision: Option<String>,
    /// Compute dtype: "f32" (default on CPU), "f16", "bf16".
    pub dtype: Option<String>,
    /// Use the GPU with this ordinal (needs the `cuda` feature).
    pub cuda_device: Option<usize>,
    pub limits: EngineLimits,
}

impl LoadOptions {
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            revision: None,
            dtype: None,
            cuda_device: None,
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
        other => Err(EngineError::InvalidRequest(format!("unknown dtype {other:?} (f32, f16, bf16)"))),
    }
}

pub fn select_device(cuda: Option<usize>) -> Result<Device, EngineError> {
    match cuda {
        None => Ok(Device::Cpu),
        Some(i) => Device::new_cuda(i).map_err(|e| EngineError::Load(format!("cuda:{i}: {e}"))),
    }
}

/// A loaded model ready to serve requests. `run` takes `&self`: per-request state
/// (KV caches, RNG) lives inside the call, so one engine can be shared by threads.
pub struct Engine {
    files: ModelFiles,
    model: VargptModel,
    model_id: String,
    limits: EngineLimits,
    load_seconds: f64,
    weight_bytes: usize,
}

/// A request turned into model inputs.
pub struct Prepared {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub pixel_values: Option<Tensor>,
}

impl Engine {
    pub fn load(opts: &LoadOptions) -> Result<Self, EngineError> {
        let t0 = Instant::now();
        let dir = crate::hub::resolve_model(&opts.model, opts.revision.as_deref(), &crate::hub::default_cache())?;
        let files = ModelFiles::open(&dir).map_err(|e| EngineError::Load(e.to_string()))?;
        let device = select_device(opts.cuda_device)?;
        let dtype = match &opts.dtype {
            Some(s) => parse_dtype(s)?,
            None if device.is_cpu() => DType::F32,
            None => DType::BF16,
        };
        let weights = Weights::open(&dir, expected_tensors(&files.config), dtype, &device)
            .map_err(|e| EngineError::Load(e.to_string()))?;
        let model = VargptModel::load(&weights, &files.config).map_err(|e| EngineError::Load(e.to_string()))?;
        let weight_bytes = weights.stored_bytes();
        drop(weights);
        Ok(Self {
            files,
            model,
            model_id: opts.model.clone(),
            limits: opts.limits.clone(),
            load_seconds: t0.elapsed().as_secs_f64(),
            weight_bytes,
        })
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }
    pub fn model(&self) -> &VargptModel {
        &self.model
    }
    pub fn files(&self) -> &ModelFiles {
        &self.files
    }
    pub fn load_seconds(&self) -> f64 {
        self.load_seconds
    }
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }
    pub fn limits(&self) -> &EngineLimits {
        &self.limits
    }

    /// Renders the chat template for one user turn.
    pub fn render_prompt(&self, text: &str, with_image: bool) -> Result<String, EngineError> {
        self.files
            .template
            .render(&[Message::user(text, with_image)], true)
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))
    }

    /// Tokenizes a rendered prompt, expanding each `<image>` to the tower's token count.
    pub fn tokenize_prompt(&self, prompt: &str) -> Result<Vec<u32>, EngineError> {
        let cfg = &self.files.config;
        let tok = &self.files.tokenizer;
        let image_tok = tok
            .id_to_token(cfg.image_token_index)
            .ok_or_else(|| EngineError::Load("tokenizer has no image token".into()))?;
        let expanded = prompt.replace(&image_tok, &image_tok.repeat(cfg.image_tokens_per_image()));
        tok.encode(&expanded).map_err(|e| EngineError::InvalidRequest(e.to_string()))
    }

    /// Decodes and preprocesses an encoded image into `pixel_values [1, 3, H, W]`.
    pub fn pixel_values(&self, bytes: &[u8]) -> Result<Tensor, EngineError> {
        let pv = vargpt_imageproc::preprocess_bytes(bytes, &self.files.preprocessor, &self.limits.image)
            .map_err(|e| EngineError::InvalidImage(e.to_string()))?;
        Ok(Tensor::from_vec(pv.data, (1, 3, pv.height, pv.width), self.model.device())?)
    }

    pub fn prepare(&self, req: &Request) -> Result<Prepared, EngineError> {
        let needs_image = matches!(req.task, Task::Caption | Task::Vqa);
        if needs_image && req.image.is_none() {
            return Err(EngineError::InvalidRequest(format!("{:?} needs an image", req.task)));
        }
        if req.task == Task::GenerateImage && req.image.is_some() {
            return Err(EngineError::InvalidRequest("generate_image takes no input image".into()));
        }
        let text = match req.task {
            Task::Caption if req.text.trim().is_empty() => "Describe the image.",
            _ if req.text.trim().is_empty() => {
                return Err(EngineError::InvalidRequest("prompt is empty".into()));
            }
            _ => req.text.as_str(),
        };
        let pixel_values = match &req.image {
            Some(b) => Some(self.pixel_values(b)?),
            None => None,
        };
        let prompt = self.render_prompt(text, pixel_values.is_some())?;
        let mut prompt_ids = self.tokenize_prompt(&prompt)?;
        if req.task == Task::GenerateImage {
            prompt_ids.push(self.files.config.special_tokens.image_gen_start_token_id);
        }
        let limit = self.limits.max_prompt_tokens.min(self.model.llm.max_positions());
        if prompt_ids.len() > limit {
            return Err(EngineError::PromptTooLong {
                tokens: prompt_ids.len(),
                limit,
            });
        }
        Ok(Prepared {
            prompt,
            prompt_ids,
            pixel_values,
        })
    }

    pub fn run(&self, req: &Request) -> Result<Response, EngineError> {
        self.run_with(req, &mut RngNoise, &mut NoObserver)
    }

    /// Runs one request with an explicit CFG noise source and an observer.
    pub fn run_with(
        &self,
        req: &Request,
        noise: &mut dyn NoiseSource,
        observer: &mut dyn Observer,
    ) -> Result<Response, EngineError> {
        validate_params(&req.params, &self.limits)?;
        let t_start = Instant::now();
        let prep = self.prepare(req)?;
        let mut timings = Timings::default();
        let m = &self.model;
        let features = match &prep.pixel_values {
            Some(pv) => Some(m.image_features(pv)?),
            None => None,
        };
        timings.preprocess_s = t_start.elapsed().as_secs_f64();
        let p = &req.params;
        let mut rng = StdRng::seed_from_u64(p.seed.unwrap_or_else(rand::random));
        let t_prefill = Instant::now();
        let embeds = m
            .embed_prompt(&prep.prompt_ids, features.as_ref())
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        let mut cache = m.llm.new_cache();
        let mut logits = generate::prefill(m, &embeds, &mut cache)?;
        timings.prefill_s = t_prefill.elapsed().as_secs_f64();

        let g = m.config.special_tokens.image_gen_start_token_id;
        let img_sampling = ImageSampling {
            cfg_scale: p.cfg_scale,
            top_k: p.image_top_k,
            top_p: p.image_top_p,
        };
        let image_room = |cache_len: usize| cache_len + 1 + m.var.config().total_tokens() <= m.llm.max_positions();
        let mut ids = Vec::new();
        let mut image = None;
        let finish;
        if req.task == Task::GenerateImage {
            if !image_room(cache.len()) {
                return Err(EngineError::PromptTooLong {
                    tokens: prep.prompt_ids.len(),
                    limit: m.llm.max_positions() - m.var.config().total_tokens(),
                });
            }
            let t_img = Instant::now();
            image = Some(generate::generate_image(m, &mut cache, img_sampling, noise, &mut rng, observer)?);
            timings.image_s = t_img.elapsed().as_secs_f64();
            finish = FinishReason::Image;
        } else {
            let sampler = TextSampler {
                greedy: p.greedy,
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
                repetition_penalty: p.repetition_penalty,
            };
            let eos = self.files.eos_ids();
            let t_dec = Instant::now();
            let mut seen = prep.prompt_ids.clone();
            loop {
                if !p.allow_image || !image_room(cache.len()) {
                    logits[g as usize] = f32::NEG_INFINITY;
                }
                let tok = sampler.choose(&mut logits, &seen, &mut rng);
                ids.push(tok);
                seen.push(tok);
                observer.on_token(tok);
                if tok == g {
                    // Reference §3.2: feed g as text, pick X, generate, append X twice.
                    let mut next = generate::step(m, g, &mut cache)?;
                    let x = sampler.choose(&mut next, &seen, &mut rng);
                    ids.push(x);
                    let t_img = Instant::now();
                    image = Some(generate::generate_image(m, &mut cache, img_sampling, noise, &mut rng, observer)?);
                    timings.image_s = t_img.elapsed().as_secs_f64();
                    ids.push(x);
                    finish = FinishReason::Image;
                    break;
                }
                if eos.contains(&tok) {
                    finish = FinishReason::Eos;
                    break;
                }
                if ids.len() >= p.max_new_tokens || cache.len() >= m.llm.max_positions() {
                    finish = FinishReason::Length;
                    break;
                }
                logits = generate::step(m, tok, &mut cache)?;
            }
            timings.decode_s = t_dec.elapsed().as_secs_f64() - timings.image_s;
        }
        let text = self
            .files
            .tokenizer
            .decode(&ids, true)
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        let image = match image {
            Some(out) => {
                let (width, height, rgb) = vargpt_model::vqvae::to_rgb8(&out.image)?;
                Some(GeneratedImage {
                    width,
                    height,
                    rgb,
                    codes: out.codes,
                })
            }
            None => None,
        };
        timings.total_s = t_start.elapsed().as_secs_f64();
        Ok(Response {
            prompt: prep.prompt,
            prompt_ids: prep.prompt_ids,
            ids,
            text,
            image,
            finish_reason: finish,
            timings,
        })
    }
}

/// Checks the knobs are in range before any work is done.
pub fn validate_params(p: &SamplingParams, limits: &EngineLimits) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::InvalidRequest(m));
    if p.max_new_tokens == 0 || p.max_new_tokens > limits.max_new_tokens {
        return bad(format!("max_new_tokens must be in 1..={}", limits.max_new_tokens));
    }
    if !p.greedy && !(p.temperature.is_finite() && p.temperature > 0.0 && p.temperature <= 100.0) {
        return bad("temperature must be in (0, 100]".into());
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) || !(p.image_top_p > 0.0 && p.image_top_p <= 1.0) {
        return bad("top_p and image_top_p must be in (0, 1]".into());
    }
    if !(p.repetition_penalty.is_finite() && p.repetition_penalty > 0.0 && p.repetition_penalty <= 10.0) {
        return bad("repetition_penalty must be in (0, 10]".into());
    }
    if !(p.cfg_scale.is_finite() && (0.0..=50.0).contains(&p.cfg_scale)) {
        return bad("cfg_scale must be in [0, 50]".into());
    }
    if p.image_top_k == 0 {
        return bad("image_top_k must be >= 1".into());
    }
    Ok(())
}
