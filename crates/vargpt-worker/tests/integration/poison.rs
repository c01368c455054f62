//! Fake backend: a job that aborts the worker process on every delivery,
//! among 20 good jobs on a worker holding 4 at a time (prefetch 4): the 20
//! end ok — the neighbours of a crash are never blamed — and the culprit is
//! answered `worker_crashed` and dead-lettered once it killed its worker
//! delivery-limit times running alone.

use std::time::Duration;

use vargpt_integration_tests::worker::Worker;
use vargpt_proto::ResultStatus;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_worker_is_dead_lettered() {
    let env = TestEnv::new("poison").await;
    let cfg = env
        .worker_config()
        .fake()
        .args(["--delivery-limit", "2", "--max-batch", "4"]);
    let replies = env.broker.reply_queue("replies").await.unwrap();

    let mut worker = Worker::spawn(&cfg, &format!("{}-w0", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    env.broker
        .publish_job(&body(&chat("poison", "__abort__")), Some(&replies), None)
        .await
        .unwrap();
    let good: Vec<String> = (0..20).map(|i| format!("good-{i}")).collect();
    for id in &good {
        // Slow enough that neighbours are in flight when the culprit strikes.
        env.broker
            .publish_job(
                &body(&chat(id, "__sleep_ms=100__ hi")),
                Some(&replies),
                None,
            )
            .await
            .unwrap();
    }

    // Like a supervisor (Kubernetes, systemd), restart the worker whenever it dies.
    let mut crashes = 0;
    let mut want = good.clone();
    want.push("poison".into());
    let mut results = std::collections::HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while want.iter().any(|id| !results.contains_key(id)) && std::time::Instant::now() < deadline {
        if worker.try_wait().is_some() {
            crashes += 1;
            assert!(
                crashes <= 5,
                "the worker keeps dying: the poison job is not contained"
            );
            // No wait for readiness: the new worker may take the poison job
            // and die again before a probe would see it ready.
            worker = Worker::spawn(&cfg, &format!("{}-w{crashes}", env.prefix)).unwrap();
        }
        for m in env
            .broker
            .collect(&replies, 21, Duration::from_millis(500))
            .await
            .unwrap()
        {
            let r = m.result();
            results.insert(r.job_id.clone(), r);
        }
    }
    // Once among its neighbours (all of them then run alone, as suspects),
    // then delivery-limit times alone.
    assert_eq!(
        crashes,
        3,
        "the poison job ran once in company and delivery-limit times alone\nlogs:\n{}",
        worker.logs()
    );
    let p = &results["poison"];
    assert_eq!(p.status, ResultStatus::Error);
    assert_eq!(
        p.error.as_ref().unwrap().code.as_str(),
        "worker_crashed",
        "{p:#?}"
    );
    for id in &good {
        assert_eq!(results[id].status, ResultStatus::Ok, "{:#?}", results[id]);
    }
    let dead = env
        .broker
        .collect(&env.broker.dead_queue(), 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "only the culprit is dead-lettered");
    assert_eq!(
        dead[0].header_str("x-vargpt-error-code").as_deref(),
        Some("worker_crashed")
    );
    assert!(worker.try_wait().is_none(), "the last worker is alive");
    env.cleanup(&mut [&mut worker]).await;
}
