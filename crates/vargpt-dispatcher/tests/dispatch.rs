//! The dispatcher binary against a real RabbitMQ and fake workers (from
//! `vargpt-client`'s `testing` feature): resume after a kill, re-sends,
//! failures, routing, input errors. Every test uses its own queues.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vargpt_client::testing::{unique_name, FakeWorker, FakeWorkerOptions};
use vargpt_dispatcher::broker::default_reply_queue;
use vargpt_proto::wire::Names;

async fn run(cmd: Command, limit: Duration) -> std::process::Output {
    tokio::task::spawn_blocking(move || run_to_end(cmd, limit))
        .await
        .unwrap()
}

fn worker(id: &str, delay_ms: u64) -> FakeWorkerOptions {
    FakeWorkerOptions {
        worker_id: id.into(),
        delay: Duration::from_millis(delay_ms),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_midway_and_resumed_gives_one_result_per_image() {
    let (_dir, root) = tmp();
    let images = root.join("images");
    write_pngs(&images, 200);
    let output = root.join("out/results.jsonl");
    let queue = unique_name("resume");
    let _w1 = FakeWorker::start(&amqp_url(), &queue, worker("w1", 8))
        .await
        .unwrap();
    let _w2 = FakeWorker::start(&amqp_url(), &queue, worker("w2", 8))
        .await
        .unwrap();

    // First run: killed (SIGKILL, like a crash) once some results are written.
    let mut first = dispatcher(&images, &output, &queue);
    first
        .args(["--max-in-flight", "16"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = first.spawn().unwrap();
    let start = Instant::now();
    while line_count(&output) < 40 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no progress before the kill"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let written = line_count(&output);
    assert!(
        written < 200,
        "the kill came too late to test anything ({written} lines)"
    );
    // A crash in the middle of a write leaves a torn line; the next run cuts it.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&output)
        .unwrap()
        .write_all(b"{\"version\":1,\"jobI")
        .unwrap();

    // Second run: the same command, to the end.
    let mut second = dispatcher(&images, &output, &queue);
    second.args(["--max-in-flight", "16"]);
    let out = run(second, Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("output          200 results, 0 failed"),
        "{summary}"
    );

    let results = results_by_id(&output);
    let expected: HashSet<String> = expected_ids(&images).into_iter().collect();
    assert_eq!(expected.len(), 200);
    assert_eq!(results.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(results.values().all(|r| r["status"] == "ok"));
    assert_eq!(line_count(&output), 200, "exactly one line per image");
    assert!(!output
        .with_file_name("results.jsonl.failures.jsonl")
        .exists());
    // Every line names its image, also those answered to the killed run.
    for (name, id) in expected_names_and_ids(&images) {
        let source = images.join(&name).display().to_string();
        assert_eq!(results[&id]["source"], source.as_str(), "{id}");
    }
    assert!(
        !output
            .with_file_name("results.jsonl.sources.jsonl")
            .exists(),
        "the sources file is removed once every job has its result"
    );

    // Third run: everything is done, nothing is sent, the reply queue is gone.
    let out = run(
        dispatcher(&images, &output, &queue),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("skipped (done)  200"), "{summary}");
    assert!(summary.contains("sent            0 "), "{summary}");
    assert_eq!(line_count(&output), 200);
    assert!(
        !queue_exists(&default_reply_queue(&Names::default(), &output)).await,
        "reply queue left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_and_slow_results_are_resent_and_written_once() {
    let (_dir, root) = tmp();
    let manifest = root.join("chat.jsonl");
    let mut lines: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"id":"chat-{i}","kind":"chat","prompt":"hello {i}"}}"#))
        .collect();
    lines.push(r#"{"id":"slow","kind":"chat","prompt":"__sleep_ms=1500__"}"#.into());
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    let output = root.join("results.jsonl");
    let queue = unique_name("resend");
    let lossy = FakeWorkerOptions {
        drop_every: Some(4),
        ..worker("lossy", 0)
    };
    let w1 = FakeWorker::start(&amqp_url(), &queue, lossy).await.unwrap();
    let w2 = FakeWorker::start(&amqp_url(), &queue, worker("steady", 0))
        .await
        .unwrap();

    let mut cmd = dispatcher(&manifest, &output, &queue);
    cmd.args(["--job-timeout", "1s", "--max-attempts", "4"]);
    let out = run(cmd, Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let results = results_by_id(&output);
    assert_eq!(results.len(), 21);
    assert_eq!(line_count(&output), 21);
    let dropped: Vec<_> = w1
        .seen()
        .into_iter()
        .filter(|s| !s.answered)
        .map(|s| s.job.id)
        .collect();
    assert!(!dropped.is_empty(), "the lossy worker dropped nothing");
    for id in &dropped {
        assert_eq!(results[id]["status"], "ok", "{id} was not re-sent");
    }
    // Each dropped job and the slow one were re-sent at least once.
    let summary = String::from_utf8_lossy(&out.stdout);
    let resent: usize = summary
        .split("(+")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no re-sent count in {summary}"));
    assert!(
        resent > dropped.len(),
        "{resent} re-sent, {} dropped: {summary}",
        dropped.len()
    );
    assert_eq!(results["slow"]["status"], "ok");
    drop(w2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_get_their_own_file_and_a_nonzero_exit() {
    let (_dir, root) = tmp();
    write_pngs(&root.join("img"), 3);
    std::fs::write(root.join("huge.png"), vec![0u8; 4096]).unwrap();
    let manifest = root.join("jobs.jsonl");
    std::fs::write(
        &manifest,
        [
            r#"{"id":"ok-1","image":"img/set0/img000.png"}"#,
            r#"{"id":"ok-2","kind":"vqa","prompt":"what?","image":"img/set1/img001.png"}"#,
            r#"{"id":"bad-1","image":"img/set2/img002.png","prompt":"__fail__"}"#,
            r#"{"id":"bad-2","kind":"chat","prompt":"__fail__ please"}"#,
            r#"{"id":"big-1","image":"huge.png"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let output = root.join("results.jsonl");
    let queue = unique_name("failures");
    let _w = FakeWorker::start(&amqp_url(), &queue, worker("w", 0))
        .await
        .unwrap();

    let mut cmd = dispatcher(&manifest, &output, &queue);
    cmd.args(["--max-inline-bytes", "1000"]);
    let out = run(cmd, Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("inference_failed      2"), "{summary}");
    assert!(summary.contains("image_too_large       1"), "{summary}");

    let failures = read_jsonl(&root.join("results.jsonl.failures.jsonl"));
    let ids: Vec<_> = failures
        .iter()
        .map(|f| f["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["bad-1", "bad-2", "big-1"]);
    assert_eq!(failures[2]["error"]["code"], "image_too_large");
    assert_eq!(failures[2]["workerId"], "vargpt-dispatcher");
    assert_eq!(results_by_id(&output).len(), 5);

    // A re-run sends nothing and still reports the failures.
    let out = run(
        dispatcher(&manifest, &output, &queue),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(line_count(&output), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_rules_pick_the_queue_by_kind_and_model() {
    let (_dir, root) = tmp();
    write_pngs(&root.join("img"), 2);
    let (q_caption, q_big, q_default) = (
        unique_name("r-caption"),
        unique_name("r-big"),
        unique_name("r-default"),
    );
    let routes = root.join("routes.toml");
    std::fs::write(
        &routes,
        format!(
            "default_queue = \"{q_default}\"\n\n[[route]]\nkind = \"caption\"\nqueue = \"{q_caption}\"\n\n\
             [[route]]\nmodel = \"big\"\nqueue = \"{q_big}\"\n"
        ),
    )
    .unwrap();
    let manifest = root.join("jobs.jsonl");
    std::fs::write(
        &manifest,
        [
            r#"{"id":"c1","kind":"caption","image":"img/set0/img000.png"}"#,
            r#"{"id":"c2","kind":"caption","image":"img/set1/img001.png","model":"big"}"#,
            r#"{"id":"v1","kind":"vqa","prompt":"what?","image":"img/set0/img000.png","model":"big"}"#,
            r#"{"id":"t1","kind":"chat","prompt":"hi"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let _a = FakeWorker::start(&amqp_url(), &q_caption, worker("caption-worker", 0))
        .await
        .unwrap();
    let _b = FakeWorker::start(&amqp_url(), &q_big, worker("big-worker", 0))
        .await
        .unwrap();
    let _c = FakeWorker::start(&amqp_url(), &q_default, worker("default-worker", 0))
        .await
        .unwrap();

    let output = root.join("results.jsonl");
    let mut cmd = dispatcher(&manifest, &output, "unused.by.routes");
    cmd.arg("--routes").arg(&routes);
    let out = run(cmd, Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let results = results_by_id(&output);
    let worker_of = |id: &str| results[id]["workerId"].as_str().unwrap().to_string();
    assert_eq!(worker_of("c1"), "caption-worker");
    assert_eq!(
        worker_of("c2"),
        "caption-worker",
        "the first matching rule wins"
    );
    assert_eq!(worker_of("v1"), "big-worker");
    assert_eq!(worker_of("t1"), "default-worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_before_anything_is_sent() {
    let (_dir, root) = tmp();
    let manifest = root.join("jobs.jsonl");
    std::fs::write(
        &manifest,
        "{\"id\":\"a\",\"kind\":\"chat\",\"prompt\":\"hi\"}\n{\"kind\":\"vqa\",\"image\":\"x.png\"}\n{oops\n",
    )
    .unwrap();
    let queue = unique_name("badinput");
    let w = FakeWorker::start(&amqp_url(), &queue, worker("w", 0))
        .await
        .unwrap();
    let output = root.join("results.jsonl");
    let out = run(
        dispatcher(&manifest, &output, &queue),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("jobs.jsonl:2: vqa needs a prompt"),
        "{stderr}"
    );
    assert!(
        stderr.contains("jobs.jsonl:3: not a valid job line"),
        "{stderr}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.taken(), 0);

    // A job queue that does not exist is named.
    std::fs::write(
        &manifest,
        "{\"id\":\"a\",\"kind\":\"chat\",\"prompt\":\"hi\"}\n",
    )
    .unwrap();
    let missing = unique_name("missing");
    let out = run(
        dispatcher(&manifest, &output, &missing),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("job queue \"{missing}\" does not exist")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_midway_loses_nothing() {
    let (_dir, root) = tmp();
    let images = root.join("images");
    write_pngs(&images, 40);
    let output = root.join("results.jsonl");
    let queue = unique_name("dies");
    let doomed = FakeWorker::start(&amqp_url(), &queue, worker("doomed", 20))
        .await
        .unwrap();
    let _steady = FakeWorker::start(&amqp_url(), &queue, worker("steady", 20))
        .await
        .unwrap();

    let mut cmd = dispatcher(&images, &output, &queue);
    cmd.args(["--max-in-flight", "8"]);
    let handle = tokio::task::spawn_blocking(move || run_to_end(cmd, Duration::from_secs(60)));
    let start = Instant::now();
    while doomed.taken() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the doomed worker took {} jobs in 30 s",
            doomed.taken()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    doomed.kill().await; // its unacked jobs go back to the queue
    let out = handle.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let results = results_by_id(&output);
    assert_eq!(results.len(), 40);
    assert!(results.values().any(|r| r["workerId"] == "steady"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_at_once_and_a_rerun_finishes() {
    let (_dir, root) = tmp();
    let images = root.join("images");
    write_pngs(&images, 30);
    let output = root.join("results.jsonl");
    let queue = unique_name("sigint");
    let _w = FakeWorker::start(&amqp_url(), &queue, worker("w", 40))
        .await
        .unwrap();

    let mut cmd = dispatcher(&images, &output, &queue);
    cmd.args(["--max-in-flight", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let start = Instant::now();
    while line_count(&output) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} results in 30 s",
            line_count(&output)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "Ctrl-C took {:?}",
        start.elapsed()
    );
    assert_eq!(out.status.code(), Some(130), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run the same command again to resume"));
    assert!(line_count(&output) < 30);

    let out = run(
        dispatcher(&images, &output, &queue),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(results_by_id(&output).len(), 30);
}
