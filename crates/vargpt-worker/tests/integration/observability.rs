//! Fake backend: /readyz stays false while the model loads and while the
//! bucket is unreachable; /metrics counters move with the jobs.

use std::time::Duration;

use serde_json::Value;
use vargpt_integration_tests::http::{get, metric};
use vargpt_integration_tests::worker::Worker;

use crate::common::*;

async fn readyz(w: &Worker) -> (u16, Value) {
    let (code, body) = get(&w.http, "/readyz").await.unwrap_or((0, String::new()));
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_metrics() {
    let mut env = TestEnv::new("obs").await;
    env.s3.stop(); // storage down at start-up
    let cfg = env
        .worker_config()
        .fake()
        .args(["--fake-load-delay-ms", "1500"]);
    let mut worker = Worker::spawn(&cfg, &format!("{}-w", env.prefix)).unwrap();

    // Alive at once, not ready while the model loads.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get(&worker.http, "/healthz")
        .await
        .map(|r| r.0)
        .unwrap_or(0)
        != 200
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no /healthz\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, report) = readyz(&worker).await;
    assert_eq!(code, 503);
    assert_eq!(report["model"], "loading", "{report}");
    assert_eq!(metric(&worker.metrics().await, "vargpt_ready"), Some(0.0));

    // Model loaded, bucket unreachable: still not ready, and it says why.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, report) = readyz(&worker).await;
        assert_eq!(code, 503, "{report}");
        if report["model"] == "loaded"
            && report["store"]
                .as_str()
                .unwrap_or("")
                .starts_with("unreachable")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{report}\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(worker.logs().contains("object store not reachable"));

    env.s3.restart().unwrap();
    worker.wait_ready(Duration::from_secs(30)).await.unwrap();
    let m = worker.metrics().await;
    assert_eq!(metric(&m, "vargpt_ready"), Some(1.0));
    assert!(
        metric(&m, "vargpt_model_load_seconds").unwrap() >= 1.4,
        "{m}"
    );
    assert!(m.contains("vargpt_build_info{model=\"fake:"), "{m}");

    let replies = env.broker.reply_queue("replies").await.unwrap();
    env.broker
        .publish_job(&body(&chat("m-1", "hi")), Some(&replies), None)
        .await
        .unwrap();
    env.broker
        .publish_job(&body(&generate("m-2", "a boat")), Some(&replies), None)
        .await
        .unwrap();
    env.broker
        .publish_job(b"{oops", Some(&replies), None)
        .await
        .unwrap();
    let got = env
        .broker
        .collect(&replies, 3, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(got.len(), 3);

    let expect = [
        ("vargpt_jobs_total{kind=\"chat\",status=\"ok\"}", 1.0),
        (
            "vargpt_jobs_total{kind=\"generate_image\",status=\"ok\"}",
            1.0,
        ),
        ("vargpt_jobs_total{kind=\"unknown\",status=\"error\"}", 1.0),
        ("vargpt_job_errors_total{code=\"malformed_json\"}", 1.0),
        ("vargpt_dead_lettered_total{code=\"malformed_json\"}", 1.0),
        ("vargpt_images_generated_total", 1.0),
        ("vargpt_jobs_in_flight", 0.0),
        ("vargpt_upload_seconds_count", 1.0),
        ("vargpt_inference_seconds_count{kind=\"chat\"}", 1.0),
        ("vargpt_queue_wait_seconds_count{kind=\"chat\"}", 1.0),
        (
            "vargpt_preprocess_seconds_count{kind=\"generate_image\"}",
            1.0,
        ),
        ("vargpt_job_duration_seconds_count{kind=\"chat\"}", 1.0),
        ("vargpt_batch_size_count", 2.0),
    ];
    // Counters move right after the ack, a moment after the result arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut m = worker.metrics().await;
    while expect.iter().any(|(s, w)| metric(&m, s) != Some(*w))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = worker.metrics().await;
    }
    for (series, want) in expect {
        assert_eq!(metric(&m, series), Some(want), "{series} in\n{m}");
    }
    assert!(metric(&m, "vargpt_tokens_generated_total{kind=\"chat\"}").unwrap() > 0.0);
    check_metric_contract(&m);
    env.cleanup(&mut [&mut worker]).await;
}

/// The live `/metrics` page, the documented list (`deploy/grafana/worker-metrics.txt`)
/// and the Grafana dashboard agree: same names and types, and every `vargpt_*`
/// series the dashboard queries is really exported.
fn check_metric_contract(page: &str) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let live: std::collections::BTreeMap<String, String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .filter(|(n, _)| n.starts_with("vargpt_"))
        .collect();
    let listed: std::collections::BTreeMap<String, String> =
        std::fs::read_to_string(format!("{root}/deploy/grafana/worker-metrics.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let mut it = l.split_whitespace();
                (
                    it.next().unwrap().to_string(),
                    it.next().unwrap().to_string(),
                )
            })
            .collect();
    // The GPU gauges have a series per device that nvidia-smi reports: on a
    // machine without one they are listed but never exported.
    let contract = listed.clone();
    let listed: std::collections::BTreeMap<String, String> = listed
        .into_iter()
        .filter(|(name, _)| live.contains_key(name) || !name.starts_with("vargpt_gpu_"))
        .collect();
    assert_eq!(
        live, listed,
        "live /metrics vs deploy/grafana/worker-metrics.txt"
    );
    let dashboard =
        std::fs::read_to_string(format!("{root}/deploy/grafana/dashboards/vargpt.json")).unwrap();
    let mut queried = std::collections::BTreeSet::new();
    for (i, _) in dashboard.match_indices("vargpt_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| contract.contains_key(*b)))
            .unwrap_or(&name)
            .to_string();
        queried.insert(base);
    }
    let missing: Vec<_> = queried
        .iter()
        .filter(|n| !contract.contains_key(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard queries metrics the worker does not export: {missing:?}"
    );
    assert!(queried.len() >= 10, "dashboard metrics found: {queried:?}");
}
