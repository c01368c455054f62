//! Splitting output rows over threads.
//!
//! The calling thread always takes part; `threads - 1` helper tasks are
//! posted to a small dedicated rayon pool of `default_threads() - 1` workers
//! (created on first use). Chunks of rows are claimed dynamically through an
//! atomic counter, and the caller waits only for chunks that a helper has
//! actually claimed: a helper that starts late (its core busy with another
//! process, or asleep) finds no work left and touches nothing, so the call
//! never waits for it to be scheduled. Since every output element is computed
//! entirely by one thread in a fixed order, the chunking never changes the
//! results.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::PAR_MIN_BYTES;

/// Chunk boundaries are multiples of this many rows (64 bytes of `f32`
/// output: no false sharing between threads for `m = 1`).
pub(crate) const ROW_ALIGN: usize = 16;
/// Aim for this many chunks per thread (dynamic load balancing).
const CHUNKS_PER_THREAD: usize = 4;
/// But no chunk smaller than this many bytes of weights.
const MIN_CHUNK_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: used only to hand disjoint output rows to worker threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = crate::default_threads().saturating_sub(1);
        if workers == 0 {
            return None;
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("vargpt-kernels-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// The state of one parallel call, shared with its helper tasks.
struct Job {
    /// Next chunk to claim.
    next: AtomicUsize,
    /// Chunks finished.
    done: AtomicUsize,
    chunks: usize,
    rows_per: usize,
    n: usize,
    /// The caller's closure, lifetime erased. Dereferenced only by whoever
    /// has claimed a chunk `< chunks`; the caller does not return before all
    /// such chunks are done, so it is alive whenever it is used.
    f: *const (dyn Fn(usize, usize) + Sync + 'static),
}

// SAFETY: `f` points to a `Sync` closure and is only used under the claim
// protocol described on `Job::f`; the rest are atomics and plain integers.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Claims and runs chunks until none are left; returns how many it ran.
    fn work(&self) -> usize {
        let mut ran = 0;
        loop {
            let c = self.next.fetch_add(1, Ordering::Relaxed);
            if c >= self.chunks {
                return ran;
            }
            let r0 = c * self.rows_per;
            // SAFETY: chunk `c < chunks` was claimed by us, so the caller is
            // still waiting in `for_each_rows` and `f` is alive.
            unsafe { (*self.f)(r0, (r0 + self.rows_per).min(self.n)) };
            self.done.fetch_add(1, Ordering::Release);
            ran += 1;
        }
    }
}

/// Calls `f(r0, r1)` on disjoint row ranges covering `0..n`, on up to
/// `threads` threads (the caller included).
pub(crate) fn for_each_rows(
    n: usize,
    weight_bytes: usize,
    threads: usize,
    f: &(dyn Fn(usize, usize) + Sync),
) {
    let threads = threads.max(1);
    let pool = if threads > 1 && weight_bytes >= PAR_MIN_BYTES && n > ROW_ALIGN {
        pool()
    } else {
        None
    };
    let Some(pool) = pool else {
        f(0, n);
        return;
    };
    let groups = n.div_ceil(ROW_ALIGN);
    let by_size = (weight_bytes / MIN_CHUNK_BYTES).max(1);
    let chunks = (threads * CHUNKS_PER_THREAD)
        .min(by_size)
        .min(groups)
        .max(1);
    let rows_per = n.div_ceil(chunks).div_ceil(ROW_ALIGN) * ROW_ALIGN;
    let chunks = n.div_ceil(rows_per);
    if chunks == 1 {
        f(0, n);
        return;
    }
    let f: *const (dyn Fn(usize, usize) + Sync + '_) = f;
    // SAFETY: only the lifetime is erased; see `Job::f` for why it is never
    // used after this function returns.
    let f: *const (dyn Fn(usize, usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
    let job = Arc::new(Job {
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        chunks,
        rows_per,
        n,
        f,
    });
    for _ in 0..(threads - 1).min(chunks - 1) {
        let job = Arc::clone(&job);
        pool.spawn(move || {
            job.work();
        });
    }
    job.work();
    // Wait for the chunks that helpers claimed (not for the helpers).
    let mut spins = 0u32;
    while job.done.load(Ordering::Acquire) < chunks {
        if spins < 1 << 12 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}
