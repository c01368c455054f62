//! The loader against the published layout and against broken checkpoints.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vargpt_model::{expected_tensors, ModelError, VargptConfig, Weights};

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
}

fn tiny() -> PathBuf {
    fixtures().join("reference-tiny")
}

/// The published VARGPT_LLaVA-v1 config (no `var_config`: the VAR-d30 defaults apply).
fn published_config() -> VargptConfig {
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny().join("config.json")).unwrap())
            .unwrap();
    let o = c.as_object_mut().unwrap();
    o.remove("var_config");
    o.remove("image_seq_length");
    c["hidden_size"] = 4096.into();
    c["image_token_index"] = 32000.into();
    c["special_tokens"]["image_gen_start_token_id"] = 32002.into();
    c["special_tokens"]["image_gen_end_token_id"] = 32003.into();
    c["special_tokens"]["image_gen_pad_token_id"] = 32004.into();
    let t = &mut c["text_config"];
    t["hidden_size"] = 4096.into();
    t["intermediate_size"] = 11008.into();
    t["num_hidden_layers"] = 32.into();
    t["num_attention_heads"] = 32.into();
    t["num_key_value_heads"] = 32.into();
    t["head_dim"] = 128.into();
    t["vocab_size"] = 32064.into();
    let v = &mut c["vision_config"];
    v["hidden_size"] = 1024.into();
    v["intermediate_size"] = 4096.into();
    v["num_hidden_layers"] = 24.into();
    v["num_attention_heads"] = 16.into();
    v["image_size"] = 336.into();
    v["patch_size"] = 14.into();
    VargptConfig::from_json_str(&c.to_string()).unwrap()
}

#[test]
fn manifest_matches_every_tensor_of_the_published_checkpoint() {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("vargpt_llava_v1_tensors.json")).unwrap(),
    )
    .unwrap();
    let published: HashMap<String, Vec<usize>> = manifest["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let shape = v
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (k.clone(), shape)
        })
        .collect();
    let cfg = published_config();
    let ours = expected_tensors(&cfg);
    let ours_map: HashMap<String, Vec<usize>> = ours
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone()))
        .collect();
    let missing: Vec<_> = published
        .keys()
        .filter(|k| !ours_map.contains_key(*k))
        .collect();
    let extra: Vec<_> = ours_map
        .keys()
        .filter(|k| !published.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "published tensors the loader does not know: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "tensors the loader expects that are not published: {extra:?}"
    );
    for (name, shape) in &published {
        assert_eq!(&ours_map[name], shape, "shape of {name}");
    }
    assert_eq!(ours.len(), 1424);
    let total: usize = ours.iter().map(|s| s.shape.iter().product::<usize>()).sum();
    assert_eq!(total as u64, manifest["total_elements"].as_u64().unwrap());
    // Every tensor inference reads is in the manifest under exactly its name.
    assert!(ours
        .iter()
        .filter(|s| s.needed)
        .all(|s| published.contains_key(&s.name)));
}

fn tiny_config() -> VargptConfig {
    VargptConfig::from_file(&tiny().join("config.json")).unwrap()
}

fn open(dir: &Path) -> Result<Weights, ModelError> {
    Weights::open(
        dir,
        expected_tensors(&tiny_config()),
        DType::F32,
        &Device::Cpu,
    )
}

fn tiny_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(tiny().join("model.safetensors"), &Device::Cpu).unwrap()
}

fn write(dir: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
}

#[test]
fn reference_checkpoint_loads() {
    let w = open(&tiny()).unwrap();
    assert!(w.stored_bytes() > 0);
    assert_eq!(w.get("vargpt_gen.head.weight").unwrap().dims(), &[64, 128]);
}

#[test]
fn missing_needed_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tiny_tensors();
    t.remove("language_model.model.layers.1.mlp.up_proj.weight");
    write(dir.path(), &t);
    match open(dir.path()) {
        Err(ModelError::MissingTensor { name }) => {
            assert_eq!(name, "language_model.model.layers.1.mlp.up_proj.weight")
        }
        other => panic!("expected MissingTensor, got {:?}", other.err()),
    }
}

#[test]
fn unused_tensors_may_be_absent() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tiny_tensors();
    t.retain(|k, _| {
        !k.starts_with("vae_local.encoder.")
            && !k.contains("post_layernorm")
            && !k.ends_with("lvl_1L")
    });
    write(dir.path(), &t);
    open(dir.path()).unwrap();
}

#[test]
fn unknown_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tiny_tensors();
    t.insert(
        "language_model.model.layers.9.extra.weight".into(),
        Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
    );
    write(dir.path(), &t);
    let err = open(dir.path()).err().expect("error");
    assert!(
        matches!(&err, ModelError::UnknownTensor { name } if name == "language_model.model.layers.9.extra.weight")
    );
    assert!(err
        .to_string()
        .contains("language_model.model.layers.9.extra.weight"));
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tiny_tensors();
    t.insert(
        "vargpt_gen.head.weight".into(),
        Tensor::zeros((65, 128), DType::F32, &Device::Cpu).unwrap(),
    );
    write(dir.path(), &t);
    match open(dir.path()) {
        Err(ModelError::ShapeMismatch {
            name,
            expected,
            found,
        }) => {
            assert_eq!(name, "vargpt_gen.head.weight");
            assert_eq!(expected, vec![64, 128]);
            assert_eq!(found, vec![65, 128]);
        }
        other => panic!("expected ShapeMismatch, got {:?}", other.err()),
    }
}

#[test]
fn integer_weights_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tiny_tensors();
    t.insert(
        "vargpt_gen.head.bias".into(),
        Tensor::zeros(64, DType::I64, &Device::Cpu).unwrap(),
    );
    write(dir.path(), &t);
    assert!(
        matches!(open(dir.path()), Err(ModelError::BadDtype { name, .. }) if name == "vargpt_gen.head.bias")
    );
}

#[test]
fn corrupt_or_absent_checkpoint_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(open(dir.path()), Err(ModelError::Checkpoint(_))));
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!",
    )
    .unwrap();
    assert!(matches!(open(dir.path()), Err(ModelError::Checkpoint(_))));
    std::fs::write(dir.path().join("model.safetensors"), b"abc").unwrap();
    assert!(open(dir.path()).is_err());
}

#[test]
fn sharded_checkpoint_with_index_loads_the_same_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let t = tiny_tensors();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (k, v) in &t {
        let shard = if k.starts_with("language_model") {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        map.insert(k.clone(), shard.into());
        if shard.contains("00001") {
            a.insert(k.clone(), v.clone());
        } else {
            b.insert(k.clone(), v.clone());
        }
    }
    candle_core::safetensors::save(&a, dir.path().join("model-00001-of-00002.safetensors"))
        .unwrap();
    candle_core::safetensors::save(&b, dir.path().join("model-00002-of-00002.safetensors"))
        .unwrap();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let w = open(dir.path()).unwrap();
    for name in [
        "language_model.lm_head.weight",
        "vargpt_gen.blocks.1.attn.mat_qkv.weight",
    ] {
        let diff = (w.get(name).unwrap() - &t[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{name}");
    }
    // A shard listed in the index but absent is a clear error.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = open(dir.path()).err().expect("error").to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

#[test]
fn half_precision_checkpoints_load_into_the_compute_dtype() {
    for store in [DType::BF16, DType::F16] {
        let dir = tempfile::tempdir().unwrap();
        let t: HashMap<String, Tensor> = tiny_tensors()
            .into_iter()
            .map(|(k, v)| {
                let v = if v.dtype() == DType::F32 {
                    v.to_dtype(store).unwrap()
                } else {
                    v
                };
                (k, v)
            })
            .collect();
        write(dir.path(), &t);
        let w = Weights::open(
            dir.path(),
            expected_tensors(&tiny_config()),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let x = w.get("language_model.lm_head.weight").unwrap();
        assert_eq!(x.dtype(), DType::F32);
        let back = t["language_model.lm_head.weight"]
            .to_dtype(DType::F32)
            .unwrap();
        let diff = (x - back)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
        let w16 = Weights::open(
            dir.path(),
            expected_tensors(&tiny_config()),
            DType::F16,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(
            w16.get("language_model.lm_head.weight").unwrap().dtype(),
            DType::F16
        );
    }
}

#[test]
fn bad_configs_are_clear_errors() {
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny().join("config.json")).unwrap())
            .unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "num_attention_heads",
            Box::new(|c| c["vision_config"]["num_attention_heads"] = 5.into()),
        ),
        (
            "patch_size",
            Box::new(|c| c["vision_config"]["patch_size"] = 15.into()),
        ),
        (
            "patch_nums",
            Box::new(|c| c["var_config"]["patch_nums"] = serde_json::json!([1, 3, 2])),
        ),
        (
            "vision_feature_layer",
            Box::new(|c| c["vision_feature_layer"] = (-9).into()),
        ),
        (
            "image_gen_start_token_id",
            Box::new(|c| c["special_tokens"]["image_gen_start_token_id"] = 99999.into()),
        ),
        (
            "rope_scaling",
            Box::new(|c| {
                c["text_config"]["rope_scaling"] =
                    serde_json::json!({"type": "linear", "factor": 2.0})
            }),
        ),
        (
            "text_config",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("text_config");
            }),
        ),
        (
            "image_seq_length",
            Box::new(|c| c["image_seq_length"] = 17.into()),
        ),
    ];
    for (what, edit) in cases {
        let mut c = base.clone();
        edit(&mut c);
        let err = VargptConfig::from_json_str(&c.to_string())
            .err()
            .unwrap_or_else(|| panic!("{what} accepted"));
        assert!(matches!(err, ModelError::Config { .. }));
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
    assert!(VargptConfig::from_json_str("{not json").is_err());
    let dir = tempfile::tempdir().unwrap();
    let err = VargptConfig::from_file(&dir.path().join("config.json"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("config.json"));
}

#[test]
fn phi_table_matches_numpy_tie_breaking() {
    assert_eq!(
        vargpt_model::vqvae::phi_indices(10, 4),
        vec![0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    );
    assert_eq!(vargpt_model::vqvae::phi_indices(4, 4), vec![0, 1, 2, 3]);
}

#[test]
fn area_windows_match_adaptive_avg_pool() {
    // pn = 3 from 16: windows [0,6), [5,11), [10,16).
    let m = vargpt_model::vqvae::area_matrix(16, 3);
    let nz: Vec<Vec<usize>> = (0..3)
        .map(|r| (0..16).filter(|&c| m[r * 16 + c] > 0.0).collect())
        .collect();
    assert_eq!(nz[0], (0..6).collect::<Vec<_>>());
    assert_eq!(nz[1], (5..11).collect::<Vec<_>>());
    assert_eq!(nz[2], (10..16).collect::<Vec<_>>());
}
