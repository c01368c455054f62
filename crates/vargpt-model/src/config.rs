//! `config.json` of a VARGPT-LLaVA model directory, deserialized once and validated once.
//!
//! Everything shape-related is read from here; nothing in the model assumes the
//! published sizes. `var_config` is an addition of the test checkpoints: the
//! published config has none, and the authors' code hard-codes the VAR-d30 values
//! that [`VarConfig::default`] reproduces.

use crate::error::{ModelError, Result};
use serde::Deserialize;
use std::path::Path;

fn default_ln_eps() -> f64 {
    1e-5
}
fn default_quick_gelu() -> String {
    "quick_gelu".into()
}
fn default_channels() -> usize {
    3
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "default_channels")]
    pub num_channels: usize,
}

impl VisionConfig {
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

fn default_rope_theta() -> f64 {
    10000.0
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    4096
}
fn default_silu() -> String {
    "silu".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

impl TextConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
}

/// VAR / VQVAE hyper-parameters (`build_vae_vargpt_v1` defaults when absent).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(default)]
pub struct VarConfig {
    pub depth: usize,
    pub patch_nums: Vec<usize>,
    pub vocab_size: usize,
    pub z_channels: usize,
    pub ch: usize,
    pub share_quant_resi: usize,
}

impl Default for VarConfig {
    fn default() -> Self {
        Self {
            depth: 30,
            patch_nums: vec![1, 2, 3, 4, 5, 6, 8, 10, 13, 16],
            vocab_size: 4096,
            z_channels: 32,
            ch: 160,
            share_quant_resi: 4,
        }
    }
}

/// The VQVAE channel multipliers (fixed in the authors' builder).
pub const VAE_CH_MULT: [usize; 5] = [1, 1, 2, 2, 4];
/// Resnet blocks per level of the VQVAE encoder; the decoder has one more.
pub const VAE_NUM_RES_BLOCKS: usize = 2;

impl VarConfig {
    /// VAR width: 64 per block of depth.
    pub fn width(&self) -> usize {
        64 * self.depth
    }
    pub fn heads(&self) -> usize {
        self.depth
    }
    pub fn stages(&self) -> usize {
        self.patch_nums.len()
    }
    /// Total number of image tokens over all stages (Σ pn²).
    pub fn total_tokens(&self) -> usize {
        self.patch_nums.iter().map(|p| p * p).sum()
    }
    /// Index of the first token of each stage, plus the end.
    pub fn stage_offsets(&self) -> Vec<usize> {
        let mut out = vec![0];
        for p in &self.patch_nums {
            out.push(out.last().unwrap() + p * p);
        }
        out
    }
    /// Stage of every image token, in order (`lvl_1L`).
    pub fn token_stages(&self) -> Vec<usize> {
        self.patch_nums
            .iter()
            .enumerate()
            .flat_map(|(k, p)| std::iter::repeat_n(k, p * p))
            .collect()
    }

    /// Side of the final latent map (`PN[-1]`).
    pub fn latent_side(&self) -> usize {
        *self.patch_nums.last().unwrap_or(&1)
    }
    /// Side of the decoded picture.
    pub fn image_side(&self) -> usize {
        self.latent_side() << (VAE_CH_MULT.len() - 1)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct SpecialTokens {
    pub image_gen_start_token_id: u32,
    pub image_gen_end_token_id: u32,
    pub image_gen_pad_token_id: u32,
    #[serde(default)]
    pub image_gen_start: Option<String>,
    #[serde(default)]
    pub image_gen_end: Option<String>,
    #[serde(default)]
    pub image_gen_pad: Option<String>,
}

fn default_feature_layer() -> i64 {
    -2
}
fn default_select() -> String {
    "default".into()
}
fn default_projector_act() -> String {
    "gelu".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct VargptConfig {
    /// Top-level hidden size; the GenPatchMergers use this one (falls back to the text hidden size).
    #[serde(default)]
    pub hidden_size: Option<usize>,
    pub image_token_index: u32,
    #[serde(default)]
    pub image_seq_length: Option<usize>,
    #[serde(default = "default_feature_layer")]
    pub vision_feature_layer: i64,
    #[serde(default = "default_select")]
    pub vision_feature_select_strategy: String,
    #[serde(default = "default_projector_act")]
    pub projector_hidden_act: String,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    pub special_tokens: SpecialTokens,
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    #[serde(default)]
    pub var_config: Option<VarConfig>,
}

impl VargptConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text).map_err(|e| match e {
            ModelError::Config { message, .. } => ModelError::Config {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| ModelError::Config {
            path: "config.json".into(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|message| ModelError::Config {
            path: "config.json".into(),
            message,
        })?;
        Ok(cfg)
    }

    pub fn var(&self) -> VarConfig {
        self.var_config.clone().unwrap_or_default()
    }

    pub fn llm_hidden(&self) -> usize {
        self.hidden_size.unwrap_or(self.text_config.hidden_size)
    }

    /// Index of the CLIP hidden state used as the image feature (`hidden_states[k]` = after k layers).
    pub fn feature_layer_index(&self) -> usize {
        let n = self.vision_config.num_hidden_layers as i64 + 1;
        let l = self.vision_feature_layer;
        (if l < 0 { n + l } else { l }) as usize
    }

    /// Image tokens per image after the select strategy.
    pub fn image_tokens_per_image(&self) -> usize {
        let n = self.vision_config.num_patches();
        if self.vision_feature_select_strategy == "default" {
            n
        } else {
            n + 1
        }
    }

    /// Row of `class_emb` used as the generation class: `image_gen_start + 1` (the "null" class).
    pub fn gen_class_index(&self) -> usize {
        self.special_tokens.image_gen_start_token_id as usize + 1
    }

    /// Number of rows of `vargpt_gen.class_emb` (`num_classes + 1`).
    pub fn class_emb_rows(&self) -> usize {
        self.gen_class_index() + 1
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let v = &self.vision_config;
        let t = &self.text_config;
        let var = self.var();
        let check = |ok: bool, msg: String| if ok { Ok(()) } else { Err(msg) };
        check(
            v.patch_size > 0 && v.image_size.is_multiple_of(v.patch_size),
            format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ),
        )?;
        check(
            v.num_attention_heads > 0 && v.hidden_size.is_multiple_of(v.num_attention_heads),
            format!(
                "vision_config.hidden_size {} not divisible by num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ),
        )?;
        check(
            v.hidden_act == "quick_gelu" || v.hidden_act == "gelu",
            format!("vision_config.hidden_act {:?} unsupported", v.hidden_act),
        )?;
        let n = v.num_hidden_layers as i64;
        check(
            self.vision_feature_layer >= -(n + 1) && self.vision_feature_layer <= n,
            format!(
                "vision_feature_layer {} out of range for {} layers",
                self.vision_feature_layer, n
            ),
        )?;
        check(
            matches!(
                self.vision_feature_select_strategy.as_str(),
                "default" | "full"
            ),
            format!(
                "vision_feature_select_strategy {:?} must be \"default\" or \"full\"",
                self.vision_feature_select_strategy
            ),
        )?;
        check(
            t.num_attention_heads > 0
                && t.kv_heads() > 0
                && t.num_attention_heads.is_multiple_of(t.kv_heads()),
            "text_config: num_attention_heads must be a multiple of num_key_value_heads".into(),
        )?;
        check(
            t.head_dim().is_multiple_of(2) && t.head_dim() > 0,
            format!("text_config head_dim {} must be even", t.head_dim()),
        )?;
        check(
            t.rope_scaling.as_ref().is_none_or(|v| v.is_null()),
            "text_config.rope_scaling is not supported".into(),
        )?;
        check(
            t.hidden_act == "silu",
            format!("text_config.hidden_act {:?} unsupported", t.hidden_act),
        )?;
        check(
            (self.image_token_index as usize) < t.vocab_size,
            format!("image_token_index {} >= vocab_size", self.image_token_index),
        )?;
        let st = &self.special_tokens;
        for (name, id) in [
            ("image_gen_start_token_id", st.image_gen_start_token_id),
            ("image_gen_end_token_id", st.image_gen_end_token_id),
            ("image_gen_pad_token_id", st.image_gen_pad_token_id),
        ] {
            check(
                (id as usize) < t.vocab_size,
                format!("special_tokens.{name} {id} >= vocab_size {}", t.vocab_size),
            )?;
        }
        check(var.depth > 0, "var_config.depth must be > 0".into())?;
        check(
            !var.patch_nums.is_empty()
                && var.patch_nums.iter().all(|&p| p > 0)
                && var.patch_nums.windows(2).all(|w| w[0] < w[1]),
            format!(
                "var_config.patch_nums {:?} must be non-empty and increasing",
                var.patch_nums
            ),
        )?;
        check(
            var.vocab_size > 0 && var.z_channels > 0 && var.share_quant_resi > 0,
            "var_config: vocab_size, z_channels, share_quant_resi must be > 0".into(),
        )?;
        check(
            var.ch > 0 && var.ch.is_multiple_of(32),
            format!(
                "var_config.ch {} must be a multiple of 32 (GroupNorm groups)",
                var.ch
            ),
        )?;
        if let Some(n) = self.image_seq_length {
            check(
                n == self.image_tokens_per_image(),
                format!(
                    "image_seq_length {n} disagrees with vision tower ({} tokens)",
                    self.image_tokens_per_image()
                ),
            )?;
        }
        Ok(())
    }
}

/// `generation_config.json` (only what decoding needs).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct GenerationConfig {
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

impl GenerationConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// EOS ids (the field may be a number or a list).
    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|v| vec![v as u32]).unwrap_or_default()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            _ => vec![],
        }
    }
}
