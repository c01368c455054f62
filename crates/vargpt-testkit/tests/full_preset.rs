//! The `full` preset is the published checkpoint's layout: the same 1424 tensor
//! names and shapes, bf16 shards of at most 5 GB with an index. Checked on the
//! plan, without writing its 18.6 GB.

use std::collections::BTreeMap;
use std::path::PathBuf;
use vargpt_model::VarConfig;
use vargpt_testkit::{layout, CheckpointSpec, StoredDtype};

fn published() -> (BTreeMap<String, Vec<usize>>, usize) {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/vargpt_llava_v1_tensors.json"
    ));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tensors = m["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::from_value(v.clone()).unwrap()))
        .collect();
    (tensors, m["total_elements"].as_u64().unwrap() as usize)
}

#[test]
fn full_preset_has_every_published_tensor_and_shape() {
    let (published, total) = published();
    let spec = CheckpointSpec::preset("full").unwrap();
    let (cfg, specs) = spec.tensors().unwrap();
    assert_eq!(cfg.var(), VarConfig::default(), "VAR-d30 defaults");
    let ours: BTreeMap<String, Vec<usize>> = specs
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone()))
        .collect();
    assert_eq!(specs.len(), 1424);
    assert_eq!(ours.len(), 1424, "no duplicate names");
    assert_eq!(ours, published);
    let elements: usize = specs
        .iter()
        .map(|s| s.shape.iter().product::<usize>())
        .sum();
    assert_eq!(elements, total);
    let config = spec.config_json();
    assert!(
        config.get("var_config").is_none(),
        "published config has none"
    );
    assert_eq!(config["torch_dtype"], "bfloat16");
}

#[test]
fn full_preset_plans_bf16_shards_of_at_most_5_gb_with_an_index() {
    let (published, total) = published();
    let plan = layout(&CheckpointSpec::full()).unwrap();
    assert!(plan.sharded);
    let n = plan.files.len();
    // 18.6 GB in shards of at most 5 GB.
    assert_eq!(n, 4);
    for (i, f) in plan.files.iter().enumerate() {
        assert_eq!(f.name, format!("model-{:05}-of-00004.safetensors", i + 1));
        assert!(f.len - f.header.len() <= 5_000_000_000, "{}", f.name);
        assert_eq!(f.header.len() % 8, 0, "data starts aligned");
    }
    // Every float tensor bf16, lvl_1L int64; sizes add up to the index's total.
    let ints: Vec<_> = plan
        .tensors
        .iter()
        .filter(|t| t.dtype == StoredDtype::I64)
        .map(|t| t.spec.name.as_str())
        .collect();
    assert_eq!(ints, ["vargpt_gen.lvl_1L"]);
    assert!(plan
        .tensors
        .iter()
        .all(|t| t.dtype == StoredDtype::I64 || t.dtype == StoredDtype::Bf16));
    assert_eq!(plan.total_bytes(), 2 * (total - 680) + 8 * 680);
    let index = plan.index_json();
    assert_eq!(index["metadata"]["total_size"], plan.total_bytes());
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), 1424);
    assert!(published.keys().all(|k| map.contains_key(k)));
    // Each header lists exactly its file's tensors, back to back, at the planned offsets.
    for (fi, f) in plan.files.iter().enumerate() {
        let len = u64::from_le_bytes(f.header[..8].try_into().unwrap()) as usize;
        assert_eq!(len + 8, f.header.len());
        let h: serde_json::Value = serde_json::from_slice(&f.header[8..]).unwrap();
        let mine: Vec<_> = plan.tensors.iter().filter(|t| t.file == fi).collect();
        assert_eq!(
            h.as_object().unwrap().len(),
            mine.len() + 1,
            "+ __metadata__"
        );
        let mut spans = vec![];
        for t in mine {
            let e = &h[&t.spec.name];
            assert_eq!(map[&t.spec.name], f.name.as_str());
            assert_eq!(e["shape"], serde_json::json!(published[&t.spec.name]));
            let (a, b) = (
                e["data_offsets"][0].as_u64().unwrap() as usize,
                e["data_offsets"][1].as_u64().unwrap() as usize,
            );
            assert_eq!(a + f.header.len(), t.offset);
            assert_eq!(b - a, t.bytes);
            assert_eq!(t.offset % t.dtype.size(), 0, "{} aligned", t.spec.name);
            spans.push((a, b));
        }
        spans.sort();
        assert_eq!(spans[0].0, 0);
        assert!(spans.windows(2).all(|w| w[0].1 == w[1].0), "contiguous");
        assert_eq!(spans.last().unwrap().1 + f.header.len(), f.len);
    }
}
