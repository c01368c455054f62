//! What the batching thread runs requests on: the engine, or a stand-in in tests.

use crate::engine::Engine;
use crate::error::EngineError;
use crate::observer::Observer;
use crate::request::{Request, Response};
use crate::sampling::RngNoise;
use crate::sequence::Sequence;
use std::sync::Arc;

/// The four operations of continuous batching. Every call may fail or panic; the
/// scheduler contains both and blames only the request at fault.
pub trait Stepper {
    /// One request in flight.
    type Seq;
    /// Validates and prepares a request.
    fn start(
        &self,
        req: &Request,
        observer: Box<dyn Observer + Send>,
    ) -> Result<Self::Seq, EngineError>;
    /// Rows the sequence feeds to the next step.
    fn rows(&self, seq: &Self::Seq) -> usize;
    fn is_done(&self, seq: &Self::Seq) -> bool;
    /// Advances every sequence by one step.
    fn step(&self, seqs: &mut [&mut Self::Seq]) -> Result<(), EngineError>;
    /// The response of a finished sequence.
    fn finish(&self, seq: Self::Seq) -> Result<Response, EngineError>;
}

impl Stepper for Engine {
    type Seq = Sequence<'static>;

    fn start(
        &self,
        req: &Request,
        observer: Box<dyn Observer + Send>,
    ) -> Result<Self::Seq, EngineError> {
        Engine::start(self, req, Box::new(RngNoise), observer)
    }
    fn rows(&self, seq: &Self::Seq) -> usize {
        seq.next_rows()
    }
    fn is_done(&self, seq: &Self::Seq) -> bool {
        seq.is_done()
    }
    fn step(&self, seqs: &mut [&mut Self::Seq]) -> Result<(), EngineError> {
        Engine::step(self, seqs)
    }
    fn finish(&self, seq: Self::Seq) -> Result<Response, EngineError> {
        Engine::finish(self, seq)
    }
}

impl<S: Stepper + ?Sized> Stepper for Arc<S> {
    type Seq = S::Seq;

    fn start(
        &self,
        req: &Request,
        observer: Box<dyn Observer + Send>,
    ) -> Result<Self::Seq, EngineError> {
        (**self).start(req, observer)
    }
    fn rows(&self, seq: &Self::Seq) -> usize {
        (**self).rows(seq)
    }
    fn is_done(&self, seq: &Self::Seq) -> bool {
        (**self).is_done(seq)
    }
    fn step(&self, seqs: &mut [&mut Self::Seq]) -> Result<(), EngineError> {
        (**self).step(seqs)
    }
    fn finish(&self, seq: Self::Seq) -> Result<Response, EngineError> {
        (**self).finish(seq)
    }
}
