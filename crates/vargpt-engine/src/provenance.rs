//! What a loaded engine is, recorded once at load for the provenance of its
//! results: which weights (the hub commit, or a digest of the model
//! directory's small files), which numerics, which devices.

use crate::request::SamplingParams;
use candle_core::{DType, Device, DeviceLocation};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// A safetensors header larger than this is not read (a real one is a few MB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// The static part of a result's provenance; see [`crate::Engine::provenance_info`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub model_id: String,
    /// The hub commit sha, or `sha256:<hex>` from [`dir_digest`].
    pub revision: String,
    /// "f32", "f16", "bf16", or "f32/linear:bf16" when only the linear
    /// weights are held in half precision.
    pub dtype: String,
    /// "cpu", or the GPU of each rank ("cuda:0,cuda:1").
    pub device: String,
    pub tensor_parallel: usize,
}

impl ModelInfo {
    /// The contract's provenance of one run of this model by `version` of a
    /// program, under the effective `params` (their seed is the one used).
    pub fn provenance(&self, version: &str, params: &SamplingParams) -> vargpt_proto::Provenance {
        vargpt_proto::Provenance {
            model_id: self.model_id.clone(),
            model_revision: self.revision.clone(),
            dtype: self.dtype.clone(),
            device: self.device.clone(),
            tensor_parallel: u32::try_from(self.tensor_parallel).unwrap_or(u32::MAX),
            worker_version: version.to_string(),
            seed: params.seed.unwrap_or(0),
            params: proto_params(params),
        }
    }
}

/// The effective parameters in the contract's form, every field set: a job
/// carrying them runs exactly as this one did.
pub fn proto_params(p: &SamplingParams) -> vargpt_proto::SamplingParams {
    let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    vargpt_proto::SamplingParams {
        max_new_tokens: Some(u32_of(p.max_new_tokens)),
        greedy: Some(p.greedy),
        temperature: Some(p.temperature),
        top_k: Some(u32_of(p.top_k)),
        top_p: Some(p.top_p),
        repetition_penalty: Some(p.repetition_penalty),
        seed: Some(p.seed.unwrap_or(0)),
        cfg_scale: Some(p.cfg_scale),
        image_top_k: Some(u32_of(p.image_top_k)),
        image_top_p: Some(p.image_top_p),
        allow_image: Some(p.allow_image),
    }
}

/// The hub commit when `model` is a hub id resolved to a cache snapshot
/// (`.../snapshots/<sha>`), else the digest of the directory.
pub(crate) fn revision(model: &str, dir: &Path) -> String {
    hub_commit(model, dir).unwrap_or_else(|| dir_digest(dir))
}

fn hub_commit(model: &str, dir: &Path) -> Option<String> {
    if Path::new(model).is_dir() {
        return None;
    }
    let parent = dir.parent()?.file_name()?.to_str()?;
    let name = dir.file_name()?.to_str()?;
    let is_sha = name.len() >= 7 && name.chars().all(|c| c.is_ascii_hexdigit());
    (parent == "snapshots" && is_sha).then(|| name.to_string())
}

/// `sha256:<hex>` over `config.json`, the weight index and the header of
/// every `*.safetensors` file (names, dtypes, shapes and offsets of the
/// tensors): cheap, and it changes whenever the checkpoint's layout or
/// config does. The tensor bytes themselves are not read. Files that cannot
/// be read enter the digest as missing rather than failing the load.
pub fn dir_digest(dir: &Path) -> String {
    let mut h = Sha256::new();
    for name in ["config.json", "model.safetensors.index.json"] {
        h.update(name.as_bytes());
        match std::fs::read(dir.join(name)) {
            Ok(bytes) => {
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(_) => h.update(b"\0missing"),
        }
    }
    let mut shards: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    shards.sort();
    for name in shards {
        h.update(name.as_bytes());
        match safetensors_header(&dir.join(&name)) {
            Some(header) => {
                h.update((header.len() as u64).to_le_bytes());
                h.update(&header);
            }
            None => h.update(b"\0unreadable"),
        }
    }
    format!("sha256:{}", hex_of(&h.finalize()))
}

fn safetensors_header(path: &Path) -> Option<Vec<u8>> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES {
        return None;
    }
    let mut header = Vec::with_capacity(n as usize);
    f.take(n).read_to_end(&mut header).ok()?;
    (header.len() as u64 == n).then_some(header)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn dtype_label(compute: DType, linear: DType) -> String {
    if compute == linear {
        compute.as_str().to_string()
    } else {
        format!("{}/linear:{}", compute.as_str(), linear.as_str())
    }
}

pub(crate) fn device_label<'a>(devices: impl IntoIterator<Item = &'a Device>) -> String {
    let mut labels: Vec<String> = Vec::new();
    for d in devices {
        let l = match d.location() {
            DeviceLocation::Cpu => "cpu".to_string(),
            DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        };
        // CPU ranks are all the same device: say it once.
        if !(l == "cpu" && labels.contains(&l)) {
            labels.push(l);
        }
    }
    labels.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_snapshots_give_their_commit_directories_a_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = tmp.path().join("models--o--m/snapshots/0123456789abcdef");
        std::fs::create_dir_all(&snap).unwrap();
        assert_eq!(
            hub_commit("o/m", &snap).as_deref(),
            Some("0123456789abcdef")
        );
        // A directory given as --model is digested, even inside a cache.
        assert_eq!(hub_commit(snap.to_str().unwrap(), &snap), None);
        assert_eq!(hub_commit("o/m", tmp.path()), None);
    }

    #[test]
    fn the_digest_follows_config_and_headers_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("config.json"), b"{\"a\":1}").unwrap();
        let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let write_weights = |data: &[u8]| {
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header);
            bytes.extend_from_slice(data);
            std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        };
        write_weights(&[0, 0, 0, 0]);
        let d1 = dir_digest(dir);
        assert!(d1.starts_with("sha256:") && d1.len() == 7 + 64, "{d1}");
        assert_eq!(dir_digest(dir), d1);
        // Tensor bytes are not hashed (that is the point: no reading GBs).
        write_weights(&[1, 2, 3, 4]);
        assert_eq!(dir_digest(dir), d1);
        std::fs::write(dir.join("config.json"), b"{\"a\":2}").unwrap();
        let d2 = dir_digest(dir);
        assert_ne!(d2, d1);
        // A truncated shard changes the digest instead of failing.
        std::fs::write(dir.join("model.safetensors"), [200u8, 0, 0]).unwrap();
        assert_ne!(dir_digest(dir), d2);
    }

    #[test]
    fn labels() {
        assert_eq!(dtype_label(DType::BF16, DType::BF16), "bf16");
        assert_eq!(dtype_label(DType::F32, DType::F16), "f32/linear:f16");
        assert_eq!(device_label([&Device::Cpu, &Device::Cpu]), "cpu");
    }

    #[test]
    fn proto_params_set_every_field() {
        let p = proto_params(&SamplingParams {
            seed: Some(9),
            ..Default::default()
        });
        assert_eq!(p.seed, Some(9));
        assert_eq!(p.max_new_tokens, Some(512));
        assert!(p.greedy.is_some() && p.allow_image.is_some() && p.image_top_p.is_some());
    }
}
