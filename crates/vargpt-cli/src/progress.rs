//! Progress display on stderr: a spinner while the model loads, a bar over the
//! image stages. indicatif hides both when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Duration;

fn target(enabled: bool) -> ProgressDrawTarget {
    if enabled {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A spinner shown while `Engine::load` runs.
pub struct Spinner(ProgressBar);

impl Spinner {
    pub fn start(enabled: bool, message: String) -> Self {
        let pb = ProgressBar::with_draw_target(None, target(enabled));
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.set_message(message);
        if !pb.is_hidden() {
            pb.enable_steady_tick(Duration::from_millis(120));
        }
        Self(pb)
    }

    pub fn finish(self) {
        self.0.finish_and_clear();
    }
}

/// The bar over the next-scale image stages.
pub struct StageProgress {
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl StageProgress {
    pub fn new(enabled: bool) -> Self {
        Self { enabled, bar: None }
    }

    /// Whether the bar is (or would be) drawn on the terminal.
    pub fn visible(&self) -> bool {
        self.enabled && !ProgressDrawTarget::stderr().is_hidden()
    }

    /// Shows the bar for an image of `stages` stages (no-op when already shown).
    pub fn start(&mut self, stages: usize) {
        if self.bar.is_some() {
            return;
        }
        let pb = ProgressBar::with_draw_target(Some(stages as u64), target(self.enabled));
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} image stage {pos}/{len} [{bar:30}] {msg} {elapsed}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        if !pb.is_hidden() {
            pb.enable_steady_tick(Duration::from_millis(120));
        }
        self.bar = Some(pb);
    }

    /// Stage `stage` (0-based) of `stages` is done; `tokens` codes were chosen.
    pub fn stage_done(&mut self, stage: usize, stages: usize, tokens: usize) {
        self.start(stages);
        if let Some(pb) = &self.bar {
            let side = (tokens as f64).sqrt().round() as usize;
            pb.set_position((stage + 1) as u64);
            pb.set_message(format!("{side}x{side}"));
            if stage + 1 >= stages {
                pb.finish_and_clear();
            }
        }
    }

    pub fn finish(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
    }
}

impl Drop for StageProgress {
    fn drop(&mut self) {
        self.finish();
    }
}
