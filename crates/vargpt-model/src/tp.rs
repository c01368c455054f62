//! Tensor parallelism (Megatron-style): communicators and the shard description.
//!
//! Column-parallel layers keep a slice of the output features (attention heads,
//! MLP hidden units); row-parallel layers keep the matching slice of the input
//! features and sum their partial products with an all-reduce. Model code reads
//! the same at TP = 1 (no communicator, nothing sliced) and TP = N.

use candle_core::{Device, Tensor};
use std::fmt::Debug;
use std::sync::{Arc, Barrier, Mutex};

/// Sums a tensor across the ranks of a tensor-parallel group.
pub trait Communicator: Send + Sync + Debug {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Every rank passes its partial tensor (same shape); every rank gets the sum.
    fn all_reduce_sum(&self, t: &Tensor) -> candle_core::Result<Tensor>;
}

/// In-process communicator over threads (CPU): the test double of NCCL and a real
/// fallback for running shards on several CPU sockets / thread pools.
#[derive(Debug)]
pub struct ThreadComm {
    rank: usize,
    shared: Arc<ThreadCommShared>,
}

#[derive(Debug)]
struct ThreadCommShared {
    world: usize,
    slots: Mutex<Vec<Vec<f32>>>,
    barrier: Barrier,
}

impl ThreadComm {
    /// One communicator per rank, all connected.
    pub fn group(world: usize) -> Vec<Arc<dyn Communicator>> {
        let shared = Arc::new(ThreadCommShared {
            world,
            slots: Mutex::new(vec![Vec::new(); world]),
            barrier: Barrier::new(world),
        });
        (0..world)
            .map(|rank| {
                Arc::new(ThreadComm {
                    rank,
                    shared: shared.clone(),
                }) as Arc<dyn Communicator>
            })
            .collect()
    }
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.world
    }
    fn all_reduce_sum(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        let s = &self.shared;
        if s.world == 1 {
            return Ok(t.clone());
        }
        let dtype = t.dtype();
        let data: Vec<f32> = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        s.slots.lock().expect("comm lock")[self.rank] = data;
        s.barrier.wait();
        // Summed in rank order on every rank, so all ranks hold bit-identical results.
        let sum = {
            let slots = s.slots.lock().expect("comm lock");
            let mut acc = slots[0].clone();
            for other in &slots[1..] {
                for (a, b) in acc.iter_mut().zip(other) {
                    *a += b;
                }
            }
            acc
        };
        s.barrier.wait();
        Tensor::from_vec(sum, t.shape(), t.device())?.to_dtype(dtype)
    }
}

/// Which slice of the model a rank holds.
#[derive(Debug, Clone)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
    pub comm: Option<Arc<dyn Communicator>>,
    pub device: Device,
}

impl Shard {
    /// TP = 1 on `device`.
    pub fn single(device: Device) -> Self {
        Self {
            rank: 0,
            world: 1,
            comm: None,
            device,
        }
    }

    pub fn new(comm: Arc<dyn Communicator>, device: Device) -> Self {
        Self {
            rank: comm.rank(),
            world: comm.world_size(),
            comm: Some(comm),
            device,
        }
    }

    /// `[start, len)` of this rank's part of `n` units.
    pub fn range(&self, n: usize) -> (usize, usize) {
        let len = n / self.world;
        (self.rank * len, len)
    }

    pub fn all_reduce(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        match &self.comm {
            Some(c) if self.world > 1 => c.all_reduce_sum(t),
            _ => Ok(t.clone()),
        }
    }
}

/// Runs `f` on every tensor-parallel rank with that rank's part: rank 0 on the
/// calling thread, the others on scoped threads, all in lockstep through their
/// all-reduces. Returns rank 0's result (after the all-reduces every rank holds
/// the same value). With one rank nothing is spawned.
pub fn on_all_ranks<R, P, T, F>(ranks: &[R], parts: Vec<P>, f: F) -> crate::error::Result<T>
where
    R: Sync,
    P: Send,
    T: Send,
    F: Fn(&R, P) -> crate::error::Result<T> + Sync,
{
    let mut it = parts.into_iter().zip(ranks);
    let (part0, rank0) = it.next().expect("at least one rank");
    if ranks.len() == 1 {
        return f(rank0, part0);
    }
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = it
            .map(|(part, rank)| s.spawn(move || f(rank, part)))
            .collect();
        let r0 = f(rank0, part0);
        for h in handles {
            h.join().map_err(|_| {
                crate::error::ModelError::Input("tensor-parallel rank panicked".into())
            })??;
        }
        r0
    })
}

/// Checks that `what` (`n` heads or units) splits evenly over `world` ranks.
pub fn check_divisible(what: &str, n: usize, world: usize) -> Result<(), String> {
    if world == 0 || !n.is_multiple_of(world) {
        Err(format!(
            "{what} = {n} is not divisible by the tensor-parallel degree {world}"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_comm_sums_identically_on_every_rank() {
        let comms = ThreadComm::group(3);
        let results: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let t = Tensor::new(&[c.rank() as f32, 1.0, 0.5], &Device::Cpu).unwrap();
                        let mut last = vec![];
                        for _ in 0..5 {
                            last = c.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap();
                        }
                        last
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            assert_eq!(r, &vec![3.0, 3.0, 1.5]);
        }
    }
}
