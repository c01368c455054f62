//! Fake backend: the broker force-closes the worker's connection mid-run
//! (what a broker restart, failover or network drop looks like to a client);
//! the worker reconnects and no job is lost.
//!
//! Only this worker's connection is closed (matched by its connection name),
//! so tests running in parallel on the same broker are not disturbed.

use std::time::Duration;

use vargpt_integration_tests::broker::close_connections_named;
use vargpt_integration_tests::worker::Worker;
use vargpt_proto::ResultStatus;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_drop_mid_run_loses_no_job() {
    let env = TestEnv::new("reconnect").await;
    let cfg = env.worker_config().fake().args(["--max-batch", "2"]);
    let mut worker = Worker::spawn(&cfg, &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    let replies = env.broker.reply_queue("replies").await.unwrap();

    let ids: Vec<String> = (0..60).map(|i| format!("r-{i:02}")).collect();
    for id in &ids {
        env.broker
            .publish_job(&body(&chat(id, "__sleep_ms=40__ hi")), Some(&replies), None)
            .await
            .unwrap();
    }
    let before = env
        .broker
        .collect(&replies, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(before.len(), 10);
    let closed = close_connections_named(&worker.worker_id).unwrap();
    assert!(closed >= 1, "the worker's connection was found and closed");

    let mut results = by_id(&before);
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !results.contains_key(*id))
        .cloned()
        .collect();
    results.extend(collect_ids(&env.broker, &replies, &missing, Duration::from_secs(90)).await);
    let lost: Vec<&String> = ids.iter().filter(|id| !results.contains_key(*id)).collect();
    assert!(lost.is_empty(), "lost: {lost:?}\nlogs:\n{}", worker.logs());
    assert!(ids.iter().all(|id| results[id].status == ResultStatus::Ok));
    assert!(worker.try_wait().is_none(), "same process, reconnected");
    assert!(worker.logs().contains("reconnecting"), "{}", worker.logs());
    worker.wait_ready(Duration::from_secs(10)).await.unwrap();
    env.cleanup(&mut [&mut worker]).await;
}

/// Someone deletes the results exchange under a running worker: publishing
/// fails with a channel error, the worker reconnects, re-declares its
/// topology, and the job's result is delivered after all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_results_exchange_is_redeclared() {
    let env = TestEnv::new("redeclare").await;
    let mut worker =
        Worker::spawn(&env.worker_config().fake(), &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    env.broker
        .delete_exchange(&format!("{}.results", env.prefix))
        .await
        .unwrap();

    // No reply-to: the result goes to the (now missing) results exchange.
    env.broker
        .publish_job(&body(&chat("no-reply-to", "hi")), None, None)
        .await
        .unwrap();
    let got = collect_ids(
        &env.broker,
        &env.broker.results_queue(),
        &["no-reply-to".to_string()],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(got.len(), 1, "{}", worker.logs());
    // Only the publishing channel was lost and reopened (redeclaring the
    // exchange); the consumer and its connection never were.
    let logs = worker.logs();
    assert_eq!(logs.matches("connected and consuming").count(), 1, "{logs}");
    assert!(worker.try_wait().is_none());
    env.cleanup(&mut [&mut worker]).await;
}
