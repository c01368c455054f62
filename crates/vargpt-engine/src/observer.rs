//! Hooks into the decoding loop (token streaming, progress bars, parity tests).

use candle_core::Tensor;

/// Observes the loop. After a failed batch step the scheduler re-runs a request
/// from the start, so an observer may see a request's first events again.
pub trait Observer {
    fn on_token(&mut self, _id: u32) {}
    /// Called once per image stage with the CFG-mixed logits `[pn², V]` and the chosen codes.
    fn on_stage(&mut self, _stage: usize, _stages: usize, _logits: &Tensor, _codes: &[u32]) {}
    /// Called when a picture is complete with f̂ `[1, Cv, s, s]` and the image `[1, 3, H, W]` in [−1, 1].
    fn on_image(&mut self, _fhat: &Tensor, _image: &Tensor) {}
}

/// An observer that does nothing.
pub struct NoObserver;
impl Observer for NoObserver {}

impl<O: Observer + ?Sized> Observer for &mut O {
    fn on_token(&mut self, id: u32) {
        (**self).on_token(id)
    }
    fn on_stage(&mut self, stage: usize, stages: usize, logits: &Tensor, codes: &[u32]) {
        (**self).on_stage(stage, stages, logits, codes)
    }
    fn on_image(&mut self, fhat: &Tensor, image: &Tensor) {
        (**self).on_image(fhat, image)
    }
}
