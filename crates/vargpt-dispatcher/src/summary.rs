//! Counters of a run and the summary printed at its end.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// What happened during one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Jobs in the input, when known before the run (folder, manifest).
    pub total: Option<u64>,
    /// Skipped because the output already had their result.
    pub skipped: u64,
    /// Jobs published (first attempts).
    pub sent: u64,
    /// Extra attempts after a job had no result within `--job-timeout`.
    pub resent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Results for a job that already had one (a late answer to a re-sent
    /// job, a redelivery): dropped.
    pub duplicates: u64,
    /// `deadline_exceeded` answers to an attempt that was already re-sent: dropped.
    pub expired: u64,
    /// Results of an earlier, interrupted run found on the reply queue.
    pub recovered: u64,
    /// Replies that name no known job.
    pub unmatched: u64,
    /// Failed jobs of this run by error code.
    pub failures_by_code: BTreeMap<String, u64>,
    /// Seconds from first publish to result, for jobs answered in this run.
    pub latencies: Vec<f64>,
    pub elapsed: Duration,
    /// Failed jobs in the whole output (this run and earlier ones).
    pub failures_in_output: u64,
    /// Jobs with a result in the whole output.
    pub results_in_output: u64,
}

impl Stats {
    pub fn record_latency(&mut self, d: Duration) {
        self.latencies.push(d.as_secs_f64());
    }

    pub fn record_failure(&mut self, code: &str) {
        self.failed += 1;
        *self.failures_by_code.entry(code.to_string()).or_default() += 1;
    }

    /// Latency percentile `p` in [0, 100] (nearest rank), in seconds.
    pub fn latency_percentile(&self, p: f64) -> Option<f64> {
        let mut sorted = self.latencies.clone();
        sorted.sort_by(f64::total_cmp);
        percentile(&sorted, p)
    }
}

/// Nearest-rank percentile of sorted values: the smallest value with at
/// least `p`% of the values at or below it. `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn secs(v: Option<f64>) -> String {
    match v {
        Some(s) if s < 1.0 => format!("{:.0}ms", s * 1000.0),
        Some(s) => format!("{s:.2}s"),
        None => "-".into(),
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let answered = self.ok + self.failed;
        let rate = answered as f64 / self.elapsed.as_secs_f64().max(1e-9);
        writeln!(f, "summary")?;
        if let Some(total) = self.total {
            writeln!(f, "  input jobs      {total}")?;
        }
        writeln!(f, "  skipped (done)  {}", self.skipped)?;
        writeln!(
            f,
            "  sent            {} (+{} re-sent)",
            self.sent, self.resent
        )?;
        writeln!(f, "  ok              {}", self.ok)?;
        writeln!(f, "  failed          {}", self.failed)?;
        for (code, n) in &self.failures_by_code {
            writeln!(f, "    {code:<22}{n}")?;
        }
        if self.recovered > 0 {
            writeln!(
                f,
                "  recovered       {} (results of an earlier run)",
                self.recovered
            )?;
        }
        writeln!(
            f,
            "  dropped         {} duplicate, {} expired, {} unmatched",
            self.duplicates, self.expired, self.unmatched
        )?;
        writeln!(
            f,
            "  latency         p50 {}  p95 {}",
            secs(self.latency_percentile(50.0)),
            secs(self.latency_percentile(95.0))
        )?;
        writeln!(
            f,
            "  elapsed         {:.1}s ({rate:.1} results/s)",
            self.elapsed.as_secs_f64()
        )?;
        write!(
            f,
            "  output          {} results, {} failed",
            self.results_in_output, self.failures_in_output
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 95.0), Some(4.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn stats_sort_latencies_and_count_codes() {
        let mut s = Stats::default();
        for ms in [300, 100, 200] {
            s.record_latency(Duration::from_millis(ms));
        }
        assert_eq!(s.latency_percentile(50.0), Some(0.2));
        s.record_failure("invalid_image");
        s.record_failure("invalid_image");
        s.record_failure("internal");
        assert_eq!(s.failed, 3);
        assert_eq!(s.failures_by_code["invalid_image"], 2);
        let text = s.to_string();
        assert!(text.contains("p50 200ms  p95 300ms"), "{text}");
        assert!(text.contains("invalid_image"), "{text}");
    }
}
