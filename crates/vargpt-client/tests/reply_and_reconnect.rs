//! Reply queues of the caller's choosing, the enqueue-time header, and
//! reconnecting, against a real RabbitMQ (`VARGPT_TEST_AMQP_URL`) and the
//! fake worker; connection loss is made by a TCP proxy in front of the broker.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::proxy::{host_port, Proxy};
use common::{amqp_url, caption};
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use vargpt_client::proto::{JobResult, ResultStatus};
use vargpt_client::testing::{declare_test_queue, unique_name, FakeWorker, FakeWorkerOptions};
use vargpt_client::{Client, ClientConfig, Error, ReplyQueue, RetryPolicy};
use vargpt_proto::wire;

async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("broker");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

async fn worker(queue: &str) -> FakeWorker {
    FakeWorker::start(&amqp_url(), queue, FakeWorkerOptions::default())
        .await
        .expect("fake worker")
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 8,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Takes one message from `queue`, waiting up to 10 s for it.
async fn get_one(ch: &Channel, queue: &str) -> lapin::message::BasicGetMessage {
    for _ in 0..100 {
        if let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing arrived on {queue}");
}

#[tokio::test]
async fn a_job_carries_the_enqueue_time_in_milliseconds_under_the_workers_header() {
    let (_conn, ch) = channel().await;
    let queue = unique_name("enqueued-at");
    declare_test_queue(&ch, &queue).await.unwrap();
    let client = Client::connect(&amqp_url(), ClientConfig::with_queue(&queue))
        .await
        .unwrap();
    let before = now_ms();
    client.publish(caption("stamped-1", "")).await.unwrap();
    let after = now_ms();
    let message = get_one(&ch, &queue).await;
    let props = &message.delivery.properties;
    let headers = props.headers().as_ref().expect("headers");
    assert!(!headers.contains_key(wire::LEGACY_ENQUEUED_AT_MS));
    let Some(AMQPValue::LongLongInt(ms)) = headers.inner().get(wire::ENQUEUED_AT_MS) else {
        panic!("no {} header: {headers:?}", wire::ENQUEUED_AT_MS);
    };
    // Within the publish call, to the millisecond: a seconds-resolution stamp
    // (x1000) would fall before `before` in 999 of 1000 runs.
    assert!((before..=after).contains(ms), "{before} <= {ms} <= {after}");
    assert_eq!(props.timestamp().unwrap(), (*ms / 1000) as u64);
}

#[tokio::test]
async fn results_come_back_on_a_durable_reply_queue_of_ones_own() {
    let queue = unique_name("durable-reply");
    let fleet = worker(&queue).await;
    let reply = unique_name("my-replies");
    let config = ClientConfig::with_queue(&queue).reply_queue(ReplyQueue::Durable(reply.clone()));
    let client = Client::connect(&amqp_url(), config).await.unwrap();
    assert_eq!(client.reply_queue().await, reply);
    let result = client.submit(caption("own-1", "")).await.unwrap();
    assert_eq!(result.status, ResultStatus::Ok);
    assert_eq!(fleet.seen()[0].job.reply_to, reply);
    // A job that already names our queue is fine too.
    let mut job = caption("own-2", "");
    job.reply_to = reply.clone();
    assert_eq!(client.submit(job).await.unwrap().job_id, "own-2");
    client.close().await.unwrap();
    // The queue outlives the client.
    let (_conn, ch) = channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(reply.as_str().into(), passive, FieldTable::default())
        .await
        .expect("the durable reply queue is still there");
    ch.queue_delete(reply.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_existing_reply_queue_is_consumed_and_a_missing_one_reported() {
    let queue = unique_name("existing-reply");
    let _fleet = worker(&queue).await;
    let (_conn, ch) = channel().await;
    let reply = unique_name("declared-by-caller");
    declare_test_queue(&ch, &reply).await.unwrap();
    let config = ClientConfig::with_queue(&queue).reply_queue(ReplyQueue::Existing(reply.clone()));
    let client = Client::connect(&amqp_url(), config).await.unwrap();
    assert_eq!(
        client.submit(caption("ex-1", "")).await.unwrap().job_id,
        "ex-1"
    );

    let missing = ClientConfig::with_queue(&queue)
        .reply_queue(ReplyQueue::Existing(unique_name("nobody-declared")));
    let err = Client::connect(&amqp_url(), missing).await.err().unwrap();
    assert!(matches!(err, Error::ReplyQueue { .. }), "{err}");
    let unnamed = ClientConfig::with_queue(&queue).reply_queue(ReplyQueue::Durable(String::new()));
    let err = Client::connect(&amqp_url(), unnamed).await.err().unwrap();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
}

#[tokio::test]
async fn publish_sends_the_result_where_the_job_says() {
    let queue = unique_name("publish-elsewhere");
    let _fleet = worker(&queue).await;
    let (_conn, ch) = channel().await;
    let elsewhere = unique_name("elsewhere");
    declare_test_queue(&ch, &elsewhere).await.unwrap();
    let client = Client::connect(&amqp_url(), ClientConfig::with_queue(&queue))
        .await
        .unwrap();
    let mut job = caption("away-1", "");
    job.reply_to = elsewhere.clone();
    let correlation_id = client.publish(job).await.unwrap();
    assert!(!correlation_id.is_empty());
    let message = get_one(&ch, &elsewhere).await;
    let result: JobResult = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(result.job_id, "away-1");
    assert_eq!(result.correlation_id, correlation_id);

    // submit waits on its own queue, so it refuses a job bound elsewhere.
    let mut job = caption("away-2", "");
    job.reply_to = elsewhere;
    let err = client.submit(job).await.unwrap_err();
    assert!(matches!(err, Error::InvalidJob { .. }), "{err}");
}

#[tokio::test]
async fn a_lost_connection_is_reopened_for_the_next_job() {
    let queue = unique_name("reconnect");
    let _fleet = worker(&queue).await;
    let proxy = Proxy::start(&host_port(&amqp_url())).await;
    let config = ClientConfig::with_queue(&queue)
        .timeout(Duration::from_secs(10))
        .retry(fast_retry());
    let client = Client::connect(&proxy.url(&amqp_url()), config)
        .await
        .unwrap();
    let first_queue = client.reply_queue().await;
    assert_eq!(
        client.submit(caption("before", "")).await.unwrap().job_id,
        "before"
    );

    proxy.cut();
    // Refused for a while: the publish is retried with back-off until it passes.
    proxy.refuse(true);
    let later = {
        let client = client.clone();
        tokio::spawn(async move { client.submit(caption("after", "")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.refuse(false);
    assert_eq!(later.await.unwrap().unwrap().job_id, "after");
    // A private reply queue dies with its connection: a new one took its place.
    assert_ne!(client.reply_queue().await, first_queue);
}

#[tokio::test]
async fn a_job_waiting_on_a_durable_reply_queue_survives_a_connection_loss() {
    let queue = unique_name("survive");
    let _fleet = worker(&queue).await;
    let reply = unique_name("survive-replies");
    let proxy = Proxy::start(&host_port(&amqp_url())).await;
    let config = ClientConfig::with_queue(&queue)
        .timeout(Duration::from_secs(15))
        .reply_queue(ReplyQueue::Durable(reply.clone()))
        .retry(fast_retry());
    let client = Client::connect(&proxy.url(&amqp_url()), config)
        .await
        .unwrap();
    let waiting = {
        let client = client.clone();
        // The fake worker answers after 1.5 s; the connection drops before.
        tokio::spawn(async move { client.submit(caption("slow-1", "__sleep_ms=1500__")).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    let result = waiting
        .await
        .unwrap()
        .expect("the answer arrives after the reconnect");
    assert_eq!(result.job_id, "slow-1");
    client.close().await.unwrap();
    let (_conn, ch) = channel().await;
    let _ = ch
        .queue_delete(reply.as_str().into(), QueueDeleteOptions::default())
        .await;
}

#[tokio::test]
async fn with_reconnecting_off_a_lost_connection_fails_the_jobs() {
    let queue = unique_name("no-reconnect");
    let _fleet = worker(&queue).await;
    let proxy = Proxy::start(&host_port(&amqp_url())).await;
    let config = ClientConfig::with_queue(&queue).retry(RetryPolicy::never());
    let client = Client::connect(&proxy.url(&amqp_url()), config)
        .await
        .unwrap();
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.submit(caption("cut-1", "__drop__")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    let err = waiting.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Disconnected { ref job_id, .. } if job_id == "cut-1"),
        "{err}"
    );
    let err = client.submit(caption("cut-2", "")).await.unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
}

#[tokio::test]
async fn an_unreachable_broker_fails_after_the_bounded_retries() {
    let queue = unique_name("gone");
    let _fleet = worker(&queue).await;
    let proxy = Proxy::start(&host_port(&amqp_url())).await;
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
    };
    let config = ClientConfig::with_queue(&queue).retry(retry);
    let client = Client::connect(&proxy.url(&amqp_url()), config)
        .await
        .unwrap();
    proxy.refuse(true);
    proxy.cut();
    let err = client.submit(caption("never", "")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
}
