//! Real model: concurrent jobs share engine steps (continuous batching) and give
//! the same answers as the reference's unbatched greedy decoding.

use std::time::Duration;

use serde_json::json;
use vargpt_integration_tests::http::metric;
use vargpt_integration_tests::worker::Worker;
use vargpt_proto::ResultStatus;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jobs_are_batched_and_match_unbatched_greedy_output() {
    let env = TestEnv::new("batching").await;
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/reference-tiny/golden.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let want_caption = golden["cases"]["caption"]["greedy_text"]
        .as_str()
        .unwrap()
        .to_string();
    let want_chat = golden["cases"]["text"]["greedy_text"]
        .as_str()
        .unwrap()
        .to_string();
    // No batching flags: a worker batches concurrent jobs by default.
    let config = env.worker_config();
    let mut worker = Worker::spawn(&config, &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    let replies = env.broker.reply_queue("replies").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..12 {
        let job = if i % 2 == 0 {
            json!({"id": format!("cap-{i}"), "kind": "caption", "prompt": "Describe the image.",
                   "image": {"data": b64(&test_image_bytes())}, "params": {"maxNewTokens": 12}})
        } else {
            json!({"id": format!("chat-{i}"), "kind": "chat", "prompt": "Please describe a cat on a sofa.",
                   "params": {"maxNewTokens": 12, "allowImage": false}})
        };
        ids.push(job["id"].as_str().unwrap().to_string());
        env.broker
            .publish_job(&body(&job), Some(&replies), None)
            .await
            .unwrap();
    }
    let results = collect_ids(&env.broker, &replies, &ids, Duration::from_secs(180)).await;
    assert_eq!(results.len(), ids.len(), "logs:\n{}", worker.logs());
    for id in &ids {
        let r = &results[id];
        assert_eq!(r.status, ResultStatus::Ok, "{r:#?}");
        let want = if id.starts_with("cap") {
            &want_caption
        } else {
            &want_chat
        };
        assert_eq!(&r.text, want, "{id}");
    }
    let page = worker.metrics().await;
    let steps = metric(&page, "vargpt_engine_batch_size_count").unwrap_or(0.0);
    let rows = metric(&page, "vargpt_engine_batch_size_sum").unwrap_or(0.0);
    assert!(
        steps > 0.0 && rows / steps > 1.0,
        "mean engine batch {rows}/{steps}"
    );
    env.cleanup(&mut [&mut worker]).await;
}
