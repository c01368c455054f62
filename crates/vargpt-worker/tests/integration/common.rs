//! What every test needs: services, a broker client, job builders.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use vargpt_integration_tests::broker::{Broker, Received};
use vargpt_integration_tests::services::S3Server;
use vargpt_integration_tests::worker::{Worker, WorkerConfig};
use vargpt_integration_tests::{tiny_model, unique_prefix};

pub const BIN: &str = env!("CARGO_BIN_EXE_vargpt-worker");
pub const BUCKET: &str = "vargpt-out";
/// Model load + first jobs of the tiny model on a slow CI machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Services for one test: its own S3 server and queue prefix.
pub struct TestEnv {
    pub prefix: String,
    pub s3: S3Server,
    pub broker: Broker,
}

impl TestEnv {
    pub async fn new(name: &str) -> TestEnv {
        let prefix = unique_prefix(name);
        let s3 = S3Server::start(BUCKET).expect("s3s-fs starts");
        let broker = Broker::connect(&prefix).await.expect("RabbitMQ reachable");
        TestEnv { prefix, s3, broker }
    }

    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig::new(BIN, &self.prefix, &self.s3.endpoint(), BUCKET)
    }

    /// Stops the workers first (a running worker would re-declare the queues
    /// it sees disappear), then deletes this test's queues and exchanges.
    pub async fn cleanup(&self, workers: &mut [&mut Worker]) {
        for w in workers.iter_mut() {
            w.kill();
        }
        self.broker.cleanup(&[]).await;
    }
}

pub fn test_image_bytes() -> Vec<u8> {
    std::fs::read(tiny_model().join("test_image.png")).expect("fixture test_image.png")
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

pub fn chat(id: &str, prompt: &str) -> Value {
    json!({ "id": id, "kind": "chat", "prompt": prompt, "params": { "maxNewTokens": 8 } })
}

pub fn generate(id: &str, prompt: &str) -> Value {
    json!({ "id": id, "kind": "generate_image", "prompt": prompt, "params": { "seed": "7" } })
}

pub fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// Results by job id (the last one wins; duplicates are legal at-least-once).
pub fn by_id(msgs: &[Received]) -> HashMap<String, vargpt_proto::JobResult> {
    msgs.iter()
        .map(|m| m.result())
        .map(|r| (r.job_id.clone(), r))
        .collect()
}

/// Collects results until every id in `want` has one (or the timeout).
pub async fn collect_ids(
    broker: &Broker,
    queue: &str,
    want: &[String],
    timeout: Duration,
) -> HashMap<String, vargpt_proto::JobResult> {
    let deadline = std::time::Instant::now() + timeout;
    let mut got = HashMap::new();
    while want.iter().any(|id| !got.contains_key(id)) && std::time::Instant::now() < deadline {
        let left = want.iter().filter(|id| !got.contains_key(*id)).count();
        let msgs = broker
            .collect(queue, left, Duration::from_secs(2))
            .await
            .expect("collect");
        got.extend(by_id(&msgs));
    }
    got
}

/// The reference's answers for the tiny model (`golden.json`, written by the
/// authors' PyTorch code) and the jobs that ask the worker for them.
pub mod golden {
    use serde_json::{json, Value};
    use vargpt_integration_tests::tiny_model;

    fn case(name: &str) -> Value {
        let path = tiny_model().join("golden.json");
        let text = std::fs::read_to_string(&path).expect("golden.json");
        let golden: Value = serde_json::from_str(&text).expect("golden.json parses");
        golden["cases"][name].clone()
    }

    /// `caption`, `vqa` or `text`: the reference's 12 greedy tokens, decoded.
    pub fn text(name: &str) -> String {
        case(name)["greedy_text"]
            .as_str()
            .expect("greedy_text")
            .to_string()
    }

    /// The job of golden case `name` (`caption`, `vqa`, `text`), greedy and 12
    /// tokens long like the reference; the image inline (the fixture's test image).
    pub fn text_job(id: &str, name: &str) -> Value {
        let c = case(name);
        let kind = match name {
            "caption" => "caption",
            "vqa" => "vqa",
            _ => "chat",
        };
        let mut job = json!({"id": id, "kind": kind, "prompt": c["user_text"],
            "params": {"maxNewTokens": 12, "greedy": true}});
        if c["image"].is_null() {
            job["params"]["allowImage"] = false.into();
        } else {
            job["image"] = json!({"data": super::b64(&super::test_image_bytes())});
        }
        job
    }

    /// The prompt of the reference's text-to-image case, without the chat template.
    pub const IMAGE_PROMPT: &str = "Please design a drawing of a butterfly on a flower.";

    /// The reference's cfg 0 image (`reference_image_cfg0.png`): no CFG noise
    /// branch and argmax codes at every stage (image top-k 1), so any seed gives it.
    pub fn image_job(id: &str, seed: u64) -> Value {
        json!({"id": id, "kind": "generate_image", "prompt": IMAGE_PROMPT,
               "params": {"cfgScale": 0.0, "imageTopK": 1, "seed": seed.to_string()}})
    }

    /// `png` is `reference_image_cfg0.png` within the engine parity tests'
    /// tolerance (vargpt-engine tests/common/parity.rs): the codes are exact, but
    /// our convolutions round differently from the reference's, so a value on a
    /// quantisation boundary may land one level off, in at most 0.1% of the bytes.
    pub fn assert_reference_image(png: &[u8], what: &str) {
        let ours = image::load_from_memory_with_format(png, image::ImageFormat::Png)
            .expect("PNG decodes")
            .to_rgb8();
        let want = image::open(tiny_model().join("reference_image_cfg0.png"))
            .expect("reference_image_cfg0.png")
            .to_rgb8();
        assert_eq!(ours.dimensions(), want.dimensions(), "{what}: size");
        let (differ, max_level) = ours
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .filter(|&d| d > 0)
            .fold((0usize, 0u8), |(n, m), d| (n + 1, m.max(d)));
        let len = want.as_raw().len();
        println!("{what}: {differ} of {len} bytes differ from the reference, by ≤ {max_level}");
        assert!(
            max_level <= 1 && differ * 1000 <= len,
            "{what}: {differ} of {len} bytes differ from reference_image_cfg0.png, by up to {max_level} levels"
        );
    }
}
