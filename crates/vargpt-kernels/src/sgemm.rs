//! Plain f32 GEMM `C = A · B` (all row-major) with an AVX-512 outer-product
//! micro-kernel, for CPUs where it pays: the `gemm` crate that candle uses runs
//! AVX2 only on stable Rust, while Intel server cores have two 512-bit FMA
//! ports. Used by the VQVAE's Winograd convolution (16 GEMMs of
//! `cout × cin · cin × tiles` per block of tiles).
//!
//! The micro-kernel keeps a 12 × 32 block of `C` in 24 registers: per step of
//! `k` it loads 32 floats of one `B` row (two registers) and broadcasts 12
//! elements of one `A` column straight from memory, 24 FMAs. A 32-column panel
//! of `B` is swept by every 12-row block of `A` while it sits in L1/L2.
//! Each `C` element is one dot product accumulated in increasing `k` with FMA,
//! so the result does not depend on the blocking.

/// Rows of `C` per micro-tile.
const MR: usize = 12;
/// Columns of `C` per micro-tile (two 512-bit registers).
const NR: usize = 32;

/// `c[i·ldc + j] = Σ_p a[i·lda + p] · b[p·ldb + j]` for `i < m`, `j < n`, on the
/// calling thread. Returns `false` (and leaves `c` alone) when this CPU has no
/// AVX-512F, so the caller can use another GEMM.
///
/// # Panics
/// If a slice is too short for its dimensions and leading dimension.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) -> bool {
    assert!(lda >= k, "sgemm: lda < k");
    sgemm_strided(m, n, k, a, (lda, 1), b, ldb, c, ldc, false)
}

/// [`sgemm`] with `A` element `(i, p)` at `a[i·a_strides.0 + p·a_strides.1]` (e.g.
/// one tap `w[:, :, dy, dx]` of a convolution weight), and `C += A · B` instead
/// of `C = A · B` when `accumulate`.
///
/// # Panics
/// If a slice is too short for its dimensions and strides.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_strided(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) -> bool {
    if !crate::Isa::Avx512.is_available() {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    let (ars, acs) = a_strides;
    assert!(ldb >= n && ldc >= n, "sgemm: leading dimensions");
    assert!(
        k == 0 || a.len() > (m - 1) * ars + (k - 1) * acs,
        "sgemm: a too short"
    );
    assert!(k == 0 || b.len() >= (k - 1) * ldb + n, "sgemm: b too short");
    assert!(c.len() >= (m - 1) * ldc + n, "sgemm: c too short");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F checked; every access stays within the bounds asserted.
    unsafe {
        x86::sgemm(
            m,
            n,
            k,
            a.as_ptr(),
            (ars, acs),
            b.as_ptr(),
            ldb,
            c.as_mut_ptr(),
            ldc,
            accumulate,
        )
    };
    true
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #![allow(clippy::needless_range_loop)]
    use super::{MR, NR};
    use core::arch::x86_64::*;

    /// An `R × 32` tile (`R ≤ MR`) over the full `k`, from a packed `B` panel
    /// (`k` rows of 32 floats, 64-byte aligned); columns past `n_valid` are
    /// masked off in the stores.
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(
        k: usize,
        a: *const f32,
        (ars, acs): (usize, usize),
        bp: *const f32,
        c: *mut f32,
        ldc: usize,
        n_valid: usize,
        accumulate: bool,
    ) {
        let mask = |bits: usize| -> __mmask16 { ((1u32 << bits.min(16)) - 1) as __mmask16 };
        let (m0, m1) = (mask(n_valid), mask(n_valid.saturating_sub(16)));
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if accumulate {
            for r in 0..R {
                let cr = c.add(r * ldc);
                acc[r] = [
                    _mm512_maskz_loadu_ps(m0, cr),
                    _mm512_maskz_loadu_ps(m1, cr.add(16)),
                ];
            }
        }
        let ar: [*const f32; R] = core::array::from_fn(|r| a.add(r * ars));
        for p in 0..k {
            let b0 = _mm512_load_ps(bp.add(p * NR));
            let b1 = _mm512_load_ps(bp.add(p * NR + 16));
            for r in 0..R {
                let av = _mm512_set1_ps(*ar[r].add(p * acs));
                acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
            }
        }
        for r in 0..R {
            let cr = c.add(r * ldc);
            _mm512_mask_storeu_ps(cr, m0, acc[r][0]);
            _mm512_mask_storeu_ps(cr.add(16), m1, acc[r][1]);
        }
    }

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn sgemm(
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        (ars, acs): (usize, usize),
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        // One packed B panel (k × 32, zero-padded), reused by every row block.
        // Packing also avoids L1 set conflicts: B rows a power of two apart
        // (e.g. 256 tiles = 1 KiB) would all land in a few cache sets.
        let mut panel = vec![0f32; k * NR + 16];
        let off = panel.as_ptr().align_offset(64).min(16);
        let bp = panel.as_mut_ptr().add(off);
        let mut j = 0;
        while j < n {
            let nv = (n - j).min(NR);
            for p in 0..k {
                let src = b.add(p * ldb + j);
                let dst = bp.add(p * NR);
                core::ptr::copy_nonoverlapping(src, dst, nv);
                core::ptr::write_bytes(dst.add(nv), 0, NR - nv);
            }
            let cj = c.add(j);
            let mut i = 0;
            while i < m {
                let (ai, ci) = (a.add(i * ars), cj.add(i * ldc));
                let rows = (m - i).min(MR);
                match rows {
                    12 => tile::<12>(k, ai, (ars, acs), bp, ci, ldc, nv, accumulate),
                    11 => tile::<11>(k, ai, (ars, acs), bp, ci, ldc, nv, accumulate),
                    10 => tile::<10>(k, ai, (ars, acs), bp, ci, ldc, nv, accumulate),
                    9 => tile::<9>(k, ai, (ars, acs), bp, ci, ldc, nv, accumulate),
                    8 => tile::<8>(k, ai, (ars, acs), bp, ci, ldc, nv, accumulate),
                    7 => tile::<7>(k, ai, (ars, acs), bp, ci, ldc, nv, accumulate),
                    6 => tile::<6>(k, ai, (ars, acs), bp, ci, ldc, nv, accumulate),
                    5 => tile::<5>(k, ai, (ars, acs), bp, ci, ldc, nv, accumulate),
                    4 => tile::<4>(k, ai, (ars, acs), bp, ci, ldc, nv, accumulate),
                    3 => tile::<3>(k, ai, (ars, acs), bp, ci, ldc, nv, accumulate),
                    2 => tile::<2>(k, ai, (ars, acs), bp, ci, ldc, nv, accumulate),
                    _ => tile::<1>(k, ai, (ars, acs), bp, ci, ldc, nv, accumulate),
                }
                i += rows;
            }
            j += nv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(len: usize, seed: u64) -> Vec<f32> {
        crate::tests::Rng(seed).vec(len)
    }

    #[test]
    fn matches_f64_reference_on_ragged_shapes() {
        if !crate::Isa::Avx512.is_available() {
            eprintln!("SKIPPED: no AVX-512F");
            assert!(!sgemm(1, 1, 1, &[1.0], 1, &[1.0], 1, &mut [0.0], 1));
            return;
        }
        for (m, n, k) in [
            (1, 1, 1),
            (12, 32, 7),
            (13, 33, 5),
            (160, 70, 160),
            (5, 17, 0),
            (25, 100, 31),
        ] {
            let (lda, ldb, ldc) = (k + 3, n + 5, n + 2);
            let a = vals(m * lda, 1);
            let b = vals(k.max(1) * ldb, 2);
            let mut c = vec![f32::NAN; m * ldc];
            assert!(sgemm(m, n, k, &a, lda, &b, ldb, &mut c, ldc));
            for i in 0..m {
                for j in 0..n {
                    let (mut s, mut mag) = (0f64, 0f64);
                    for p in 0..k {
                        let t = a[i * lda + p] as f64 * b[p * ldb + j] as f64;
                        s += t;
                        mag += t.abs();
                    }
                    let got = c[i * ldc + j] as f64;
                    assert!(
                        (got - s).abs() <= 1e-6 * mag.max(1e-30) + 1e-30 || (k == 0 && got == 0.0),
                        "m={m} n={n} k={k} at ({i},{j}): {got} vs {s}"
                    );
                }
                // Padding columns untouched.
                for j in n..ldc {
                    assert!(c[i * ldc + j].is_nan(), "wrote past n");
                }
            }
        }
    }

    #[test]
    fn strided_a_and_accumulate() {
        if !crate::Isa::Avx512.is_available() {
            eprintln!("SKIPPED: no AVX-512F");
            return;
        }
        // A is every third element of a [m, 3k] buffer (a conv weight's tap).
        let (m, n, k) = (14, 40, 9);
        let a = vals(m * 3 * k, 3);
        let b = vals(k * n, 4);
        let c0 = vals(m * n, 5);
        let mut c = c0.clone();
        assert!(sgemm_strided(
            m,
            n,
            k,
            &a[1..],
            (3 * k, 3),
            &b,
            n,
            &mut c,
            n,
            true
        ));
        for i in 0..m {
            for j in 0..n {
                let want = c0[i * n + j] as f64
                    + (0..k)
                        .map(|p| a[1 + i * 3 * k + 3 * p] as f64 * b[p * n + j] as f64)
                        .sum::<f64>();
                assert!((c[i * n + j] as f64 - want).abs() < 1e-5, "({i},{j})");
            }
        }
    }
}
