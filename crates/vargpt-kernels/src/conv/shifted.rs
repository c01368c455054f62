//! Convolutions as one GEMM per kernel tap over the zero-padded input (see the
//! parent module): the `gemm` crate, or on AVX-512 CPUs our micro-kernel.

/// Sum over the k² taps of one GEMM each (see the module doc); 1×1 is one plain GEMM.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_shifted_gemm(
    xv: &[f32],
    cin: usize,
    h: usize,
    wd: usize,
    wv: &[f32],
    cout: usize,
    k: usize,
    bv: &[f32],
    y: &mut [f32],
) {
    let pad = k / 2;
    let (hp, wp) = (h + 2 * pad, wd + 2 * pad);
    // Padded input with one extra row so the last tap's window stays in bounds
    // (no copy at all for 1×1).
    let plane = if pad == 0 { h * wd } else { (hp + 1) * wp };
    let padded;
    let xp: &[f32] = if pad == 0 {
        xv
    } else {
        let mut buf = vec![0f32; cin * plane];
        for c in 0..cin {
            for r in 0..h {
                let src = &xv[(c * h + r) * wd..(c * h + r + 1) * wd];
                let dst = c * plane + (r + pad) * wp + pad;
                buf[dst..dst + wd].copy_from_slice(src);
            }
        }
        padded = buf;
        &padded
    };
    let p = h * wp; // output positions over the padded width
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let run_taps = |out: &mut [f32]| {
        if crate::Isa::Avx512.is_available() {
            return taps_sgemm(out, wv, xp, cin, cout, k, wp, plane, p);
        }
        for dy in 0..k {
            for dx in 0..k {
                let tap = dy * k + dx;
                let off = dy * wp + dx;
                // SAFETY: lhs is w[:, :, dy, dx] (cout × cin, row stride cin·k², col
                // stride k²), rhs is the padded input shifted by `off` (cin × p, row
                // stride `plane`, col stride 1; off + p ≤ plane thanks to the extra
                // row), dst is cout × p.
                unsafe {
                    gemm::gemm(
                        cout,
                        p,
                        cin,
                        out.as_mut_ptr(),
                        1,
                        p as isize,
                        tap > 0,
                        wv.as_ptr().add(tap),
                        (k * k) as isize,
                        (cin * k * k) as isize,
                        xp.as_ptr().add(off),
                        1,
                        plane as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    );
                }
            }
        }
    };
    if pad == 0 {
        run_taps(y);
        for (co, row) in y.chunks_mut(h * wd).enumerate() {
            row.iter_mut().for_each(|v| *v += bv[co]);
        }
        return;
    }
    let mut out = vec![0f32; cout * p];
    run_taps(&mut out);
    // Drop the padding columns and add the bias.
    for co in 0..cout {
        for r in 0..h {
            let src = &out[co * p + r * wp..co * p + r * wp + wd];
            let dst = &mut y[(co * h + r) * wd..(co * h + r + 1) * wd];
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s + bv[co];
            }
        }
    }
}

/// The taps of [`conv_shifted_gemm`] with the AVX-512 [`sgemm_strided`]: the
/// output rows (channels) are split over the threads in multiples of the
/// micro-kernel's 12 rows, and each thread accumulates all taps into its rows.
///
/// [`sgemm_strided`]: crate::sgemm::sgemm_strided
#[allow(clippy::too_many_arguments)]
fn taps_sgemm(
    out: &mut [f32],
    wv: &[f32],
    xp: &[f32],
    cin: usize,
    cout: usize,
    k: usize,
    wp: usize,
    plane: usize,
    p: usize,
) {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let rows = cout.div_ceil(threads).div_ceil(12) * 12;
    out.par_chunks_mut(rows * p)
        .enumerate()
        .for_each(|(chunk, dst)| {
            let r0 = chunk * rows;
            let m = dst.len() / p;
            let mut a = vec![0f32; m * cin];
            for tap in 0..k * k {
                let (dy, dx) = (tap / k, tap % k);
                // A = w[r0.., :, dy, dx], gathered contiguous: read in place with its
                // column stride of k² floats, the micro-kernel's broadcasts would
                // touch a new cache line every other step.
                for (dst_row, w_row) in a
                    .chunks_exact_mut(cin)
                    .zip(wv[r0 * cin * k * k..].chunks_exact(cin * k * k))
                {
                    for (d, w) in dst_row.iter_mut().zip(w_row[tap..].iter().step_by(k * k)) {
                        *d = *w;
                    }
                }
                let done = crate::sgemm::sgemm_strided(
                    m,
                    p,
                    cin,
                    &a,
                    (cin, 1),
                    &xp[dy * wp + dx..],
                    plane,
                    dst,
                    p,
                    tap > 0,
                );
                assert!(done, "taps_sgemm runs only with AVX-512");
            }
        });
}
