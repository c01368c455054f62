//! Resolves `--model` to a local directory: a path as is, or a Hugging Face hub id
//! through hf-hub's cache (standard layout, `HF_HOME` / `HF_HUB_CACHE`), downloading
//! only when offline mode (`HF_HUB_OFFLINE=1`) is off.

use crate::error::EngineError;
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// Files a model directory must have besides the weights.
pub const MODEL_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "generation_config.json",
];

pub fn is_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
        .unwrap_or(false)
}

/// The cache directory hf-hub uses (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
pub fn default_cache() -> Cache {
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        return Cache::new(PathBuf::from(p));
    }
    Cache::from_env()
}

fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
}

/// Resolves a directory or hub id to a directory containing the model files.
pub fn resolve_model(
    model: &str,
    revision: Option<&str>,
    cache: &Cache,
) -> Result<PathBuf, EngineError> {
    let p = Path::new(model);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if !looks_like_hub_id(model) {
        return Err(EngineError::Load(format!(
            "{model}: not a directory and not a hub id of the form owner/name"
        )));
    }
    let repo = match revision {
        Some(r) => Repo::with_revision(model.to_string(), RepoType::Model, r.to_string()),
        None => Repo::new(model.to_string(), RepoType::Model),
    };
    if let Some(dir) = from_cache(cache, &repo)? {
        return Ok(dir);
    }
    if is_offline() {
        return Err(EngineError::Load(format!(
            "model {model} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
            cache.path().display()
        )));
    }
    download(cache, repo, model)
}

/// A complete snapshot in the cache, or None when any file is missing.
fn from_cache(cache: &Cache, repo: &Repo) -> Result<Option<PathBuf>, EngineError> {
    let c = cache.repo(repo.clone());
    let Some(config) = c.get("config.json") else {
        return Ok(None);
    };
    let dir = config
        .parent()
        .ok_or_else(|| EngineError::Load("bad cache path".into()))?
        .to_path_buf();
    for f in MODEL_FILES {
        if f != "generation_config.json" && c.get(f).is_none() {
            return Ok(None);
        }
    }
    match vargpt_model::weights::checkpoint_files(&dir) {
        Ok(files) if files.iter().all(|f| f.exists()) => Ok(Some(dir)),
        _ => Ok(None),
    }
}

fn download(cache: &Cache, repo: Repo, model: &str) -> Result<PathBuf, EngineError> {
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
        .build()
        .map_err(|e| EngineError::Load(format!("hub client: {e}")))?;
    let r = api.repo(repo);
    let fetch = |f: &str| {
        r.get(f)
            .map_err(|e| EngineError::Load(format!("{model}: downloading {f}: {e}")))
    };
    let config = fetch("config.json")?;
    for f in MODEL_FILES {
        if f != "config.json" {
            fetch(f)?;
        }
    }
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    match r.get("model.safetensors.index.json") {
        Ok(_) => {
            for shard in vargpt_model::weights::checkpoint_files(&dir)
                .map_err(|e| EngineError::Load(e.to_string()))?
            {
                let name = shard
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                fetch(&name)?;
            }
        }
        Err(_) => {
            fetch("model.safetensors")?;
        }
    }
    Ok(dir)
}
