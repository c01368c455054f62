//! Real model: a worker SIGKILLed in the middle of 120 jobs loses none of
//! them once a new worker takes over, and every answer, from either worker, is
//! the reference's. (With VARGPT_IT_FAKE_BACKEND=1 the prompts carry
//! `__sleep_ms__` directives that slow the fake backend down.)

use std::time::Duration;

use vargpt_integration_tests::force_fake_backend;
use vargpt_integration_tests::worker::Worker;
use vargpt_proto::ResultStatus;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_no_job() {
    let env = TestEnv::new("crash").await;
    let cfg = env.worker_config().args(["--max-batch", "4"]);
    let mut first = Worker::spawn(&cfg, &format!("{}-w1", env.prefix)).unwrap();
    first.wait_ready(READY_TIMEOUT).await.unwrap();
    let replies = env.broker.reply_queue("replies").await.unwrap();

    let n = 120;
    let ids: Vec<String> = (0..n).map(|i| format!("job-{i:03}")).collect();
    for (i, id) in ids.iter().enumerate() {
        // Every 10th job makes an image, so uploads are in flight at the kill too.
        let mut job = if i % 10 == 0 {
            golden::image_job(id, i as u64)
        } else {
            golden::text_job(id, "text")
        };
        if force_fake_backend() {
            job["prompt"] = format!("__sleep_ms=15__ {}", job["prompt"].as_str().unwrap()).into();
        }
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
    println!(
        "{} results before the kill, {left} jobs still queued",
        before.len()
    );
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
    // The fake backend answers anything: only the real model is held to the reference.
    let real = !force_fake_backend();
    let want_text = golden::text("text");
    for (i, id) in ids.iter().enumerate() {
        if i % 10 == 0 {
            let loc = results[id].image.as_ref().unwrap();
            assert!(loc.key.starts_with(&format!("images/{id}-")), "{}", loc.key);
            let png = std::fs::read(env.s3.object_path(BUCKET, &loc.key))
                .unwrap_or_else(|e| panic!("{id}: image stored ({e})"));
            if real {
                golden::assert_reference_image(&png, id);
            }
        } else if real {
            assert_eq!(results[id].text, want_text, "{id}");
        }
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
