//! `Engine`: a loaded model plus the request → response logic.

use crate::error::EngineError;
use crate::generate::{ImageOutput, NoObserver, Observer};
use crate::request::{
    FinishReason, GeneratedImage, Request, Response, SamplingParams, Task, Timings,
};
use crate::sampling::{sample_image_code, NoiseSource, RngNoise};
use crate::sequence::{ImageState, Phase, Sequence};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Instant;
use vargpt_imageproc::ImageLimits;
use vargpt_model::{expected_tensors, KvCache, Message, ModelFiles, VargptModel, Weights};

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
        let dir = crate::hub::resolve_model(
            &opts.model,
            opts.revision.as_deref(),
            &crate::hub::default_cache(),
        )?;
        let files = ModelFiles::open(&dir).map_err(|e| EngineError::Load(e.to_string()))?;
        let device = select_device(opts.devices.first().copied().or(opts.cuda_device))?;
        // On CPU a half-precision choice applies to the linear-layer weights only:
        // activations stay f32 (candle has no fast CPU path for f16/bf16 arithmetic,
        // while the decode kernels widen half weights in registers for free).
        let requested = opts.dtype.as_deref().map(parse_dtype).transpose()?;
        let (dtype, linear_dtype) = match (requested, device.is_cpu()) {
            (None, true) => (DType::F32, DType::F32),
            (None, false) => (DType::BF16, DType::BF16),
            (Some(d), true) => (DType::F32, d),
            (Some(d), false) => (d, d),
        };
        let mut weights = Weights::open(&dir, expected_tensors(&files.config), dtype, &device)
            .map_err(|e| EngineError::Load(e.to_string()))?;
        weights.set_linear_dtype(linear_dtype);
        let shards = crate::parallel::shards(opts, &device)?;
        let model = VargptModel::load_sharded(&weights, &files.config, &shards)
            .map_err(|e| EngineError::Load(e.to_string()))?;
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
        tok.encode(&expanded)
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))
    }

    /// Decodes and preprocesses an encoded image into `pixel_values [1, 3, H, W]`.
    pub fn pixel_values(&self, bytes: &[u8]) -> Result<Tensor, EngineError> {
        let pv =
            vargpt_imageproc::preprocess_bytes(bytes, &self.files.preprocessor, &self.limits.image)
                .map_err(|e| EngineError::InvalidImage(e.to_string()))?;
        Ok(Tensor::from_vec(
            pv.data,
            (1, 3, pv.height, pv.width),
            self.model.device(),
        )?)
    }

    pub fn prepare(&self, req: &Request) -> Result<Prepared, EngineError> {
        let needs_image = matches!(req.task, Task::Caption | Task::Vqa);
        if needs_image && req.image.is_none() {
            return Err(EngineError::InvalidRequest(format!(
                "{:?} needs an image",
                req.task
            )));
        }
        if req.task == Task::GenerateImage && req.image.is_some() {
            return Err(EngineError::InvalidRequest(
                "generate_image takes no input image".into(),
            ));
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
        let limit = self
            .limits
            .max_prompt_tokens
            .min(self.model.llm.max_positions());
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
        let mut seq = self.start(req, Box::new(noise), Box::new(observer))?;
        while !seq.is_done() {
            self.step(&mut [&mut seq])?;
        }
        self.finish(seq)
    }

    /// Runs several requests together, stepping them as one batch until all are done
    /// (static batching; the worker's scheduler admits new ones between steps).
    pub fn run_batch(&self, reqs: &[Request]) -> Vec<Result<Response, EngineError>> {
        let mut out: Vec<Option<Result<Response, EngineError>>> =
            (0..reqs.len()).map(|_| None).collect();
        let mut seqs = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            match self.start(r, Box::new(RngNoise), Box::new(NoObserver)) {
                Ok(s) => seqs.push((i, s)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        while seqs.iter().any(|(_, s)| !s.is_done()) {
            let mut active: Vec<&mut Sequence> = seqs
                .iter_mut()
                .map(|(_, s)| s)
                .filter(|s| !s.is_done())
                .collect();
            if let Err(e) = self.step(&mut active) {
                let msg = e.to_string();
                for (i, _) in seqs.drain(..) {
                    out[i] = Some(Err(EngineError::Inference(msg.clone())));
                }
                break;
            }
        }
        for (i, s) in seqs {
            out[i] = Some(self.finish(s));
        }
        out.into_iter()
            .map(|r| r.expect("every request answered"))
            .collect()
    }

    /// Validates and prepares a request: preprocessing, vision tower, prompt embeddings.
    pub fn start<'a>(
        &self,
        req: &Request,
        noise: Box<dyn NoiseSource + 'a>,
        observer: Box<dyn Observer + 'a>,
    ) -> Result<Sequence<'a>, EngineError> {
        validate_params(&req.params, &self.limits)?;
        let started = Instant::now();
        let prep = self.prepare(req)?;
        let m = &self.model;
        let features = match &prep.pixel_values {
            Some(pv) => Some(m.image_features(pv)?),
            None => None,
        };
        let embeds = m
            .embed_prompt(&prep.prompt_ids, features.as_ref())
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?
            .squeeze(0)?;
        let (sampler, image_sampling) = Sequence::new_parts(req);
        let p = &req.params;
        let timings = Timings {
            preprocess_s: started.elapsed().as_secs_f64(),
            ..Default::default()
        };
        Ok(Sequence {
            task: req.task,
            max_new_tokens: p.max_new_tokens,
            allow_image: p.allow_image,
            sampler,
            image_sampling,
            rng: StdRng::seed_from_u64(p.seed.unwrap_or_else(rand::random)),
            noise,
            observer,
            prompt: prep.prompt,
            seen: prep.prompt_ids.clone(),
            prompt_ids: prep.prompt_ids,
            ids: Vec::new(),
            cache: m.llm.new_cache(),
            phase: Phase::Prefill(embeds),
            image: None,
            finish: None,
            timings,
            started,
        })
    }

    /// Advances every sequence by one step: one LLM forward over all their new tokens
    /// (prompts, single decode tokens, image stages), then one VAR forward over all
    /// image stages. Sequences finish independently.
    pub fn step(&self, seqs: &mut [&mut Sequence]) -> Result<(), EngineError> {
        let m = &self.model;
        let t0 = Instant::now();
        let mut inputs = Vec::new();
        for s in seqs.iter() {
            match &s.phase {
                Phase::Prefill(e) => inputs.push(e.clone()),
                Phase::Decode(t) | Phase::FeedGenStart(t) => inputs.push(
                    m.llm
                        .embed(&Tensor::new(&[[*t]], m.device())?)?
                        .squeeze(0)?,
                ),
                Phase::Image(st) => inputs.push(st.e.clone()),
                Phase::Done => {}
            }
        }
        if inputs.is_empty() {
            return Ok(());
        }
        let x = if inputs.len() == 1 {
            inputs.pop().expect("one")
        } else {
            Tensor::cat(&inputs, 0)?
        };
        let rows: Vec<usize> = seqs.iter().map(|s| s.next_rows()).collect();
        let was_prefill: Vec<bool> = seqs
            .iter()
            .map(|s| matches!(s.phase, Phase::Prefill(_)))
            .collect();
        let was_image: Vec<bool> = seqs
            .iter()
            .map(|s| matches!(s.phase, Phase::Image(_)))
            .collect();
        let hidden = {
            let mut segments: Vec<(&mut KvCache, usize)> = seqs
                .iter_mut()
                .zip(&rows)
                .filter(|(_, r)| **r > 0)
                .map(|(s, r)| (&mut s.cache, *r))
                .collect();
            m.llm.forward_ragged(&x, &mut segments)?
        };
        // Row offsets of each sequence in `hidden`.
        let mut offsets = Vec::with_capacity(rows.len());
        let mut acc = 0;
        for r in &rows {
            offsets.push(acc);
            acc += r;
        }
        // Text sequences: logits of their last row, in one lm_head call.
        let text: Vec<usize> = (0..seqs.len())
            .filter(|&i| {
                matches!(
                    seqs[i].phase,
                    Phase::Prefill(_) | Phase::Decode(_) | Phase::FeedGenStart(_)
                )
            })
            .filter(|&i| {
                !(seqs[i].task == Task::GenerateImage && matches!(seqs[i].phase, Phase::Prefill(_)))
            })
            .collect();
        if !text.is_empty() {
            let last: Vec<u32> = text
                .iter()
                .map(|&i| (offsets[i] + rows[i] - 1) as u32)
                .collect();
            let sel = hidden.index_select(&Tensor::new(last.as_slice(), m.device())?, 0)?;
            let logits: Vec<Vec<f32>> = m.llm.logits(&sel)?.to_vec2()?;
            for (&i, l) in text.iter().zip(logits) {
                self.after_text_step(seqs[i], l)?;
            }
        }
        for (s, was) in seqs.iter_mut().zip(&was_prefill) {
            if *was && s.task == Task::GenerateImage {
                self.begin_image(s, None)?;
            }
        }
        self.image_step(seqs, &rows, &offsets, &hidden, &was_image)?;
        let elapsed = t0.elapsed().as_secs_f64();
        for (s, was) in seqs.iter_mut().zip(&was_prefill) {
            if *was {
                s.timings.prefill_s = elapsed;
            }
        }
        Ok(())
    }

    fn image_room(&self, s: &Sequence) -> bool {
        s.cache.len() + 2 + self.model.var.config().total_tokens() <= self.model.llm.max_positions()
    }

    /// Chooses the next text token of `s` from its logits and moves its state machine.
    fn after_text_step(&self, s: &mut Sequence, mut logits: Vec<f32>) -> Result<(), EngineError> {
        let m = &self.model;
        let g = m.config.special_tokens.image_gen_start_token_id;
        if let Phase::FeedGenStart(_) = s.phase {
            // Reference §3.2: X follows g and is appended twice around the image.
            let x = s.sampler.choose(&mut logits, &s.seen, &mut s.rng);
            s.ids.push(x);
            s.seen.push(x);
            return self.begin_image(s, Some(x));
        }
        if !s.allow_image || !self.image_room(s) {
            logits[g as usize] = f32::NEG_INFINITY;
        }
        let tok = s.sampler.choose(&mut logits, &s.seen, &mut s.rng);
        s.ids.push(tok);
        s.seen.push(tok);
        s.observer.on_token(tok);
        let eos = self.files.eos_ids();
        s.phase = if tok == g {
            Phase::FeedGenStart(g)
        } else if eos.contains(&tok) {
            s.finish = Some(FinishReason::Eos);
            Phase::Done
        } else if s.ids.len() >= s.max_new_tokens || s.cache.len() + 1 >= m.llm.max_positions() {
            s.finish = Some(FinishReason::Length);
            Phase::Done
        } else {
            Phase::Decode(tok)
        };
        Ok(())
    }

    fn begin_image(&self, s: &mut Sequence, x_token: Option<u32>) -> Result<(), EngineError> {
        let m = &self.model;
        let cls = m.var.class_embedding(m.config.gen_class_index())?;
        let e = m.gen_in.forward(&m.var.first_tokens(&cls)?)?.squeeze(0)?;
        s.phase = Phase::Image(Box::new(ImageState {
            k: 0,
            e,
            fhat: m.vqvae.zero_fhat()?,
            codes: Vec::with_capacity(m.var.config().total_tokens()),
            cond_cache: m.var.new_cache(),
            uncond_cache: (s.image_sampling.cfg_scale != 0.0).then(|| m.var.new_cache()),
            x_token,
            started: Instant::now(),
        }));
        Ok(())
    }

    /// The VAR half of a step for every sequence in an image stage (reference §4.2).
    fn image_step(
        &self,
        seqs: &mut [&mut Sequence],
        rows: &[usize],
        offsets: &[usize],
        hidden: &Tensor,
        was_image: &[bool],
    ) -> Result<(), EngineError> {
        let m = &self.model;
        let dt = m.dtype();
        // Only sequences whose stage tokens went through the LLM in this step.
        let img: Vec<usize> = (0..seqs.len()).filter(|&i| was_image[i]).collect();
        if img.is_empty() {
            return Ok(());
        }
        let mut parts = Vec::new();
        let mut lens = Vec::new(); // one sequence per CFG branch
        for &i in &img {
            let s = &mut *seqs[i];
            let h = hidden.narrow(0, offsets[i], rows[i])?;
            let hd = h.dim(1)?;
            let Phase::Image(st) = &s.phase else {
                unreachable!()
            };
            let k = st.k;
            // Drawn at every stage (also when unused) so a seed gives the same stream.
            let n = s.noise.normal(k, rows[i] * hd, &mut s.rng);
            parts.push(h);
            lens.push(rows[i]);
            if s.image_sampling.cfg_scale != 0.0 {
                parts.push(Tensor::from_vec(n, (rows[i], hd), m.device())?.to_dtype(dt)?);
                lens.push(rows[i]);
            }
        }
        let x = m.gen_out.forward_seqs(&Tensor::cat(&parts, 0)?, &lens)?;
        let cls = m.var.class_embedding(m.config.gen_class_index())?;
        let logits = {
            let mut segments: Vec<(&mut vargpt_model::VarCache, usize)> = Vec::new();
            for (i, s) in seqs.iter_mut().enumerate() {
                if !img.contains(&i) {
                    continue;
                }
                let Phase::Image(st) = &mut s.phase else {
                    unreachable!()
                };
                let st = &mut **st;
                segments.push((&mut st.cond_cache, rows[i]));
                if let Some(u) = st.uncond_cache.as_mut() {
                    segments.push((u, rows[i]));
                }
            }
            m.var.forward_ragged(&x, &cls, &mut segments)?
        };
        let stages = m.var.config().stages();
        let mut row = 0;
        for &i in &img {
            let s = &mut *seqs[i];
            let l = rows[i];
            let Phase::Image(st) = &mut s.phase else {
                unreachable!()
            };
            let k = st.k;
            let ratio = if stages > 1 {
                k as f64 / (stages - 1) as f64
            } else {
                0.0
            };
            let t = s.image_sampling.cfg_scale * ratio;
            let cond = logits.narrow(0, row, l)?;
            row += l;
            let mixed = if st.uncond_cache.is_some() {
                let uncond = logits.narrow(0, row, l)?;
                row += l;
                ((cond * (1.0 + t))? - (uncond * t)?)?
            } else {
                cond
            };
            let mut codes = Vec::with_capacity(l);
            for mut r in mixed.to_vec2::<f32>()? {
                codes.push(sample_image_code(
                    &mut r,
                    s.image_sampling.top_k,
                    s.image_sampling.top_p,
                    &mut s.rng,
                ));
            }
            s.observer.on_stage(k, stages, &mixed, &codes);
            let vq = &m.vqvae;
            let ids = Tensor::new(codes.as_slice(), m.device())?;
            st.fhat = vq.add_stage(k, &st.fhat, &vq.embed_codes(k, &ids)?)?;
            st.codes.extend_from_slice(&codes);
            if k + 1 < stages {
                let nxt = vq.downsample(k + 1, &st.fhat)?;
                st.e = m
                    .gen_in
                    .forward(&m.var.stage_tokens(k + 1, &nxt)?)?
                    .squeeze(0)?;
                st.k += 1;
            } else {
                let image = vq.decode(&st.fhat)?;
                s.observer.on_image(&st.fhat, &image);
                if let Some(x) = st.x_token {
                    s.ids.push(x);
                }
                s.timings.image_s = st.started.elapsed().as_secs_f64();
                s.image = Some(ImageOutput {
                    codes: std::mem::take(&mut st.codes),
                    fhat: st.fhat.clone(),
                    image,
                });
                s.finish = Some(FinishReason::Image);
                s.phase = Phase::Done;
            }
        }
        Ok(())
    }

    /// Turns a finished sequence into the response.
    pub fn finish(&self, s: Sequence) -> Result<Response, EngineError> {
        let text = self
            .files
            .tokenizer
            .decode(&s.ids, true)
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        let image = match s.image {
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
        let mut timings = s.timings;
        timings.total_s = s.started.elapsed().as_secs_f64();
        timings.decode_s =
            (timings.total_s - timings.preprocess_s - timings.prefill_s - timings.image_s).max(0.0);
        Ok(Response {
            prompt: s.prompt,
            prompt_ids: s.prompt_ids,
            ids: s.ids,
            text,
            image,
            finish_reason: s.finish.unwrap_or(FinishReason::Length),
            timings,
            positions: s.cache.len(),
        })
    }
}

/// Checks the knobs are in range before any work is done.
pub fn validate_params(p: &SamplingParams, limits: &EngineLimits) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::InvalidRequest(m));
    if p.max_new_tokens == 0 || p.max_new_tokens > limits.max_new_tokens {
        return bad(format!(
            "max_new_tokens must be in 1..={}",
            limits.max_new_tokens
        ));
    }
    let temperature_ok = p.temperature.is_finite() && p.temperature > 0.0 && p.temperature <= 100.0;
    if !p.greedy && !temperature_ok {
        return bad("temperature must be in (0, 100]".into());
    }
    let in_unit = |v: f64| v > 0.0 && v <= 1.0;
    if !in_unit(p.top_p) || !in_unit(p.image_top_p) {
        return bad("top_p and image_top_p must be in (0, 1]".into());
    }
    if !(p.repetition_penalty.is_finite()
        && p.repetition_penalty > 0.0
        && p.repetition_penalty <= 10.0)
    {
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
