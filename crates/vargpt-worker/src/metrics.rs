//! Prometheus metrics. The names are a contract with the Grafana dashboard:
//! do not rename them.

use vargpt_proto::{ErrorCode, JobKind};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

/// Every metric of the worker, in its own registry (no process-global state,
/// so tests can build several).
pub struct Metrics {
    registry: Registry,
    pub jobs_total: IntCounterVec,
    pub job_errors_total: IntCounterVec,
    pub queue_wait_seconds: HistogramVec,
    pub preprocess_seconds: HistogramVec,
    pub inference_seconds: HistogramVec,
    pub upload_seconds: Histogram,
    pub job_duration_seconds: HistogramVec,
    pub tokens_generated_total: IntCounterVec,
    pub images_generated_total: IntCounter,
    pub jobs_in_flight: IntGauge,
    pub batch_size: Histogram,
    pub engine_batch_size: Histogram,
    pub model_load_seconds: Gauge,
    pub build_info: GaugeVec,
    pub ready: IntGauge,
    pub job_retries_total: IntCounterVec,
    pub dead_lettered_total: IntCounterVec,
    pub quarantined_total: IntCounter,
    pub engine_alive: IntGauge,
    pub prompt_tokens_total: IntCounterVec,
    pub time_to_first_token_seconds: HistogramVec,
    pub time_per_output_token_seconds: HistogramVec,
    pub gpu_memory_used_bytes: GaugeVec,
    pub gpu_memory_total_bytes: GaugeVec,
    pub gpu_utilization_ratio: GaugeVec,
}

/// Seconds per output token, from 0.2 ms (a large GPU batch) to 2 s.
const TOKEN_SECONDS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
];

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

/// Seconds, from 5 ms to 10 min: covers a tiny-model caption and a full-size
/// 256×256 generation on CPU.
const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let upload_seconds = Histogram::with_opts(
            HistogramOpts::new("vargpt_upload_seconds", "Time to store a generated image.")
                .buckets(SECONDS.to_vec()),
        )?;
        r.register(Box::new(upload_seconds.clone()))?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "vargpt_batch_size",
                "Jobs handed to the backend in one call.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )?;
        r.register(Box::new(batch_size.clone()))?;
        let engine_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "vargpt_engine_batch_size",
                "Sequences stepped together by the continuous batcher, per engine step.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )?;
        r.register(Box::new(engine_batch_size.clone()))?;
        let images_generated_total = IntCounter::new(
            "vargpt_images_generated_total",
            "Images generated and stored.",
        )?;
        r.register(Box::new(images_generated_total.clone()))?;
        let jobs_in_flight = IntGauge::new("vargpt_jobs_in_flight", "Jobs being processed now.")?;
        r.register(Box::new(jobs_in_flight.clone()))?;
        let model_load_seconds =
            Gauge::new("vargpt_model_load_seconds", "Time the model took to load.")?;
        r.register(Box::new(model_load_seconds.clone()))?;
        let build_info = GaugeVec::new(
            Opts::new(
                "vargpt_build_info",
                "Worker version and model id (always 1).",
            ),
            &["version", "model"],
        )?;
        r.register(Box::new(build_info.clone()))?;
        let ready = IntGauge::new(
            "vargpt_ready",
            "1 when the worker takes jobs (model, storage, broker ok).",
        )?;
        r.register(Box::new(ready.clone()))?;
        let quarantined_total = IntCounter::new(
            "vargpt_jobs_quarantined_total",
            "Jobs moved to the suspect queue (in flight when a worker died) to run alone.",
        )?;
        r.register(Box::new(quarantined_total.clone()))?;
        let engine_alive = IntGauge::new(
            "vargpt_engine_alive",
            "1 while the engine's batching thread runs; 0 once it died (the worker restarts).",
        )?;
        engine_alive.set(1);
        r.register(Box::new(engine_alive.clone()))?;

        let m = Metrics {
            prompt_tokens_total: counter(
                &r,
                "vargpt_prompt_tokens_total",
                "Prompt tokens processed (chat template and image tokens included).",
                &["kind"],
            )?,
            time_to_first_token_seconds: histogram(
                &r,
                "vargpt_time_to_first_token_seconds",
                "Engine time from a job's start to its first new token (image preprocessing and prefill).",
                &["kind"],
                SECONDS,
            )?,
            time_per_output_token_seconds: histogram(
                &r,
                "vargpt_time_per_output_token_seconds",
                "Engine decode time per new token after the first.",
                &["kind"],
                TOKEN_SECONDS,
            )?,
            gpu_memory_used_bytes: gauge(
                &r,
                "vargpt_gpu_memory_used_bytes",
                "GPU memory in use (nvidia-smi), per device.",
                &["device"],
            )?,
            gpu_memory_total_bytes: gauge(
                &r,
                "vargpt_gpu_memory_total_bytes",
                "GPU memory in all (nvidia-smi), per device.",
                &["device"],
            )?,
            gpu_utilization_ratio: gauge(
                &r,
                "vargpt_gpu_utilization_ratio",
                "GPU busy fraction over nvidia-smi's sample period, 0..1, per device.",
                &["device"],
            )?,
            quarantined_total,
            engine_alive,
            jobs_total: counter(
                &r,
                "vargpt_jobs_total",
                "Jobs finished, by kind and status (ok|error).",
                &["kind", "status"],
            )?,
            job_errors_total: counter(
                &r,
                "vargpt_job_errors_total",
                "Error results, by error code.",
                &["code"],
            )?,
            queue_wait_seconds: histogram(
                &r,
                "vargpt_queue_wait_seconds",
                "Time from publish to pick-up.",
                &["kind"],
                SECONDS,
            )?,
            preprocess_seconds: histogram(
                &r,
                "vargpt_preprocess_seconds",
                "Parsing, validation and input image fetch/check.",
                &["kind"],
                SECONDS,
            )?,
            inference_seconds: histogram(
                &r,
                "vargpt_inference_seconds",
                "Time in the backend.",
                &["kind"],
                SECONDS,
            )?,
            job_duration_seconds: histogram(
                &r,
                "vargpt_job_duration_seconds",
                "Time from pick-up to result published.",
                &["kind"],
                SECONDS,
            )?,
            tokens_generated_total: counter(
                &r,
                "vargpt_tokens_generated_total",
                "Token ids generated.",
                &["kind"],
            )?,
            job_retries_total: counter(
                &r,
                "vargpt_job_retries_total",
                "Jobs sent to the retry queue after a transient failure.",
                &["kind"],
            )?,
            dead_lettered_total: counter(
                &r,
                "vargpt_dead_lettered_total",
                "Jobs sent to the dead-letter queue, by error code.",
                &["code"],
            )?,
            upload_seconds,
            images_generated_total,
            jobs_in_flight,
            batch_size,
            engine_batch_size,
            model_load_seconds,
            build_info,
            ready,
            registry: r,
        };
        m.zero_series();
        Ok(m)
    }

    /// Creates every labelled series at 0 up front: Prometheus best practice (a
    /// series that appears only on its first event breaks `rate()` and alerts),
    /// and it makes `/metrics` list every metric the dashboard may query.
    fn zero_series(&self) {
        let kinds = [
            JobKind::Caption,
            JobKind::Vqa,
            JobKind::Chat,
            JobKind::GenerateImage,
        ];
        for k in kinds.map(JobKind::as_str) {
            for status in ["ok", "error"] {
                self.jobs_total.with_label_values(&[k, status]);
            }
            for h in [
                &self.queue_wait_seconds,
                &self.preprocess_seconds,
                &self.inference_seconds,
                &self.job_duration_seconds,
                &self.time_to_first_token_seconds,
                &self.time_per_output_token_seconds,
            ] {
                h.with_label_values(&[k]);
            }
            self.tokens_generated_total.with_label_values(&[k]);
            self.prompt_tokens_total.with_label_values(&[k]);
            self.job_retries_total.with_label_values(&[k]);
        }
        for code in ErrorCode::ALL
            .iter()
            .filter(|c| **c != ErrorCode::Unspecified)
        {
            self.job_errors_total.with_label_values(&[code.as_str()]);
            self.dead_lettered_total.with_label_values(&[code.as_str()]);
        }
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on metric families with invalid
        // names, which `new` would have refused already.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_are_exported() {
        let m = Metrics::new().unwrap();
        m.jobs_total.with_label_values(&["caption", "ok"]).inc();
        m.job_errors_total
            .with_label_values(&["invalid_image"])
            .inc();
        m.queue_wait_seconds
            .with_label_values(&["caption"])
            .observe(0.1);
        m.preprocess_seconds
            .with_label_values(&["caption"])
            .observe(0.1);
        m.inference_seconds
            .with_label_values(&["caption"])
            .observe(0.1);
        m.job_duration_seconds
            .with_label_values(&["caption"])
            .observe(0.1);
        m.tokens_generated_total
            .with_label_values(&["caption"])
            .inc();
        m.job_retries_total.with_label_values(&["caption"]).inc();
        m.dead_lettered_total
            .with_label_values(&["invalid_image"])
            .inc();
        m.build_info.with_label_values(&["0.1.0", "tiny"]).set(1.0);
        m.upload_seconds.observe(0.1);
        m.batch_size.observe(1.0);
        let text = m.render();
        for name in [
            "vargpt_jobs_total{kind=\"caption\",status=\"ok\"} 1",
            "vargpt_job_errors_total{code=\"invalid_image\"} 1",
            "vargpt_queue_wait_seconds_bucket{kind=\"caption\"",
            "vargpt_preprocess_seconds_bucket",
            "vargpt_inference_seconds_bucket",
            "vargpt_upload_seconds_bucket",
            "vargpt_job_duration_seconds_bucket",
            "vargpt_tokens_generated_total{kind=\"caption\"} 1",
            "vargpt_images_generated_total 0",
            "vargpt_jobs_in_flight 0",
            "vargpt_batch_size_bucket",
            "vargpt_model_load_seconds 0",
            "vargpt_build_info{model=\"tiny\",version=\"0.1.0\"} 1",
            "vargpt_ready 0",
            "vargpt_job_retries_total{kind=\"caption\"} 1",
            "vargpt_dead_lettered_total{code=\"invalid_image\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
