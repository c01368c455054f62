//! Tensor parallelism on CPU (thread communicator): TP = 2 and 4 give the same
//! logits as TP = 1 (1e-4 relative), identical greedy tokens and image codes.

use std::path::{Path, PathBuf};
use vargpt_engine::checkpoint::{make_checkpoint, CheckpointSpec};
use vargpt_engine::generate::prefill;
use vargpt_engine::{Engine, LoadOptions, Request, SamplingParams, Task};
use vargpt_model::VarConfig;

fn fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/reference-tiny"
    ))
}

fn load(dir: &Path, tp: usize) -> Result<Engine, vargpt_engine::EngineError> {
    let mut o = LoadOptions::new(dir.to_str().unwrap());
    o.tp = tp;
    Engine::load(&o)
}

fn requests() -> Vec<Request> {
    let png = std::fs::read(fixture().join("test_image.png")).unwrap();
    let greedy = SamplingParams {
        max_new_tokens: 12,
        allow_image: false,
        ..Default::default()
    };
    vec![
        Request {
            task: Task::Caption,
            text: "Describe the image.".into(),
            image: Some(png.clone()),
            params: greedy.clone(),
        },
        Request {
            task: Task::Vqa,
            text: "What is the color of the car?".into(),
            image: Some(png),
            params: greedy.clone(),
        },
        Request {
            task: Task::Chat,
            text: "Please describe a cat on a sofa.".into(),
            image: None,
            params: greedy,
        },
        Request {
            task: Task::GenerateImage,
            text: "a butterfly".into(),
            image: None,
            params: SamplingParams {
                cfg_scale: 0.0,
                image_top_k: 1,
                ..Default::default()
            },
        },
        Request {
            task: Task::GenerateImage,
            text: "a flower".into(),
            image: None,
            params: SamplingParams {
                seed: Some(11),
                ..Default::default()
            },
        },
    ]
}

fn compare(base: &Engine, other: &Engine, label: &str) {
    for (i, r) in requests().iter().enumerate() {
        let prep = base.prepare(r).unwrap();
        let logits = |e: &Engine| {
            let m = e.model();
            let feats = prep
                .pixel_values
                .as_ref()
                .map(|pv| m.image_features(pv).unwrap());
            let emb = m.embed_prompt(&prep.prompt_ids, feats.as_ref()).unwrap();
            prefill(m, &emb, &mut m.llm.new_cache()).unwrap()
        };
        let (a, b) = (logits(base), logits(other));
        let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        println!("{label} request {i}: prefill logits max|Δ| = {err:.2e} (scale {scale:.2})");
        assert!(err <= 1e-4 * scale, "{label} request {i}: {err}");
        let (ra, rb) = (base.run(r).unwrap(), other.run(r).unwrap());
        assert_eq!(ra.ids, rb.ids, "{label} request {i}: tokens");
        match (ra.image, rb.image) {
            (Some(x), Some(y)) => assert_eq!(x.codes, y.codes, "{label} request {i}: codes"),
            (None, None) => {}
            _ => panic!("{label} request {i}: image presence"),
        }
    }
}

#[test]
fn tp2_matches_tp1_on_the_reference_fixture() {
    let base = load(&fixture(), 1).unwrap();
    compare(&base, &load(&fixture(), 2).unwrap(), "reference tp2");
    // VAR has 2 heads here: TP = 4 must be refused with a clear message.
    let err = load(&fixture(), 4).err().expect("tp4 refused").to_string();
    assert!(
        err.contains("not divisible by the tensor-parallel degree 4"),
        "{err}"
    );
}

#[test]
fn tp2_and_tp4_match_tp1_on_another_shape_with_gqa() {
    let dir = tempfile::tempdir().unwrap();
    let spec = CheckpointSpec {
        text_hidden: 128,
        text_intermediate: 256,
        text_heads: 8,
        text_kv_heads: 4,
        var: VarConfig {
            depth: 4,
            patch_nums: vec![1, 2, 4],
            vocab_size: 80,
            z_channels: 8,
            ch: 32,
            share_quant_resi: 4,
        },
        ..CheckpointSpec::small()
    };
    make_checkpoint(dir.path(), &spec).unwrap();
    let base = load(dir.path(), 1).unwrap();
    compare(&base, &load(dir.path(), 2).unwrap(), "small tp2");
    compare(&base, &load(dir.path(), 4).unwrap(), "small tp4");
    let err = load(dir.path(), 3).err().expect("tp3 refused").to_string();
    assert!(err.contains("divisible"), "{err}");
}
