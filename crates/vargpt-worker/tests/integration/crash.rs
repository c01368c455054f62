//! Real model: a worker SIGKILLed in the middle of 120 jobs loses none of
//! them once a new worker takes over. (The `__sleep_ms__` directives slow the
//! fake backend down when VARGPT_IT_FAKE_BACKEND=1; the model reads them as text.)

use std::time::Duration;

use vargpt_integration_tests::worker::Worker;
use vargpt_proto::ResultStatus;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_no_job() {
    let env = TestEnv::new("crash").await;
    let cfg = env
        .worker_config()
        .args(["--concurrency", "2", "--batch-max", "2"]);
    let mut first = Worker::spawn(&cfg, &format!("{}-w1", env.prefix)).unwrap();
    first.wait_ready(READY_TIMEOUT).await.unwrap();
    let replies = env.broker.reply_queue("replies").await.unwrap();

    let n = 120;
    let ids: Vec<String> = (0..n).map(|i| format!("job-{i:03}")).collect();
    for (i, id) in ids.iter().enumerate() {
        // Every 10th job makes an image, so uploads are in flight at the kill too.
        let job = if i % 10 == 0 {
            generate(id, "__sleep_ms=15__ a tree")
        } else {
            let mut job = chat(id, "__sleep_ms=15__ hi");
            job["params"]["maxNewTokens"] = 48.into();
            job
        };
        env.broker
            .publish_job(&body(&job), Some(&replies), None)
            .await
            .unwrap();
    }

    let before = env
        .broker
        .collect(&replies, 30, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        before.len() >= 30,
        "only {} results before the kill",
        before.len()
    );
    first.kill();
    let left = env
        .broker
        .queue_len(&env.broker.jobs_queue())
        .await
        .unwrap();
    assert!(
        left > 0,
        "the kill came after the last job: not a mid-run crash"
    );
    let mut results = by_id(&before);

    let mut second = Worker::spawn(&cfg, &format!("{}-w2", env.prefix)).unwrap();
    second.wait_ready(READY_TIMEOUT).await.unwrap();
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !results.contains_key(*id))
        .cloned()
        .collect();
    results.extend(collect_ids(&env.broker, &replies, &missing, Duration::from_secs(60)).await);

    let lost: Vec<&String> = ids.iter().filter(|id| !results.contains_key(*id)).collect();
    assert!(
        lost.is_empty(),
        "lost jobs: {lost:?}\nlogs:\n{}",
        second.logs()
    );
    for id in &ids {
        assert_eq!(results[id].status, ResultStatus::Ok, "{:#?}", results[id]);
    }
    for id in ids.iter().step_by(10) {
        let loc = results[id].image.as_ref().unwrap();
        assert_eq!(loc.key, format!("images/{id}.png"));
        assert!(
            env.s3.object_path(BUCKET, &loc.key).is_file(),
            "{id}: image stored"
        );
    }
    assert_eq!(
        env.broker
            .queue_len(&env.broker.jobs_queue())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        env.broker
            .queue_len(&env.broker.dead_queue())
            .await
            .unwrap(),
        0,
        "nothing dead-lettered"
    );
    env.cleanup(&mut [&mut second]).await;
}
