//! Errors the engine reports; each names what is wrong so callers can map it to a result code.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The input image could not be decoded or breaks a limit.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// The rendered prompt has more tokens than the model or the configured limit allows.
    #[error("prompt too long: {tokens} tokens, limit {limit}")]
    PromptTooLong { tokens: usize, limit: usize },
    /// A request field is missing or out of range.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The model directory / hub id could not be loaded.
    #[error("model load failed: {0}")]
    Load(String),
    /// A failure inside the forward pass (should not happen on valid input).
    #[error("inference failed: {0}")]
    Inference(String),
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Inference(e.to_string())
    }
}

impl From<vargpt_model::ModelError> for EngineError {
    fn from(e: vargpt_model::ModelError) -> Self {
        use vargpt_model::ModelError as M;
        match e {
            M::Input(m) => EngineError::InvalidRequest(m),
            M::Image(e) => EngineError::InvalidImage(e.to_string()),
            other => EngineError::Inference(other.to_string()),
        }
    }
}
