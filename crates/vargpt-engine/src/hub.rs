//! Resolves `--model` to a local directory: a path as is, or a Hugging Face hub id
//! through hf-hub's cache (standard layout), downloading only when offline mode is
//! off. The standard variables are honoured (see [`settings`]): `HF_TOKEN` /
//! `HUGGING_FACE_HUB_TOKEN` for gated models, `HF_ENDPOINT` for mirrors, `HF_HOME`
//! / `HF_HUB_CACHE`, `HF_HUB_OFFLINE`. Downloads draw a bar on a terminal and log
//! progress lines otherwise.

mod progress;
pub mod settings;

use crate::error::EngineError;
use hf_hub::api::sync::ApiRepo;
use hf_hub::{Cache, CacheRepo, Repo, RepoType};
pub use settings::HubSettings;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Files a model directory must have besides the weights.
pub const MODEL_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "generation_config.json",
];

/// `HF_HUB_OFFLINE` is set to a true value.
pub fn is_offline() -> bool {
    HubSettings::from_env().offline
}

/// The cache directory hf-hub uses (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
pub fn default_cache() -> Cache {
    HubSettings::from_env().cache()
}

fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
}

/// Resolves a directory or hub id to a directory containing the model files, with
/// the hub settings of the environment but the given cache.
pub fn resolve_model(
    model: &str,
    revision: Option<&str>,
    cache: &Cache,
) -> Result<PathBuf, EngineError> {
    let settings = HubSettings {
        cache_dir: cache.path().clone(),
        ..HubSettings::from_env()
    };
    resolve_model_with(model, revision, &settings)
}

/// [`resolve_model`] with explicit settings.
pub fn resolve_model_with(
    model: &str,
    revision: Option<&str>,
    settings: &HubSettings,
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
    let cache = settings.cache();
    if let Some(dir) = from_cache(&cache, &repo)? {
        return Ok(dir);
    }
    if settings.offline {
        return Err(EngineError::Load(format!(
            "model {model} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
            cache.path().display()
        )));
    }
    download(settings, repo, model)
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

fn download(settings: &HubSettings, repo: Repo, model: &str) -> Result<PathBuf, EngineError> {
    // A bar only where someone watches it; elsewhere (a pod's log) one line per
    // 10 % of each file.
    let bar = std::io::stderr().is_terminal() && !settings.no_progress_bars;
    tracing::info!(
        model,
        endpoint = %settings.endpoint,
        cache = %settings.cache_dir.display(),
        authenticated = settings.token.is_some() || settings.token_path.exists(),
        "downloading from the hub"
    );
    let api = hf_hub::api::sync::ApiBuilder::from_cache(settings.cache())
        .with_endpoint(settings.endpoint.clone())
        .with_token(settings.resolve_token().map(|t| t.expose().to_string()))
        .with_progress(bar)
        .build()
        .map_err(|e| EngineError::Load(format!("hub client: {e}")))?;
    let cached = settings.cache().repo(repo.clone());
    let r = api.repo(repo);
    let fetch = |f: &str| {
        get(&r, &cached, f, bar, model).map_err(|e| {
            EngineError::Load(format!(
                "{model}: downloading {f} from {}: {e}",
                settings.endpoint
            ))
        })
    };
    let config = fetch("config.json")?;
    for f in MODEL_FILES {
        if f != "config.json" {
            fetch(f)?;
        }
    }
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    match get(&r, &cached, "model.safetensors.index.json", bar, model) {
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

/// `f` from the cache, else downloaded with a bar or with log lines.
fn get(
    r: &ApiRepo,
    cached: &CacheRepo,
    f: &str,
    bar: bool,
    model: &str,
) -> Result<PathBuf, hf_hub::api::sync::ApiError> {
    if bar {
        return r.get(f);
    }
    if let Some(path) = cached.get(f) {
        return Ok(path);
    }
    r.download_with_progress(f, progress::LogProgress::new(model))
}

#[cfg(test)]
mod tests;
