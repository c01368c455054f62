//! Memory-bandwidth-oriented CPU kernels for the decode path of vargpt-rs.
//!
//! Everything here computes `out = x · Wᵀ` for a `Linear` weight `W` of shape
//! `[n, k]` (row-major, the PyTorch / safetensors layout) and activations `x`
//! of shape `[m, k]`, with `m` small (1 for a single decode step, up to ~100
//! for a continuous-batching decode step or an image stage):
//!
//! * [`gemv_f32`], [`gemv_f16`], [`gemv_bf16`]: `m = 1`, `out[i] = Σ_j W[i, j] x[j]`.
//! * [`gemm_small_m_f32`], [`gemm_small_m_f16`], [`gemm_small_m_bf16`]: `m` rows of
//!   `x` at once; every weight row is read from memory once for all `m` rows,
//!   so a batch of 8 costs little more than a batch of 1 while the weights
//!   dominate the traffic (used up to [`SMALL_M_MAX`] rows: decode batches and
//!   the image stages' chunks).
//! * The generic [`gemv`] / [`gemm_small_m`] take an explicit [`Opts`] (thread
//!   count, instruction set) and any [`Weight`] type.
//!
//! Activations and accumulation are always `f32`; `f16` / `bf16` weights are
//! widened exactly to `f32` in registers (F16C `vcvtph2ps`, or a 16-bit shift
//! for bf16), which halves the bytes streamed compared to `f32` weights.
//!
//! # Dispatch
//! [`Isa::detect`] picks [`Isa::Avx512`] when the CPU also has AVX-512F,
//! [`Isa::Avx2`] when it has AVX2, FMA and F16C (checked once at run time
//! with `is_x86_feature_detected!`), otherwise [`Isa::Scalar`], a portable
//! implementation that compiles on every target. Asking for an instruction
//! set the CPU lacks silently uses the scalar path. [`Isa::Avx512`] changes
//! only the tiles of `m ≥ 2` products (two tokens per 512-bit register, same
//! bits as AVX2); a GEMV is memory-bound and stays AVX2.
//!
//! # Threads
//! Work is split over *output rows* only: chunks of 16-row multiples, claimed
//! dynamically by the calling thread and `threads - 1` helper tasks posted to
//! a small dedicated rayon pool. The caller waits only for chunks a helper
//! has actually claimed, never for a helper to get scheduled, so a busy or
//! sleeping second core costs nothing beyond the lost parallelism. The
//! default thread count is `VARGPT_THREADS` if set (read once), else
//! `std::thread::available_parallelism()`. Problems smaller than
//! [`PAR_MIN_BYTES`] of weights (scaled by `⌈m/4⌉`) run on the calling thread
//! only. A parallel call makes two small heap allocations (the shared job
//! state and rayon's job box); a single-threaded call makes none.
//!
//! # Larger m
//! Any `m` works. For prefill-sized `m` the activations are processed in
//! blocks of ≤ 512 KiB so they stay in L2 while the weights stream; on the dev
//! machine this runs m = 267 × 1024 × 2816 at ~190–200 GFLOP/s on 2 cores,
//! the same as candle's `gemm` crate (see README), with the benefit that a
//! prefill row is then bit-identical to the decode GEMV of the same row.
//!
//! # Numerics and determinism
//! Every output element is one dot product computed by one thread in a fixed
//! order that depends only on `k` and the instruction set — not on `n`, `m`,
//! the tile it lands in, the thread count, or the row chunking:
//! eight lanes, lane `l` accumulating the products `j ≡ l (mod 8)` in
//! increasing `j` (FMA on the AVX2 path, multiply-then-add on the scalar
//! path; the `k mod 8` tail is zero-padded into one last 8-wide step), then
//! the lanes summed as `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
//! Consequently
//! * results are bit-identical for any thread count, and
//! * row `t` of a batched call is bit-identical to a [`gemv`] of that row
//!   alone (batch invariance: continuous batching does not change outputs),
//! * the AVX2 and AVX-512 paths give the same bits, and may differ from the
//!   scalar path in the last bits (FMA vs mul+add).
//!
//! Error bound (standard recursive-summation analysis, `u = 2⁻²⁴`,
//! `γ(p) = p·u / (1 - p·u)`, `p = ⌈k/8⌉ + 4`), for weights taken as their exact
//! `f32` value:
//!
//! `|out - exact| ≤ γ(⌈k/8⌉ + 4) · Σ_j |W[i, j]·x[j]|`
//!
//! i.e. ≤ 7.9e-6 · Σ|w·x| for k = 1024 and ≤ 3.1e-5 · Σ|w·x| for k = 4096.
//! Observed on random data in [-1, 1): max error 3e-8 · Σ|w·x| (k = 1024)
//! and 4.5e-8 · Σ|w·x| (k = 4096); median error relative to |out| 2e-7 and
//! 4.5e-7 (relative to |out| alone it is unbounded when the sum cancels). The
//! tests check the bound above against an `f64` reference.

#![warn(missing_docs)]

use std::sync::OnceLock;

pub use half::{bf16, f16};

pub mod act;
pub mod attn;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod conv;
mod par;
mod scalar;
pub mod sgemm;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Below this many bytes of weights, a call runs on the calling thread only:
/// handing work to a pool thread that has gone to sleep costs ~10–20 µs on
/// the 2-vCPU dev VM, about what a single core needs to stream 256 KiB.
pub const PAR_MIN_BYTES: usize = 1024 * 1024;

/// The largest `m` for which [`gemm_small_m`] is the intended kernel. Larger
/// `m` still works (and is correct) but a packed, cache-blocked GEMM
/// ([`sgemm::sgemm_nt`] on AVX2, which `vargpt-model`'s `Linear` uses past
/// this size) is faster for prefill-sized `m`.
/// Measured with `examples/vs-candle --shape` on a 2-core AMD EPYC (Zen 4), f32:
/// ours is 1.4–2.6× faster at m = 32, 1.0–1.6× at m = 72–100 (the LLaMA and
/// VAR shapes of the image stages), level at m ≈ 169 and 5–13% slower at 256.
pub const SMALL_M_MAX: usize = 128;

/// The largest `m` for which [`gemm_small_m`] is the faster kernel on this CPU:
/// [`SMALL_M_MAX`], or unbounded with [`Isa::Avx512`], whose 24-accumulator
/// tiles beat the `gemm` crate at every size we run. Measured with
/// `examples/vs-candle --shape` on a 2-vCPU Intel Xeon with AVX-512, f32:
/// 1.3–2.0× at m = 8–512 (267 × 2816 × 1024: 5.8 ms against 8.1 ms).
pub fn small_m_limit() -> usize {
    if Isa::detect() == Isa::Avx512 {
        usize::MAX
    } else {
        SMALL_M_MAX
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightKind {
    F32,
    F16,
    Bf16,
}

/// A weight element type: `f32`, [`f16`](struct@f16) or [`bf16`].
pub trait Weight: sealed::Sealed + Copy + Send + Sync + 'static {
    /// Short name for reports (`"f32"`, `"f16"`, `"bf16"`).
    const NAME: &'static str;
    #[doc(hidden)]
    const KIND: WeightKind;
    #[doc(hidden)]
    const ZERO: Self;
    /// Exact widening to `f32`.
    fn to_f32(self) -> f32;
}

impl Weight for f32 {
    const NAME: &'static str = "f32";
    const KIND: WeightKind = WeightKind::F32;
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Weight for f16 {
    const NAME: &'static str = "f16";
    const KIND: WeightKind = WeightKind::F16;
    const ZERO: Self = f16::ZERO;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        scalar::f16_bits_to_f32(self.to_bits())
    }
}

impl Weight for bf16 {
    const NAME: &'static str = "bf16";
    const KIND: WeightKind = WeightKind::Bf16;
    const ZERO: Self = bf16::ZERO;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

/// Instruction set used by a kernel call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust (the compiler may still auto-vectorise it for the
    /// target's baseline, e.g. SSE2 on x86_64).
    Scalar,
    /// x86_64 AVX2 + FMA + F16C (256-bit FMA, hardware f16→f32).
    Avx2,
    /// [`Isa::Avx2`] plus AVX-512F: products of `m ≥ 2` tokens use 512-bit
    /// tiles holding two tokens' 8-lane accumulators each (the same bits as
    /// AVX2, twice the FMAs per instruction); everything else runs as AVX2.
    Avx512,
}

impl Isa {
    /// The best instruction set of this CPU (detected once).
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            if Isa::Avx512.is_available() {
                Isa::Avx512
            } else if Isa::Avx2.is_available() {
                Isa::Avx2
            } else {
                Isa::Scalar
            }
        })
    }

    /// Whether this CPU can run `self`.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => avx2_available(),
            Isa::Avx512 => avx2_available() && avx512_available(),
        }
    }

    /// Whether `self` includes AVX2 + FMA + F16C (the 256-bit kernels).
    pub fn has_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512)
    }

    /// All instruction sets this CPU can run (for tests and benchmarks).
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.is_available())
            .collect()
    }
}

/// The highest instruction set `VARGPT_ISA` allows (`scalar`, `avx2` or
/// `avx512`; unset or anything else: no cap), read once. A cap only lowers what
/// is used, never claims what the CPU lacks: it exists to run (and benchmark)
/// the AVX2 paths on an AVX-512 machine, or to avoid AVX-512 where it clocks
/// the cores down.
fn isa_cap() -> Isa {
    static CAP: OnceLock<Isa> = OnceLock::new();
    *CAP.get_or_init(|| parse_isa_cap(&std::env::var("VARGPT_ISA").unwrap_or_default()))
}

/// `VARGPT_ISA`'s value as a cap (case and surrounding blanks ignored).
fn parse_isa_cap(value: &str) -> Isa {
    match value.trim().to_ascii_lowercase().as_str() {
        "scalar" => Isa::Scalar,
        "avx2" => Isa::Avx2,
        _ => Isa::Avx512,
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| {
        isa_cap() != Isa::Scalar
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_available() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn avx512_available() -> bool {
    static AVX512: OnceLock<bool> = OnceLock::new();
    *AVX512.get_or_init(|| isa_cap() == Isa::Avx512 && is_x86_feature_detected!("avx512f"))
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_available() -> bool {
    false
}

/// Default thread count: `VARGPT_THREADS` (if set to a positive integer,
/// read once) or else `std::thread::available_parallelism()`.
pub fn default_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("VARGPT_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&t| t > 0)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
    })
}

/// Options of a kernel call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opts {
    /// Number of threads (the calling thread included); 0 or 1 = the calling
    /// thread only. Values above [`default_threads`] are capped to the pool
    /// size + 1 in effect but keep the same (deterministic) results.
    pub threads: usize,
    /// Instruction set; an unavailable one falls back to [`Isa::Scalar`].
    pub isa: Isa,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            threads: default_threads(),
            isa: Isa::detect(),
        }
    }
}

impl Opts {
    /// Same options with another thread count.
    pub fn with_threads(self, threads: usize) -> Self {
        Opts { threads, ..self }
    }

    /// Same options with another instruction set.
    pub fn with_isa(self, isa: Isa) -> Self {
        Opts { isa, ..self }
    }
}

/// `out[i] = Σ_j w[i·k + j] · x[j]` with `k = x.len()`, `n = out.len()`,
/// `w.len() == n·k` (a `Linear` weight `[n, k]`, row-major), default [`Opts`].
///
/// # Panics
/// If `w.len() != out.len() * x.len()`.
pub fn gemv_f32(w: &[f32], x: &[f32], out: &mut [f32]) {
    gemv(&Opts::default(), w, x, out)
}

/// [`gemv_f32`] with `f16` weights (f32 activations and accumulation).
pub fn gemv_f16(w: &[f16], x: &[f32], out: &mut [f32]) {
    gemv(&Opts::default(), w, x, out)
}

/// [`gemv_f32`] with `bf16` weights (f32 activations and accumulation).
pub fn gemv_bf16(w: &[bf16], x: &[f32], out: &mut [f32]) {
    gemv(&Opts::default(), w, x, out)
}

/// `out[t·n + i] = Σ_j w[i·k + j] · x[t·k + j]` for `t < m`: `x` is `[m, k]`,
/// `out` is `[m, n]`, `w` is `[n, k]` (so `k = x.len() / m`,
/// `n = out.len() / m`). Each weight row is streamed from memory once for all
/// `m` rows. Intended for `m ≤` [`SMALL_M_MAX`]; default [`Opts`].
///
/// # Panics
/// If the slice lengths are inconsistent with `m` (`m = 0` requires empty `x`
/// and `out`).
pub fn gemm_small_m_f32(w: &[f32], x: &[f32], out: &mut [f32], m: usize) {
    gemm_small_m(&Opts::default(), w, x, out, m)
}

/// [`gemm_small_m_f32`] with `f16` weights.
pub fn gemm_small_m_f16(w: &[f16], x: &[f32], out: &mut [f32], m: usize) {
    gemm_small_m(&Opts::default(), w, x, out, m)
}

/// [`gemm_small_m_f32`] with `bf16` weights.
pub fn gemm_small_m_bf16(w: &[bf16], x: &[f32], out: &mut [f32], m: usize) {
    gemm_small_m(&Opts::default(), w, x, out, m)
}

/// Generic GEMV (see [`gemv_f32`]) with explicit options.
pub fn gemv<W: Weight>(opts: &Opts, w: &[W], x: &[f32], out: &mut [f32]) {
    gemm_small_m(opts, w, x, out, 1)
}

/// Generic small-m GEMM (see [`gemm_small_m_f32`]) with explicit options.
pub fn gemm_small_m<W: Weight>(opts: &Opts, w: &[W], x: &[f32], out: &mut [f32], m: usize) {
    if m == 0 {
        assert!(
            x.is_empty() && out.is_empty(),
            "gemm_small_m: m = 0 needs empty x and out"
        );
        return;
    }
    assert!(
        x.len().is_multiple_of(m) && out.len().is_multiple_of(m),
        "gemm_small_m: x.len() = {} and out.len() = {} must be multiples of m = {m}",
        x.len(),
        out.len()
    );
    let k = x.len() / m;
    let n = out.len() / m;
    assert_eq!(
        w.len(),
        n * k,
        "gemm_small_m: w.len() must be n*k = {n}*{k} (out [m={m}, n], x [m, k])"
    );
    if n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let isa = if opts.isa.is_available() {
        opts.isa
    } else {
        Isa::Scalar
    };
    // Work estimate for the threading decision: the weight bytes, scaled up
    // once the batch makes the call compute-heavy.
    let bytes = std::mem::size_of_val(w).saturating_mul(m.div_ceil(4));
    let out_ptr = par::SendPtr(out.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && m >= 2 {
        // Token pairs packed once for all threads (see `avx512`).
        let packed = avx512::Packed::new(x, m, k);
        let run = |r0: usize, r1: usize| {
            let out = out_ptr;
            // SAFETY: AVX-512 checked (`is_available`); `packed` is the
            // packing of m tokens of length k; writes as described below.
            unsafe { avx512::rows(w.as_ptr(), packed.as_ptr(), out.0, n, k, m, r0, r1) }
        };
        par::for_each_rows(n, bytes, opts.threads, &run);
        return;
    }
    let run = |r0: usize, r1: usize| {
        let out = out_ptr;
        // SAFETY: `rows` writes only out[t*n + i] for t < m, r0 <= i < r1, and
        // the row ranges handed out by `par::for_each_rows` are disjoint
        // sub-ranges of 0..n; `out` has m*n elements and outlives the call.
        unsafe { rows(isa, w, x, out.0, n, k, m, r0, r1) }
    };
    par::for_each_rows(n, bytes, opts.threads, &run);
}

/// Computes rows `r0..r1` of the output for all `m` tokens.
///
/// # Safety
/// `out` must point to `m * n` writable `f32`s not accessed concurrently in
/// the written positions; `w.len() == n * k`, `x.len() == m * k`,
/// `r0 <= r1 <= n`.
#[allow(clippy::too_many_arguments)]
unsafe fn rows<W: Weight>(
    isa: Isa,
    w: &[W],
    x: &[f32],
    out: *mut f32,
    n: usize,
    k: usize,
    m: usize,
    r0: usize,
    r1: usize,
) {
    debug_assert!(r0 <= r1 && r1 <= n && w.len() == n * k && x.len() == m * k);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => x86::rows(w.as_ptr(), x.as_ptr(), out, n, k, m, r0, r1),
        _ => scalar::rows(w, x, out, n, k, m, r0, r1),
    }
}

/// Reference implementation in `f64` (for tests and benchmarks): returns
/// `out[t·n + i] = Σ_j w[i·k + j]·x[t·k + j]` and `Σ_j |w·x|` per element.
pub fn reference_f64<W: Weight>(w: &[W], x: &[f32], m: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let k = x.len().checked_div(m).unwrap_or(0);
    assert_eq!(w.len(), n * k);
    let mut out = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for t in 0..m {
        for i in 0..n {
            let (mut s, mut a) = (0.0f64, 0.0f64);
            for j in 0..k {
                let p = w[i * k + j].to_f32() as f64 * x[t * k + j] as f64;
                s += p;
                a += p.abs();
            }
            out[t * n + i] = s;
            mag[t * n + i] = a;
        }
    }
    (out, mag)
}

/// The documented absolute error bound for one output element:
/// `γ(⌈k/8⌉ + 4) · Σ|w·x|` with `u = 2⁻²⁴`.
pub fn error_bound(k: usize, abs_sum: f64) -> f64 {
    let p = k.div_ceil(8) as f64 + 4.0;
    let u = (2.0f64).powi(-24);
    p * u / (1.0 - p * u) * abs_sum
}

/// Widens `src` to `f32` into `dst` (exact), using the given instruction set
/// (falls back to scalar if unavailable). Handy for converting weights once.
///
/// # Panics
/// If `src.len() != dst.len()`.
pub fn widen_to_f32<W: Weight>(isa: Isa, src: &[W], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen_to_f32: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() && isa.is_available() {
        // SAFETY: AVX2/FMA/F16C checked above; equal lengths asserted.
        unsafe { x86::widen(src.as_ptr(), dst.as_mut_ptr(), src.len()) };
        return;
    }
    let _ = isa;
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

#[cfg(test)]
mod tests;

/// Sum of all elements, split over threads like the kernels (a read-bandwidth
/// probe for `kernel-bench`; not a numerically careful sum).
#[doc(hidden)]
pub fn sum_f32_probe(opts: &Opts, buf: &[f32]) -> f32 {
    const ROW: usize = 8 * 1024;
    let n = buf.len().div_ceil(ROW);
    let partial: Vec<std::sync::atomic::AtomicU32> = (0..n.div_ceil(par::ROW_ALIGN))
        .map(|_| Default::default())
        .collect();
    let isa = if opts.isa.is_available() {
        opts.isa
    } else {
        Isa::Scalar
    };
    par::for_each_rows(n, buf.len() * 4, opts.threads, &|r0, r1| {
        let s = &buf[r0 * ROW..(r1 * ROW).min(buf.len())];
        let v = match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 checked via `is_available`; `s` is a valid slice.
            Isa::Avx2 | Isa::Avx512 => unsafe { x86::sum_f32(s.as_ptr(), s.len()) },
            _ => s.iter().sum(),
        };
        partial[r0 / par::ROW_ALIGN].store(v.to_bits(), std::sync::atomic::Ordering::Relaxed);
    });
    partial
        .iter()
        .map(|p| f32::from_bits(p.load(std::sync::atomic::Ordering::Relaxed)))
        .sum()
}
