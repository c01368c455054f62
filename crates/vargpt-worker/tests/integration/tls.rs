//! Fake backend: amqps:// against a TLS-only RabbitMQ node with a private CA.
//! With the CA (AMQP_CA_FILE) the worker connects and serves; without it the
//! certificate is refused and the worker stays not ready.

use std::time::Duration;

use vargpt_integration_tests::broker::Broker;
use vargpt_integration_tests::services::PrivateBroker;
use vargpt_integration_tests::worker::Worker;
use vargpt_proto::ResultStatus;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_private_ca() {
    let env = TestEnv::new("tls").await;
    let rmq = PrivateBroker::start_tls("tls").expect("a TLS RabbitMQ node");
    let ca = rmq.ca_file();

    let mut untrusting = env.worker_config().fake();
    untrusting.amqp_url = rmq.url();
    let mut refused = Worker::spawn(&untrusting, &format!("{}-untrusting", env.prefix)).unwrap();
    assert!(
        refused.wait_ready(Duration::from_secs(4)).await.is_err(),
        "unknown CA must be refused"
    );
    let logs = refused.logs();
    assert!(
        logs.contains("broker connection failed") && logs.contains("UnknownIssuer"),
        "{logs}"
    );
    refused.kill();

    let mut cfg = untrusting.env("AMQP_CA_FILE", ca.to_str().unwrap());
    cfg.amqp_url = rmq.url();
    let mut worker = Worker::spawn(&cfg, &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    assert!(
        worker.logs().contains("amqps://localhost"),
        "{}",
        worker.logs()
    );
    assert!(
        !worker.logs().contains("guest:guest"),
        "credentials never logged"
    );

    let pem = std::fs::read_to_string(&ca).unwrap();
    let client = Broker::connect_tls(&rmq.url(), &pem, &env.prefix)
        .await
        .unwrap();
    let replies = client.reply_queue("replies").await.unwrap();
    client
        .publish_job(&body(&chat("over-tls", "hi")), Some(&replies), None)
        .await
        .unwrap();
    let got = client
        .collect(&replies, 1, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "{}", worker.logs());
    assert_eq!(got[0].result().status, ResultStatus::Ok);
}
