//! The checkpoint maker: writes a random-weight model directory of any size in the
//! published VARGPT-LLaVA layout (config, safetensors — single or sharded with an
//! index —, tokenizer, template, processor and generation configs). Used for the
//! README demo, tests of other shapes, and benchmarks up to the full published size.
//!
//! The tokenizer is the reference fixture's LLaMA-style BPE tokenizer, its
//! vocabulary padded with `<extra_N>` tokens up to `base_vocab`, followed by the
//! five special tokens (`<image>`, `<pad>`, the three image-generation markers),
//! exactly where the published checkpoint has them (32000…32004).

mod fill;
mod layout;
mod spec;
mod templates;
mod write;

pub use fill::Fill;
pub use layout::{layout, Layout, Placed, ShardFile, StoredDtype};
pub use spec::CheckpointSpec;
pub use write::make_checkpoint;

use std::path::PathBuf;

/// Why a checkpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The spec asks for something the maker cannot write.
    #[error("invalid checkpoint spec: {0}")]
    Spec(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
