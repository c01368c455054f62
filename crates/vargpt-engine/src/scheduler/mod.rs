//! Continuous batching: a dedicated thread owns the running sequences, admits new
//! requests between steps (up to a batch size and a per-step token budget), steps
//! them together, and answers each one as soon as it finishes — the scheme of
//! vLLM / TGI, on ragged batches (no padding, so results equal unbatched ones).

use crate::engine::Engine;
use crate::error::EngineError;
use crate::generate::{NoObserver, Observer};
use crate::request::{Request, Response};
use crate::sampling::RngNoise;
use crate::sequence::Sequence;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Called with the finished request's result.
pub type Reply = Box<dyn FnOnce(Result<Response, EngineError>) + Send>;

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

struct Submission {
    req: Request,
    observer: Box<dyn Observer + Send>,
    reply: Reply,
}

/// Handle to the batching thread. Dropping it lets the thread finish the running
/// sequences and exit.
pub struct Scheduler {
    tx: Option<Sender<Submission>>,
    handle: Option<JoinHandle<()>>,
}

impl Scheduler {
    pub fn spawn(engine: Arc<Engine>, cfg: BatchConfig) -> Self {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("vargpt-batcher".into())
            .spawn(move || run_loop(&engine, &cfg, rx))
            .expect("spawn batching thread");
        Self {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    /// Queues a request; `reply` runs on the batching thread when it is done.
    pub fn submit_with(&self, req: Request, observer: Box<dyn Observer + Send>, reply: Reply) {
        let sub = Submission {
            req,
            observer,
            reply,
        };
        if let Some(tx) = &self.tx {
            if let Err(mpsc::SendError(sub)) = tx.send(sub) {
                (sub.reply)(Err(EngineError::Inference(
                    "batching thread stopped".into(),
                )));
            }
        }
    }

    /// Queues a request and returns a receiver for its result.
    pub fn submit(&self, req: Request) -> Receiver<Result<Response, EngineError>> {
        let (tx, rx) = mpsc::channel();
        self.submit_with(
            req,
            Box::new(NoObserver),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run_loop(engine: &Engine, cfg: &BatchConfig, rx: Receiver<Submission>) {
    let mut active: Vec<(Sequence<'static>, Reply)> = Vec::new();
    let mut closed = false;
    loop {
        // Admit new requests between steps; block only when idle.
        while active.len() < cfg.max_batch.max(1) && !closed {
            let next = if active.is_empty() {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(s) => Some(s),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        closed = true;
                        None
                    }
                }
            } else {
                match rx.try_recv() {
                    Ok(s) => Some(s),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        None
                    }
                }
            };
            let Some(sub) = next else { break };
            match engine.start(&sub.req, Box::new(RngNoise), sub.observer) {
                Ok(seq) => {
                    let budget: usize = active.iter().map(|(s, _)| s.next_rows()).sum();
                    let fits =
                        active.is_empty() || budget + seq.next_rows() <= cfg.max_tokens_per_step;
                    active.push((seq, sub.reply));
                    if !fits {
                        break;
                    }
                }
                Err(e) => (sub.reply)(Err(e)),
            }
        }
        if active.is_empty() {
            if closed {
                return;
            }
            continue;
        }
        if let Some(f) = &cfg.on_step {
            f(active.len());
        }
        let result = {
            let mut refs: Vec<&mut Sequence> = active.iter_mut().map(|(s, _)| s).collect();
            engine.step(&mut refs)
        };
        if let Err(e) = result {
            let msg = e.to_string();
            for (_, reply) in active.drain(..) {
                reply(Err(EngineError::Inference(msg.clone())));
            }
            continue;
        }
        let mut i = 0;
        while i < active.len() {
            if active[i].0.is_done() {
                let (seq, reply) = active.swap_remove(i);
                reply(engine.finish(seq));
            } else {
                i += 1;
            }
        }
    }
}
