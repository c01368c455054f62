//! The engine on checkpoints of other shapes made by the checkpoint maker, and the
//! half-precision options.

use std::path::PathBuf;
use vargpt_engine::{Engine, FinishReason, LoadOptions, Request, SamplingParams, Task};
use vargpt_testkit::{make_checkpoint, CheckpointSpec};

fn fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/reference-tiny"
    ))
}

fn test_png() -> Vec<u8> {
    std::fs::read(fixture().join("test_image.png")).unwrap()
}

fn req(task: Task, text: &str, image: Option<Vec<u8>>, params: SamplingParams) -> Request {
    Request {
        task,
        text: text.into(),
        image,
        params,
    }
}

#[test]
fn small_checkpoint_of_other_shapes_serves_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let spec = CheckpointSpec::small();
    make_checkpoint(dir.path(), &spec).unwrap();
    let e = Engine::load(&LoadOptions::new(dir.path().to_str().unwrap())).unwrap();
    let greedy = SamplingParams {
        max_new_tokens: 8,
        greedy: true,
        allow_image: false,
        ..Default::default()
    };
    let cap = e
        .run(&req(Task::Caption, "", Some(test_png()), greedy.clone()))
        .unwrap();
    assert_eq!(cap.ids.len(), 8.min(cap.ids.len()));
    assert!(!cap.ids.is_empty());
    let img_tokens = (spec.image_size / spec.patch_size).pow(2);
    assert_eq!(
        cap.prompt_ids
            .iter()
            .filter(|&&t| t as usize == spec.base_vocab)
            .count(),
        img_tokens
    );
    let vqa = e
        .run(&req(
            Task::Vqa,
            "What is it?",
            Some(test_png()),
            greedy.clone(),
        ))
        .unwrap();
    assert!(vqa.prompt.contains("What is it?"));
    let chat = e
        .run(&req(Task::Chat, "Hello there", None, greedy.clone()))
        .unwrap();
    assert!(matches!(
        chat.finish_reason,
        FinishReason::Eos | FinishReason::Length
    ));
    // Deterministic per seed, different across seeds.
    let p = |seed| SamplingParams {
        seed: Some(seed),
        greedy: false,
        max_new_tokens: 8,
        ..Default::default()
    };
    let a = e
        .run(&req(Task::GenerateImage, "a red square", None, p(3)))
        .unwrap();
    let b = e
        .run(&req(Task::GenerateImage, "a red square", None, p(3)))
        .unwrap();
    let c = e
        .run(&req(Task::GenerateImage, "a red square", None, p(4)))
        .unwrap();
    let (ia, ib, ic) = (a.image.unwrap(), b.image.unwrap(), c.image.unwrap());
    assert_eq!(
        ia.codes.len(),
        spec.var.patch_nums.iter().map(|p| p * p).sum::<usize>()
    );
    assert_eq!(ia.codes, ib.codes);
    assert_eq!(ia.rgb, ib.rgb);
    assert_ne!(ia.codes, ic.codes);
    let side = (spec.var.patch_nums.last().unwrap() * 16) as u32;
    assert_eq!((ia.width, ia.height), (side, side));
    assert_eq!(ia.rgb.len(), (side * side * 3) as usize);
    let png = image::load_from_memory(&ia.to_png().unwrap())
        .unwrap()
        .to_rgb8();
    assert_eq!(png.into_raw(), ia.rgb);
}

#[test]
fn sharded_half_precision_checkpoint_matches_its_f32_twin() {
    let spec = CheckpointSpec::small();
    let f32_dir = tempfile::tempdir().unwrap();
    make_checkpoint(f32_dir.path(), &spec).unwrap();
    let half_dir = tempfile::tempdir().unwrap();
    let half = CheckpointSpec {
        dtype: "f16".into(),
        shard_bytes: Some(200_000),
        ..spec
    };
    make_checkpoint(half_dir.path(), &half).unwrap();
    assert!(half_dir
        .path()
        .join("model.safetensors.index.json")
        .exists());
    let a = Engine::load(&LoadOptions::new(f32_dir.path().to_str().unwrap())).unwrap();
    let b = Engine::load(&LoadOptions::new(half_dir.path().to_str().unwrap())).unwrap();
    assert!(
        b.weight_bytes() * 2 <= a.weight_bytes() + 1024,
        "f16 storage halves the bytes"
    );
    let prep = a
        .prepare(&req(
            Task::Chat,
            "Hello there",
            None,
            SamplingParams::default(),
        ))
        .unwrap();
    let logits = |e: &Engine| {
        let m = e.model();
        let emb = m.embed_prompt(&prep.prompt_ids, None).unwrap();
        vargpt_engine::prefill::prefill(m, &emb, &mut m.llm.new_cache()).unwrap()
    };
    let (la, lb) = (logits(&a), logits(&b));
    let scale = la.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = la
        .iter()
        .zip(&lb)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    println!("f16-stored vs f32-stored prefill logits: max|Δ| = {err:.3e}");
    assert!(err < 2e-2 * scale);
}

#[test]
fn f16_compute_on_cpu_keeps_the_reference_greedy_tokens() {
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("golden.json")).unwrap())
            .unwrap();
    let mut opts = LoadOptions::new(fixture().to_str().unwrap());
    opts.dtype = Some("f16".into());
    let e = Engine::load(&opts).unwrap();
    let c = &golden["cases"]["caption"];
    let r = e
        .run(&req(
            Task::Caption,
            c["user_text"].as_str().unwrap(),
            Some(test_png()),
            SamplingParams {
                max_new_tokens: 12,
                ..Default::default()
            },
        ))
        .unwrap();
    let want: Vec<u32> = c["greedy_new_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(r.ids, want);
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let e = Engine::load(&LoadOptions::new(fixture().to_str().unwrap())).unwrap();
    let d = SamplingParams::default();
    let cases = vec![
        req(Task::Caption, "", None, d.clone()),
        req(Task::Vqa, "", Some(test_png()), d.clone()),
        req(Task::Caption, "", Some(b"not an image".to_vec()), d.clone()),
        req(Task::GenerateImage, "x", Some(test_png()), d.clone()),
        req(
            Task::Chat,
            "hi",
            None,
            SamplingParams {
                max_new_tokens: 0,
                ..d.clone()
            },
        ),
        req(
            Task::Chat,
            "hi",
            None,
            SamplingParams {
                greedy: false,
                temperature: -1.0,
                ..d.clone()
            },
        ),
        req(
            Task::Chat,
            "hi",
            None,
            SamplingParams {
                cfg_scale: f64::NAN,
                ..d.clone()
            },
        ),
        req(Task::Chat, &"word ".repeat(5000), None, d.clone()),
    ];
    for r in cases {
        assert!(e.run(&r).is_err(), "{:?} accepted", r.task);
    }
    assert!(Engine::load(&LoadOptions::new("/nonexistent/model")).is_err());
}
