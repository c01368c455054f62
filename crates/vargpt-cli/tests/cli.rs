//! Runs the built `vargpt` binary on the tiny reference model and checks it
//! against the reference's golden data.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/reference-tiny"
);

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURE).join(name)
}

fn golden() -> Value {
    let text = std::fs::read_to_string(fixture("golden.json")).expect("golden.json");
    serde_json::from_str(&text).expect("golden.json parses")
}

/// Runs `vargpt` with `args` (never touching the network).
fn vargpt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vargpt"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("VARGPT_MODEL")
        .env_remove("RUST_LOG")
        .output()
        .expect("run vargpt")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed and print exactly one JSON object.
fn vargpt_json(args: &[&str]) -> Value {
    let o = vargpt(args);
    assert!(o.status.success(), "vargpt {args:?} failed: {}", stderr(&o));
    let out = String::from_utf8(o.stdout).expect("utf-8 stdout");
    assert_eq!(
        out.trim_end().lines().count(),
        1,
        "one line of JSON expected, got {out:?}"
    );
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {out:?}"))
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().expect("id"))
        .collect()
}

/// Checks a run's output against one of golden.json's text cases.
fn assert_matches_case(out: &Value, case: &Value) {
    assert_eq!(out["prompt"], case["prompt"], "rendered prompt");
    assert_eq!(
        ids(&out["prompt_ids"]),
        ids(&case["input_ids"]),
        "prompt ids"
    );
    assert_eq!(
        ids(&out["ids"]),
        ids(&case["greedy_new_ids"]),
        "generated ids"
    );
    assert_eq!(out["text"], case["greedy_text"], "text");
    assert!(out["finish_reason"].is_string());
    let t = &out["timings"];
    for k in [
        "load_s",
        "preprocess_s",
        "prefill_s",
        "decode_s",
        "image_s",
        "total_s",
    ] {
        assert!(
            t[k].as_f64().is_some_and(|s| s >= 0.0),
            "timings.{k} in {t}"
        );
    }
}

fn model() -> String {
    FIXTURE.to_string()
}

#[test]
fn caption_matches_golden() {
    let g = golden();
    let case = &g["cases"]["caption"];
    let image = fixture(case["image"].as_str().unwrap());
    let out = vargpt_json(&[
        "caption",
        "--json",
        "--greedy",
        "--max-new-tokens",
        "12",
        "--model",
        &model(),
        "--image",
        image.to_str().unwrap(),
    ]);
    assert_eq!(case["user_text"], "Describe the image.");
    assert_matches_case(&out, case);
    assert_eq!(out["task"], "caption");
    assert!(out["image"].is_null() && out["codes"].is_null());
}

#[test]
fn caption_with_explicit_prompt_matches_golden() {
    let g = golden();
    let case = &g["cases"]["caption"];
    let image = fixture(case["image"].as_str().unwrap());
    let out = vargpt_json(&[
        "caption",
        "--json",
        "--max-new-tokens",
        "12",
        "--model",
        &model(),
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        case["user_text"].as_str().unwrap(),
    ]);
    assert_matches_case(&out, case);
}

#[test]
fn vqa_matches_golden() {
    let g = golden();
    let case = &g["cases"]["vqa"];
    let image = fixture(case["image"].as_str().unwrap());
    let out = vargpt_json(&[
        "vqa",
        "--json",
        "--greedy",
        "--max-new-tokens",
        "12",
        "--model",
        &model(),
        "--image",
        image.to_str().unwrap(),
        "--question",
        case["user_text"].as_str().unwrap(),
    ]);
    assert_matches_case(&out, case);
    assert_eq!(out["task"], "vqa");
}

#[test]
fn chat_matches_golden() {
    let g = golden();
    let case = &g["cases"]["text"];
    assert!(case["image"].is_null());
    let out = vargpt_json(&[
        "chat",
        "--json",
        "--greedy",
        "--max-new-tokens",
        "12",
        "--model",
        &model(),
        "--prompt",
        case["user_text"].as_str().unwrap(),
    ]);
    assert_matches_case(&out, case);
    assert_eq!(out["task"], "chat");
}

#[test]
fn streamed_text_equals_golden_text() {
    let g = golden();
    for (sub, case, text_flag) in [
        ("caption", &g["cases"]["caption"], None),
        ("vqa", &g["cases"]["vqa"], Some("--question")),
        ("chat", &g["cases"]["text"], Some("--prompt")),
    ] {
        let image = case["image"].as_str().map(fixture);
        let mut args = vec![
            sub.to_string(),
            "--max-new-tokens".into(),
            "12".into(),
            "--model".into(),
            model(),
        ];
        if let Some(img) = image {
            args.extend(["--image".into(), img.to_str().unwrap().to_string()]);
        }
        if let Some(flag) = text_flag {
            args.extend([
                flag.to_string(),
                case["user_text"].as_str().unwrap().to_string(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = vargpt(&args);
        assert!(o.status.success(), "{sub}: {}", stderr(&o));
        let out = String::from_utf8(o.stdout).unwrap();
        assert_eq!(
            out,
            format!("{}\n", case["greedy_text"].as_str().unwrap()),
            "{sub}"
        );
    }
}

/// Reads an int64 tensor from a safetensors file (test helper; header + raw data).
fn safetensors_i64(path: &Path, name: &str) -> Vec<i64> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header[name];
    assert_eq!(t["dtype"], "I64", "{name}");
    let off = ids(&t["data_offsets"]);
    bytes[8 + n + off[0] as usize..8 + n + off[1] as usize]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn rgb(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

#[test]
fn generate_cfg0_argmax_reproduces_reference_image() {
    let g = golden();
    let case = &g["cases"]["generate"];
    let dir = tempfile::tempdir().unwrap();
    let out_png = dir.path().join("tmp.png");
    // The golden prompt ids: the user text is the rendered prompt's middle.
    let prompt = case["prompt"].as_str().unwrap();
    let user = prompt
        .strip_prefix("USER: ")
        .and_then(|p| p.strip_suffix(" ASSISTANT:"))
        .unwrap();
    let out = vargpt_json(&[
        "generate",
        "--json",
        "--cfg",
        "0",
        "--image-top-k",
        "1",
        "--model",
        &model(),
        "--prompt",
        user,
        "--out",
        out_png.to_str().unwrap(),
    ]);
    assert_eq!(out["prompt"], case["prompt"]);
    assert_eq!(ids(&out["prompt_ids"]), ids(&case["input_ids"]));
    assert_eq!(out["finish_reason"], "image");
    assert_eq!(out["image"], out_png.to_str().unwrap());
    let codes = ids(&out["codes"]);
    assert_eq!(codes.len(), 30);
    let want: Vec<u64> = safetensors_i64(&fixture("golden.safetensors"), "gen_cfg0_codes")
        .into_iter()
        .map(|c| c as u64)
        .collect();
    assert_eq!(codes, want, "codes equal the reference's cfg 0 codes");
    let ours = rgb(&out_png);
    let reference = rgb(&fixture("reference_image_cfg0.png"));
    assert_eq!(ours.dimensions(), reference.dimensions());
    // Same codes, so the same picture up to the decoder's rounding: a value on a
    // quantisation boundary may land one level off (see the parity tests).
    let off: Vec<u8> = ours
        .as_raw()
        .iter()
        .zip(reference.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .filter(|&d| d > 0)
        .collect();
    assert!(
        off.iter().all(|&d| d <= 1) && off.len() * 1000 <= ours.as_raw().len(),
        "pixels differ from reference_image_cfg0.png: {off:?}"
    );
    assert_eq!(out["width"], ours.width());
    assert_eq!(out["height"], ours.height());
}

#[test]
fn generate_without_json_writes_png_and_no_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let out_png = dir.path().join("cat.png");
    let o = vargpt(&[
        "generate",
        "--model",
        &model(),
        "--prompt",
        "a cat",
        "--seed",
        "1",
        "-o",
        out_png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        o.stdout.is_empty(),
        "stdout: {:?}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(stderr(&o).contains("cat.png"), "{}", stderr(&o));
    assert_eq!(rgb(&out_png).width(), 64);
}

#[test]
fn seed_makes_sampling_reproducible() {
    let chat = |seed: &str| {
        vargpt_json(&[
            "chat",
            "--json",
            "--sample",
            "--seed",
            seed,
            "--temperature",
            "1.0",
            "--top-k",
            "0",
            "--max-new-tokens",
            "24",
            "--no-image",
            "--model",
            &model(),
            "--prompt",
            "Tell me a story.",
        ])
    };
    let (a, b) = (chat("5"), chat("5"));
    assert_eq!(a["ids"], b["ids"]);
    assert_eq!(a["text"], b["text"]);
    assert_eq!(a["seed"], 5);

    let dir = tempfile::tempdir().unwrap();
    let gen = |seed: &str, name: &str| {
        let p = dir.path().join(name);
        let out = vargpt_json(&[
            "generate",
            "--json",
            "--seed",
            seed,
            "--model",
            &model(),
            "--prompt",
            "a red car",
            "--out",
            p.to_str().unwrap(),
        ]);
        (ids(&out["codes"]), rgb(&p))
    };
    let (c1, i1) = gen("5", "a.png");
    let (c2, i2) = gen("5", "b.png");
    let (c3, _) = gen("6", "c.png");
    assert_eq!(
        c1, c2,
        "same seed, same codes (cfg noise and top-k 900 sampling)"
    );
    assert!(i1.as_raw() == i2.as_raw(), "same seed, same pixels");
    assert_ne!(c1, c3, "another seed draws other codes");
}

#[test]
fn json_provenance_replays_an_unseeded_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = model();
    let model = model.as_str();
    let gen = |name: &str, extra: &[&str]| {
        let p = dir.path().join(name);
        let mut args = vec!["generate", "--json", "--model", model];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--prompt", "a red car", "--out", p.to_str().unwrap()]);
        (vargpt_json(&args), std::fs::read(&p).unwrap())
    };
    let (first, png1) = gen("a.png", &[]);
    let prov = &first["provenance"];
    let seed = prov["seed"].as_str().expect("the seed is a uint64 string");
    assert_eq!(seed, first["seed"].as_u64().unwrap().to_string());
    assert_eq!(prov["params"]["seed"].as_str(), Some(seed));
    assert_eq!(prov["modelId"], model);
    assert!(prov["modelRevision"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(prov["dtype"], "f32");
    assert_eq!(prov["device"], "cpu");
    assert_eq!(prov["tensorParallel"], 1);
    let version = prov["workerVersion"].as_str().unwrap();
    assert!(version.starts_with(env!("CARGO_PKG_VERSION")), "{version}");
    let params = &prov["params"];
    assert_eq!(params["cfgScale"], 1.5);
    assert_eq!(params["imageTopK"], 900);
    assert_eq!(params["maxNewTokens"], 512);
    // The recorded seed and params replay the same PNG, byte for byte.
    let flag = |k: &str| params[k].to_string();
    let (cfg, topk, topp) = (flag("cfgScale"), flag("imageTopK"), flag("imageTopP"));
    let (second, png2) = gen(
        "b.png",
        &[
            "--seed",
            seed,
            "--cfg",
            &cfg,
            "--image-top-k",
            &topk,
            "--image-top-p",
            &topp,
        ],
    );
    assert_eq!(second["provenance"], *prov);
    assert!(png1 == png2, "same seed and params, same PNG");
}

#[test]
fn chat_mixed_output_writes_png_and_no_image_forbids_it() {
    // Find a seed where the random-weight model switches to image mode.
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("mixed.png");
    let run = |seed: u64, extra: &[&str]| {
        let seed = seed.to_string();
        let mut args = vec![
            "chat",
            "--json",
            "--sample",
            "--seed",
            &seed,
            "--max-new-tokens",
            "100",
            "--model",
            FIXTURE,
            "--prompt",
            "Please draw a cat.",
            "--out",
            png.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        vargpt_json(&args)
    };
    let Some((seed, out)) = (0..200u64)
        .map(|s| (s, run(s, &[])))
        .find(|(_, o)| o["finish_reason"] == "image")
    else {
        panic!("no seed in 0..200 made the tiny model draw");
    };
    assert_eq!(out["image"], png.to_str().unwrap());
    assert_eq!(ids(&out["codes"]).len(), 30);
    assert_eq!(rgb(&png).dimensions(), (64, 64));
    let g = golden()["special_ids"]["start"].as_u64().unwrap();
    assert!(
        ids(&out["ids"]).contains(&g),
        "the generated ids contain <|image_gen_start|>"
    );

    std::fs::remove_file(&png).unwrap();
    let no = run(seed, &["--no-image"]);
    assert_ne!(no["finish_reason"], "image");
    assert!(no["image"].is_null() && no["codes"].is_null());
    assert!(!ids(&no["ids"]).contains(&g));
    assert!(!png.exists());
}

#[test]
fn info_reports_config_and_weights() {
    let info = vargpt_json(&["info", "--model", &model()]);
    assert_eq!(info["text"]["layers"], 2);
    assert_eq!(info["text"]["hidden_size"], 64);
    assert_eq!(info["text"]["vocab_size"], 561);
    assert_eq!(info["vision"]["image_tokens"], 16);
    assert_eq!(info["var"]["stages"], 4);
    assert_eq!(info["var"]["image_tokens"], 30);
    assert_eq!(info["var"]["image_side"], 64);
    assert_eq!(info["weights"]["dtype"], "F32");
    let params = info["weights"]["parameters"].as_u64().unwrap();
    assert!(params > 0);
    let used = info["weights"]["parameters_used"].as_u64().unwrap();
    assert!(used > 0 && used <= params);
    let by_component: u64 = info["weights"]["parameters_by_component"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_component, params);
    assert_eq!(info["layout"]["ok"], true, "{}", info["layout"]);
}

/// A failing run: non-zero exit, a message on stderr, no panic, nothing on stdout.
fn assert_clean_failure(args: &[&str], expect_in_message: &[&str]) -> String {
    let o = vargpt(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "vargpt {args:?} should fail");
    assert_eq!(o.status.code(), Some(1), "exit code for {args:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "panic: {err}"
    );
    assert!(err.starts_with("vargpt: error: "), "{err}");
    for s in expect_in_message {
        assert!(err.contains(s), "{s:?} not in {err:?}");
    }
    assert!(
        o.stdout.is_empty(),
        "stdout: {:?}",
        String::from_utf8_lossy(&o.stdout)
    );
    err
}

#[test]
fn missing_image_file_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.png");
    assert_clean_failure(
        &[
            "caption",
            "--json",
            "--model",
            &model(),
            "--image",
            missing.to_str().unwrap(),
        ],
        &["nope.png"],
    );
}

#[test]
fn non_image_file_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("notes.png");
    std::fs::write(&bogus, "this is not a picture\n").unwrap();
    for sub in [
        &["vqa", "--question", "What?"][..],
        &["chat", "--prompt", "Hi"][..],
    ] {
        let mut args = sub.to_vec();
        args.extend(["--model", FIXTURE, "--image", bogus.to_str().unwrap()]);
        assert_clean_failure(&args, &["notes.png", "invalid image"]);
    }
}

#[test]
fn missing_model_dir_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model");
    let m = missing.to_str().unwrap();
    assert_clean_failure(
        &["chat", "--model", m, "--prompt", "Hi"],
        &["model load failed", "no-such-model"],
    );
    assert_clean_failure(&["info", "--model", m], &["no-such-model"]);
    // A directory without the model files.
    let out = dir.path().join("x.png");
    assert_clean_failure(
        &[
            "generate",
            "--model",
            dir.path().to_str().unwrap(),
            "--prompt",
            "x",
            "--out",
            out.to_str().unwrap(),
        ],
        &["model load failed", "config.json"],
    );
    assert!(!out.exists());
}

#[test]
fn out_of_range_knobs_are_rejected_before_loading() {
    assert_clean_failure(
        &[
            "chat",
            "--model",
            "/nonexistent/model",
            "--prompt",
            "Hi",
            "--sample",
            "--top-p",
            "2",
        ],
        &["top_p"],
    );
    assert_clean_failure(
        &[
            "chat",
            "--model",
            "/nonexistent/model",
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "0",
        ],
        &["max_new_tokens"],
    );
    assert_clean_failure(
        &[
            "vqa",
            "--model",
            "/nonexistent/model",
            "--image",
            "/nonexistent/x.png",
            "--question",
            " ",
        ],
        &["prompt is empty"],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("missing-dir").join("x.png");
    assert_clean_failure(
        &[
            "generate",
            "--model",
            &model(),
            "--prompt",
            "x",
            "--out",
            out.to_str().unwrap(),
        ],
        &["does not exist"],
    );
}

#[test]
fn greedy_and_sample_conflict() {
    let o = vargpt(&[
        "chat", "--model", FIXTURE, "--prompt", "Hi", "--greedy", "--sample",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!stderr(&o).contains("panicked"));
}
