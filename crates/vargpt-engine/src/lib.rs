//! vargpt-engine: turns the pure model into a service — requests, sampling, the
//! unified text→image loop, model resolution (directory or hub id).

pub mod engine;
pub mod error;
pub mod generate;
pub mod hub;
pub mod parallel;
pub mod request;
pub mod sampling;
pub mod scheduler;
pub mod sequence;

pub use engine::{
    parse_dtype, select_device, validate_params, Engine, EngineLimits, LoadOptions, Prepared,
};
pub use error::EngineError;
pub use generate::{ImageOutput, ImageSampling, NoObserver, Observer};
pub use request::{FinishReason, GeneratedImage, Request, Response, SamplingParams, Task, Timings};
pub use sampling::{NoiseSource, RecordedNoise, RngNoise};
pub use scheduler::{BatchConfig, Reply, Scheduler};
pub use sequence::Sequence;
