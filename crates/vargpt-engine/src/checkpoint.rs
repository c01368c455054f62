//! The checkpoint maker: writes a random-weight model directory of any size in the
//! published VARGPT-LLaVA layout (config, safetensors — single or sharded —,
//! tokenizer, template, processor and generation configs). Used for the README
//! demo, tests of other shapes, and benchmarks.
//!
//! The tokenizer is the reference fixture's LLaMA-style BPE tokenizer, its
//! vocabulary padded with `<extra_N>` tokens up to `base_vocab`, followed by the
//! five special tokens (`<image>`, `<pad>`, the three image-generation markers),
//! exactly where the published checkpoint has them (32000…32004).

use crate::error::EngineError;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use vargpt_model::{expected_tensors, TensorSpec, VarConfig, VargptConfig};

const TEMPLATE_CONFIG: &str = include_str!("../../../tests/fixtures/reference-tiny/config.json");
const TEMPLATE_TOKENIZER: &str =
    include_str!("../../../tests/fixtures/reference-tiny/tokenizer.json");
const TEMPLATE_TOKENIZER_CONFIG: &str =
    include_str!("../../../tests/fixtures/reference-tiny/tokenizer_config.json");
const TEMPLATE_SPECIAL_TOKENS: &str =
    include_str!("../../../tests/fixtures/reference-tiny/special_tokens_map.json");
const TEMPLATE_PREPROCESSOR: &str =
    include_str!("../../../tests/fixtures/reference-tiny/preprocessor_config.json");
const SPECIAL_TOKENS: [&str; 5] = [
    "<image>",
    "<pad>",
    "<|image_gen_start|>",
    "<|image_gen_end|>",
    "<|image_gen_pad|>",
];

/// Shapes of the model to make.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CheckpointSpec {
    pub vision_hidden: usize,
    pub vision_intermediate: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub text_hidden: usize,
    pub text_intermediate: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    pub text_kv_heads: usize,
    /// Id of the first special token (`<image>`); the BPE vocabulary fills below it.
    pub base_vocab: usize,
    /// Rows of the embedding / lm_head (≥ base_vocab + 5; the rest is padding).
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub var: VarConfig,
    /// Write `var_config` into config.json (the published config has none).
    pub write_var_config: bool,
    pub seed: u64,
    /// Stored dtype: "f32", "f16" or "bf16".
    pub dtype: String,
    /// Split into shards of at most this many bytes (with an index file).
    pub shard_bytes: Option<usize>,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self::small()
    }
}

impl CheckpointSpec {
    /// A small model of other shapes than the reference fixture (fast tests).
    pub fn small() -> Self {
        Self {
            vision_hidden: 48,
            vision_intermediate: 96,
            vision_layers: 2,
            vision_heads: 3,
            image_size: 42,
            patch_size: 14,
            text_hidden: 96,
            text_intermediate: 160,
            text_layers: 3,
            text_heads: 6,
            text_kv_heads: 6,
            base_vocab: 600,
            vocab_size: 640,
            max_position_embeddings: 1024,
            var: VarConfig {
                depth: 3,
                patch_nums: vec![1, 2, 3, 5],
                vocab_size: 96,
                z_channels: 8,
                ch: 32,
                share_quant_resi: 4,
            },
            write_var_config: true,
            seed: 1,
            dtype: "f32".into(),
            shard_bytes: None,
        }
    }

    /// The mid-size benchmark model of issue 7 (published vocabulary, full 10-stage
    /// 256×256 schedule, real-size VQVAE).
    pub fn bench_mid() -> Self {
        Self {
            vision_hidden: 512,
            vision_intermediate: 2048,
            vision_layers: 6,
            vision_heads: 8,
            image_size: 224,
            patch_size: 14,
            text_hidden: 1024,
            text_intermediate: 2816,
            text_layers: 8,
            text_heads: 16,
            text_kv_heads: 16,
            base_vocab: 32000,
            vocab_size: 32064,
            max_position_embeddings: 4096,
            var: VarConfig {
                depth: 8,
                patch_nums: vec![1, 2, 3, 4, 5, 6, 8, 10, 13, 16],
                vocab_size: 4096,
                z_channels: 32,
                ch: 160,
                share_quant_resi: 4,
            },
            write_var_config: true,
            seed: 7,
            dtype: "f32".into(),
            shard_bytes: None,
        }
    }

    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "small" => Some(Self::small()),
            "bench-mid" => Some(Self::bench_mid()),
            _ => None,
        }
    }

    fn special_id(&self, i: usize) -> u32 {
        (self.base_vocab + i) as u32
    }

    /// The config.json the maker writes (the fixture's keys, these sizes).
    pub fn config_json(&self) -> Value {
        let mut c: Value = serde_json::from_str(TEMPLATE_CONFIG).expect("template config");
        let img_tokens = (self.image_size / self.patch_size).pow(2);
        c["hidden_size"] = json!(self.text_hidden);
        c["image_seq_length"] = json!(img_tokens);
        c["image_token_index"] = json!(self.special_id(0));
        c["pad_token_id"] = json!(self.special_id(1));
        c["vocab_size"] = json!(self.vocab_size);
        let st = &mut c["special_tokens"];
        st["image_gen_start_token_id"] = json!(self.special_id(2));
        st["image_gen_end_token_id"] = json!(self.special_id(3));
        st["image_gen_pad_token_id"] = json!(self.special_id(4));
        let t = &mut c["text_config"];
        t["hidden_size"] = json!(self.text_hidden);
        t["intermediate_size"] = json!(self.text_intermediate);
        t["num_hidden_layers"] = json!(self.text_layers);
        t["num_attention_heads"] = json!(self.text_heads);
        t["num_key_value_heads"] = json!(self.text_kv_heads);
        t["head_dim"] = json!(self.text_hidden / self.text_heads);
        t["vocab_size"] = json!(self.vocab_size);
        t["max_position_embeddings"] = json!(self.max_position_embeddings);
        let v = &mut c["vision_config"];
        v["hidden_size"] = json!(self.vision_hidden);
        v["intermediate_size"] = json!(self.vision_intermediate);
        v["num_hidden_layers"] = json!(self.vision_layers);
        v["num_attention_heads"] = json!(self.vision_heads);
        v["image_size"] = json!(self.image_size);
        v["patch_size"] = json!(self.patch_size);
        v["projection_dim"] = json!(self.vision_hidden);
        let obj = c.as_object_mut().expect("object");
        if self.write_var_config {
            obj.insert(
                "var_config".into(),
                serde_json::to_value(&self.var).expect("var"),
            );
        } else {
            obj.remove("var_config");
        }
        obj.insert("torch_dtype".into(), json!(torch_dtype_name(&self.dtype)));
        c
    }
}

fn torch_dtype_name(d: &str) -> &'static str {
    match d {
        "f16" => "float16",
        "bf16" => "bfloat16",
        _ => "float32",
    }
}

fn tokenizer_json(spec: &CheckpointSpec) -> Result<Value, EngineError> {
    let mut t: Value = serde_json::from_str(TEMPLATE_TOKENIZER).expect("template tokenizer");
    let vocab = t["model"]["vocab"].as_object_mut().expect("vocab");
    let have = vocab.len();
    if spec.base_vocab < have {
        return Err(EngineError::InvalidRequest(format!(
            "base_vocab {} is smaller than the template tokenizer's {have} tokens",
            spec.base_vocab
        )));
    }
    for i in have..spec.base_vocab {
        vocab.insert(format!("<extra_{i}>"), json!(i));
    }
    let added = t["added_tokens"].as_array_mut().expect("added_tokens");
    added.retain(|a| !SPECIAL_TOKENS.contains(&a["content"].as_str().unwrap_or("")));
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        added.push(
            json!({"id": spec.special_id(i), "content": s, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}),
        );
    }
    Ok(t)
}

fn tokenizer_config_json(spec: &CheckpointSpec) -> Value {
    let mut t: Value = serde_json::from_str(TEMPLATE_TOKENIZER_CONFIG).expect("template");
    let dec = t["added_tokens_decoder"].as_object_mut().expect("decoder");
    dec.retain(|_, v| !SPECIAL_TOKENS.contains(&v["content"].as_str().unwrap_or("")));
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        dec.insert(
            spec.special_id(i).to_string(),
            json!({"content": s, "lstrip": false, "normalized": false, "rstrip": false,
                "single_word": false, "special": true}),
        );
    }
    t
}

/// Deterministic random values for one tensor, scaled by its role.
fn init_values(spec: &TensorSpec, cfg: &VargptConfig, rng: &mut StdRng) -> Vec<f32> {
    let n: usize = spec.shape.iter().product();
    let name = spec.name.as_str();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let normal = |std: f32, mean: f32, rng: &mut StdRng| -> Vec<f32> {
        let d = Normal::new(mean, std).expect("normal");
        (0..n).map(|_| d.sample(rng)).collect()
    };
    if name.ends_with("attn_bias_for_masking") {
        let lvl = cfg.var().token_stages();
        let l = lvl.len();
        return (0..l * l)
            .map(|i| {
                if lvl[i / l] >= lvl[i % l] {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
    }
    if leaf == "zero_k_bias" || leaf == "ema_vocab_hit_SV" {
        return vec![0.0; n];
    }
    if leaf == "scale_mul_1H11" {
        return vec![4f32.ln(); n];
    }
    let is_norm = name.contains("norm") || name.contains("layrnorm") || name.contains("ln_q");
    match (leaf, spec.shape.len()) {
        ("weight", 1) if is_norm => normal(0.02, 1.0, rng),
        ("bias", _) => normal(0.02, 0.0, rng),
        ("weight", 2) if name.contains("ada_lin") => normal(0.02, 0.0, rng),
        ("weight", 2) if name.contains("embed") || name.contains("class_emb") => {
            normal(0.02, 0.0, rng)
        }
        ("weight", 2) => normal((spec.shape[1] as f32).powf(-0.5), 0.0, rng),
        ("weight", 4) => {
            let fan_in: usize = spec.shape[1..].iter().product();
            normal((fan_in as f32).powf(-0.5), 0.0, rng)
        }
        _ => normal(0.02, 0.0, rng),
    }
}

fn encode(values: &[f32], dtype: &str) -> (safetensors::Dtype, Vec<u8>) {
    match dtype {
        "f16" => (
            safetensors::Dtype::F16,
            values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
        "bf16" => (
            safetensors::Dtype::BF16,
            values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
        _ => (
            safetensors::Dtype::F32,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    }
}

/// Name, dtype, shape and little-endian bytes of one tensor to write.
type StoredTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

fn write_json(path: &Path, v: &Value) -> Result<(), EngineError> {
    let text = serde_json::to_string_pretty(v).expect("json");
    std::fs::write(path, text).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))
}

/// Writes the model directory `dir` (created if needed). Returns the number of parameters.
pub fn make_checkpoint(dir: &Path, spec: &CheckpointSpec) -> Result<usize, EngineError> {
    if !matches!(spec.dtype.as_str(), "f32" | "f16" | "bf16") {
        return Err(EngineError::InvalidRequest(format!(
            "dtype {:?}: use f32, f16 or bf16",
            spec.dtype
        )));
    }
    if spec.vocab_size < spec.base_vocab + SPECIAL_TOKENS.len() {
        return Err(EngineError::InvalidRequest(
            "vocab_size must be >= base_vocab + 5".into(),
        ));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| EngineError::Load(format!("{}: {e}", dir.display())))?;
    let config = spec.config_json();
    let cfg = VargptConfig::from_json_str(&config.to_string())
        .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
    write_json(&dir.join("config.json"), &config)?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": spec.special_id(1),
            "special_tokens": config["special_tokens"], "transformers_version": "4.46.1"}),
    )?;
    let mut pre: Value = serde_json::from_str(TEMPLATE_PREPROCESSOR).expect("preprocessor");
    pre["size"] = json!({"shortest_edge": spec.image_size});
    pre["crop_size"] = json!({"height": spec.image_size, "width": spec.image_size});
    write_json(&dir.join("preprocessor_config.json"), &pre)?;
    write_json(&dir.join("tokenizer.json"), &tokenizer_json(spec)?)?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tokenizer_config_json(spec),
    )?;
    std::fs::write(dir.join("special_tokens_map.json"), TEMPLATE_SPECIAL_TOKENS)
        .map_err(|e| EngineError::Load(e.to_string()))?;

    let mut rng = StdRng::seed_from_u64(spec.seed);
    let specs = expected_tensors(&cfg);
    let mut params = 0;
    // Tensors grouped into shards in manifest order.
    let mut shards: Vec<Vec<StoredTensor>> = vec![vec![]];
    let mut shard_size = 0usize;
    for s in &specs {
        let (dtype, bytes) = if s.integer {
            let lvl: Vec<u8> = cfg
                .var()
                .token_stages()
                .into_iter()
                .flat_map(|k| (k as i64).to_le_bytes())
                .collect();
            (safetensors::Dtype::I64, lvl)
        } else {
            encode(&init_values(s, &cfg, &mut rng), &spec.dtype)
        };
        params += s.shape.iter().product::<usize>();
        if let Some(max) = spec.shard_bytes {
            if shard_size > 0 && shard_size + bytes.len() > max {
                shards.push(vec![]);
                shard_size = 0;
            }
        }
        shard_size += bytes.len();
        shards
            .last_mut()
            .expect("shard")
            .push((s.name.clone(), dtype, s.shape.clone(), bytes));
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut total = 0usize;
    for (i, shard) in shards.iter().enumerate() {
        let file = if spec.shard_bytes.is_some() {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        } else {
            "model.safetensors".to_string()
        };
        let views: Vec<(String, safetensors::tensor::TensorView)> = shard
            .iter()
            .map(|(name, dt, shape, bytes)| {
                total += bytes.len();
                weight_map.insert(name.clone(), file.clone());
                (
                    name.clone(),
                    safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes).expect("view"),
                )
            })
            .collect();
        let meta = Some(std::collections::HashMap::from([(
            "format".to_string(),
            "pt".to_string(),
        )]));
        safetensors::serialize_to_file(views, meta, &dir.join(&file))
            .map_err(|e| EngineError::Load(format!("{file}: {e}")))?;
    }
    if spec.shard_bytes.is_some() {
        write_json(
            &dir.join("model.safetensors.index.json"),
            &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
        )?;
    }
    Ok(params)
}
