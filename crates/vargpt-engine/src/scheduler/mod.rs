//! Continuous batching: a dedicated thread owns the running sequences, admits new
//! requests between steps (up to a batch size and a per-step token budget), steps
//! them together, and answers each one as soon as it finishes — the scheme of
//! vLLM / TGI, on ragged batches (no padding, so results equal unbatched ones).
//!
//! [`policy`] decides (pure, tested without a model); `batcher` is the thread
//! that carries it out, containing panics and failed steps so that only the
//! request at fault fails; [`Scheduler`] is the handle callers hold.

mod batcher;
pub mod policy;
mod stepper;

pub use batcher::Reply;
pub use policy::Policy;
pub use stepper::Stepper;

use crate::engine::{with_seed, Engine};
use crate::error::EngineError;
use crate::observer::{NoObserver, Observer};
use crate::request::{Request, Response};
use batcher::{Answer, Job};
use policy::Deadline;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Limits of one batch.
#[derive(Clone)]
pub struct BatchConfig {
    /// Most sequences stepped together.
    pub max_batch: usize,
    /// Most new LLM tokens per step (prompts count whole); a lone request is always admitted.
    pub max_tokens_per_step: usize,
    /// Observes the size of every step (metrics).
    pub on_step: Option<Arc<dyn Fn(usize) + Send + Sync>>,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_tokens_per_step: 4096,
            on_step: None,
        }
    }
}

/// Handle to the batching thread. Dropping it lets the thread finish the running
/// and queued requests and exit.
pub struct Scheduler {
    tx: Option<Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    alive: Arc<AtomicBool>,
}

/// Clears the health flag when the batching thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Scheduler {
    pub fn spawn(engine: Arc<Engine>, cfg: BatchConfig) -> Self {
        Self::spawn_with(engine, cfg)
    }

    /// A scheduler over any [`Stepper`] (tests use stand-ins for the engine).
    pub fn spawn_with<S: Stepper + Send + 'static>(stepper: S, cfg: BatchConfig) -> Self {
        let (tx, rx) = mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        let policy = Policy::new(cfg.max_batch, cfg.max_tokens_per_step);
        let spawned = std::thread::Builder::new()
            .name("vargpt-batcher".into())
            .spawn(move || {
                let _guard = guard;
                batcher::run(&stepper, policy, cfg.on_step, rx)
            });
        let handle = match spawned {
            Ok(h) => Some(h),
            Err(e) => {
                // The guard went down with the closure: the scheduler reports dead.
                tracing::error!(error = %e, "cannot spawn the batching thread");
                None
            }
        };
        Self {
            tx: Some(tx),
            handle,
            alive,
        }
    }

    /// Whether the batching thread is running. Once false it stays false, and
    /// every submission is answered at once with [`EngineError::Internal`].
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Queues a request; `reply` runs on the batching thread when it is done.
    pub fn submit_with(&self, req: Request, observer: Box<dyn Observer + Send>, reply: Reply) {
        self.submit_with_limit(req, observer, None, reply)
    }

    /// [`Scheduler::submit_with`] with a time bound counted from now: past it the
    /// request is dropped (queued or running) and answered with
    /// [`EngineError::Timeout`]. The bound is checked between steps, so a step
    /// already under way (one decode token, one image stage) finishes first.
    pub fn submit_with_limit(
        &self,
        req: Request,
        observer: Box<dyn Observer + Send>,
        limit: Option<Duration>,
        reply: Reply,
    ) {
        let job = Job {
            // Fixed now so that a re-run after a failed batch draws the same.
            req: with_seed(req),
            observer: Arc::new(Mutex::new(observer)),
            deadline: limit.map(|l| Deadline::after(l, Instant::now())),
            answer: Answer::new(reply),
        };
        if !self.is_alive() {
            job.answer.send(Err(dead()));
            return;
        }
        if let Some(tx) = &self.tx {
            if let Err(mpsc::SendError(job)) = tx.send(job) {
                job.answer.send(Err(dead()));
            }
        }
    }

    /// Queues a request and returns a receiver for its result.
    pub fn submit(&self, req: Request) -> Receiver<Result<Response, EngineError>> {
        self.submit_within(req, None)
    }

    /// [`Scheduler::submit`] with an optional time bound (see [`Scheduler::submit_with_limit`]).
    pub fn submit_within(
        &self,
        req: Request,
        limit: Option<Duration>,
    ) -> Receiver<Result<Response, EngineError>> {
        let (tx, rx) = mpsc::channel();
        self.submit_with_limit(
            req,
            Box::new(NoObserver),
            limit,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx
    }
}

fn dead() -> EngineError {
    EngineError::Internal("the batching thread is not running".into())
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests;
