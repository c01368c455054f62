//! NCCL communicator for tensor parallelism across the GPUs of one process: one
//! rank per GPU, all created together by `ncclCommInitAll`, so no unique id has to
//! travel between processes.

use crate::tp::Communicator;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use cudarc::nccl::safe::{Comm, ReduceOp};
use std::sync::Arc;

#[derive(Debug)]
pub struct NcclComm {
    rank: usize,
    world: usize,
    comm: Comm,
}

// SAFETY: each rank's communicator is used only by that rank's thread (the
// tensor-parallel forward runs one scoped thread per rank); NCCL requires a
// communicator not be used concurrently from several threads, which holds.
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

impl NcclComm {
    /// One communicator per CUDA device, rank i on `devices[i]`, created together
    /// (`ncclCommInitAll`) on each device's own stream, so NCCL's work is ordered
    /// after the kernels that produced its input.
    pub fn group(devices: &[Device]) -> Result<Vec<Arc<dyn Communicator>>, String> {
        let streams = devices
            .iter()
            .map(|d| match d {
                Device::Cuda(cuda) => Ok(cuda.cuda_stream()),
                _ => Err("NCCL needs CUDA devices".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let world = streams.len();
        let comms = Comm::from_devices(streams).map_err(|e| format!("nccl init: {e:?}"))?;
        Ok(comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| Arc::new(NcclComm { rank, world, comm }) as Arc<dyn Communicator>)
            .collect())
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        t.contiguous()?
            .apply_op1_no_bwd(&AllReduceSum { comm: &self.comm })
    }
}

struct AllReduceSum<'a> {
    comm: &'a Comm,
}

impl CustomOp1 for AllReduceSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("nccl all-reduce runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (start, end) = l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("nccl all-reduce needs a contiguous tensor".into())
        })?;
        let dev = s.device().clone();
        let n = end - start;
        macro_rules! reduce {
            ($t:ty) => {{
                let src = s.as_cuda_slice::<$t>()?.slice(start..end);
                let mut dst = dev.alloc_zeros::<$t>(n)?;
                self.comm
                    .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                    .map_err(|e| candle_core::Error::Msg(format!("nccl all_reduce: {e:?}")))?;
                candle_core::CudaStorage::wrap_cuda_slice(dst, dev)
            }};
        }
        let out = match s.dtype() {
            DType::F32 => reduce!(f32),
            DType::F16 => reduce!(half::f16),
            DType::BF16 => reduce!(half::bf16),
            other => candle_core::bail!("nccl all-reduce: unsupported dtype {other:?}"),
        };
        Ok((out, l.shape().clone()))
    }
}
