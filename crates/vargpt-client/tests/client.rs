//! The client against a real RabbitMQ (`VARGPT_TEST_AMQP_URL`, default the
//! local guest broker) and the fake worker of the `testing` feature.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use vargpt_client::proto::{ErrorCode, ImageInput, Job, JobKind, ResultStatus};
use vargpt_client::testing::{unique_name, FakeWorker, FakeWorkerOptions};
use vargpt_client::{check, Client, ClientConfig, Error};

fn amqp_url() -> String {
    std::env::var("VARGPT_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn caption(id: &str, prompt: &str) -> Job {
    Job {
        id: id.into(),
        kind: JobKind::Caption,
        prompt: prompt.into(),
        image: Some(ImageInput::Data("iVBORw0KGgo=".into())),
        ..Default::default()
    }
}

async fn setup(tag: &str, workers: usize) -> (String, Vec<FakeWorker>, Client) {
    let queue = unique_name(tag);
    let mut fleet = Vec::new();
    for i in 0..workers {
        let options = FakeWorkerOptions {
            worker_id: format!("fake-{i}"),
            ..Default::default()
        };
        fleet.push(
            FakeWorker::start(&amqp_url(), &queue, options)
                .await
                .expect("fake worker"),
        );
    }
    let config = ClientConfig::with_queue(&queue).timeout(Duration::from_secs(10));
    let client = Client::connect(&amqp_url(), config).await.expect("connect");
    (queue, fleet, client)
}

#[tokio::test]
async fn submit_returns_the_result_of_its_job() {
    let (_queue, fleet, client) = setup("submit", 1).await;
    let result = client.submit(caption("cat-1", "")).await.unwrap();
    assert_eq!(result.job_id, "cat-1");
    assert_eq!(result.status, ResultStatus::Ok);
    assert_eq!(result.text, "echo cat-1 image=inline:12");
    assert_eq!(result.worker_id, "fake-0");
    // The job travelled with our reply queue, a generated correlation id and a deadline.
    let seen = fleet[0].seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].job.reply_to, client.reply_queue().await);
    assert_eq!(seen[0].job.correlation_id, result.correlation_id);
    assert!(!result.correlation_id.is_empty());
    assert!(seen[0].job.deadline.is_some());
    client.close().await.unwrap();
}

#[tokio::test]
async fn error_results_are_answers_and_check_turns_them_into_errors() {
    let (_queue, _fleet, client) = setup("fail", 1).await;
    let result = client.submit(caption("bad-1", "__fail__")).await.unwrap();
    assert_eq!(result.status, ResultStatus::Error);
    let err = check(result).unwrap_err();
    assert!(
        matches!(
            err,
            Error::JobFailed {
                code: ErrorCode::InferenceFailed,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn submit_many_answers_every_job_once() {
    let (_queue, fleet, client) = setup("many", 2).await;
    let jobs: Vec<Job> = (0..60).map(|i| caption(&format!("job-{i}"), "")).collect();
    let results: Vec<_> = client.submit_many(jobs).collect().await;
    let ids: HashSet<String> = results.into_iter().map(|r| r.unwrap().job_id).collect();
    assert_eq!(ids.len(), 60);
    assert!((0..60).all(|i| ids.contains(&format!("job-{i}"))));
    // Both workers took part.
    assert!(
        fleet.iter().all(|w| w.taken() > 0),
        "{:?}",
        fleet.iter().map(|w| w.taken()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_job_without_an_answer_times_out_and_others_still_complete() {
    let (_queue, _fleet, client) = setup("timeout", 1).await;
    let start = Instant::now();
    let lost =
        client.submit_with_timeout(caption("lost-1", "__drop__"), Duration::from_millis(400));
    let fine = client.submit(caption("fine-1", ""));
    let (lost, fine) = tokio::join!(lost, fine);
    match lost {
        Err(Error::Timeout { job_id, timeout }) => {
            assert_eq!(job_id, "lost-1");
            assert_eq!(timeout, Duration::from_millis(400));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert_eq!(fine.unwrap().job_id, "fine-1");
}

#[tokio::test]
async fn a_missing_queue_is_reported_as_unroutable() {
    let config =
        ClientConfig::with_queue(unique_name("nobody-consumes")).timeout(Duration::from_secs(5));
    let client = Client::connect(&amqp_url(), config).await.unwrap();
    let start = Instant::now();
    let err = client.submit(caption("orphan", "")).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unroutable {
                reply_code: 312,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.job_id(), Some("orphan"));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "must not wait for the timeout"
    );
}

#[tokio::test]
async fn waiting_jobs_fail_when_the_connection_closes() {
    let (_queue, _fleet, client) = setup("close", 1).await;
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.submit(caption("pending-1", "__drop__")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.close().await.unwrap();
    let err = waiting.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Disconnected { ref job_id, .. } if job_id == "pending-1"),
        "{err}"
    );
}

#[tokio::test]
async fn connect_errors_hide_the_password() {
    let err = Client::connect(
        "amqp://guest:s3cret@127.0.0.1:1/%2f",
        ClientConfig::default(),
    )
    .await
    .err()
    .expect("nothing listens on port 1");
    let text = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test]
async fn jobs_without_id_or_with_overlong_fields_are_refused_before_sending() {
    let (_queue, _fleet, client) = setup("invalid", 1).await;
    let err = client.submit(caption("", "")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidJob { .. }), "{err}");
    let mut job = caption("x", "");
    job.correlation_id = "c".repeat(300);
    let err = client.submit(job).await.unwrap_err();
    assert!(matches!(err, Error::InvalidJob { .. }), "{err}");
}
