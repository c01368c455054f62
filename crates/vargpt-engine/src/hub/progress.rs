//! Download progress as log lines, for stderr that is not a terminal (a pod's
//! log would otherwise show nothing for the minutes a large checkpoint takes).

use std::time::Instant;

/// Log a line every this many percent of a file...
const STEP_PERCENT: usize = 10;
/// ...but only for files at least this large (smaller ones log start and end).
const STEP_MIN_BYTES: usize = 16 << 20;

/// Which progress lines a file's download produces: pure bookkeeping, so the
/// thresholds are testable without a logger.
#[derive(Debug, Default)]
pub(crate) struct Steps {
    total: usize,
    done: usize,
    /// The last percentage logged.
    logged: usize,
}

impl Steps {
    pub(crate) fn new(total: usize) -> Self {
        Self {
            total,
            ..Self::default()
        }
    }

    /// Adds `n` bytes; returns the percentage to log when a new step is crossed.
    pub(crate) fn advance(&mut self, n: usize) -> Option<usize> {
        self.done = self.done.saturating_add(n);
        if self.total < STEP_MIN_BYTES {
            return None;
        }
        let pct = (self.done.min(self.total) as u128 * 100 / self.total as u128) as usize;
        let step = pct / STEP_PERCENT * STEP_PERCENT;
        // 100 % is the finish line's job.
        if step > self.logged && step < 100 {
            self.logged = step;
            Some(step)
        } else {
            None
        }
    }

    pub(crate) fn done(&self) -> usize {
        self.done
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// hf-hub's progress hook that logs with `tracing` instead of drawing a bar.
pub(crate) struct LogProgress {
    model: String,
    file: String,
    steps: Steps,
    started: Instant,
}

impl LogProgress {
    pub(crate) fn new(model: &str) -> Self {
        Self {
            model: model.to_string(),
            file: String::new(),
            steps: Steps::default(),
            started: Instant::now(),
        }
    }
}

impl hf_hub::api::Progress for LogProgress {
    fn init(&mut self, size: usize, filename: &str) {
        self.file = filename.to_string();
        self.steps = Steps::new(size);
        self.started = Instant::now();
        tracing::info!(
            model = %self.model,
            file = %self.file,
            "downloading {:.1} MiB",
            mib(size)
        );
    }

    fn update(&mut self, size: usize) {
        if let Some(pct) = self.steps.advance(size) {
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                model = %self.model,
                file = %self.file,
                "{pct}% ({:.1} MiB, {:.1} MiB/s)",
                mib(self.steps.done()),
                mib(self.steps.done()) / secs
            );
        }
    }

    fn finish(&mut self) {
        tracing::info!(
            model = %self.model,
            file = %self.file,
            "downloaded {:.1} MiB in {:.1} s",
            mib(self.steps.done()),
            self.started.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_files_log_every_ten_percent_once() {
        let total = 100 << 20;
        let mut s = Steps::new(total);
        let mut logged = Vec::new();
        // Uneven chunks, some crossing two steps at once.
        for chunk in [1 << 20, 9 << 20, 1, 25 << 20, 3 << 20, 22 << 20, 40 << 20] {
            logged.extend(s.advance(chunk));
        }
        assert_eq!(logged, vec![10, 30, 60]);
        assert_eq!(s.done(), total + 1);
    }

    #[test]
    fn small_files_log_no_steps() {
        let mut s = Steps::new(1 << 20);
        assert_eq!(s.advance(1 << 19), None);
        assert_eq!(s.advance(1 << 19), None);
    }

    #[test]
    fn unknown_size_logs_no_steps() {
        let mut s = Steps::new(0);
        assert_eq!(s.advance(100 << 20), None);
    }
}
