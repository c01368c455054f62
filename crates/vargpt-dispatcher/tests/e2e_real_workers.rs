//! End to end, nothing faked: the dispatcher binary over a folder of 200
//! generated images, against the shared RabbitMQ, a real S3 server (s3s-fs,
//! from the shared helper `vargpt-integration-tests`) and two real
//! `vargpt-worker serve` processes running the tiny reference model.
//!
//! The dispatcher uploads the images to S3 (`--upload-to`), the workers read
//! them from there and answer caption jobs (4 new tokens each). The first run
//! is SIGKILLed once some results are written; the same command run again
//! must finish the job: exactly one `ok` result per image, nothing in the
//! failures file, and answers from both workers.
//!
//! The worker binary is taken from next to this test binary
//! (`target/<profile>/vargpt-worker`); cargo does not build it for the
//! dispatcher's tests, so when it is missing the test builds it first with
//! `cargo build -p vargpt-worker` (same target folder and profile).

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vargpt_dispatcher::input::walk_images;
use vargpt_dispatcher::spec::{ImageRef, Template};
use vargpt_integration_tests::broker::Broker;
use vargpt_integration_tests::services::{S3Server, S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY};
use vargpt_integration_tests::unique_prefix;
use vargpt_integration_tests::worker::{Worker, WorkerConfig};
use vargpt_proto::{JobKind, SamplingParams};

const IMAGES: usize = 200;
/// Short captions keep 200 jobs of the real model well under a minute on 2 cores.
const PARAMS: &str = r#"{"maxNewTokens":4}"#;
const BUCKET: &str = "vargpt-e2e";
/// Results written before the first dispatcher run is killed.
const KILL_AFTER: usize = 40;
/// Model load of the tiny model, with room for a slow machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a cold `cargo build -p vargpt-worker` may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The `vargpt-worker` binary next to this test's binaries, built when missing.
fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of this test binary");
    // target/<profile>/deps/e2e_real_workers-<hash> → target/<profile>
    let profile_dir = exe
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "deps"))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| {
            // Not cargo's usual layout: the dispatcher binary's folder is the next best guess.
            Path::new(env!("CARGO_BIN_EXE_vargpt-dispatcher"))
                .parent()
                .expect("the dispatcher binary has a folder")
                .to_path_buf()
        });
    let worker = profile_dir.join(format!("vargpt-worker{}", std::env::consts::EXE_SUFFIX));
    if !worker.is_file() {
        build_worker(&profile_dir, &worker);
    }
    worker
}

/// `cargo build -p vargpt-worker` into the target folder and profile this
/// test was built with; panics, saying what to run by hand, if that fails.
fn build_worker(profile_dir: &Path, worker: &Path) {
    let target_dir = profile_dir
        .parent()
        .expect("the profile folder has a parent");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let by_hand = format!(
        "CARGO_TARGET_DIR={} cargo build -p vargpt-worker --bin vargpt-worker --profile {profile}",
        target_dir.display()
    );
    eprintln!(
        "{} is missing (cargo builds it only for the worker's own tests); building it: {by_hand}",
        worker.display()
    );
    let started = Instant::now();
    let mut child = Command::new(&cargo)
        .args(["build", "-p", "vargpt-worker", "--bin", "vargpt-worker"])
        .args(["--profile", profile])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        // cargo's progress goes straight to the terminal (visible even when
        // the test harness captures output).
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} to build the worker ({e}); run `{by_hand}` first",
                cargo.to_string_lossy()
            )
        });
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for cargo") {
            break status;
        }
        if started.elapsed() > BUILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("building the worker took over {BUILD_TIMEOUT:?} (a cargo lock held elsewhere?); run `{by_hand}` first");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "building the worker failed ({status}); run `{by_hand}` to see why"
    );
    assert!(
        worker.is_file(),
        "`{by_hand}` succeeded but {} is still missing",
        worker.display()
    );
    eprintln!("built {} in {:.1?}", worker.display(), started.elapsed());
}

/// `n` distinct 40×30 PNGs with varied colours, spread over four folders.
fn write_colour_pngs(root: &Path, n: usize) {
    for i in 0..n {
        let dir = root.join(format!("batch{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        let (r, g, b) = ((i * 37) % 256, (i * 91 + 60) % 256, (255 - i) % 256);
        let img = image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([
                ((r as u32 + x * 3) % 256) as u8,
                ((g as u32 + y * 5) % 256) as u8,
                ((b as u32 + x * y) % 256) as u8,
            ])
        });
        img.save(dir.join(format!("img{i:03}.png"))).unwrap();
    }
}

/// (relative path, job id) of every image, as the dispatcher names the
/// caption jobs it makes with `--params PARAMS`.
fn expected_jobs(root: &Path) -> Vec<(PathBuf, String)> {
    let template = Template {
        kind: JobKind::Caption,
        params: Some(serde_json::from_str::<SamplingParams>(PARAMS).unwrap()),
        ..Default::default()
    };
    walk_images(root)
        .map(|item| {
            let (name, path) = item.unwrap();
            let id = template.image_job(&name, ImageRef::Local(path.clone())).id;
            (path, id)
        })
        .collect()
}

/// The one dispatcher command both runs use.
fn dispatch_command(images: &Path, output: &Path, jobs_queue: &str, s3: &S3Server) -> Command {
    let mut cmd = dispatcher(images, output, jobs_queue);
    cmd.args(["--params", PARAMS, "--max-in-flight", "16"])
        .args(["--upload-to", &format!("s3://{BUCKET}/inputs/")])
        .args(["--s3-endpoint", &s3.endpoint(), "--s3-path-style"])
        .args(["--s3-region", S3_REGION])
        .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_real_workers_one_result_per_image_after_a_dispatcher_kill() {
    let started = Instant::now();
    let worker_bin = worker_binary();
    let prefix = unique_prefix("dispatch-e2e");
    let broker = Broker::connect(&prefix).await.expect("RabbitMQ reachable");
    let s3 = S3Server::start(BUCKET).expect("s3s-fs starts");

    // The workers declare `{prefix}.jobs`; the dispatcher refuses a queue
    // that does not exist, so they come first.
    let mut config = WorkerConfig::new(&worker_bin, &prefix, &s3.endpoint(), BUCKET);
    config.amqp_url = amqp_url(); // the broker the dispatcher uses too
    config.fake = false; // the tiny model even under VARGPT_IT_FAKE_BACKEND=1: that is the point
    let worker_ids = [format!("{prefix}-w1"), format!("{prefix}-w2")];
    let mut workers: Vec<Worker> = worker_ids
        .iter()
        .map(|id| Worker::spawn(&config, id).expect("worker starts"))
        .collect();
    for w in &mut workers {
        w.wait_ready(READY_TIMEOUT).await.expect("worker ready");
    }
    let ready = started.elapsed();

    let (_dir, root) = tmp();
    let images = root.join("images");
    write_colour_pngs(&images, IMAGES);
    let expected = expected_jobs(&images);
    let expected_ids: HashSet<String> = expected.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(expected_ids.len(), IMAGES);
    let output = root.join("out/results.jsonl");
    let jobs_queue = broker.jobs_queue(); // `{prefix}.jobs`, the workers' queue

    // First run: SIGKILLed (a crash) once some, not all, results are written.
    let first_log = root.join("first-run.log");
    let log = std::fs::File::create(&first_log).unwrap();
    let mut first = dispatch_command(&images, &output, &jobs_queue, &s3)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("dispatcher starts");
    let first_started = Instant::now();
    while line_count(&output) < KILL_AFTER {
        let log = || std::fs::read_to_string(&first_log).unwrap_or_default();
        assert!(
            first_started.elapsed() < Duration::from_secs(45),
            "fewer than {KILL_AFTER} results after 45 s; dispatcher log:\n{}",
            log()
        );
        if let Some(status) = first.try_wait().unwrap() {
            panic!(
                "the first run ended ({status}) before it could be killed; log:\n{}",
                log()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let first_run = first_started.elapsed();
    let written = line_count(&output);
    assert!(
        (KILL_AFTER..IMAGES).contains(&written),
        "the kill came too late to test a resume ({written} lines)"
    );

    // Second run: the same command, to the end.
    let second = dispatch_command(&images, &output, &jobs_queue, &s3);
    let second_started = Instant::now();
    let out = tokio::task::spawn_blocking(move || run_to_end(second, Duration::from_secs(75)))
        .await
        .unwrap();
    let second_run = second_started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(&format!("output          {IMAGES} results, 0 failed")),
        "{summary}"
    );
    // It resumed: what the first run wrote was not sent again.
    let skipped: usize = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("skipped (done)"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no skipped count in {summary}"));
    assert!(
        skipped >= written,
        "{written} written before the kill: {summary}"
    );

    // Exactly one line per image (results_by_id panics on a repeated id), all ok.
    let results = results_by_id(&output);
    assert_eq!(line_count(&output), IMAGES, "one line per image");
    assert_eq!(
        results.keys().cloned().collect::<HashSet<_>>(),
        expected_ids,
        "the output's job ids are not the images' ids"
    );
    for (id, result) in &results {
        assert_eq!(result["status"], "ok", "{id}: {result}");
        // Answered by the tiny model itself (the fake backend's id is `fake:{model}`).
        assert!(
            result["modelId"]
                .as_str()
                .is_some_and(|m| m.ends_with("reference-tiny") && !m.starts_with("fake:")),
            "{id}: {result}"
        );
        let tokens = result["tokensGenerated"].as_u64().unwrap_or(0);
        assert!((1..=4).contains(&tokens), "{id}: {result}");
    }
    let failures = output.with_file_name("results.jsonl.failures.jsonl");
    assert!(
        read_jsonl(&failures).is_empty(),
        "failures in {}",
        failures.display()
    );

    // Both workers answered.
    let answered_by: BTreeSet<&str> = results
        .values()
        .map(|r| r["workerId"].as_str().expect("workerId"))
        .collect();
    let both: BTreeSet<&str> = worker_ids.iter().map(String::as_str).collect();
    assert_eq!(answered_by, both, "results should come from both workers");

    // Every image went through S3, byte for byte.
    for (path, id) in &expected {
        let stored = std::fs::read(s3.object_path(BUCKET, &format!("inputs/{id}.png")))
            .unwrap_or_else(|e| panic!("{id}: not uploaded ({e})"));
        assert!(stored == std::fs::read(path).unwrap(), "{id}: bytes differ");
    }

    for w in &mut workers {
        w.kill(); // before the cleanup, or they would re-declare their queues
    }
    broker.cleanup(&[]).await;
    eprintln!("second run:\n{summary}");
    eprintln!(
        "workers ready after {ready:.1?}; first run killed after {first_run:.1?} at {written} results; \
         second run {second_run:.1?}; total {:.1?}",
        started.elapsed()
    );
}
