//! The progress display: an indicatif bar on a terminal (done / failed / in
//! flight, rate, ETA), a log line every few seconds otherwise (containers,
//! CI), nothing with `--no-progress`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::summary::Stats;

const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    bar: Option<ProgressBar>,
    /// Log lines instead of a bar (stderr is not a terminal).
    log: bool,
    last_log: Instant,
}

impl Progress {
    /// `to_do`: jobs this run has to answer, when known.
    pub fn new(enabled: bool, to_do: Option<u64>) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = (enabled && terminal).then(|| {
            let bar = ProgressBar::with_draw_target(to_do, ProgressDrawTarget::stderr());
            let template = if to_do.is_some() {
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {rate} ETA {eta} {msg}"
            } else {
                "{spinner} [{elapsed_precise}] {pos} answered {rate} {msg}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.with_key(
                    "rate",
                    |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.1}/s", state.per_sec());
                    },
                ));
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            log: enabled && !terminal,
            last_log: Instant::now(),
        }
    }

    pub fn update(&mut self, stats: &Stats, in_flight: usize) {
        let answered = stats.ok + stats.failed;
        if let Some(bar) = &self.bar {
            bar.set_position(answered);
            bar.set_message(format!(
                "ok {} · failed {} · in flight {in_flight}",
                stats.ok, stats.failed
            ));
        } else if self.log && self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            tracing::info!(
                ok = stats.ok,
                failed = stats.failed,
                in_flight,
                resent = stats.resent,
                "progress"
            );
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
