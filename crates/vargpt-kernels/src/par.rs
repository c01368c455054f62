//! Splitting output rows over threads.
//!
//! The calling thread always takes part; `threads - 1` helper tasks run on a
//! small dedicated rayon pool of `default_threads() - 1` workers (created on
//! first use). Chunks of rows are claimed dynamically through an atomic
//! counter, so a core slowed down by other processes does not hold the call
//! back. Since every output element is computed entirely by one thread in a
//! fixed order, the chunking never changes the results.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

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
    let next = AtomicUsize::new(0);
    let work = || loop {
        let c = next.fetch_add(1, Ordering::Relaxed);
        if c >= chunks {
            break;
        }
        let r0 = c * rows_per;
        f(r0, (r0 + rows_per).min(n));
    };
    let helpers = (threads - 1).min(chunks - 1);
    pool.in_place_scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| work());
        }
        work();
    });
}
