//! Building the tensor-parallel ranks of an engine: one shard per device, connected
//! by NCCL on GPUs (feature `nccl`) or by the in-process thread communicator.

use crate::error::EngineError;
use crate::options::LoadOptions;
use candle_core::Device;
use std::sync::Arc;
use vargpt_model::tp::{Communicator, Shard, ThreadComm};

/// The shards for `opts.tp` ranks; rank 0 uses `first`.
pub fn shards(opts: &LoadOptions, first: &Device) -> Result<Vec<Shard>, EngineError> {
    let tp = opts.tp.max(1);
    if tp == 1 {
        return Ok(vec![Shard::single(first.clone())]);
    }
    let devices: Vec<Device> = if first.is_cpu() {
        vec![Device::Cpu; tp]
    } else {
        let ordinals: Vec<usize> = if opts.devices.is_empty() {
            let base = opts.cuda_device.unwrap_or(0);
            (base..base + tp).collect()
        } else {
            opts.devices.clone()
        };
        if ordinals.len() != tp {
            return Err(EngineError::Load(format!(
                "--tp {tp} needs {tp} devices, {} listed",
                ordinals.len()
            )));
        }
        ordinals
            .iter()
            .map(|&i| {
                Device::new_cuda(i).map_err(|e| {
                    EngineError::Load(format!(
                        "--tp {tp}: GPU {i} is not available ({e}); fewer devices than asked"
                    ))
                })
            })
            .collect::<Result<_, _>>()?
    };
    let comms = communicators(&devices)?;
    Ok(comms
        .into_iter()
        .zip(devices)
        .map(|(c, d)| Shard::new(c, d))
        .collect())
}

/// NCCL needs one rank per distinct GPU ("duplicate GPU" otherwise); a GPU listed
/// twice (e.g. `--devices 0,0`, to try sharding on one card) uses the thread
/// communicator instead.
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
fn nccl_usable(devices: &[Device]) -> bool {
    let locations: Vec<_> = devices.iter().map(|d| d.location()).collect();
    devices.iter().all(|d| d.is_cuda())
        && locations
            .iter()
            .enumerate()
            .all(|(i, l)| !locations[..i].contains(l))
}

#[cfg(feature = "nccl")]
fn communicators(devices: &[Device]) -> Result<Vec<Arc<dyn Communicator>>, EngineError> {
    if nccl_usable(devices) {
        return vargpt_model::tp_nccl::NcclComm::group(devices)
            .map_err(|e| EngineError::Load(format!("nccl: {e}")));
    }
    Ok(ThreadComm::group(devices.len()))
}

#[cfg(not(feature = "nccl"))]
fn communicators(devices: &[Device]) -> Result<Vec<Arc<dyn Communicator>>, EngineError> {
    // Without NCCL the thread communicator also works across GPUs (through host memory).
    Ok(ThreadComm::group(devices.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The duplicate-GPU half of the rule needs CUDA devices: `tests/gpu.rs`
    // (`gpu_tp_on_one_card_matches_tp1`, built with `nccl`) covers it.
    #[test]
    fn nccl_needs_cuda_devices() {
        assert!(!nccl_usable(&[Device::Cpu, Device::Cpu]));
    }
}
