//! Winograd F(4×4, 3×3): the input and output transforms of one block and the
//! filter transform.

use super::winograd::{block_gemms, WinogradJob};

/// `Bᵀ` of F(4×4, 3×3) applied element-wise: `o_a = Σ_i Bᵀ[a][i] d_i`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bt4(
    d: [&[f32]; 6],
    o0: &mut [f32],
    o1: &mut [f32],
    o2: &mut [f32],
    o3: &mut [f32],
    o4: &mut [f32],
    o5: &mut [f32],
) {
    let n = o0.len();
    let [d0, d1, d2, d3, d4, d5] = d.map(|s| &s[..n]);
    let (o1, o2, o3, o4, o5) = (
        &mut o1[..n],
        &mut o2[..n],
        &mut o3[..n],
        &mut o4[..n],
        &mut o5[..n],
    );
    for k in 0..n {
        let (a0, a1, a2, a3, a4, a5) = (d0[k], d1[k], d2[k], d3[k], d4[k], d5[k]);
        o0[k] = a0 + a4 - 2.0 * a2 + 1.5 * (a1 - a3);
        o1[k] = a4 - a1 - 2.5 * a2 - 0.5 * a3;
        o2[k] = a4 + a1 + 0.5 * a2 - 2.5 * a3;
        o3[k] = a4 - a2 + 0.5 * (a3 - a1);
        o4[k] = a4 - a2 + 2.0 * (a1 - a3);
        o5[k] = a5 + a1 - 2.0 * a3 + 1.5 * (a2 - a4);
    }
}

/// `Aᵀ` of F(4×4, 3×3) applied element-wise: `o_a = Σ_i Aᵀ[a][i] m_i`.
#[inline(always)]
fn at4(m: [&[f32]; 6], o0: &mut [f32], o1: &mut [f32], o2: &mut [f32], o3: &mut [f32]) {
    let n = o0.len();
    let [m0, m1, m2, m3, m4, m5] = m.map(|s| &s[..n]);
    let (o1, o2, o3) = (&mut o1[..n], &mut o2[..n], &mut o3[..n]);
    for k in 0..n {
        let (a0, a1, a2, a3, a4, a5) = (m0[k], m1[k], m2[k], m3[k], m4[k], m5[k]);
        let (s, d) = (a1 + a2, a1 - a2);
        o0[k] = a0 + s + a3 + a4;
        o1[k] = d + 2.0 * a3 - 0.5 * a4;
        o2[k] = s + 4.0 * a3 + 0.25 * a4;
        o3[k] = d + 8.0 * a3 - 0.125 * a4 + a5;
    }
}

/// `R` disjoint `len`-runs of `buf` starting at `starts` (increasing, at
/// least `len` apart), as separate slices the transforms can write in one pass.
fn runs<const R: usize>(buf: &mut [f32], starts: [usize; R], len: usize) -> [&mut [f32]; R] {
    let mut rest = buf;
    let mut at = 0;
    let mut out: [&mut [f32]; R] = std::array::from_fn(|_| Default::default());
    for (o, s) in out.iter_mut().zip(starts) {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(s - at);
        let (run, tail) = tail.split_at_mut(len);
        *o = run;
        rest = tail;
        at = s + len;
    }
    out
}

/// Block `b` of tile rows for F(4×4, 3×3): input transform (rows in 4 phases,
/// `Bᵀ` along y then x), 36 GEMMs, output transform (`Aᵀ` along y then x),
/// interleaved into the output rows with the bias.
#[inline(always)]
pub(super) fn winograd4_block(job: &WinogradJob, b: usize) {
    let (r0, r1, nt) = job.block_rows(b);
    let (x, cin, h, w, cout, tw) = (job.x, job.cin, job.h, job.w, job.cout, job.tw);
    let (bias, out_ptr) = (job.bias, job.out);
    let t1 = tw + 1;
    let n = 4 * t1;
    // V[e][ci][t]: the transformed input tiles.
    let mut v = vec![0f32; 36 * cin * nt];
    let mut raw = vec![0f32; 6 * n];
    let mut comb = vec![0f32; 6 * n];
    for ci in 0..cin {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for tr in r0..r1 {
            // Input row i (y = 4·tr + i − 1) in 4 phases: phase r, entry k is
            // column 4k + r − 1.
            for (i, dst) in raw.chunks_exact_mut(n).enumerate() {
                dst.fill(0.0);
                let y = (4 * tr + i) as isize - 1;
                if y < 0 || y >= h as isize {
                    continue;
                }
                let row = &plane[y as usize * w..(y as usize + 1) * w];
                let (p0, rest) = dst.split_at_mut(t1);
                let (p1, rest) = rest.split_at_mut(t1);
                let (p2, p3) = rest.split_at_mut(t1);
                for (r, &val) in row.iter().take(3).enumerate() {
                    [&mut *p1, &mut *p2, &mut *p3][r][0] = val;
                }
                if w > 3 {
                    let body = &row[3..];
                    let runs = body.chunks_exact(4);
                    let tail = runs.remainder();
                    for ((((c, a), b_), c_), d_) in runs
                        .zip(&mut p0[1..])
                        .zip(&mut p1[1..])
                        .zip(&mut p2[1..])
                        .zip(&mut p3[1..])
                    {
                        *a = c[0];
                        *b_ = c[1];
                        *c_ = c[2];
                        *d_ = c[3];
                    }
                    let k = body.len() / 4 + 1;
                    for (r, &val) in tail.iter().enumerate() {
                        [&mut *p0, &mut *p1, &mut *p2][r][k] = val;
                    }
                }
            }
            // Along y, all phases at once.
            {
                let d: [&[f32]; 6] = std::array::from_fn(|i| &raw[i * n..(i + 1) * n]);
                let [o0, o1, o2, o3, o4, o5] = runs(&mut comb, std::array::from_fn(|a| a * n), n);
                bt4(d, o0, o1, o2, o3, o4, o5);
            }
            // Along x: tile tc's column j is phase j mod 4, entry tc + j / 4.
            let t0 = (tr - r0) * tw;
            for a in 0..6 {
                let c = &comb[a * n..(a + 1) * n];
                let cols: [&[f32]; 6] = std::array::from_fn(|j| &c[(j % 4) * t1 + j / 4..][..tw]);
                let starts = std::array::from_fn(|bb| ((a * 6 + bb) * cin + ci) * nt + t0);
                let [o0, o1, o2, o3, o4, o5] = runs(&mut v, starts, tw);
                bt4(cols, o0, o1, o2, o3, o4, o5);
            }
        }
    }
    let mm = block_gemms(job, &v, nt);
    // Aᵀ M A plus bias, a tile row at a time.
    let mut sy = vec![0f32; 24 * tw]; // sy[a][j], a < 4, j < 6
    let mut ph = vec![0f32; 4 * tw];
    for co in 0..cout {
        let bc = bias[co];
        for tr in r0..r1 {
            let t0 = (tr - r0) * tw;
            for j in 0..6 {
                let src: [&[f32]; 6] =
                    std::array::from_fn(|i| &mm[((i * 6 + j) * cout + co) * nt + t0..][..tw]);
                let starts = std::array::from_fn(|a| (a * 6 + j) * tw);
                let [o0, o1, o2, o3] = runs(&mut sy, starts, tw);
                at4(src, o0, o1, o2, o3);
            }
            for a in 0..4 {
                let y = 4 * tr + a;
                if y >= h {
                    continue;
                }
                let src: [&[f32]; 6] = std::array::from_fn(|j| &sy[(a * 6 + j) * tw..][..tw]);
                let (q0, rest) = ph.split_at_mut(tw);
                let (q1, rest) = rest.split_at_mut(tw);
                let (q2, q3) = rest.split_at_mut(tw);
                at4(src, q0, q1, q2, q3);
                // SAFETY: blocks own disjoint tile rows, so disjoint output rows;
                // the row lies inside `out` (cout·h·w).
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add((co * h + y) * w), w) };
                let (q0, q1, q2, q3) = (
                    &ph[..tw],
                    &ph[tw..2 * tw],
                    &ph[2 * tw..3 * tw],
                    &ph[3 * tw..],
                );
                let full = dst.chunks_exact_mut(4);
                let k_tail = full.len();
                for ((((px, a0), a1), a2), a3) in full.zip(q0).zip(q1).zip(q2).zip(q3) {
                    px[0] = a0 + bc;
                    px[1] = a1 + bc;
                    px[2] = a2 + bc;
                    px[3] = a3 + bc;
                }
                let q = [q0, q1, q2, q3];
                for (c, p) in dst[4 * k_tail..].iter_mut().enumerate() {
                    *p = q[c][k_tail] + bc;
                }
            }
        }
    }
}

/// U[co][e][ci] = (G g Gᵀ)[e] for F(4×4, 3×3), in f64 rounded once, in parallel
/// over the output channels. G row j = (1, p_j, p_j²) / Π_{l≠j}(p_j − p_l).
pub(super) fn winograd4_filters(wt: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const T: f64 = 1.0 / 3.0;
    const F: f64 = 1.0 / 15.0;
    const G: [[f64; 3]; 6] = [
        [1.0, 0.0, 0.0],
        [-T, -T, -T],
        [T, -T, T],
        [F, 2.0 * F, 4.0 * F],
        [-16.0 * F, 8.0 * F, -4.0 * F],
        [0.0, 0.0, 1.0],
    ];
    let mut u = vec![0f32; 36 * cout * cin];
    u.par_chunks_mut(36 * cin).enumerate().for_each(|(co, uc)| {
        for ci in 0..cin {
            let k = &wt[(co * cin + ci) * 9..][..9];
            let mut gk = [[0f64; 3]; 6];
            for (i, row) in gk.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = G[i][0] * k[j] as f64
                        + G[i][1] * k[3 + j] as f64
                        + G[i][2] * k[6 + j] as f64;
                }
            }
            for i in 0..6 {
                for j in 0..6 {
                    let val = gk[i][0] * G[j][0] + gk[i][1] * G[j][1] + gk[i][2] * G[j][2];
                    uc[(i * 6 + j) * cin + ci] = val as f32;
                }
            }
        }
    });
    u
}
