use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use base64::Engine as _;

use super::*;
use crate::fake::FakeBackend;
use crate::pipeline::{Meta, StoreError, StoredObject};
use vargpt_proto::SamplingParams;

/// An in-memory store whose uploads can be made to fail.
#[derive(Default)]
struct MemStore {
    objects: Mutex<HashMap<String, Vec<u8>>>,
    fail_uploads: bool,
}

#[async_trait]
impl ImageStore for MemStore {
    async fn fetch(&self, bucket: &str, key: &str, _max: usize) -> Result<Vec<u8>, StoreError> {
        let k = format!("{bucket}/{key}");
        self.objects
            .lock()
            .unwrap()
            .get(&k)
            .cloned()
            .ok_or(StoreError::NotFound(k))
    }
    async fn put_png(
        &self,
        key: &str,
        png: Vec<u8>,
        _sha: &str,
    ) -> Result<StoredObject, StoreError> {
        if self.fail_uploads {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        self.objects
            .lock()
            .unwrap()
            .insert(format!("out/{key}"), png);
        Ok(StoredObject {
            bucket: "out".into(),
            key: key.into(),
            url: format!("s3://out/{key}"),
        })
    }
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

fn pipeline(store: Arc<MemStore>) -> Pipeline {
    pipeline_on(Arc::new(FakeBackend::new("fake")), store)
}

fn pipeline_on(backend: Arc<dyn Backend>, store: Arc<MemStore>) -> Pipeline {
    Pipeline::new(
        backend,
        store,
        Arc::new(Metrics::new().unwrap()),
        PipelineConfig {
            limits: Limits {
                allowed_buckets: vec!["inputs".into()],
                ..Default::default()
            },
            worker_id: "w1".into(),
            image_prefix: "images/".into(),
            max_attempts: 2,
            max_deliveries: 3,
            isolate_suspects: true,
            dead_letter_expired: false,
        },
    )
}

fn env(body: &str) -> Envelope {
    Envelope::new(body.as_bytes().to_vec(), Meta::new(), None)
}

async fn one(p: &Pipeline, e: &Envelope) -> Disposition {
    p.process_batch(&[e]).await.pop().unwrap()
}

fn png_b64() -> String {
    let img = image::RgbImage::new(8, 8);
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// The error code of an error result, dead-lettered or (expired jobs) not.
fn code_of(d: &Disposition) -> ErrorCode {
    match d {
        Disposition::DeadLetter(r, _) | Disposition::Answer(r, _) => r.error.as_ref().unwrap().code,
        other => panic!("expected an error result, got {other:?}"),
    }
}

#[tokio::test]
async fn generated_image_is_stored_under_the_job_id_and_is_idempotent() {
    let store = Arc::new(MemStore::default());
    let p = pipeline(store.clone());
    let body = r#"{"id":"g1","kind":"generate_image","prompt":"a red fox","replyTo":"r1","correlationId":"c1"}"#;
    let (first, second) = (one(&p, &env(body)).await, one(&p, &env(body)).await);
    let (Disposition::Complete(a, route), Disposition::Complete(b, _)) = (first, second) else {
        panic!()
    };
    let img = a.image.clone().unwrap();
    assert_eq!(img.key, image_key("images/", "g1", body.as_bytes()));
    assert!(img.key.starts_with("images/g1-") && img.key.ends_with(".png"));
    assert_eq!((img.width, img.height), (64, 64));
    let stored = store.objects.lock().unwrap()[&format!("out/{}", img.key)].clone();
    assert_eq!(hex::encode(Sha256::digest(&stored)), img.sha256);
    assert_eq!(
        b.image.unwrap().sha256,
        img.sha256,
        "a redelivery must give the same image"
    );
    assert_eq!(route.reply_to.as_deref(), Some("r1"));
    assert_eq!(a.correlation_id, "c1");
    assert_eq!(a.worker_id, "w1");
    assert_eq!(a.status, ResultStatus::Ok);
}

#[tokio::test]
async fn understanding_jobs_complete() {
    let store = Arc::new(MemStore::default());
    let p = pipeline(store.clone());
    let b64 = png_b64();
    let bodies = [
        format!(r#"{{"id":"c","kind":"caption","image":{{"data":"{b64}"}}}}"#),
        format!(r#"{{"id":"v","kind":"vqa","prompt":"what?","image":{{"data":"{b64}"}}}}"#),
        r#"{"id":"t","kind":"chat","prompt":"hello"}"#.to_string(),
    ];
    let envs: Vec<Envelope> = bodies.iter().map(|b| env(b)).collect();
    let refs: Vec<&Envelope> = envs.iter().collect();
    for d in p.process_batch(&refs).await {
        let Disposition::Complete(r, _) = d else {
            panic!("{d:?}")
        };
        assert!(!r.text.is_empty());
        assert!(r.tokens_generated > 0);
    }
}

#[tokio::test]
async fn bad_input_is_dead_lettered_with_its_code() {
    let store = Arc::new(MemStore::default());
    let p = pipeline(store);
    assert_eq!(
        code_of(&one(&p, &env("nope")).await),
        ErrorCode::MalformedJson
    );
    let d = one(
        &p,
        &env(r#"{"id":"x","kind":"caption","image":{"data":"aGVsbG8gd29ybGQ="}}"#),
    )
    .await;
    assert_eq!(code_of(&d), ErrorCode::InvalidImage);
    let d = one(
        &p,
        &env(r#"{"id":"x","kind":"caption","image":{"uri":"s3://inputs/missing.png"}}"#),
    )
    .await;
    assert_eq!(code_of(&d), ErrorCode::ImageNotFound);
    let d = one(&p, &env(r#"{"id":"x","kind":"chat","prompt":"__panic__"}"#)).await;
    assert_eq!(code_of(&d), ErrorCode::InferenceFailed);
    let d = one(
        &p,
        &env(r#"{"id":"x","kind":"chat","prompt":"__too_long__"}"#),
    )
    .await;
    assert_eq!(code_of(&d), ErrorCode::PromptTooLong);
    let d = one(
        &p,
        &env(r#"{"id":"x","kind":"chat","prompt":"hi","deadline":"2001-01-01T00:00:00Z"}"#),
    )
    .await;
    assert_eq!(code_of(&d), ErrorCode::DeadlineExceeded);
}

#[tokio::test]
async fn a_panic_in_a_batch_fails_only_its_own_job() {
    let p = pipeline(Arc::new(MemStore::default()));
    let (a, b) = (
        env(r#"{"id":"a","kind":"chat","prompt":"__panic__"}"#),
        env(r#"{"id":"b","kind":"chat","prompt":"fine"}"#),
    );
    let out = p.process_batch(&[&a, &b]).await;
    assert_eq!(code_of(&out[0]), ErrorCode::InferenceFailed);
    assert!(matches!(out[1], Disposition::Complete(..)));
}

#[tokio::test]
async fn transient_upload_failures_retry_then_dead_letter() {
    let store = Arc::new(MemStore {
        fail_uploads: true,
        ..Default::default()
    });
    let p = pipeline(store);
    let body = r#"{"id":"g","kind":"generate_image","prompt":"x"}"#;
    match one(&p, &env(body)).await {
        Disposition::Retry { attempt, error, .. } => {
            assert_eq!(attempt, 2);
            assert_eq!(error.code, ErrorCode::StorageUnavailable);
        }
        other => panic!("{other:?}"),
    }
    let mut last = env(body);
    last.meta.attempt = 2;
    let d = one(&p, &last).await;
    assert_eq!(code_of(&d), ErrorCode::StorageUnavailable);
    let Disposition::DeadLetter(r, _) = d else {
        unreachable!()
    };
    assert!(r.error.unwrap().retryable);
}

#[tokio::test]
async fn a_job_that_keeps_killing_workers_alone_is_not_run_again() {
    let p = pipeline(Arc::new(MemStore::default()));
    let mut e = env(r#"{"id":"p","kind":"chat","prompt":"__abort__"}"#);
    e.meta.previous_deliveries = 3;
    // From the jobs queue: it may have been an innocent neighbour of a
    // crash, so it is moved to run alone, never blamed there.
    assert!(matches!(one(&p, &e).await, Disposition::Quarantine));
    // Run alone and crashed each time: now it is the culprit.
    e.meta.isolated = true;
    assert_eq!(code_of(&one(&p, &e).await), ErrorCode::WorkerCrashed);
    // Run alone fewer times than the limit: it runs.
    let mut ok = env(r#"{"id":"q","kind":"chat","prompt":"hello"}"#);
    ok.meta.isolated = true;
    ok.meta.previous_deliveries = 2;
    assert!(matches!(one(&p, &ok).await, Disposition::Complete(..)));
}

#[tokio::test]
async fn another_request_under_a_reused_id_never_overwrites_an_image() {
    let store = Arc::new(MemStore::default());
    let p = pipeline(store.clone());
    let a = r#"{"id":"same","kind":"generate_image","prompt":"a red fox"}"#;
    let b = r#"{"id":"same","kind":"generate_image","prompt":"a blue whale"}"#;
    let (Disposition::Complete(ra, _), Disposition::Complete(rb, _)) =
        (one(&p, &env(a)).await, one(&p, &env(b)).await)
    else {
        panic!()
    };
    let (ia, ib) = (ra.image.unwrap(), rb.image.unwrap());
    assert_ne!(ia.key, ib.key);
    let objects = store.objects.lock().unwrap();
    let stored_a = &objects[&format!("out/{}", ia.key)];
    assert_eq!(hex::encode(Sha256::digest(stored_a)), ia.sha256);
}

#[tokio::test]
async fn an_expired_job_is_answered_and_acked_not_dead_lettered() {
    let p = pipeline(Arc::new(MemStore::default()));
    let body = r#"{"id":"late","kind":"chat","prompt":"hi","deadline":"2001-01-01T00:00:00Z"}"#;
    match one(&p, &env(body)).await {
        Disposition::Answer(r, _) => {
            assert_eq!(r.error.unwrap().code, ErrorCode::DeadlineExceeded)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_dead_engine_gives_its_jobs_back_without_answers() {
    let p = pipeline(Arc::new(MemStore::default()));
    let d = p
        .process_batch(&[
            &env(r#"{"id":"k","kind":"chat","prompt":"__kill_engine__"}"#),
            &env(r#"{"id":"n","kind":"chat","prompt":"innocent"}"#),
        ])
        .await;
    assert!(d.iter().all(|d| matches!(d, Disposition::Release)), "{d:?}");
}

#[test]
fn unset_seed_derives_from_the_job_id() {
    let p = SamplingParams::default();
    let a = engine_params(&p, "job-1", 2048);
    assert_eq!(a.seed, engine_params(&p, "job-1", 2048).seed);
    assert_ne!(a.seed, engine_params(&p, "job-2", 2048).seed);
    assert_eq!(a.max_new_tokens, 512);
    assert_eq!(engine_params(&p, "j", 100).max_new_tokens, 100);
    let explicit = SamplingParams {
        seed: Some(9),
        ..Default::default()
    };
    assert_eq!(engine_params(&explicit, "j", 100).seed, Some(9));
}

fn completed(d: Disposition) -> Box<JobResult> {
    match d {
        Disposition::Complete(r, _) => r,
        other => panic!("expected a result, got {other:?}"),
    }
}

/// Runs `prompt` as a generate_image job, then resubmits it under
/// another id with the seed and params of its provenance: the image must be
/// the same bytes. Returns the first result.
async fn resubmit_reproduces(p: &Pipeline, prompt: &str) -> Box<JobResult> {
    let job = serde_json::json!({ "id": "orig", "kind": "generate_image", "prompt": prompt });
    let first = completed(one(p, &env(&job.to_string())).await);
    let prov = first
        .provenance
        .clone()
        .expect("an ok result has a provenance");
    assert_eq!(prov.params.seed, Some(prov.seed));
    let again = serde_json::json!({
        "id": "copy",
        "kind": "generate_image",
        "prompt": prompt,
        "params": prov.params,
    });
    let second = completed(one(p, &env(&again.to_string())).await);
    let (a, b) = (first.image.clone().unwrap(), second.image.unwrap());
    assert_ne!(a.key, b.key);
    assert_eq!(a.sha256, b.sha256, "same seed and params, same image");
    assert_eq!(second.provenance.as_ref(), Some(&prov));
    // Without them another id derives another seed, hence another image:
    // the check above is not vacuous.
    let other = serde_json::json!({ "id": "other", "kind": "generate_image", "prompt": prompt });
    let third = completed(one(p, &env(&other.to_string())).await);
    assert_ne!(third.provenance.unwrap().seed, prov.seed);
    assert_ne!(third.image.unwrap().sha256, a.sha256);
    first
}

#[tokio::test]
async fn the_provenance_seed_and_params_reproduce_the_image_fake_backend() {
    let p = pipeline(Arc::new(MemStore::default()));
    let r = resubmit_reproduces(&p, "a red fox").await;
    let prov = r.provenance.unwrap();
    assert_eq!(prov.model_id, "fake");
    assert_eq!(prov.worker_version, crate::provenance::WORKER_VERSION);
    // Defaults are filled in: the job set no params at all.
    assert_eq!(prov.params.max_new_tokens, Some(512));
    assert_eq!(prov.params.greedy, Some(true));
}

#[tokio::test]
async fn the_provenance_seed_and_params_reproduce_the_image_tiny_model() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/reference-tiny"
    );
    let engine = vargpt_engine::Engine::load(&vargpt_engine::LoadOptions::new(dir)).unwrap();
    let backend = crate::backend::BatchingEngine::new(
        Arc::new(engine),
        vargpt_engine::BatchConfig::default(),
        None,
    );
    let p = pipeline_on(Arc::new(backend), Arc::new(MemStore::default()));
    let r = resubmit_reproduces(&p, "a red fox").await;
    let prov = r.provenance.unwrap();
    assert_eq!(prov.model_id, dir);
    assert!(prov.model_revision.starts_with("sha256:"), "{prov:?}");
    assert_eq!(
        (
            prov.dtype.as_str(),
            prov.device.as_str(),
            prov.tensor_parallel
        ),
        ("f32", "cpu", 1)
    );
}

#[tokio::test]
async fn error_results_carry_the_provenance_they_can() {
    let p = pipeline(Arc::new(MemStore::default()));
    // Refused before the engine: the model's and worker's part only.
    let Disposition::DeadLetter(r, _) = one(&p, &env("not json")).await else {
        panic!()
    };
    let prov = r.provenance.unwrap();
    assert_eq!(prov.worker_version, crate::provenance::WORKER_VERSION);
    assert_eq!(prov.model_id, "fake");
    assert_eq!((prov.seed, prov.params.seed), (0, None));
    // Failed in the engine: the seed and params it ran with too.
    let Disposition::DeadLetter(r, _) =
        one(&p, &env(r#"{"id":"f","kind":"chat","prompt":"__fail__"}"#)).await
    else {
        panic!()
    };
    let prov = r.provenance.unwrap();
    assert_ne!(prov.seed, 0);
    assert_eq!(prov.params.seed, Some(prov.seed));
}
