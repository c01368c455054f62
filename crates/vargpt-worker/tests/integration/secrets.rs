//! Fake backend: at every log level — `RUST_LOG=trace` included, where lapin
//! would print the AMQP login frame — the broker password never reaches the
//! worker's logs, through a connection, jobs, and a reconnect.

use std::process::Command;
use std::time::Duration;

use vargpt_integration_tests::worker::Worker;
use vargpt_integration_tests::{broker, unique_prefix};
use vargpt_proto::ResultStatus;

use crate::common::*;

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_password_never_appears_in_logs() {
    let env = TestEnv::new("secrets").await;
    let user = unique_prefix("vgsecret");
    let password = format!("Pw-{}", unique_prefix("x").replace('-', ""));
    rabbitmqctl(&["add_user", &user, &password]);
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
    let mut cfg = env.worker_config().fake().env("RUST_LOG", "trace");
    cfg.amqp_url = format!("amqp://{user}:{password}@127.0.0.1:5672/%2f");
    let mut worker = Worker::spawn(&cfg, &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    let replies = env.broker.reply_queue("replies").await.unwrap();
    env.broker
        .publish_job(&body(&chat("s1", "hi")), Some(&replies), None)
        .await
        .unwrap();
    let r = env
        .broker
        .collect(&replies, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].result().status, ResultStatus::Ok);
    // A reconnect logs in again.
    broker::close_connections_named(&format!("{}-w", env.prefix)).unwrap();
    env.broker
        .publish_job(&body(&chat("s2", "hi")), Some(&replies), None)
        .await
        .unwrap();
    let r = env
        .broker
        .collect(&replies, 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(r.len(), 1, "{}", worker.logs());
    let logs = worker.logs();
    assert!(
        logs.len() > 10_000,
        "trace logging is on: {} bytes",
        logs.len()
    );
    assert!(!logs.contains(&password), "the password is in the logs");
    env.cleanup(&mut [&mut worker]).await;
    rabbitmqctl(&["delete_user", &user]);
}
