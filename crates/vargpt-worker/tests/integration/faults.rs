//! Fake backend, network faults from the test harness's fault proxy
//! (`vargpt_integration_tests::faultproxy`): worker ↔ broker and worker ↔ S3
//! run through a loopback proxy that drops, stalls or half-opens them. Under
//! each fault every job ends answered — ok once the fault clears, or a
//! bounded error — none lost, and no wait is unbounded.
//!
//! The test client talks to the broker directly; only the worker's traffic
//! crosses the proxy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vargpt_integration_tests::faultproxy::{FaultProxy, Mode};
use vargpt_integration_tests::tally::Tally;
use vargpt_integration_tests::worker::{Worker, WorkerConfig};
use vargpt_proto::ResultStatus;

use crate::common::*;

const PREFETCH: usize = 4;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A worker whose broker connection runs through `proxy`.
fn broker_proxied_config(env: &TestEnv, proxy: &FaultProxy) -> WorkerConfig {
    let mut cfg = env.worker_config().fake().args([
        "--concurrency",
        "2",
        "--prefetch",
        &PREFETCH.to_string(),
    ]);
    cfg.amqp_url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port());
    cfg
}

/// A worker whose S3 traffic runs through `proxy`; short S3 timeouts and
/// retries so a fault turns into retries, not a hang.
fn s3_proxied_config(env: &TestEnv, proxy: &FaultProxy) -> WorkerConfig {
    let mut cfg = env.worker_config().fake().args([
        "--concurrency",
        "2",
        "--prefetch",
        &PREFETCH.to_string(),
        "--s3-timeout-secs",
        "2",
        "--retry-delays-ms",
        "1000,1000,1000,1000,1000",
    ]);
    cfg.s3_endpoint = format!("http://127.0.0.1:{}", proxy.port());
    cfg
}

async fn publish(env: &TestEnv, ids: &[String], image_every: usize) {
    for (i, id) in ids.iter().enumerate() {
        let job = if i % image_every == 0 {
            generate(id, "__sleep_ms=100__ a boat")
        } else {
            chat(id, "__sleep_ms=100__ hi")
        };
        env.broker
            .publish_job(&body(&job), None, None)
            .await
            .unwrap();
    }
}

fn ids(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i:02}")).collect()
}

/// Waits until `n` results are in (before injecting a fault mid-run).
async fn results_before_fault(env: &TestEnv, tally: &mut Tally, n: usize) {
    let got = env
        .broker
        .collect(&env.broker.results_queue(), n, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.len(), n, "results before the fault");
    tally.add_bodies(got.iter().map(|m| m.body.as_slice()));
}

/// The common verdict: every job answered, each answer ok or (for S3
/// faults) the bounded `storage_unavailable`, no redelivery loop, and at
/// most `window` duplicates (jobs held unacked when the fault hit).
fn verdict(what: &str, tally: &Tally, ids: &[String], window: usize, worker: &Worker) {
    let lost = tally.lost(ids);
    let errors: Vec<String> = ids
        .iter()
        .filter_map(|id| tally.last(id))
        .filter(|r| r.status != ResultStatus::Ok)
        .map(|r| {
            let code = r.error.as_ref().map(|e| e.code.as_str().to_string());
            format!("{}: {}", r.job_id, code.unwrap_or_default())
        })
        .collect();
    eprintln!(
        "{what}: {} jobs, answered {}, lost {}, errors {errors:?}, duplicates {} {:?}",
        ids.len(),
        tally.answered(),
        lost.len(),
        tally.duplicates(),
        tally.duplicated_ids()
    );
    assert!(
        lost.is_empty(),
        "{what}: lost {lost:?}\nlogs:\n{}",
        worker.logs()
    );
    assert!(
        errors.iter().all(|e| e.ends_with(": storage_unavailable")),
        "{what}: unexpected error results {errors:?}"
    );
    assert!(
        tally.duplicates() <= window,
        "{what}: {} duplicates > {window}: {:?}",
        tally.duplicates(),
        tally.duplicated_ids()
    );
}

async fn readyz(worker: &Worker) -> Option<u16> {
    vargpt_integration_tests::http::get(&worker.http, "/readyz")
        .await
        .ok()
        .map(|(code, _)| code)
}

/// Polls `/readyz` until it answers `want` (200 or not), at most `timeout`.
async fn wait_readyz(worker: &Worker, ready: bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if (readyz(worker).await == Some(200)) == ready {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Runs jobs through a worker behind a broker-side proxy, injects `mode`
/// for `hold` after the first results, clears it, and checks the outcome.
async fn broker_fault(name: &str, mode: Mode, hold: Duration, answer_within: Duration) {
    let env = TestEnv::new(name).await;
    let proxy = FaultProxy::start(loopback(5672)).unwrap();
    let cfg = broker_proxied_config(&env, &proxy);
    let mut worker = Worker::spawn(&cfg, &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    let ids = ids(name, 40);
    publish(&env, &ids, 10).await;
    let mut tally = Tally::default();
    results_before_fault(&env, &mut tally, 6).await;

    proxy.set_mode(mode);
    tokio::time::sleep(hold).await;
    proxy.set_mode(Mode::Pass);
    let cleared = Instant::now();
    tally
        .collect(
            &env.broker,
            &env.broker.results_queue(),
            &ids,
            answer_within,
            Duration::from_secs(2),
        )
        .await;
    eprintln!(
        "{name}: answered {}/{} {:?} after the fault cleared; proxy accepted {} connections",
        tally.answered(),
        ids.len(),
        cleared.elapsed(),
        proxy.accepted()
    );
    verdict(name, &tally, &ids, PREFETCH, &worker);
    assert!(worker.try_wait().is_none(), "the worker survived the fault");
    assert!(
        wait_readyz(&worker, true, Duration::from_secs(20)).await,
        "{name}: /readyz not back to 200 after the fault"
    );
    env.cleanup(&mut [&mut worker]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connection_dropped_mid_run() {
    // Dropped connections are refused for 2 s; the worker reconnects after.
    broker_fault(
        "f-drop",
        Mode::Drop,
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stalled_briefly_then_resumes() {
    // A stall shorter than any timeout: traffic resumes where it stopped.
    broker_fault(
        "f-stall",
        Mode::Stall,
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_half_open_is_noticed() {
    // The broker sees the worker go (and requeues its jobs), the worker's
    // socket stays open and silent for good. The worker must notice by
    // itself (heartbeat, confirm or ack timeout) and reconnect in bounded time.
    broker_fault(
        "f-half",
        Mode::HalfOpen,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stall_shows_in_readiness() {
    // A broker that stops answering while jobs are in flight must turn
    // /readyz red in bounded time (no confirm, no ack), and green again
    // once it answers; no job is lost either way.
    let env = TestEnv::new("f-stall-ready").await;
    let proxy = FaultProxy::start(loopback(5672)).unwrap();
    let cfg = broker_proxied_config(&env, &proxy);
    let mut worker = Worker::spawn(&cfg, &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    let ids = ids("f-stall-ready", 30);
    publish(&env, &ids, 10).await;
    let mut tally = Tally::default();
    results_before_fault(&env, &mut tally, 4).await;

    proxy.set_mode(Mode::Stall);
    let stalled = Instant::now();
    let noticed = wait_readyz(&worker, false, Duration::from_secs(45)).await;
    let noticed_after = stalled.elapsed();
    proxy.set_mode(Mode::Pass);
    tally
        .collect(
            &env.broker,
            &env.broker.results_queue(),
            &ids,
            Duration::from_secs(60),
            Duration::from_secs(2),
        )
        .await;
    eprintln!("stalled broker: /readyz red: {noticed} after {noticed_after:?}");
    verdict("broker stall (readiness)", &tally, &ids, PREFETCH, &worker);
    assert!(
        noticed,
        "/readyz stayed 200 for {noticed_after:?} while the broker was stalled\nlogs:\n{}",
        worker.logs()
    );
    assert!(
        wait_readyz(&worker, true, Duration::from_secs(30)).await,
        "/readyz not back to 200 after the stall"
    );
    env.cleanup(&mut [&mut worker]).await;
}

/// Image jobs through a worker whose S3 traffic crosses the proxy: `mode`
/// for `hold` after the first results, then cleared.
async fn s3_fault(name: &str, mode: Mode, hold: Duration) {
    let env = TestEnv::new(name).await;
    let proxy = FaultProxy::start(loopback(env.s3.port)).unwrap();
    let cfg = s3_proxied_config(&env, &proxy);
    let mut worker = Worker::spawn(&cfg, &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    // Every job stores an image: all of them cross the faulty link.
    let ids = ids(name, 16);
    publish(&env, &ids, 1).await;
    let mut tally = Tally::default();
    results_before_fault(&env, &mut tally, 2).await;

    proxy.set_mode(mode);
    tokio::time::sleep(hold).await;
    proxy.set_mode(Mode::Pass);
    let cleared = Instant::now();
    tally
        .collect(
            &env.broker,
            &env.broker.results_queue(),
            &ids,
            Duration::from_secs(60),
            Duration::from_secs(2),
        )
        .await;
    eprintln!(
        "{name}: answered {}/{} {:?} after the fault cleared",
        tally.answered(),
        ids.len(),
        cleared.elapsed()
    );
    verdict(name, &tally, &ids, PREFETCH, &worker);
    for id in &ids {
        let Some(r) = tally.last(id) else { continue };
        if r.status == ResultStatus::Ok {
            let key = &r.image.as_ref().expect("an image job has a location").key;
            assert!(
                env.s3.object_path(BUCKET, key).is_file(),
                "{name}: {id} answered ok but {key} is not stored"
            );
        }
    }
    assert!(worker.try_wait().is_none(), "the worker survived the fault");
    env.cleanup(&mut [&mut worker]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_connection_dropped_mid_run() {
    s3_fault("f-s3-drop", Mode::Drop, Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_stalled_mid_run() {
    s3_fault("f-s3-stall", Mode::Stall, Duration::from_secs(6)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_half_open_mid_run() {
    s3_fault("f-s3-half", Mode::HalfOpen, Duration::from_secs(1)).await;
}
