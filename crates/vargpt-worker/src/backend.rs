//! What the pipeline runs jobs on. A trait of our own so that the pipeline is
//! tested without a model (see [`crate::fake`]) and so that a batching engine
//! can later take a whole batch in one call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;
use vargpt_engine::{
    BatchConfig, Engine, EngineError, EngineLimits, LoadOptions, ModelInfo, Request, Response,
    Scheduler,
};
use vargpt_proto::Limits;

use crate::config::ModelArgs;
use crate::fake::FakeBackend;
use crate::metrics::Metrics;

/// A loaded model. Calls block (run them on `spawn_blocking`).
pub trait Backend: Send + Sync {
    fn model_id(&self) -> &str;

    fn run(&self, req: &Request) -> Result<Response, EngineError>;

    /// Runs several requests; the answer `i` belongs to request `i`. The
    /// default runs them one after the other; an engine with batched decoding
    /// overrides this.
    fn run_batch(&self, reqs: &[Request]) -> Vec<Result<Response, EngineError>> {
        reqs.iter().map(|r| self.run(r)).collect()
    }

    /// False once the backend can never answer again (its engine thread
    /// died): the worker then stops taking jobs and restarts.
    fn is_alive(&self) -> bool {
        true
    }

    /// The static part of each result's provenance ([`crate::provenance`]).
    fn model_info(&self) -> ModelInfo {
        crate::provenance::unloaded(self.model_id())
    }
}

impl Backend for Engine {
    fn model_id(&self) -> &str {
        Engine::model_id(self)
    }

    fn run(&self, req: &Request) -> Result<Response, EngineError> {
        Engine::run(self, req)
    }

    fn model_info(&self) -> ModelInfo {
        self.provenance_info().clone()
    }
}

/// The engine behind its continuous-batching scheduler: every job in flight —
/// from any pipeline batch or concurrent slot — joins the running batch between
/// decode steps and leaves it when done.
pub struct BatchingEngine {
    model_id: String,
    info: ModelInfo,
    scheduler: Scheduler,
    /// Each job's time bound, counted from its submission.
    job_timeout: Option<Duration>,
}

impl BatchingEngine {
    pub fn new(engine: Arc<Engine>, cfg: BatchConfig, job_timeout: Option<Duration>) -> Self {
        Self {
            model_id: engine.model_id().to_string(),
            info: engine.provenance_info().clone(),
            scheduler: Scheduler::spawn(engine, cfg),
            job_timeout,
        }
    }
}

impl Backend for BatchingEngine {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn is_alive(&self) -> bool {
        self.scheduler.is_alive()
    }

    fn model_info(&self) -> ModelInfo {
        self.info.clone()
    }

    fn run(&self, req: &Request) -> Result<Response, EngineError> {
        self.scheduler
            .submit_within(req.clone(), self.job_timeout)
            .recv()
            .map_err(|_| EngineError::Inference("batching thread stopped".into()))?
    }

    fn run_batch(&self, reqs: &[Request]) -> Vec<Result<Response, EngineError>> {
        let pending: Vec<_> = reqs
            .iter()
            .map(|r| self.scheduler.submit_within(r.clone(), self.job_timeout))
            .collect();
        pending
            .into_iter()
            .map(|rx| {
                rx.recv()
                    .map_err(|_| EngineError::Inference("batching thread stopped".into()))?
            })
            .collect()
    }
}

/// How the engine runs the jobs it holds.
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    /// Most jobs stepped together (`--max-batch`, unless the deprecated
    /// `--engine-batch` says otherwise).
    pub max_batch: usize,
    /// Longest a job may run in the engine.
    pub job_timeout: Duration,
}

/// Loads the configured backend off the async threads, and records the load
/// time and `vargpt_build_info`.
pub async fn load(
    args: &ModelArgs,
    limits: &Limits,
    max_prompt_tokens: usize,
    settings: EngineSettings,
    metrics: &Metrics,
) -> Result<Arc<dyn Backend>, EngineError> {
    let started = Instant::now();
    info!(model = %args.model, fake = args.fake_backend, "loading model");
    let backend: Arc<dyn Backend> = if args.fake_backend {
        tokio::time::sleep(Duration::from_millis(args.fake_load_delay_ms)).await;
        Arc::new(FakeBackend::new(format!("fake:{}", args.model)))
    } else {
        // The engine enforces the same bounds again (tokens only it can count).
        let mut engine_limits = EngineLimits {
            max_prompt_tokens,
            max_new_tokens: limits.max_new_tokens as usize,
            ..EngineLimits::default()
        };
        engine_limits.image.max_bytes = limits.max_image_bytes;
        engine_limits.image.max_pixels = limits.max_image_pixels;
        let opts = LoadOptions {
            revision: args.revision.clone(),
            dtype: args.dtype.clone(),
            cuda_device: args.cuda_device,
            tp: args.tp,
            devices: args.devices.clone(),
            limits: engine_limits,
            ..LoadOptions::new(args.model.clone())
        };
        let engine = tokio::task::spawn_blocking(move || Engine::load(&opts))
            .await
            .map_err(|e| EngineError::Load(format!("model loading panicked: {e}")))??;
        let steps = metrics.engine_batch_size.clone();
        Arc::new(BatchingEngine::new(
            Arc::new(engine),
            BatchConfig {
                max_batch: args.engine_batch.unwrap_or(settings.max_batch).max(1),
                max_tokens_per_step: args.max_batch_tokens.max(1),
                on_step: Some(Arc::new(move |n| steps.observe(n as f64))),
            },
            Some(settings.job_timeout),
        ))
    };
    let secs = started.elapsed().as_secs_f64();
    metrics.model_load_seconds.set(secs);
    metrics
        .build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), backend.model_id()])
        .set(1.0);
    info!(model_id = backend.model_id(), load_s = secs, "model loaded");
    Ok(backend)
}
