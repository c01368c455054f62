//! The batching thread: takes in submissions, lets [`Policy`] decide who joins
//! and who leaves, steps the batch, and answers each request once. Every call
//! into the [`Stepper`] runs under `catch_unwind`; a failed step re-runs each
//! request of the batch alone, so only the one at fault gets the error.

use super::policy::{Deadline, Join, Leave, Load, OnFailure, Policy, Queue};
use super::stepper::Stepper;
use crate::engine::caught;
use crate::error::EngineError;
use crate::observer::Observer;
use crate::request::{Request, Response};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Called with the finished request's result.
pub type Reply = Box<dyn FnOnce(Result<Response, EngineError>) + Send>;

/// Observes the size of every step.
pub(super) type OnStep = Option<Arc<dyn Fn(usize) + Send + Sync>>;

/// One submitted request, kept whole until it is answered so that it can be
/// re-run from the start.
pub(super) struct Job {
    pub req: Request,
    pub observer: Arc<Mutex<Box<dyn Observer + Send>>>,
    pub deadline: Option<Deadline>,
    pub answer: Answer,
}

impl Job {
    fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d.passed(now))
    }

    fn timeout(&self) -> EngineError {
        EngineError::Timeout {
            limit: self.deadline.map(|d| d.limit).unwrap_or_default(),
        }
    }
}

/// A reply that is sent exactly once: when dropped unsent (the thread died, the
/// queue was dropped), it answers with an internal error.
pub(super) struct Answer(Option<Reply>);

impl Answer {
    pub fn new(reply: Reply) -> Self {
        Answer(Some(reply))
    }

    pub fn send(mut self, result: Result<Response, EngineError>) {
        self.deliver(result);
    }

    fn deliver(&mut self, result: Result<Response, EngineError>) {
        if let Some(reply) = self.0.take() {
            // A panicking reply must not take the batching thread with it.
            let _ = catch_unwind(AssertUnwindSafe(|| reply(result)));
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.deliver(Err(EngineError::Internal(
            "the batching thread stopped before answering".into(),
        )));
    }
}

/// Lends a job's observer to one run of it (the job keeps it for a re-run).
struct SharedObserver(Arc<Mutex<Box<dyn Observer + Send>>>);

impl SharedObserver {
    fn with(&self, f: impl FnOnce(&mut dyn Observer)) {
        let mut o = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut **o)
    }
}

impl Observer for SharedObserver {
    fn on_token(&mut self, id: u32) {
        self.with(|o| o.on_token(id))
    }
    fn on_stage(
        &mut self,
        stage: usize,
        stages: usize,
        logits: &candle_core::Tensor,
        codes: &[u32],
    ) {
        self.with(|o| o.on_stage(stage, stages, logits, codes))
    }
    fn on_image(&mut self, fhat: &candle_core::Tensor, image: &candle_core::Tensor) {
        self.with(|o| o.on_image(fhat, image))
    }
}

struct Running<Q> {
    seq: Q,
    job: Job,
    alone: bool,
}

/// The submissions channel and whether its sender is gone.
struct Inbox {
    rx: Receiver<Job>,
    closed: bool,
}

impl Inbox {
    /// Moves every submission already sent into the queue.
    fn drain(&mut self, queue: &mut Queue<Job>) {
        while !self.closed {
            match self.rx.try_recv() {
                Ok(job) => queue.push(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.closed = true,
            }
        }
    }

    /// Blocks until a submission arrives or the handle is dropped.
    fn wait(&mut self, queue: &mut Queue<Job>) {
        match self.rx.recv() {
            Ok(job) => queue.push(job),
            Err(_) => self.closed = true,
        }
    }
}

/// The thread's loop; returns when the handle is dropped and all work is done.
pub(super) fn run<S: Stepper>(stepper: &S, policy: Policy, on_step: OnStep, rx: Receiver<Job>) {
    let mut inbox = Inbox { rx, closed: false };
    let mut queue: Queue<Job> = Queue::default();
    let mut running: Vec<Running<S::Seq>> = Vec::new();
    loop {
        if running.is_empty() && queue.is_empty() {
            if inbox.closed {
                return;
            }
            inbox.wait(&mut queue);
        }
        inbox.drain(&mut queue);
        let now = Instant::now();
        for job in queue.take_expired(|j| j.expired(now)) {
            let e = job.timeout();
            job.answer.send(Err(e));
        }
        leave(stepper, &policy, &mut running, now);
        admit(stepper, &policy, &mut inbox, &mut queue, &mut running);
        if running.is_empty() {
            continue;
        }
        if let Some(f) = &on_step {
            f(running.len());
        }
        let stepped = {
            let mut refs: Vec<&mut S::Seq> = running.iter_mut().map(|r| &mut r.seq).collect();
            caught(|| stepper.step(&mut refs))
        };
        match stepped {
            Ok(()) => leave(stepper, &policy, &mut running, Instant::now()),
            Err(e) => match policy.on_failure(running.len()) {
                OnFailure::Blame => {
                    tracing::warn!(error = %e, "a request failed its engine step alone");
                    if let Some(r) = running.pop() {
                        r.job.answer.send(Err(e));
                    }
                }
                OnFailure::Isolate => {
                    tracing::warn!(
                        error = %e,
                        batch = running.len(),
                        "a batched engine step failed; re-running each request alone"
                    );
                    for r in running.drain(..) {
                        queue.isolate(r.job);
                    }
                }
            },
        }
    }
}

/// Answers the running requests that are finished or past their time bound.
fn leave<S: Stepper>(
    stepper: &S,
    policy: &Policy,
    running: &mut Vec<Running<S::Seq>>,
    now: Instant,
) {
    let mut i = 0;
    while i < running.len() {
        let r = &running[i];
        match policy.leaves(stepper.is_done(&r.seq), r.job.deadline, now) {
            None => i += 1,
            Some(why) => {
                let r = running.swap_remove(i);
                let result = match why {
                    Leave::Finished => caught(|| stepper.finish(r.seq)),
                    Leave::TimedOut => Err(r.job.timeout()),
                };
                r.job.answer.send(result);
            }
        }
    }
}

/// Starts queued requests while the policy lets them join.
fn admit<S: Stepper>(
    stepper: &S,
    policy: &Policy,
    inbox: &mut Inbox,
    queue: &mut Queue<Job>,
    running: &mut Vec<Running<S::Seq>>,
) {
    loop {
        // Requests that arrived while the last one started may join too.
        inbox.drain(queue);
        let load = Load {
            seqs: running.len(),
            rows: running.iter().map(|r| stepper.rows(&r.seq)).sum(),
            alone: running.iter().any(|r| r.alone),
        };
        let Some((job, how)) = policy.next(queue, load) else {
            return;
        };
        if job.expired(Instant::now()) {
            let e = job.timeout();
            job.answer.send(Err(e));
            continue;
        }
        let observer = Box::new(SharedObserver(job.observer.clone()));
        match caught(|| stepper.start(&job.req, observer)) {
            Ok(seq) => running.push(Running {
                seq,
                job,
                alone: how == Join::Alone,
            }),
            Err(e) => job.answer.send(Err(e)),
        }
    }
}
