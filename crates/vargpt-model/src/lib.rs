//! vargpt-model: the VARGPT-LLaVA v1 network in candle, loading the published
//! checkpoint layout. Pure compute: no network, no threads of its own, no I/O
//! beyond reading a model directory.

pub mod clip;
pub mod config;
pub mod conv;
pub mod cpu_ops;
pub mod error;
pub mod kv;
pub mod llama;
pub mod manifest;
pub mod model;
pub mod model_dir;
pub mod nn;
pub mod projector;
pub mod safetensors_mmap;
pub mod text;
pub mod tp;
#[cfg(feature = "nccl")]
pub mod tp_nccl;
pub mod var;
pub mod vqvae;
pub mod weights;

pub use config::{GenerationConfig, VarConfig, VargptConfig};
pub use error::{ModelError, Result};
pub use llama::KvCache;
pub use manifest::{expected_tensors, TensorSpec};
pub use model::VargptModel;
pub use model_dir::ModelFiles;
pub use text::{ChatTemplate, ContentPart, Message, TextTokenizer};
pub use var::VarCache;
pub use weights::{Vb, Weights};
