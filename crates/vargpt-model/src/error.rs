//! Typed errors of the model crate. Each names the file, key or tensor at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("tensor `{name}` is missing from the checkpoint")]
    MissingTensor { name: String },
    #[error("tensor `{name}` is not part of the VARGPT-LLaVA layout (unknown tensor)")]
    UnknownTensor { name: String },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` has unsupported dtype {dtype}")]
    BadDtype { name: String, dtype: String },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("image preprocessing: {0}")]
    Image(#[from] vargpt_imageproc::ImageError),
    /// The caller's input is wrong (e.g. image tokens without an image).
    #[error("input: {0}")]
    Input(String),
    /// A fault inside the model (a broken invariant, a panicked rank), never the input's.
    #[error("internal: {0}")]
    Internal(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
