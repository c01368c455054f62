//! The provenance of each result: the backend's static part (model id and
//! revision, dtype, device, tensor parallelism), this worker's build, and the
//! job's seed and effective sampling parameters — everything needed to
//! reproduce the result by resubmitting it.

use vargpt_engine::{ModelInfo, SamplingParams};
use vargpt_proto::Provenance;

/// `<crate version>+<git commit>`; the commit comes from `build.rs`.
pub const WORKER_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+", env!("VARGPT_GIT_COMMIT"));

/// The provenance of a job run on the model `info` describes, under
/// `params`, the parameters the engine actually got (defaults filled in,
/// seed set).
pub fn of_job(info: &ModelInfo, params: &SamplingParams) -> Provenance {
    info.provenance(WORKER_VERSION, params)
}

/// The part of a provenance that does not depend on the job (model, worker
/// build): what an error result carries when its job never reached the
/// engine (seed 0 and no params, since none were used).
pub fn static_part(info: &ModelInfo) -> Provenance {
    Provenance {
        model_id: info.model_id.clone(),
        model_revision: info.revision.clone(),
        dtype: info.dtype.clone(),
        device: info.device.clone(),
        tensor_parallel: u32::try_from(info.tensor_parallel).unwrap_or(u32::MAX),
        worker_version: WORKER_VERSION.to_string(),
        ..Default::default()
    }
}

/// What a backend without a loaded model reports (the fake backend): its id,
/// no revision, one CPU rank.
pub fn unloaded(model_id: &str) -> ModelInfo {
    ModelInfo {
        model_id: model_id.to_string(),
        revision: String::new(),
        dtype: String::new(),
        device: "cpu".to_string(),
        tensor_parallel: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_provenance_carries_the_seed_and_every_param() {
        let params = SamplingParams {
            seed: Some(42),
            max_new_tokens: 7,
            ..Default::default()
        };
        let p = of_job(&unloaded("fake:m"), &params);
        assert_eq!(p.model_id, "fake:m");
        assert_eq!(p.seed, 42);
        assert_eq!(p.params.seed, Some(42));
        assert_eq!(p.params.max_new_tokens, Some(7));
        assert_eq!(p.params.cfg_scale, Some(params.cfg_scale));
        assert_eq!(p.tensor_parallel, 1);
        let (version, commit) = p.worker_version.split_once('+').unwrap();
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        assert!(!commit.is_empty());
    }
}
