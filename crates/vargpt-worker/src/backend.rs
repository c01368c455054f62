//! What the pipeline runs jobs on. A trait of our own so that the pipeline is
//! tested without a model (see [`crate::fake`]) and so that a batching engine
//! can later take a whole batch in one call.

use std::sync::Arc;
use std::time::Duration;

use vargpt_engine::{BatchConfig, Engine, EngineError, ModelInfo, Request, Response, Scheduler};

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
