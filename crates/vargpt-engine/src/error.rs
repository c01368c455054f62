//! Errors the engine reports; each names what is wrong so callers can map it to a
//! result code. Three kinds: the request's fault (`InvalidImage`, `PromptTooLong`,
//! `InvalidRequest`), the engine's fault (`Load`, `Inference`, `Internal`), and
//! the request's time bound (`Timeout`).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The input image could not be decoded or breaks a limit.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// The rendered prompt has more tokens than the model or the configured limit allows.
    #[error("prompt too long: {tokens} tokens, limit {limit}")]
    PromptTooLong { tokens: usize, limit: usize },
    /// A request field is missing or out of range: only ever the request's content.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The model directory / hub id could not be loaded.
    #[error("model load failed: {0}")]
    Load(String),
    /// A failure inside the forward pass (should not happen on valid input).
    #[error("inference failed: {0}")]
    Inference(String),
    /// A fault of the engine itself (a panic, a broken invariant, a stopped
    /// batching thread), never the request's.
    #[error("internal error: {0}")]
    Internal(String),
    /// The request ran past its time bound and was dropped.
    #[error("request exceeded its time limit of {:.1} s", limit.as_secs_f64())]
    Timeout { limit: Duration },
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
            M::Internal(m) => EngineError::Internal(m),
            other => EngineError::Inference(other.to_string()),
        }
    }
}

impl EngineError {
    /// The message of a caught panic, as an internal error.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        EngineError::Internal(format!("engine panicked: {what}"))
    }

    /// Whether the request itself is at fault (its content, not the engine or a timer).
    pub fn is_request_fault(&self) -> bool {
        matches!(
            self,
            EngineError::InvalidImage(_)
                | EngineError::PromptTooLong { .. }
                | EngineError::InvalidRequest(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_model_faults_are_not_the_requests() {
        let e: EngineError =
            vargpt_model::ModelError::Internal("tensor-parallel rank panicked".into()).into();
        assert!(matches!(e, EngineError::Internal(_)), "{e:?}");
        assert!(!e.is_request_fault());
        let e: EngineError = vargpt_model::ModelError::Input("image tokens".into()).into();
        assert!(e.is_request_fault());
    }

    #[test]
    fn panics_become_internal_errors_with_their_message() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        let e = EngineError::from_panic(p.as_ref());
        assert!(
            matches!(&e, EngineError::Internal(m) if m.contains("boom 7")),
            "{e}"
        );
    }
}
