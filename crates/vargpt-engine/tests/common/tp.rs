//! Engine equality on the same requests (prefill logits within 1e-4 relative,
//! identical tokens and codes): a sharded engine against an unsharded one, or the
//! GPU against the CPU.

use super::parity::fixture;
use vargpt_engine::prefill::prefill;
use vargpt_engine::{Engine, Request, SamplingParams, Task};
use vargpt_model::VarConfig;
use vargpt_testkit::{make_checkpoint, CheckpointSpec};

/// A checkpoint of another shape than the fixture: grouped-query attention
/// (8 query heads over 4 key/value heads), 4 VAR blocks, 3 scales.
pub fn gqa_checkpoint() -> tempfile::TempDir {
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
    dir
}

/// A checkpoint whose head counts divide by no degree the tests use: 6 query
/// heads over 3 key/value heads (groups of 2), 5 VAR blocks (5 VAR heads), an
/// MLP width of 160 (uneven over 3 ranks).
pub fn uneven_checkpoint() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec = CheckpointSpec {
        text_heads: 6,
        text_kv_heads: 3,
        var: VarConfig {
            depth: 5,
            ..CheckpointSpec::small().var
        },
        ..CheckpointSpec::small()
    };
    make_checkpoint(dir.path(), &spec).unwrap();
    dir
}

pub fn requests() -> Vec<Request> {
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

pub fn compare(base: &Engine, other: &Engine, label: &str) {
    for (i, r) in requests().iter().enumerate() {
        let prep = base.prepare(r).unwrap();
        let logits = |e: &Engine| {
            let m = e.model();
            let feats = prep.pixel_values.as_ref().map(|pv| {
                m.image_features(&pv.to_device(m.device()).unwrap())
                    .unwrap()
            });
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
