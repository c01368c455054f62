//! Parity with the authors' PyTorch implementation on a checkpoint of other
//! shapes (`tests/fixtures/reference-shapes`: GQA with 6 query / 2 key-value
//! heads, CLIP 60 px / patch 12 → 25 tokens with 3 heads, VAR depth 3 → 3 heads,
//! patch_nums [1,2,3,5], codebook 48, Cvae 4, ch 64, 3 Φ convs), with the same
//! checks and tolerances as `parity.rs` on reference-tiny.
//!
//! The fixture holds the recipe of its random weights instead of the 80 MB
//! `model.safetensors` (see `scripts/reference/make_fixture.py`): the model
//! directory is rebuilt here, bit for bit what the reference ran, once per run.

mod common;

use candle_core::{Device, Tensor};
use common::parity::{self as check, Golden};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use vargpt_engine::{Engine, LoadOptions};

fn shapes_fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/reference-shapes"
    ))
}

fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// The recipe's values of one parameter (the formula in make_fixture.py):
/// `offset + 2^scale_log2 · (u − 32768) / 32768`, exact in f32.
fn recipe_values(name: &str, n: usize, scale_log2: i32, offset: f64) -> Vec<f32> {
    let h = fnv1a64(name);
    let scale = 2f64.powi(scale_log2);
    (1..=n as u64)
        .map(|i| {
            let x = h.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 48) as i64 - 32768;
            let v = offset + scale * (u as f64 / 32768.0);
            let f = v as f32;
            assert_eq!(f as f64, v, "{name}: recipe value not exact in f32");
            f
        })
        .collect()
}

/// Writes the model directory (config and tokenizer files copied, model.safetensors
/// from weights.json + buffers.safetensors) under the test target directory.
fn build_model_dir(fixture: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for f in std::fs::read_dir(fixture).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let model_file = name.ends_with(".json") && name != "golden.json" && name != "weights.json";
        if model_file {
            std::fs::copy(&f, dest.join(&name)).unwrap();
        }
    }
    let recipe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("weights.json")).unwrap())
            .unwrap();
    let buffers =
        candle_core::safetensors::load(fixture.join("buffers.safetensors"), &Device::Cpu).unwrap();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for t in recipe["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let tensor = if t["buffer"].as_bool() == Some(true) {
            buffers
                .get(name)
                .unwrap_or_else(|| panic!("buffer {name}"))
                .clone()
        } else {
            let n = shape.iter().product();
            let scale_log2 = t["scale_log2"].as_i64().unwrap() as i32;
            let offset = t["offset"].as_f64().unwrap();
            let v = recipe_values(name, n, scale_log2, offset);
            Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap()
        };
        assert_eq!(tensor.dims(), shape.as_slice(), "{name}");
        tensors.insert(name.to_string(), tensor);
    }
    // Written under a temporary name and renamed: a concurrent run never reads half a file.
    let tmp = dest.join(format!("model.safetensors.{}", std::process::id()));
    candle_core::safetensors::save(&tensors, &tmp).unwrap();
    std::fs::rename(&tmp, dest.join("model.safetensors")).unwrap();
}

fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dest = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reference-shapes-model");
        build_model_dir(&shapes_fixture(), &dest);
        dest
    })
}

fn engine() -> Engine {
    Engine::load(&LoadOptions::new(model_dir().to_str().unwrap())).expect("load reference-shapes")
}

fn golden() -> Golden {
    Golden::load_from(&shapes_fixture())
}

#[test]
fn recipe_matches_the_checkpoint_the_reference_ran() {
    // Values the Python generator wrote into the checkpoint the reference ran
    // (printed by make_fixture.recipe_values): the two implementations of the
    // formula agree, and the parts of the published layout are there.
    let widened = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
    assert_eq!(
        widened(recipe_values("vargpt_gen.head.weight", 4, -1, 0.0)),
        [
            0.46875,
            0.357147216796875,
            -0.038818359375,
            0.42510986328125
        ]
    );
    assert_eq!(
        widened(recipe_values(
            "language_model.model.norm.weight",
            3,
            -3,
            1.0
        )),
        [1.0801010131835938, 1.0793075561523438, 0.9785385131835938]
    );
    let dir = model_dir();
    let st = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    for name in [
        "language_model.model.layers.0.self_attn.k_proj.weight",
        "vargpt_gen.blocks.2.attn.scale_mul_1H11",
        "vae_local.quantize.quant_resi.qresi_ls.2.weight",
        "vae_local.encoder.conv_in.weight",
    ] {
        assert!(st.contains_key(name), "{name}");
    }
    // GQA: 2 key-value heads of 16 for a hidden size of 96.
    assert_eq!(
        st["language_model.model.layers.0.self_attn.k_proj.weight"].dims(),
        &[32, 96]
    );
}

#[test]
fn pixel_values_match_clip_image_processor() {
    check::pixel_values_match_clip_image_processor_with(&engine(), &golden());
}

#[test]
fn image_features_match() {
    check::image_features_match_with(&engine(), &golden());
}

#[test]
fn prompts_and_token_ids_match() {
    check::prompts_and_token_ids_match_with(&engine(), &golden());
}

#[test]
fn prefill_logits_and_greedy_tokens_match() {
    check::prefill_logits_and_greedy_tokens_match_with(&engine(), &golden());
}

#[test]
fn text_to_image_cfg0_is_exact() {
    check::text_to_image_cfg0_is_exact_with(&engine(), &golden());
}

#[test]
fn text_to_image_cfg15_with_recorded_noise_matches() {
    check::text_to_image_cfg15_with_recorded_noise_matches_with(&engine(), &golden());
}

#[test]
fn vqvae_decode_matches() {
    check::vqvae_decode_matches_with(&engine(), &golden());
}
