//! Written checkpoints read back: the safetensors files are valid, the loader
//! accepts them against the manifest, and the values follow the spec.

use candle_core::{DType, Device};
use std::path::Path;
use vargpt_model::{expected_tensors, VargptConfig, Weights};
use vargpt_testkit::{make_checkpoint, CheckpointSpec, Fill};

fn open(dir: &Path) -> Weights {
    let cfg = VargptConfig::from_file(&dir.join("config.json")).unwrap();
    Weights::open(dir, expected_tensors(&cfg), DType::F32, &Device::Cpu).unwrap()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn fast_fill_writes_valid_bf16_shards_the_loader_accepts() {
    let spec = CheckpointSpec {
        dtype: "bf16".into(),
        fill: Fill::Fast,
        shard_bytes: Some(100_000),
        ..CheckpointSpec::small()
    };
    let dir = tempfile::tempdir().unwrap();
    let params = make_checkpoint(dir.path(), &spec).unwrap();
    let (_, specs) = spec.tensors().unwrap();
    assert_eq!(
        params,
        specs
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum::<usize>()
    );
    let shards: Vec<_> = files(dir.path())
        .into_iter()
        .filter(|(n, _)| n.ends_with(".safetensors"))
        .collect();
    assert!(shards.len() > 3, "{} shards", shards.len());
    let mut seen = 0;
    for (name, bytes) in &shards {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        for (tname, view) in st.tensors() {
            seen += 1;
            let want = if tname.ends_with("lvl_1L") {
                safetensors::Dtype::I64
            } else {
                safetensors::Dtype::BF16
            };
            assert_eq!(view.dtype(), want, "{name}: {tname}");
        }
    }
    assert_eq!(seen, specs.len());
    let w = open(dir.path());
    // A norm weight: mean 1, std 0.02 (uniform within ±√3·0.02, then bf16
    // rounding: steps of 2^-8 below 1).
    let t = w
        .get("language_model.model.norm.weight")
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(t.iter().all(|v| (v - 1.0).abs() <= 0.0347 + 0.002), "{t:?}");
    assert!(t.iter().any(|v| (v - 1.0).abs() > 0.005), "not constant");
    // The same spec writes the same bytes.
    let again = tempfile::tempdir().unwrap();
    make_checkpoint(again.path(), &spec).unwrap();
    assert_eq!(files(dir.path()), files(again.path()));
}

#[test]
fn normal_fill_writes_one_f32_file_with_the_stage_buffers() {
    let dir = tempfile::tempdir().unwrap();
    make_checkpoint(dir.path(), &CheckpointSpec::small()).unwrap();
    assert!(dir.path().join("model.safetensors").exists());
    assert!(!dir.path().join("model.safetensors.index.json").exists());
    let w = open(dir.path());
    // patch_nums (1, 2, 3, 5): stage of each of the 1 + 4 + 9 + 25 tokens.
    let lvl: Vec<i64> = w
        .get_as("vargpt_gen.lvl_1L", DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want: Vec<i64> = [(0, 1), (1, 4), (2, 9), (3, 25)]
        .iter()
        .flat_map(|&(k, n)| std::iter::repeat_n(k, n))
        .collect();
    assert_eq!(lvl, want);
}

#[test]
fn files_are_byte_for_byte_what_the_safetensors_crate_writes() {
    // Same header text and tensor order as `safetensors::serialize_to_file`, so
    // a file made before the maker wrote its own headers is made identically.
    let spec = CheckpointSpec {
        dtype: "f16".into(),
        shard_bytes: Some(200_000),
        ..CheckpointSpec::small()
    };
    let dir = tempfile::tempdir().unwrap();
    make_checkpoint(dir.path(), &spec).unwrap();
    let mut n = 0;
    for (name, bytes) in files(dir.path()) {
        if !name.ends_with(".safetensors") {
            continue;
        }
        n += 1;
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        let again = safetensors::serialize(st.tensors(), Some(meta)).unwrap();
        assert!(
            again == bytes,
            "{name} differs from safetensors' own layout"
        );
    }
    assert!(n > 1, "sharded");
}

#[test]
fn bad_specs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for spec in [
        CheckpointSpec {
            dtype: "f8".into(),
            ..CheckpointSpec::small()
        },
        CheckpointSpec {
            vocab_size: 601,
            ..CheckpointSpec::small()
        },
        CheckpointSpec {
            base_vocab: 10,
            vocab_size: 20,
            ..CheckpointSpec::small()
        },
    ] {
        let err = make_checkpoint(dir.path(), &spec).unwrap_err();
        assert!(
            matches!(err, vargpt_testkit::CheckpointError::Spec(_)),
            "{err}"
        );
    }
}
