//! Resolving a hub id from a pre-populated Hugging Face cache, offline.

use std::path::{Path, PathBuf};
use vargpt_engine::hub::resolve_model;
use vargpt_engine::{Engine, LoadOptions};

fn fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/reference-tiny"
    ))
}

/// Lays the fixture out as hf-hub's cache does: refs/main → snapshots/<sha>/files.
fn populate(cache: &Path, repo_folder: &str, sha: &str) {
    let repo = cache.join(repo_folder);
    let snap = repo.join("snapshots").join(sha);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixture().join(f), snap.join(f)).unwrap();
    }
}

#[test]
fn hub_id_resolves_offline_from_the_standard_cache_layout() {
    let tmp = tempfile::tempdir().unwrap();
    populate(
        tmp.path(),
        "models--VARGPT-family--VARGPT_LLaVA-tiny",
        "0123456789abcdef",
    );
    // SAFETY: this test binary has a single test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("HF_HUB_OFFLINE", "1");
        std::env::set_var("HF_HUB_CACHE", tmp.path());
    }
    let cache = hf_hub::Cache::new(tmp.path().to_path_buf());
    let dir = resolve_model("VARGPT-family/VARGPT_LLaVA-tiny", None, &cache).unwrap();
    assert!(dir.ends_with("snapshots/0123456789abcdef"));
    // The whole engine loads by hub id through HF_HUB_CACHE.
    let e = Engine::load(&LoadOptions::new("VARGPT-family/VARGPT_LLaVA-tiny")).unwrap();
    assert_eq!(e.model_id(), "VARGPT-family/VARGPT_LLaVA-tiny");
    // Absent from the cache while offline: a clear error naming the model and the cache.
    let err = resolve_model("VARGPT-family/VARGPT_LLaVA-v1", None, &cache)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("VARGPT-family/VARGPT_LLaVA-v1") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    // A revision that is not cached is not silently replaced by main.
    assert!(resolve_model("VARGPT-family/VARGPT_LLaVA-tiny", Some("v2"), &cache).is_err());
    // Neither a directory nor an owner/name id.
    assert!(resolve_model("not a model", None, &cache).is_err());
}
