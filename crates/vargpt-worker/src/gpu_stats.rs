//! GPU memory and utilisation for the metrics, read from `nvidia-smi` (the
//! driver's own tool, present wherever the NVIDIA container runtime is).
//! Absent tool or GPU: nothing is reported, nothing fails.

use std::time::Duration;

use tracing::debug;

use crate::metrics::Metrics;

/// One GPU's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuStat {
    pub index: String,
    pub used_bytes: f64,
    pub total_bytes: f64,
    /// 0..1
    pub utilization: f64,
}

const QUERY: &str = "--query-gpu=index,memory.used,memory.total,utilization.gpu";

/// Parses `nvidia-smi QUERY --format=csv,noheader,nounits` output (MiB and
/// percent); lines that do not parse are skipped.
pub fn parse(csv: &str) -> Vec<GpuStat> {
    const MIB: f64 = 1024.0 * 1024.0;
    csv.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, used, total, util] = f.as_slice() else {
                return None;
            };
            Some(GpuStat {
                index: index.to_string(),
                used_bytes: used.parse::<f64>().ok()? * MIB,
                total_bytes: total.parse::<f64>().ok()? * MIB,
                utilization: util.parse::<f64>().ok()? / 100.0,
            })
        })
        .collect()
}

async fn sample() -> Option<Vec<GpuStat>> {
    let out = tokio::process::Command::new("nvidia-smi")
        .args([QUERY, "--format=csv,noheader,nounits"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .ok()?
        .ok()?;
    out.status
        .success()
        .then(|| parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Samples every `every` into the metrics; stops at the first failure to
/// run the tool (no GPU here).
pub async fn run(metrics: std::sync::Arc<Metrics>, every: Duration) {
    loop {
        let Some(stats) = sample().await else {
            debug!("nvidia-smi not available: no GPU metrics");
            return;
        };
        for g in stats {
            let d = [g.index.as_str()];
            metrics
                .gpu_memory_used_bytes
                .with_label_values(&d)
                .set(g.used_bytes);
            metrics
                .gpu_memory_total_bytes
                .with_label_values(&d)
                .set(g.total_bytes);
            metrics
                .gpu_utilization_ratio
                .with_label_values(&d)
                .set(g.utilization);
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nvidia_smi_csv() {
        let s = parse("0, 18944, 143771, 87\n1, 0, 143771, 0\ngarbage\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].index, "0");
        assert_eq!(s[0].used_bytes, 18944.0 * 1024.0 * 1024.0);
        assert!((s[0].utilization - 0.87).abs() < 1e-12);
        assert_eq!(s[1].utilization, 0.0);
        assert!(parse("[N/A], 1, 2, 3").iter().all(|g| g.index == "[N/A]"));
        assert!(parse("0, [N/A], 2, 3").is_empty());
    }
}
