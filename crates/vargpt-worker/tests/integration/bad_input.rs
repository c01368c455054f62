//! Real model: every kind of bad input gets an error result with its code and
//! lands in the dead-letter queue, annotated; the worker keeps serving.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use vargpt_integration_tests::worker::Worker;
use vargpt_proto::ResultStatus;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_answered_and_dead_lettered() {
    let env = TestEnv::new("bad").await;
    let cfg = env.worker_config().args([
        "--max-image-pixels",
        "10000",
        "--max-prompt-bytes",
        "4000",
        "--max-prompt-tokens",
        "64",
        "--max-job-bytes",
        "200000",
    ]);
    let fake = cfg.fake;
    let mut worker = Worker::spawn(&cfg, &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    let replies = env.broker.reply_queue("replies").await.unwrap();
    let img = b64(&test_image_bytes());

    // (case name = correlation id, body, expected code, a word the message must contain)
    let mut cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "malformed",
            br#"{"id": "b1", "kind": "#.to_vec(),
            "malformed_json",
            "JSON",
        ),
        (
            "not-object",
            b"[1, 2, 3]".to_vec(),
            "invalid_schema",
            "object",
        ),
        (
            "unknown-field",
            body(&json!({"id": "b3", "kind": "chat", "prompt": "hi", "temprature": 0.5})),
            "invalid_schema",
            "temprature",
        ),
        (
            "wrong-type",
            body(&json!({"id": "b4", "kind": "chat", "prompt": 42})),
            "invalid_schema",
            "invalid type",
        ),
        (
            "version",
            body(&json!({"version": 7, "id": "b5", "kind": "chat", "prompt": "hi"})),
            "unsupported_version",
            "version",
        ),
        (
            "no-id",
            body(&json!({"kind": "chat", "prompt": "hi"})),
            "missing_field",
            "id",
        ),
        (
            "no-image",
            body(&json!({"id": "b7", "kind": "vqa", "prompt": "what?"})),
            "missing_field",
            "image",
        ),
        (
            "unknown-kind",
            body(&json!({"id": "b8", "kind": "paint", "prompt": "hi"})),
            "unknown_kind",
            "paint",
        ),
        (
            "bad-id",
            body(&json!({"id": "../../etc/passwd", "kind": "chat", "prompt": "hi"})),
            "invalid_id",
            "id",
        ),
        (
            "top-p",
            body(&json!({"id": "b10", "kind": "chat", "prompt": "hi", "params": {"topP": 1.5}})),
            "param_out_of_range",
            "topP",
        ),
        (
            "tokens",
            body(
                &json!({"id": "b11", "kind": "chat", "prompt": "hi", "params": {"maxNewTokens": 1000000}}),
            ),
            "param_out_of_range",
            "maxNewTokens",
        ),
        (
            "gen-with-image",
            body(
                &json!({"id": "b12", "kind": "generate_image", "prompt": "x", "image": {"data": img}}),
            ),
            "invalid_field",
            "image",
        ),
        (
            "base64",
            body(&json!({"id": "b13", "kind": "caption", "image": {"data": "!!!not base64!!!"}})),
            "invalid_base64",
            "base64",
        ),
        (
            "not-image",
            body(
                &json!({"id": "b14", "kind": "caption", "image": {"data": b64(b"just some text, no pixels here")}}),
            ),
            "invalid_image",
            "image",
        ),
        (
            "pixels",
            body(&json!({"id": "b15", "kind": "caption", "image": {"data": b64(&png(200, 200))}})),
            "image_too_large",
            "pixels",
        ),
        (
            "prompt-bytes",
            body(&json!({"id": "b16", "kind": "chat", "prompt": "x".repeat(5000)})),
            "prompt_too_long",
            "bytes",
        ),
        (
            "job-bytes",
            body(
                &json!({"id": "b17", "kind": "chat", "prompt": "hi", "correlationId": "y".repeat(250_000)}),
            ),
            "job_too_large",
            "bytes",
        ),
        (
            "url",
            body(
                &json!({"id": "b18", "kind": "caption", "image": {"uri": "https://example.com/cat.png"}}),
            ),
            "invalid_image_uri",
            "s3://",
        ),
        (
            "bucket",
            body(
                &json!({"id": "b19", "kind": "caption", "image": {"uri": "s3://someone-elses-bucket/cat.png"}}),
            ),
            "bucket_not_allowed",
            "allow-list",
        ),
        (
            "missing-object",
            body(
                &json!({"id": "b20", "kind": "caption", "image": {"uri": format!("s3://{BUCKET}/nope.png")}}),
            ),
            "image_not_found",
            "nope.png",
        ),
        (
            "deadline",
            body(
                &json!({"id": "b21", "kind": "chat", "prompt": "hi", "deadline": "2020-01-01T00:00:00Z"}),
            ),
            "deadline_exceeded",
            "deadline",
        ),
    ];
    if !fake {
        // Under the byte limit, over the 64-token limit: only the engine can tell.
        let words = "describe the picture in great detail please ".repeat(40);
        cases.push((
            "prompt-tokens",
            body(&json!({"id": "b22", "kind": "chat", "prompt": words})),
            "prompt_too_long",
            "tokens",
        ));
    }
    for (name, b, _, _) in &cases {
        env.broker
            .publish_job(b, Some(&replies), Some(name))
            .await
            .unwrap();
    }
    // A good job after all of them: the worker must still serve.
    env.broker
        .publish_job(
            &body(&chat("good-after-bad", "Hello")),
            Some(&replies),
            Some("good"),
        )
        .await
        .unwrap();

    let mut results = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while results.len() < cases.len() + 1 && std::time::Instant::now() < deadline {
        for m in env
            .broker
            .collect(
                &replies,
                cases.len() + 1 - results.len(),
                Duration::from_secs(2),
            )
            .await
            .unwrap()
        {
            let cid = m
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str().to_string())
                .unwrap_or_default();
            results.insert(cid, m.result());
        }
    }
    assert_eq!(
        results.len(),
        cases.len() + 1,
        "got {:?}\nlogs:\n{}",
        results.keys(),
        worker.logs()
    );

    for (name, _, code, word) in &cases {
        let r = &results[*name];
        assert_eq!(r.status, ResultStatus::Error, "{name}: {r:#?}");
        let e = r.error.as_ref().unwrap();
        assert_eq!(e.code.as_str(), *code, "{name}: {e:?}");
        assert!(
            e.message.to_lowercase().contains(&word.to_lowercase()),
            "{name}: message {:?} lacks {word:?}",
            e.message
        );
    }
    assert_eq!(
        results["good"].status,
        ResultStatus::Ok,
        "{:#?}",
        results["good"]
    );
    assert_eq!(
        results["unknown-kind"].job_id, "b8",
        "ids are echoed when readable"
    );

    // Every bad message is in the dead-letter queue, unchanged, with the code
    // in its headers — but the expired one: a client's time-out is answered
    // and acked, not kept as poison.
    cases.retain(|(_, _, code, _)| *code != "deadline_exceeded");
    let dead = env
        .broker
        .collect(
            &env.broker.dead_queue(),
            cases.len() + 1,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), cases.len());
    let mut dead_codes: Vec<String> = dead
        .iter()
        .map(|d| d.header_str("x-vargpt-error-code").unwrap_or_default())
        .collect();
    let mut want: Vec<String> = cases.iter().map(|(_, _, c, _)| c.to_string()).collect();
    dead_codes.sort();
    want.sort();
    assert_eq!(dead_codes, want);
    for d in &dead {
        let cid = d
            .properties
            .correlation_id()
            .as_ref()
            .unwrap()
            .as_str()
            .to_string();
        let case = cases.iter().find(|(n, ..)| *n == cid).unwrap();
        assert_eq!(
            d.body, case.1,
            "{cid}: the dead letter keeps the original body"
        );
        assert!(d
            .header_str("x-vargpt-error-message")
            .is_some_and(|m| !m.is_empty()));
    }

    assert!(worker.try_wait().is_none(), "the worker survived");
    let m = worker.metrics().await;
    assert!(
        m.contains("vargpt_dead_lettered_total{code=\"invalid_base64\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("vargpt_job_errors_total{code=\"malformed_json\"} 1"),
        "{m}"
    );
    env.cleanup(&mut [&mut worker]).await;
}
