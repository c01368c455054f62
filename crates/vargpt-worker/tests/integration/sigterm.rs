//! Fake backend: SIGTERM stops the intake, lets in-flight jobs finish and
//! publish, acks them, and exits 0; queued jobs stay queued.

use std::time::Duration;

use vargpt_integration_tests::http::{get, metric};
use vargpt_integration_tests::worker::Worker;
use vargpt_proto::ResultStatus;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_jobs() {
    let env = TestEnv::new("sigterm").await;
    let cfg = env
        .worker_config()
        .fake()
        .args(["--max-batch", "2", "--shutdown-grace-secs", "20"]);
    let mut worker = Worker::spawn(&cfg, &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    let replies = env.broker.reply_queue("replies").await.unwrap();

    let ids: Vec<String> = (0..5).map(|i| format!("slow-{i}")).collect();
    for id in &ids {
        env.broker
            .publish_job(
                &body(&chat(id, "__sleep_ms=2000__ take your time")),
                Some(&replies),
                None,
            )
            .await
            .unwrap();
    }
    // Wait until two jobs are in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(&worker.metrics().await, "vargpt_jobs_in_flight") != Some(2.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "jobs never started\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, body) = get(&worker.http, "/readyz").await.unwrap();
    assert_eq!(code, 503, "not ready while draining: {body}");

    let status = worker
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exits within the grace period");
    assert!(status.success(), "exit status {status}\n{}", worker.logs());

    let done = env
        .broker
        .collect(&replies, 5, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(done.len(), 2, "exactly the in-flight jobs finished");
    assert!(done.iter().all(|m| m.result().status == ResultStatus::Ok));
    assert_eq!(
        env.broker
            .queue_len(&env.broker.jobs_queue())
            .await
            .unwrap(),
        3,
        "the rest stay queued"
    );
    env.cleanup(&mut [&mut worker]).await;
}
