//! NCCL communicator for tensor parallelism across the GPUs of one process: one
//! rank per GPU, all created together (`ncclCommInitAll`-style group from one
//! unique id), so the id never leaves the process.

use crate::tp::Communicator;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use cudarc::nccl::safe::{Comm, Id, ReduceOp};
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
    /// One communicator per CUDA device, rank i on `devices[i]`.
    pub fn group(devices: &[Device]) -> Result<Vec<Arc<dyn Communicator>>, String> {
        let id = Id::new().map_err(|e| format!("nccl id: {e:?}"))?;
        let world = devices.len();
        let mut out: Vec<Arc<dyn Communicator>> = Vec::with_capacity(world);
        // Ranks must initialise concurrently: ncclCommInitRank blocks until all joined.
        let comms: Vec<Result<Comm, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = devices
                .iter()
                .enumerate()
                .map(|(rank, dev)| {
                    s.spawn(move || -> Result<Comm, String> {
                        let Device::Cuda(cuda) = dev else {
                            return Err("NCCL needs CUDA devices".into());
                        };
                        Comm::from_rank(cuda.cuda_stream(), rank, world, id)
                            .map_err(|e| format!("rank {rank}: {e:?}"))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("init panicked".into())))
                .collect()
        });
        for (rank, c) in comms.into_iter().enumerate() {
            out.push(Arc::new(NcclComm {
                rank,
                world,
                comm: c?,
            }));
        }
        Ok(out)
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
