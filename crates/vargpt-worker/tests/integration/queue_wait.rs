//! Fake backend: a job submitted with `vargpt-client` reports its queue wait
//! with millisecond resolution. The client stamps `x-vargpt-enqueued-at-ms`
//! (the one name in `vargpt_proto::wire`); were the worker to fall back to
//! the AMQP timestamp (whole seconds), the reported wait would exceed the
//! job's whole round trip by up to a second.

use std::time::{Duration, Instant};

use vargpt_client::{Client, ClientConfig};
use vargpt_integration_tests::services::AMQP_URL;
use vargpt_integration_tests::worker::Worker;
use vargpt_proto::{Job, JobKind, ResultStatus};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_job_reports_its_queue_wait_in_milliseconds() {
    let env = TestEnv::new("queue-wait").await;
    let mut worker =
        Worker::spawn(&env.worker_config().fake(), &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    let client = Client::connect(AMQP_URL, ClientConfig::with_prefix(&env.prefix))
        .await
        .unwrap();
    for i in 0..5 {
        let job = Job {
            id: format!("wait-{i}"),
            kind: JobKind::Chat,
            prompt: "hi".into(),
            ..Default::default()
        };
        let started = Instant::now();
        let r = client.submit(job).await.unwrap();
        let round_trip = started.elapsed().as_secs_f64();
        assert_eq!(r.status, ResultStatus::Ok, "{r:#?}");
        let wait = r.timings.queue_wait_seconds;
        assert!(
            wait > 0.0 && wait <= round_trip,
            "job {i}: queue wait {wait} s against a round trip of {round_trip} s"
        );
        tokio::time::sleep(Duration::from_millis(137)).await;
    }
    let _ = client.close().await;
    env.cleanup(&mut [&mut worker]).await;
}
