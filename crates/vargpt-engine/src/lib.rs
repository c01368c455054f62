//! vargpt-engine: turns the pure model into a service — requests, sampling, the
//! unified text→image loop, continuous batching, model resolution (directory or hub id).

pub mod engine;
pub mod error;
pub mod hub;
mod load;
pub mod observer;
pub mod options;
pub mod parallel;
pub mod prefill;
pub mod prompt;
pub mod provenance;
pub mod request;
mod response;
pub mod sampling;
pub mod scheduler;
pub mod sequence;

pub use engine::Engine;
pub use error::EngineError;
pub use observer::{NoObserver, Observer};
pub use options::{parse_dtype, select_device, EngineLimits, LoadOptions};
pub use prompt::{validate_params, Prepared};
pub use provenance::ModelInfo;
pub use request::{FinishReason, GeneratedImage, Request, Response, SamplingParams, Task, Timings};
pub use sampling::{NoiseSource, RecordedNoise, RngNoise};
pub use scheduler::{BatchConfig, Reply, Scheduler};
pub use sequence::{ImageOutput, ImageSampling, Sequence};
