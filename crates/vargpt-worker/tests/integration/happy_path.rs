//! Real model: caption, VQA, chat and text-to-image through RabbitMQ and S3,
//! compared with the reference's answers (golden.json, reference_image_cfg0.png).

use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use vargpt_integration_tests::force_fake_backend;
use vargpt_integration_tests::worker::Worker;
use vargpt_proto::{JobKind, ResultStatus};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_kinds_of_jobs_produce_results_and_a_stored_png() {
    let env = TestEnv::new("happy").await;
    // An input image in the bucket, to exercise the s3:// input path.
    env.s3
        .client()
        .put_object()
        .bucket(BUCKET)
        .key("inputs/test_image.png")
        .body(test_image_bytes().into())
        .send()
        .await
        .expect("upload input image");
    let mut worker = Worker::spawn(&env.worker_config(), &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    let replies = env.broker.reply_queue("replies").await.unwrap();

    // The reference's cases; the caption takes the default prompt (the
    // reference's "Describe the image.") and its image from S3.
    let jobs = [
        json!({"id": "cap-1", "kind": "caption", "image": {"uri": format!("s3://{BUCKET}/inputs/test_image.png")},
               "params": {"maxNewTokens": 12, "greedy": true}}),
        golden::text_job("vqa-1", "vqa"),
        golden::text_job("chat-1", "text"),
        golden::image_job("gen-1", 1),
    ];
    for (i, j) in jobs.iter().enumerate() {
        let cid = format!("corr-{i}");
        env.broker
            .publish_job(&body(j), Some(&replies), Some(&cid))
            .await
            .unwrap();
    }
    let ids: Vec<String> = jobs
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let results = collect_ids(&env.broker, &replies, &ids, Duration::from_secs(180)).await;
    assert_eq!(
        results.len(),
        4,
        "results: {results:#?}\nlogs:\n{}",
        worker.logs()
    );

    for (i, id) in ids.iter().enumerate() {
        let r = &results[id];
        assert_eq!(r.status, ResultStatus::Ok, "{r:#?}");
        assert_eq!(r.correlation_id, format!("corr-{i}"));
        assert_eq!(r.worker_id, worker.worker_id);
        assert!(!r.model_id.is_empty());
        assert!(r.timings.total_seconds > 0.0);
    }
    for id in ["cap-1", "vqa-1", "chat-1"] {
        assert!(results[id].tokens_generated > 0, "{:#?}", results[id]);
    }
    assert_eq!(results["cap-1"].kind, JobKind::Caption);
    // The fake backend answers anything: only the real model is held to the reference.
    let real = !force_fake_backend();
    if real {
        for (id, case) in [("cap-1", "caption"), ("vqa-1", "vqa"), ("chat-1", "text")] {
            assert_eq!(results[id].text, golden::text(case), "{id}");
        }
    }

    let gen = &results["gen-1"];
    let loc = gen
        .image
        .clone()
        .expect("generate_image result has an image");
    assert_eq!(loc.bucket, BUCKET);
    // The key names the request: `images/{id}-{digest of the body}.png`.
    assert!(
        loc.key.starts_with("images/gen-1-") && loc.key.ends_with(".png"),
        "{}",
        loc.key
    );
    let obj = env
        .s3
        .client()
        .get_object()
        .bucket(BUCKET)
        .key(&loc.key)
        .send()
        .await
        .expect("PNG is in the bucket");
    let bytes = obj.body.collect().await.unwrap().into_bytes().to_vec();
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        loc.sha256,
        "sha256 in the result matches the object"
    );
    let img =
        image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).expect("PNG decodes");
    assert_eq!((img.width(), img.height()), (loc.width, loc.height));
    if real {
        golden::assert_reference_image(&bytes, "gen-1");
    }

    // Idempotency: the same job again (as a redelivery would) gives the same key and bytes.
    env.broker
        .publish_job(&body(&jobs[3]), Some(&replies), Some("again"))
        .await
        .unwrap();
    let again = collect_ids(
        &env.broker,
        &replies,
        &["gen-1".to_string()],
        Duration::from_secs(120),
    )
    .await;
    let loc2 = again["gen-1"].image.clone().unwrap();
    assert_eq!(
        (loc2.key.as_str(), loc2.sha256.as_str()),
        (loc.key.as_str(), loc.sha256.as_str())
    );

    let metrics = worker.metrics().await;
    assert!(
        metrics.contains("vargpt_images_generated_total 2"),
        "{metrics}"
    );
    env.cleanup(&mut [&mut worker]).await;
}
