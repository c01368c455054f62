//! Helpers of the dispatcher's integration tests: the broker URL, generated
//! images, the dispatcher binary as a child process, reading its output.

#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use vargpt_dispatcher::input::walk_images;
use vargpt_dispatcher::spec::{ImageRef, Template};
use vargpt_proto::JobKind;

pub fn amqp_url() -> String {
    std::env::var("VARGPT_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Writes `n` distinct 8×8 PNGs under `root`, spread over three folders.
pub fn write_pngs(root: &Path, n: usize) {
    for i in 0..n {
        let dir = root.join(format!("set{}", i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        let img = image::RgbImage::from_fn(8, 8, |x, y| {
            image::Rgb([i as u8, (i >> 8) as u8, (x * 8 + y) as u8])
        });
        img.save(dir.join(format!("img{i:03}.png"))).unwrap();
    }
}

/// (relative name, job id) of the images under `root` as caption jobs.
pub fn expected_names_and_ids(root: &Path) -> Vec<(String, String)> {
    let template = Template {
        kind: JobKind::Caption,
        ..Default::default()
    };
    walk_images(root)
        .map(|item| {
            let (name, path) = item.unwrap();
            let id = template.image_job(&name, ImageRef::Local(path)).id;
            (name, id)
        })
        .collect()
}

/// The ids the dispatcher gives the images under `root` as caption jobs.
pub fn expected_ids(root: &Path) -> Vec<String> {
    expected_names_and_ids(root)
        .into_iter()
        .map(|(_, id)| id)
        .collect()
}

/// `vargpt-dispatcher run` with the test broker, no progress bar, a reply
/// queue that expires soon, and none of the caller's VARGPT_* / AWS_* settings.
pub fn dispatcher(input: &Path, output: &Path, queue: &str) -> Command {
    let mut cmd = dispatcher_without_queue(input, output);
    cmd.args(["--queue", queue]);
    cmd
}

/// [`dispatcher`] without naming the job queue (for `--queue-prefix`).
pub fn dispatcher_without_queue(input: &Path, output: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vargpt-dispatcher"));
    for (key, _) in std::env::vars() {
        if key.starts_with("VARGPT_") || key.starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "warn,vargpt_dispatcher=info")
        .arg("run")
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--amqp-url", &amqp_url(), "--no-progress"])
        // Long enough for a re-run to find it, short enough not to litter the broker.
        .args(["--reply-queue-ttl", "2m"]);
    cmd
}

/// Runs to the end (at most `limit`), returning its output; panics on timeout.
pub fn run_to_end(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "dispatcher still running after {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every line of a JSONL file, parsed (panics on a bad line).
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// Results by job id; panics if an id appears twice.
pub fn results_by_id(path: &Path) -> HashMap<String, serde_json::Value> {
    let mut by_id = HashMap::new();
    for value in read_jsonl(path) {
        let id = value["jobId"].as_str().unwrap().to_string();
        assert!(
            by_id.insert(id.clone(), value).is_none(),
            "{id} twice in {}",
            path.display()
        );
    }
    by_id
}

pub fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Does a queue exist on the broker?
pub async fn queue_exists(name: &str) -> bool {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let exists = channel
        .queue_declare(name.into(), options, FieldTable::default())
        .await
        .is_ok();
    let _ = conn.close(200, "bye".into()).await;
    exists
}

pub fn tmp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}
