//! Tensor parallelism (Megatron-style): communicators and the shard description.
//!
//! Column-parallel layers keep a slice of the output features (attention heads,
//! MLP hidden units); row-parallel layers keep the matching slice of the input
//! features and sum their partial products with an all-reduce. Model code reads
//! the same at TP = 1 (no communicator, nothing sliced) and TP = N.

use candle_core::{Device, Tensor};
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};

/// Sums a tensor across the ranks of a tensor-parallel group.
pub trait Communicator: Send + Sync + Debug {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Every rank passes its partial tensor (same shape); every rank gets the sum.
    fn all_reduce_sum(&self, t: &Tensor) -> candle_core::Result<Tensor>;
    /// A rank failed: ranks waiting in (or later entering) an all-reduce of this
    /// group return an error instead of waiting for it forever.
    fn abort(&self) {}
    /// Every rank has returned after an abort: the group may be used again.
    fn reset(&self) {}
}

/// What a rank waiting for a failed one gets (see [`Communicator::abort`]).
const ABORTED: &str = "another tensor-parallel rank failed";

/// A rank as [`on_all_ranks`] sees it: its link to the other ranks.
pub trait RankMember {
    fn comm(&self) -> Option<&Arc<dyn Communicator>>;
}

/// A reusable barrier that a failing rank can break (std's `Barrier` cannot be).
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    turn: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    arrived: usize,
    generation: u64,
    broken: bool,
}

impl Gate {
    fn wait(&self, world: usize) -> candle_core::Result<()> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if g.broken {
            candle_core::bail!("{ABORTED}");
        }
        g.arrived += 1;
        if g.arrived == world {
            g.arrived = 0;
            g.generation += 1;
            self.turn.notify_all();
            return Ok(());
        }
        let generation = g.generation;
        while g.generation == generation && !g.broken {
            g = self.turn.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if g.generation == generation {
            candle_core::bail!("{ABORTED}");
        }
        Ok(())
    }

    fn set_broken(&self, broken: bool) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.broken = broken;
        g.arrived = 0;
        self.turn.notify_all();
    }
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
    gate: Gate,
}

impl ThreadComm {
    /// One communicator per rank, all connected.
    pub fn group(world: usize) -> Vec<Arc<dyn Communicator>> {
        let shared = Arc::new(ThreadCommShared {
            world,
            slots: Mutex::new(vec![Vec::new(); world]),
            gate: Gate::default(),
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
        s.slots.lock().unwrap_or_else(|p| p.into_inner())[self.rank] = data;
        s.gate.wait(s.world)?;
        // Summed in rank order on every rank, so all ranks hold bit-identical results.
        let sum = {
            let slots = s.slots.lock().unwrap_or_else(|p| p.into_inner());
            let mut acc = slots[0].clone();
            for other in &slots[1..] {
                for (a, b) in acc.iter_mut().zip(other) {
                    *a += b;
                }
            }
            acc
        };
        s.gate.wait(s.world)?;
        Tensor::from_vec(sum, t.shape(), t.device())?.to_dtype(dtype)
    }
    fn abort(&self) {
        self.shared.gate.set_broken(true);
    }
    fn reset(&self) {
        self.shared.gate.set_broken(false);
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

    /// `(start, len)` of this rank's part of `n` units: rank r holds
    /// `[⌈r·n/w⌉, ⌈(r+1)·n/w⌉)`, so parts differ by at most one unit, any `n`
    /// splits over any degree (30 VAR-d30 heads over 4 ranks: 8, 7, 8, 7) and
    /// rank 0 holds at least one unit whenever `n > 0`. When `n < world` some
    /// ranks hold none.
    pub fn range(&self, n: usize) -> (usize, usize) {
        split(n, self.world, self.rank)
    }

    /// This rank's attention heads: whole groups of query heads with the key/value
    /// head they share (grouped-query attention), so every rank's heads read only
    /// its own key/value heads. With `kv_heads < world` some ranks hold none.
    pub fn heads(&self, heads: usize, kv_heads: usize) -> Result<HeadRange, String> {
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(format!(
                "{heads} attention heads do not form groups over {kv_heads} key/value heads"
            ));
        }
        let group = heads / kv_heads;
        let (kv_start, kv_len) = self.range(kv_heads);
        Ok(HeadRange {
            start: kv_start * group,
            len: kv_len * group,
            kv_start,
            kv_len,
        })
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
/// the same value). With one rank nothing is spawned. A rank that fails or
/// panics aborts its group, so the others return instead of waiting for it; the
/// error returned is the failing rank's.
pub fn on_all_ranks<R, P, T, F>(ranks: &[R], parts: Vec<P>, f: F) -> crate::error::Result<T>
where
    R: Sync + RankMember,
    P: Send,
    T: Send,
    F: Fn(&R, P) -> crate::error::Result<T> + Sync,
{
    let mut it = parts.into_iter().zip(ranks);
    let (part0, rank0) = it.next().expect("at least one rank");
    if ranks.len() == 1 {
        return f(rank0, part0);
    }
    let run = |rank: &R, part: P| -> crate::error::Result<T> {
        let out = catch_unwind(AssertUnwindSafe(|| f(rank, part))).unwrap_or_else(|_| {
            Err(crate::error::ModelError::Internal(
                "tensor-parallel rank panicked".into(),
            ))
        });
        if out.is_err() {
            if let Some(c) = rank.comm() {
                c.abort();
            }
        }
        out
    };
    let results: Vec<crate::error::Result<T>> = std::thread::scope(|s| {
        let run = &run;
        let handles: Vec<_> = it
            .map(|(part, rank)| s.spawn(move || run(rank, part)))
            .collect();
        let mut results = vec![run(rank0, part0)];
        for h in handles {
            results.push(h.join().unwrap_or_else(|_| {
                Err(crate::error::ModelError::Internal(
                    "tensor-parallel rank panicked".into(),
                ))
            }));
        }
        results
    });
    if results.iter().all(|r| r.is_ok()) {
        return results.into_iter().next().expect("rank 0");
    }
    // Every rank has returned: the group can be used by the next call.
    for r in ranks {
        if let Some(c) = r.comm() {
            c.reset();
        }
    }
    let aborted = |e: &crate::error::ModelError| e.to_string().contains(ABORTED);
    let mut errors = results.into_iter().filter_map(|r| r.err());
    let first = errors.next().expect("a failed rank");
    if aborted(&first) {
        Err(errors.find(|e| !aborted(e)).unwrap_or(first))
    } else {
        Err(first)
    }
}

/// `(start, len)` of part `rank` of `n` units split over `world` parts as evenly
/// as whole units allow (see [`Shard::range`]).
pub fn split(n: usize, world: usize, rank: usize) -> (usize, usize) {
    let world = world.max(1);
    let start = (rank * n).div_ceil(world);
    let end = ((rank + 1) * n).div_ceil(world);
    (start, end - start)
}

/// Query heads `[start, start + len)` and key/value heads `[kv_start, kv_start +
/// kv_len)` held by one rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadRange {
    pub start: usize,
    pub len: usize,
    pub kv_start: usize,
    pub kv_len: usize,
}

/// Checks that every rank gets at least one of the `n` units of `what` (MLP
/// widths: a rank without any would only add zeros).
pub fn check_at_least_one_each(what: &str, n: usize, world: usize) -> Result<(), String> {
    if n < world {
        Err(format!(
            "{what} = {n} is smaller than the tensor-parallel degree {world}"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestRank(Arc<dyn Communicator>);

    impl RankMember for TestRank {
        fn comm(&self) -> Option<&Arc<dyn Communicator>> {
            Some(&self.0)
        }
    }

    /// Runs a step of 3 ranks where rank 1 fails as `fail` says, on a thread,
    /// so that a hang fails the test instead of blocking it.
    fn step_with_failing_rank(
        ranks: Arc<Vec<TestRank>>,
        fail: fn() -> crate::error::Result<f32>,
    ) -> crate::error::Result<f32> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = on_all_ranks(&ranks, vec![0, 1, 2], |rank, i| {
                if i == 1 {
                    return fail();
                }
                let t = Tensor::new(&[1f32], &Device::Cpu)?;
                let once = rank.0.all_reduce_sum(&t)?;
                let twice = rank.0.all_reduce_sum(&once)?;
                Ok(twice.to_vec1::<f32>()?[0])
            });
            let _ = tx.send(r);
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("the other ranks waited forever for the failed one")
    }

    #[test]
    fn a_failing_rank_releases_the_others_and_its_error_is_returned() {
        let ranks = Arc::new(
            ThreadComm::group(3)
                .into_iter()
                .map(TestRank)
                .collect::<Vec<_>>(),
        );
        let e = step_with_failing_rank(ranks.clone(), || {
            Err(crate::error::ModelError::Internal("rank 1 broke".into()))
        })
        .unwrap_err();
        assert!(e.to_string().contains("rank 1 broke"), "{e}");
        let e = step_with_failing_rank(ranks.clone(), || panic!("rank 1 panicked")).unwrap_err();
        assert!(matches!(e, crate::error::ModelError::Internal(_)), "{e}");
        // The group works again afterwards: 3 ranks summing 1 twice give 9.
        let ok = on_all_ranks(&ranks, vec![(); 3], |rank, ()| {
            let t = Tensor::new(&[1f32], &Device::Cpu)?;
            let once = rank.0.all_reduce_sum(&t)?;
            Ok(rank.0.all_reduce_sum(&once)?.to_vec1::<f32>()?[0])
        })
        .unwrap();
        assert_eq!(ok, 9.0);
    }

    #[test]
    fn split_covers_every_unit_once_with_parts_one_apart() {
        for n in 0..40 {
            for world in 1..10 {
                let parts: Vec<_> = (0..world).map(|r| split(n, world, r)).collect();
                let mut next = 0;
                for &(start, len) in &parts {
                    assert_eq!(start, next, "n {n} world {world}: {parts:?}");
                    assert!(len == n / world || len == n.div_ceil(world), "{parts:?}");
                    next = start + len;
                }
                assert_eq!(next, n);
                if n > 0 {
                    assert!(parts[0].1 >= 1, "rank 0 holds a unit: {parts:?}");
                }
            }
        }
        let lens = |n, w| (0..w).map(|r| split(n, w, r).1).collect::<Vec<_>>();
        assert_eq!(lens(30, 4), [8, 7, 8, 7]);
        assert_eq!(lens(30, 8), [4, 4, 4, 3, 4, 4, 4, 3]);
        assert_eq!(lens(3, 4), [1, 1, 1, 0]);
    }

    #[test]
    fn heads_split_in_whole_key_value_groups() {
        let shard = |rank, world| Shard {
            rank,
            world,
            comm: None,
            device: Device::Cpu,
        };
        // 6 query heads over 3 key/value heads (groups of 2), over 2 ranks.
        let h: Vec<_> = (0..2).map(|r| shard(r, 2).heads(6, 3).unwrap()).collect();
        assert_eq!(
            (h[0].start, h[0].len, h[0].kv_start, h[0].kv_len),
            (0, 4, 0, 2)
        );
        assert_eq!(
            (h[1].start, h[1].len, h[1].kv_start, h[1].kv_len),
            (4, 2, 2, 1)
        );
        // Multi-head attention: query and key/value heads split alike.
        let h = shard(3, 4).heads(30, 30).unwrap();
        assert_eq!((h.start, h.len, h.kv_start, h.kv_len), (23, 7, 23, 7));
        assert!(shard(0, 2).heads(6, 4).is_err());
    }

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
