//! Fake backend: a job that kills the engine (as when the real engine's
//! batching thread dies) among good jobs. The worker does not become a black
//! hole: it gives its jobs back unanswered, exits 1 so its supervisor
//! restarts it, the good jobs end ok on the next worker, and the culprit,
//! run alone, is answered worker_crashed after the delivery limit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use vargpt_integration_tests::worker::Worker;
use vargpt_proto::ResultStatus;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_restarts_the_worker_and_blames_only_its_culprit() {
    let env = TestEnv::new("engine-dead").await;
    let cfg = env
        .worker_config()
        .fake()
        .args(["--delivery-limit", "2", "--max-batch", "4"]);
    let replies = env.broker.reply_queue("replies").await.unwrap();
    let mut worker = Worker::spawn(&cfg, &format!("{}-w0", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    env.broker
        .publish_job(
            &body(&chat("killer", "__kill_engine__")),
            Some(&replies),
            None,
        )
        .await
        .unwrap();
    let good: Vec<String> = (0..8).map(|i| format!("good-{i}")).collect();
    for id in &good {
        env.broker
            .publish_job(&body(&chat(id, "__sleep_ms=50__ hi")), Some(&replies), None)
            .await
            .unwrap();
    }

    let mut restarts = 0;
    let mut results: HashMap<String, Vec<vargpt_proto::JobResult>> = HashMap::new();
    let mut want = good.clone();
    want.push("killer".into());
    let deadline = Instant::now() + Duration::from_secs(120);
    while want.iter().any(|id| !results.contains_key(id)) && Instant::now() < deadline {
        if let Some(status) = worker.try_wait() {
            assert_eq!(
                status.code(),
                Some(1),
                "a dead engine exits 1\n{}",
                worker.logs()
            );
            assert!(
                worker.logs().contains("the engine died"),
                "{}",
                worker.logs()
            );
            restarts += 1;
            assert!(restarts <= 4, "the worker keeps dying: not contained");
            worker = Worker::spawn(&cfg, &format!("{}-w{restarts}", env.prefix)).unwrap();
        }
        for m in env
            .broker
            .collect(&replies, 9, Duration::from_millis(500))
            .await
            .unwrap()
        {
            let r = m.result();
            results.entry(r.job_id.clone()).or_default().push(r);
        }
    }
    for id in &good {
        let rs = &results[id];
        assert!(
            rs.iter().all(|r| r.status == ResultStatus::Ok),
            "{id}: {rs:#?}"
        );
    }
    let k = &results["killer"];
    assert_eq!(k.len(), 1, "{k:#?}");
    assert_eq!(k[0].error.as_ref().unwrap().code.as_str(), "worker_crashed");
    // Once in company, then delivery-limit times alone.
    assert_eq!(restarts, 3, "{}", worker.logs());
    let dead = env
        .broker
        .collect(&env.broker.dead_queue(), 2, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "only the culprit is dead-lettered");
    env.cleanup(&mut [&mut worker]).await;
}
