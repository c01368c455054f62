//! S3 paths of the dispatcher against a real S3-compatible server (s3s-fs,
//! buckets are folders under its root): `--upload-to` and an `s3://` input.
//! Skipped, with a note, when the s3s-fs binary is not installed
//! (`VARGPT_S3S_FS`, else `$VARGPT_TOOLS/bin/s3s-fs`).

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vargpt_client::testing::{unique_name, FakeWorker, FakeWorkerOptions};

const ACCESS_KEY: &str = "dispatcher-test";
const SECRET_KEY: &str = "dispatcher-test-secret";

struct S3Server {
    child: Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VARGPT_S3S_FS`, else `$VARGPT_TOOLS/bin/s3s-fs` (where
/// `.ci/setup-services.sh` installs it), else the default tools folder.
fn s3s_fs_binary() -> Option<PathBuf> {
    let tools = std::env::var_os("VARGPT_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.cache/vargpt-rs/tools"));
    let path = std::env::var_os("VARGPT_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools.join("bin/s3s-fs"));
    path.is_file().then_some(path)
}

fn start_s3(binary: &Path, root: &Path) -> S3Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "s3s-fs did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    S3Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    }
}

fn with_s3(cmd: &mut Command, server: &S3Server) {
    cmd.args([
        "--s3-endpoint",
        &server.endpoint,
        "--s3-path-style",
        "--s3-region",
        "us-east-1",
    ])
    .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_s3_inputs_reach_the_worker_as_uris() {
    let Some(binary) = s3s_fs_binary() else {
        eprintln!("SKIPPED: no s3s-fs binary (set VARGPT_S3S_FS)");
        return;
    };
    let (_dir, root) = tmp();
    let store = root.join("store");
    std::fs::create_dir_all(store.join("uploads")).unwrap();
    write_pngs(&store.join("inputs/imgs"), 4);
    std::fs::write(store.join("inputs/imgs/notes.txt"), b"not an image").unwrap();
    let images = root.join("local");
    write_pngs(&images, 5);
    let server = start_s3(&binary, &store);
    let queue = unique_name("s3");
    let options = FakeWorkerOptions {
        worker_id: "w".into(),
        ..Default::default()
    };
    let _w = FakeWorker::start(&amqp_url(), &queue, options)
        .await
        .unwrap();

    // Local images uploaded first, sent by URI; the object is the file.
    let output = root.join("uploaded.jsonl");
    let mut cmd = dispatcher(&images, &output, &queue);
    cmd.args(["--upload-to", "s3://uploads/batch1"]);
    with_s3(&mut cmd, &server);
    let out = tokio::task::spawn_blocking(move || run_to_end(cmd, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let results = results_by_id(&output);
    assert_eq!(results.len(), 5);
    for (name, id) in expected_names_and_ids(&images) {
        let text = results[&id]["text"].as_str().unwrap();
        assert_eq!(
            text,
            format!("echo {id} image=s3://uploads/batch1/{id}.png")
        );
        let stored = std::fs::read(store.join(format!("uploads/batch1/{id}.png"))).unwrap();
        assert_eq!(stored, std::fs::read(images.join(name)).unwrap());
    }

    // An S3 prefix as input: every image object becomes a job with its URI.
    let output = root.join("listed.jsonl");
    let mut cmd = dispatcher(Path::new("s3://inputs/imgs/"), &output, &queue);
    with_s3(&mut cmd, &server);
    let out = tokio::task::spawn_blocking(move || run_to_end(cmd, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let mut uris: Vec<String> = read_jsonl(&output)
        .iter()
        .map(|r| {
            r["text"]
                .as_str()
                .unwrap()
                .split("image=")
                .nth(1)
                .unwrap()
                .to_string()
        })
        .collect();
    uris.sort();
    assert_eq!(
        uris,
        [
            "s3://inputs/imgs/set0/img000.png",
            "s3://inputs/imgs/set0/img003.png",
            "s3://inputs/imgs/set1/img001.png",
            "s3://inputs/imgs/set2/img002.png"
        ]
    );
}
