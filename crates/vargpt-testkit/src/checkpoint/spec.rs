//! What model to make: sizes, dtype, sharding, fill, and the presets.

use super::fill::Fill;
use super::templates::config_template;
use super::CheckpointError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vargpt_model::{expected_tensors, TensorSpec, VarConfig, VargptConfig};

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
    /// How the random values are drawn.
    pub fill: Fill,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self::small()
    }
}

/// Shard size of `save_pretrained` (transformers' default `max_shard_size="5GB"`).
const HF_SHARD_BYTES: usize = 5_000_000_000;

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
            fill: Fill::Normal,
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
            fill: Fill::Normal,
        }
    }

    /// The published VARGPT_LLaVA-v1 at full size (9.28 B parameters, ~18.6 GB in
    /// bf16): LLaMA-7B (4096 wide, 32 layers, 32 heads), CLIP ViT-L/14-336, VAR-d30
    /// and the VQVAE, stored as bf16 shards of at most 5 GB with an index, like the
    /// published checkpoint. No `var_config` is written: the published config has
    /// none and the loader's VAR-d30 defaults apply. Filled in parallel.
    pub fn full() -> Self {
        Self {
            vision_hidden: 1024,
            vision_intermediate: 4096,
            vision_layers: 24,
            vision_heads: 16,
            image_size: 336,
            patch_size: 14,
            text_hidden: 4096,
            text_intermediate: 11008,
            text_layers: 32,
            text_heads: 32,
            text_kv_heads: 32,
            base_vocab: 32000,
            vocab_size: 32064,
            max_position_embeddings: 4096,
            var: VarConfig::default(),
            write_var_config: false,
            seed: 30,
            dtype: "bf16".into(),
            shard_bytes: Some(HF_SHARD_BYTES),
            fill: Fill::Fast,
        }
    }

    /// The preset called `name` (`small`, `bench-mid`, `full`).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "small" => Some(Self::small()),
            "bench-mid" => Some(Self::bench_mid()),
            "full" => Some(Self::full()),
            _ => None,
        }
    }

    pub(crate) fn special_id(&self, i: usize) -> u32 {
        (self.base_vocab + i) as u32
    }

    /// The config.json the maker writes (the fixture's keys, these sizes).
    pub fn config_json(&self) -> Value {
        let mut c = config_template();
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
        t["head_dim"] = json!(self.text_hidden / self.text_heads.max(1));
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
        let obj = c.as_object_mut().expect("template config is an object");
        if self.write_var_config {
            obj.insert("var_config".into(), json!(self.var));
        } else {
            obj.remove("var_config");
        }
        obj.insert("torch_dtype".into(), json!(torch_dtype_name(&self.dtype)));
        c
    }

    /// The parsed config and every tensor the checkpoint holds (published order).
    pub fn tensors(&self) -> Result<(VargptConfig, Vec<TensorSpec>), CheckpointError> {
        let cfg = VargptConfig::from_json_str(&self.config_json().to_string())
            .map_err(|e| CheckpointError::Spec(e.to_string()))?;
        let specs = expected_tensors(&cfg);
        Ok((cfg, specs))
    }

    /// Rejects specs the maker cannot write.
    pub(crate) fn validate(&self) -> Result<(), CheckpointError> {
        if !matches!(self.dtype.as_str(), "f32" | "f16" | "bf16") {
            return Err(CheckpointError::Spec(format!(
                "dtype {:?}: use f32, f16 or bf16",
                self.dtype
            )));
        }
        if self.vocab_size < self.base_vocab + super::templates::SPECIAL_TOKENS.len() {
            return Err(CheckpointError::Spec(
                "vocab_size must be >= base_vocab + 5".into(),
            ));
        }
        if self.text_heads == 0 || self.patch_size == 0 {
            return Err(CheckpointError::Spec(
                "text_heads and patch_size must be positive".into(),
            ));
        }
        Ok(())
    }
}

fn torch_dtype_name(d: &str) -> &'static str {
    match d {
        "f16" => "float16",
        "bf16" => "bfloat16",
        _ => "float32",
    }
}
