//! Fake backend: an S3 outage is a transient failure. A job is retried with
//! back-off through the retry queues and succeeds once S3 is back; if S3
//! stays down, the job ends as `storage_unavailable` in the dead-letter queue.

use std::time::Duration;

use vargpt_integration_tests::http::metric;
use vargpt_integration_tests::worker::Worker;
use vargpt_proto::ResultStatus;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_outage_is_retried_then_dead_lettered() {
    let mut env = TestEnv::new("retry").await;
    let cfg = env.worker_config().fake().args([
        "--retry-delays-ms",
        "1500,1500,1500",
        "--s3-timeout-secs",
        "2",
    ]);
    let mut worker = Worker::spawn(&cfg, &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    let replies = env.broker.reply_queue("replies").await.unwrap();

    // Outage that ends: the retry succeeds.
    env.s3.stop();
    env.broker
        .publish_job(
            &body(&generate("comes-back", "a hill")),
            Some(&replies),
            None,
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(
        &worker.metrics().await,
        "vargpt_job_retries_total{kind=\"generate_image\"}",
    )
    .unwrap_or(0.0)
        < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no retry\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.s3.restart().unwrap();
    let r = env
        .broker
        .collect(&replies, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r.len(), 1, "{}", worker.logs());
    let r = r[0].result();
    assert_eq!(r.status, ResultStatus::Ok, "{r:#?}");
    assert!(r.attempt >= 2, "the result names its attempt: {r:#?}");
    let key = &r.image.as_ref().expect("an image").key;
    assert!(key.starts_with("images/comes-back-"), "{key}");
    assert!(env.s3.object_path(BUCKET, key).is_file());

    // Outage that lasts: attempts run out, the job is dead-lettered.
    env.s3.stop();
    env.broker
        .publish_job(
            &body(&generate("stays-down", "a lake")),
            Some(&replies),
            None,
        )
        .await
        .unwrap();
    let r = env
        .broker
        .collect(&replies, 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(r.len(), 1, "{}", worker.logs());
    let r = r[0].result();
    let e = r.error.clone().expect("error result");
    assert_eq!(e.code.as_str(), "storage_unavailable");
    assert!(e.retryable);
    assert_eq!(r.attempt, 4);
    let dead = env
        .broker
        .collect(&env.broker.dead_queue(), 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        dead[0].header_str("x-vargpt-error-code").as_deref(),
        Some("storage_unavailable")
    );
    env.s3.restart().unwrap();
    env.cleanup(&mut [&mut worker]).await;
}
