//! Loading the configured backend: the engine behind its batching scheduler,
//! or (tests only) the fake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;
use vargpt_engine::{BatchConfig, Engine, EngineError, EngineLimits, LoadOptions};
use vargpt_proto::Limits;

use crate::backend::{Backend, BatchingEngine};
use crate::config::ModelArgs;
use crate::fake::FakeBackend;
use crate::metrics::Metrics;

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
