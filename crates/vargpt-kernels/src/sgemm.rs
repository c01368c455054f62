//! Plain f32 GEMM `C = A · B` (all row-major) with an AVX-512 outer-product
//! micro-kernel, for CPUs where it pays: the `gemm` crate that candle uses runs
//! AVX2 only on stable Rust, while Intel server cores have two 512-bit FMA
//! ports. Used by the VQVAE's Winograd convolution (36 GEMMs of
//! `cout × cin · cin × tiles` per block of tiles with F(4×4, 3×3)). On AVX2 CPUs the `gemm`
//! crate stays faster for those thin per-block GEMMs (Zen 3, 160 channels at
//! 256²: 0.14 s against 0.18–0.22 s with the 6 × 16 tiles below).
//!
//! [`sgemm_nt`] is the `Linear` product `x · Wᵀ` for prefill-sized batches on
//! AVX2 CPUs, with a 6 × 16 AVX2 micro-kernel (12 of the 16 registers, the
//! classic Haswell shape) over packed operands.
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
/// Rows of `C` per AVX2 micro-tile.
const MR2: usize = 6;
/// Columns of `C` per AVX2 micro-tile (two 256-bit registers).
const NR2: usize = 16;

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

/// Depth of one pass of [`sgemm_nt`]: `m × KC` floats of `x` (280 KB for a
/// 274-token prefill) stay in L2 while the packed weight panels sweep them.
const KC: usize = 256;

/// `out = x · Wᵀ` for a `Linear` weight `w` (`[n, k]`, row-major) and
/// activations `x` (`[m, k]`), with the AVX2 6 × 16 tiles, in parallel over
/// the output features on [`crate::default_threads`] threads (the same pool as
/// the small-m kernels). For prefill-sized `m` on CPUs without AVX-512, where
/// the dot-product tiles of [`crate::gemm_small_m`] stop paying. Returns
/// `false` (and leaves `out` alone) without AVX2 + FMA.
///
/// Blocking: `k` in passes of [`KC`]; per pass, 16-feature panels of `W` are
/// packed transposed (`KC × 16`, in L1) and swept by all 6-row blocks of `x`;
/// the tiles accumulate into `out` between passes. Every output is one FMA
/// chain in increasing `k`, so the bits do not depend on the thread count.
///
/// # Panics
/// If `w.len()` is not a multiple of `k = x.len() / m`, or `out` is not `m × n`.
pub fn sgemm_nt(w: &[f32], x: &[f32], out: &mut [f32], m: usize) -> bool {
    if !crate::Isa::Avx2.is_available() {
        return false;
    }
    if m == 0 {
        return true;
    }
    assert!(x.len().is_multiple_of(m), "sgemm_nt: x is not m × k");
    let k = x.len() / m;
    assert!(
        k > 0 && w.len().is_multiple_of(k),
        "sgemm_nt: w is not n × k"
    );
    let n = w.len() / k;
    assert_eq!(out.len(), m * n, "sgemm_nt: out is not m × n");
    let xs = pack_slivers(x, m, k);
    // Addresses as integers: the closure must be `Sync`.
    let (xp, wp, cp) = (
        xs.as_ptr() as usize,
        w.as_ptr() as usize,
        out.as_mut_ptr() as usize,
    );
    crate::par::for_each_rows(n, w.len() * 4, crate::default_threads(), &|j0, j1| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA checked; columns j0..j1 of `out` belong to this call
        // alone, and every read stays inside the packed `x` and rows j0..j1 of `w`.
        unsafe {
            x86::sgemm_nt_avx2(
                (m, k),
                xp as *const f32,
                (wp as *const f32).add(j0 * k),
                j1 - j0,
                (cp as *mut f32).add(j0),
                n,
            )
        };
    });
    true
}

/// `x` (`m × k`) rearranged for [`sgemm_nt`]'s tiles: per pass of [`KC`], per
/// block of 6 rows (zero-padded), the pass's columns with the 6 rows of each one
/// adjacent, so a tile's broadcasts read one contiguous stream. Read in place,
/// rows `k` floats apart (a power of two for every model width) share a few L1/L2
/// sets and the pass's rows do not stay in L2.
fn pack_slivers(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let m_pad = sliver_rows(m);
    let mut xs = vec![0f32; m_pad * k];
    let mut kb = 0;
    while kb < k {
        let kc = (k - kb).min(KC);
        let block = &mut xs[kb * m_pad..(kb + kc) * m_pad];
        for (r, row) in x.chunks_exact(k).enumerate() {
            let sliver = &mut block[r / MR2 * kc * MR2..][..kc * MR2];
            for (p, v) in row[kb..kb + kc].iter().enumerate() {
                sliver[p * MR2 + r % MR2] = *v;
            }
        }
        kb += kc;
    }
    xs
}

/// Rows of [`pack_slivers`]'s layout: `m` rounded up to whole slivers.
fn sliver_rows(m: usize) -> usize {
    m.div_ceil(MR2) * MR2
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #![allow(clippy::needless_range_loop)]
    use super::{MR, MR2, NR, NR2};
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

    /// An `R × 16` tile (`R ≤ MR2`) over `k` steps, from a packed `B` panel
    /// (`k` rows of 16 floats, 32-byte aligned); columns past `n_valid` go
    /// through a small buffer (AMD's masked stores are slow).
    #[inline(never)]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_avx2<const R: usize>(
        k: usize,
        a: *const f32,
        (ars, acs): (usize, usize),
        bp: *const f32,
        c: *mut f32,
        ldc: usize,
        n_valid: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let mut edge = [0f32; NR2];
        if accumulate {
            for r in 0..R {
                let cr = c.add(r * ldc);
                acc[r] = if n_valid == NR2 {
                    [_mm256_loadu_ps(cr), _mm256_loadu_ps(cr.add(8))]
                } else {
                    core::ptr::copy_nonoverlapping(cr, edge.as_mut_ptr(), n_valid);
                    [
                        _mm256_loadu_ps(edge.as_ptr()),
                        _mm256_loadu_ps(edge.as_ptr().add(8)),
                    ]
                };
            }
        }
        let ar: [*const f32; R] = core::array::from_fn(|r| a.add(r * ars));
        for p in 0..k {
            let b0 = _mm256_load_ps(bp.add(p * NR2));
            let b1 = _mm256_load_ps(bp.add(p * NR2 + 8));
            for r in 0..R {
                let av = _mm256_broadcast_ss(&*ar[r].add(p * acs));
                acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
            }
        }
        for r in 0..R {
            let cr = c.add(r * ldc);
            if n_valid == NR2 {
                _mm256_storeu_ps(cr, acc[r][0]);
                _mm256_storeu_ps(cr.add(8), acc[r][1]);
            } else {
                _mm256_storeu_ps(edge.as_mut_ptr(), acc[r][0]);
                _mm256_storeu_ps(edge.as_mut_ptr().add(8), acc[r][1]);
                core::ptr::copy_nonoverlapping(edge.as_ptr(), cr, n_valid);
            }
        }
    }

    /// [`super::sgemm_nt`] over `cols` output features: `x` is packed by
    /// [`super::pack_slivers`], `w` points at the first feature's weight row,
    /// `c` at its column of the output (row stride `ldc`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn sgemm_nt_avx2(
        (m, k): (usize, usize),
        x: *const f32,
        w: *const f32,
        cols: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut panel = vec![0f32; super::KC * NR2 + 16];
        let off = panel.as_ptr().align_offset(64).min(16);
        let bp = panel.as_mut_ptr().add(off);
        let (m_pad, s) = (super::sliver_rows(m), (1, MR2));
        let mut kb = 0;
        while kb < k {
            let (kc, acc) = ((k - kb).min(super::KC), kb > 0);
            let mut j = 0;
            while j < cols {
                let nv = (cols - j).min(NR2);
                pack_transposed(w.add(j * k + kb), k, kc, nv, bp);
                let mut i = 0;
                while i < m {
                    let rows = (m - i).min(MR2);
                    let (ai, ci) = (x.add(kb * m_pad + i * kc), c.add(i * ldc + j));
                    match rows {
                        6 => tile_avx2::<6>(kc, ai, s, bp, ci, ldc, nv, acc),
                        5 => tile_avx2::<5>(kc, ai, s, bp, ci, ldc, nv, acc),
                        4 => tile_avx2::<4>(kc, ai, s, bp, ci, ldc, nv, acc),
                        3 => tile_avx2::<3>(kc, ai, s, bp, ci, ldc, nv, acc),
                        2 => tile_avx2::<2>(kc, ai, s, bp, ci, ldc, nv, acc),
                        _ => tile_avx2::<1>(kc, ai, s, bp, ci, ldc, nv, acc),
                    }
                    i += rows;
                }
                j += nv;
            }
            kb += kc;
        }
    }

    /// `panel[p·16 + j] = w[j·ldw + p]` for `p < kc`, `j < nv`, zero for
    /// `j ≥ nv`: eight weight rows at a time through an 8 × 8 register
    /// transpose.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_transposed(w: *const f32, ldw: usize, kc: usize, nv: usize, panel: *mut f32) {
        let full_p = kc / 8 * 8;
        let mut j0 = 0;
        while j0 + 8 <= nv {
            let mut p = 0;
            while p < full_p {
                let r: [__m256; 8] =
                    core::array::from_fn(|j| _mm256_loadu_ps(w.add((j0 + j) * ldw + p)));
                let t = transpose8(r);
                for q in 0..8 {
                    _mm256_store_ps(panel.add((p + q) * NR2 + j0), t[q]);
                }
                p += 8;
            }
            for p in full_p..kc {
                for j in j0..j0 + 8 {
                    *panel.add(p * NR2 + j) = *w.add(j * ldw + p);
                }
            }
            j0 += 8;
        }
        for p in 0..kc {
            for j in j0..NR2 {
                *panel.add(p * NR2 + j) = if j < nv { *w.add(j * ldw + p) } else { 0.0 };
            }
        }
    }

    /// Rows of an 8 × 8 block become its columns.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
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

    #[test]
    fn nt_matches_f64_reference() {
        if !crate::Isa::Avx2.is_available() {
            assert!(!sgemm_nt(&[1.0], &[1.0], &mut [0.0], 1));
            return;
        }
        // k past one pass and not a multiple of 8; n with a ragged last panel.
        for (m, n, k) in [
            (1, 1, 1),
            (7, 37, 300),
            (13, 48, 600),
            (129, 21, 8),
            (150, 290, 1030),
        ] {
            let (w, x) = (vals(n * k, 8), vals(m * k, 9));
            let mut out = vec![f32::NAN; m * n];
            assert!(sgemm_nt(&w, &x, &mut out, m));
            for i in 0..m {
                for j in 0..n {
                    let (mut s, mut mag) = (0f64, 0f64);
                    for p in 0..k {
                        let t = x[i * k + p] as f64 * w[j * k + p] as f64;
                        s += t;
                        mag += t.abs();
                    }
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - s).abs() <= 1e-6 * mag,
                        "m={m} n={n} k={k} ({i},{j}): {got} vs {s}"
                    );
                }
            }
        }
    }
}
