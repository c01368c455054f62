//! Fake backend: a full RabbitMQ restart mid-run (a private node, so other
//! tests on the shared broker are not disturbed). The worker reconnects with
//! back-off, re-declares its topology and loses no job.

use std::time::Duration;

use vargpt_integration_tests::broker::Broker;
use vargpt_integration_tests::services::PrivateBroker;
use vargpt_integration_tests::worker::Worker;
use vargpt_proto::ResultStatus;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_run_loses_no_job() {
    let env = TestEnv::new("restart").await;
    let rmq = PrivateBroker::start("restart").expect("a private RabbitMQ node");
    let mut cfg = env.worker_config().fake().args(["--max-batch", "2"]);
    cfg.amqp_url = rmq.url();
    let mut worker = Worker::spawn(&cfg, &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    let client = Broker::connect_to(&rmq.url(), &env.prefix).await.unwrap();
    let replies = client.reply_queue("replies").await.unwrap();

    let ids: Vec<String> = (0..60).map(|i| format!("b-{i:02}")).collect();
    for id in &ids {
        client
            .publish_job(&body(&chat(id, "__sleep_ms=40__ hi")), Some(&replies), None)
            .await
            .unwrap();
    }
    let before = client
        .collect(&replies, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(before.len(), 10);
    drop(client);

    // Blocking (stop, then boot ~5 s): nothing else in this test runs meanwhile.
    tokio::task::block_in_place(|| rmq.restart()).expect("broker restarts");

    let client = Broker::connect_to(&rmq.url(), &env.prefix).await.unwrap();
    let mut results = by_id(&before);
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !results.contains_key(*id))
        .cloned()
        .collect();
    results.extend(collect_ids(&client, &replies, &missing, Duration::from_secs(90)).await);
    let lost: Vec<&String> = ids.iter().filter(|id| !results.contains_key(*id)).collect();
    assert!(lost.is_empty(), "lost: {lost:?}\nlogs:\n{}", worker.logs());
    assert!(ids.iter().all(|id| results[id].status == ResultStatus::Ok));
    assert!(worker.try_wait().is_none(), "same process, reconnected");
    worker.wait_ready(Duration::from_secs(10)).await.unwrap();
}
