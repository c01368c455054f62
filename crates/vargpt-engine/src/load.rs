//! Loading: resolve the model (directory or hub id), read its weights in the
//! chosen dtype on the chosen device(s), and build the network.

use crate::error::EngineError;
use crate::options::{parse_dtype, select_device, LoadOptions};
use crate::provenance::{self, ModelInfo};
use candle_core::DType;
use vargpt_model::{expected_tensors, ModelFiles, VargptModel, Weights};

/// A model read from disk, ready to wrap in an [`crate::Engine`].
pub(crate) struct Loaded {
    pub files: ModelFiles,
    pub model: VargptModel,
    /// Bytes of weights as stored (before any dtype conversion).
    pub weight_bytes: usize,
    pub info: ModelInfo,
}

pub(crate) fn load(opts: &LoadOptions) -> Result<Loaded, EngineError> {
    let dir = crate::hub::resolve_model(
        &opts.model,
        opts.revision.as_deref(),
        &crate::hub::default_cache(),
    )?;
    let files = ModelFiles::open(&dir).map_err(|e| EngineError::Load(e.to_string()))?;
    let device = select_device(opts.devices.first().copied().or(opts.cuda_device))?;
    // On CPU a half-precision choice applies to the linear-layer weights only:
    // activations stay f32 (candle has no fast CPU path for f16/bf16 arithmetic,
    // while the decode kernels widen half weights in registers for free).
    let requested = opts.dtype.as_deref().map(parse_dtype).transpose()?;
    let (dtype, linear_dtype) = match (requested, device.is_cpu()) {
        (None, true) => (DType::F32, DType::F32),
        (None, false) => (DType::BF16, DType::BF16),
        (Some(d), true) => (DType::F32, d),
        (Some(d), false) => (d, d),
    };
    let mut weights = Weights::open(&dir, expected_tensors(&files.config), dtype, &device)
        .map_err(|e| EngineError::Load(e.to_string()))?;
    weights.set_linear_dtype(linear_dtype);
    let shards = crate::parallel::shards(opts, &device)?;
    let model = VargptModel::load_sharded(&weights, &files.config, &shards)
        .map_err(|e| EngineError::Load(e.to_string()))?;
    let info = ModelInfo {
        model_id: opts.model.clone(),
        revision: provenance::revision(&opts.model, &dir),
        dtype: provenance::dtype_label(dtype, linear_dtype),
        device: provenance::device_label(shards.iter().map(|s| &s.device)),
        tensor_parallel: shards.len(),
    };
    Ok(Loaded {
        files,
        model,
        weight_bytes: weights.stored_bytes(),
        info,
    })
}
