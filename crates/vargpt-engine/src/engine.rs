//! `Engine`: a loaded model plus the request → response loop. The rooms around it:
//! [`crate::options`] (how to load), [`crate::load`], [`crate::prompt`] (request →
//! model inputs, [`Engine::start`]), [`crate::sequence`] (the text → image state
//! machine that [`Engine::step`] drives), [`crate::response`] ([`Engine::finish`]).

use crate::error::EngineError;
use crate::observer::{NoObserver, Observer};
use crate::options::{EngineLimits, LoadOptions};
use crate::provenance::ModelInfo;
use crate::request::{Request, Response};
use crate::sampling::{NoiseSource, RngNoise};
use crate::sequence::step::StepModel;
use crate::sequence::Sequence;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;
use vargpt_model::{ModelFiles, VargptModel};

/// A loaded model ready to serve requests. `run` takes `&self`: per-request state
/// (KV caches, RNG) lives inside the call, so one engine can be shared by threads.
pub struct Engine {
    files: ModelFiles,
    model: VargptModel,
    model_id: String,
    limits: EngineLimits,
    load_seconds: f64,
    weight_bytes: usize,
    eos: Vec<u32>,
    info: ModelInfo,
}

impl Engine {
    pub fn load(opts: &LoadOptions) -> Result<Self, EngineError> {
        let t0 = Instant::now();
        let loaded = crate::load::load(opts)?;
        Ok(Self {
            eos: loaded.files.eos_ids(),
            files: loaded.files,
            model: loaded.model,
            model_id: opts.model.clone(),
            limits: opts.limits.clone(),
            load_seconds: t0.elapsed().as_secs_f64(),
            weight_bytes: loaded.weight_bytes,
            info: loaded.info,
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
    /// Model revision, dtype, devices and TP degree, recorded at load: the
    /// static part of every result's provenance.
    pub fn provenance_info(&self) -> &ModelInfo {
        &self.info
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
    /// (static batching; [`crate::Scheduler`] admits new ones between steps). When a
    /// step fails or panics, each request of the batch is run again alone, so only
    /// the one at fault fails.
    pub fn run_batch(&self, reqs: &[Request]) -> Vec<Result<Response, EngineError>> {
        // Requests without a seed get one now, so a re-run alone draws the same.
        let reqs: Vec<Request> = reqs.iter().cloned().map(with_seed).collect();
        let mut out: Vec<Option<Result<Response, EngineError>>> =
            (0..reqs.len()).map(|_| None).collect();
        let mut seqs = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            match caught(|| self.start(r, Box::new(RngNoise), Box::new(NoObserver))) {
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
            if caught(|| self.step(&mut active)).is_err() {
                for (i, _) in seqs.drain(..) {
                    out[i] = Some(caught(|| self.run(&reqs[i])));
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

    /// Advances every sequence by one step: one LLM forward over all their new tokens
    /// (prompts, single decode tokens, image stages), then one VAR forward over all
    /// image stages. Sequences finish independently.
    pub fn step(&self, seqs: &mut [&mut Sequence]) -> Result<(), EngineError> {
        let ctx = StepModel {
            model: &self.model,
            eos: &self.eos,
        };
        crate::sequence::step::step(&ctx, seqs)
    }
}

/// `f()`, with a panic turned into [`EngineError::Internal`].
pub(crate) fn caught<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(EngineError::from_panic(p.as_ref())))
}

/// The request with its seed fixed (a random one when it had none).
pub(crate) fn with_seed(mut req: Request) -> Request {
    req.params.seed = Some(req.params.seed.unwrap_or_else(rand::random));
    req
}
