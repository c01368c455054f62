//! Winograd F(2×2, 3×3): the input and output transforms of one block and the
//! filter transform.

use super::winograd::{block_gemms, WinogradJob};

/// Block `b` of tile rows for F(2×2, 3×3): input transform (rows in even/odd
/// phases), 16 GEMMs, output transform.
#[inline(always)]
pub(super) fn winograd2_block(job: &WinogradJob, b: usize) {
    let (r0, r1, nt) = job.block_rows(b);
    let (x, cin, h, w, cout, tw) = (job.x, job.cin, job.h, job.w, job.cout, job.tw);
    let (bias, out_ptr) = (job.bias, job.out);
    // V[e][ci][t]: the transformed input tiles.
    let mut v = vec![0f32; 16 * cin * nt];
    // Per input row i of the tile row: even (x = 2k−1) and odd (x = 2k) columns,
    // k = 0 … tw, zero outside the image; then the same after combining along y.
    let mut raw = vec![0f32; 8 * (tw + 1)];
    let mut comb = vec![0f32; 8 * (tw + 1)];
    for ci in 0..cin {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for tr in r0..r1 {
            raw.fill(0.0);
            for i in 0..4 {
                let y = (2 * tr + i) as isize - 1;
                if y < 0 || y >= h as isize {
                    continue;
                }
                let row = &plane[y as usize * w..(y as usize + 1) * w];
                let (ev, od) = raw[i * 2 * (tw + 1)..][..2 * (tw + 1)].split_at_mut(tw + 1);
                let pairs = row.chunks_exact(2);
                if let [last] = pairs.remainder() {
                    od[w / 2] = *last;
                }
                for ((o, e), pair) in od.iter_mut().zip(&mut ev[1..]).zip(pairs) {
                    *o = pair[0];
                    *e = pair[1];
                }
            }
            // Along y: Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1], on even and odd.
            let n = 2 * (tw + 1);
            let (d0, rest) = raw.split_at(n);
            let (d1, rest) = rest.split_at(n);
            let (d2, d3) = rest.split_at(n);
            let (c0, rest) = comb.split_at_mut(n);
            let (c1, rest) = rest.split_at_mut(n);
            let (c2, c3) = rest.split_at_mut(n);
            for k in 0..n {
                c0[k] = d0[k] - d2[k];
                c1[k] = d1[k] + d2[k];
                c2[k] = d2[k] - d1[k];
                c3[k] = d1[k] - d3[k];
            }
            // Along x, for every tile of the row at once: the tile's columns are
            // (even[tc], odd[tc], even[tc+1], odd[tc+1]).
            let t0 = (tr - r0) * tw;
            for i in 0..4 {
                let (ev, od) = comb[i * n..(i + 1) * n].split_at(tw + 1);
                let (e0, e1, o0, o1) = (&ev[..tw], &ev[1..], &od[..tw], &od[1..tw + 1]);
                let plane_of = |j: usize| ((i * 4 + j) * cin + ci) * nt + t0;
                let dst = &mut v[plane_of(0)..][..tw];
                for (d, (a, b)) in dst.iter_mut().zip(e0.iter().zip(e1)) {
                    *d = a - b;
                }
                let dst = &mut v[plane_of(1)..][..tw];
                for (d, (a, b)) in dst.iter_mut().zip(o0.iter().zip(e1)) {
                    *d = a + b;
                }
                let dst = &mut v[plane_of(2)..][..tw];
                for (d, (a, b)) in dst.iter_mut().zip(e1.iter().zip(o0)) {
                    *d = a - b;
                }
                let dst = &mut v[plane_of(3)..][..tw];
                for (d, (a, b)) in dst.iter_mut().zip(o0.iter().zip(o1)) {
                    *d = a - b;
                }
            }
        }
    }
    let m = block_gemms(job, &v, nt);
    // Aᵀ M A with Aᵀ = [1 1 1 0; 0 1 −1 −1], plus bias, a tile row at a time.

    let mut sy = vec![0f32; 8 * tw];
    let mut row = vec![0f32; 2 * tw];
    for co in 0..cout {
        let bc = bias[co];
        for tr in r0..r1 {
            let t0 = (tr - r0) * tw;
            let plane = |e: usize| &m[(e * cout + co) * nt + t0..][..tw];
            // Along y: sy[a·4 + j] for output row a of the tile.
            for j in 0..4 {
                let (m0, m1, m2, m3) = (plane(j), plane(4 + j), plane(8 + j), plane(12 + j));
                let (top, bottom) = sy.split_at_mut(4 * tw);
                let top = &mut top[j * tw..(j + 1) * tw];
                let bottom = &mut bottom[j * tw..(j + 1) * tw];
                for k in 0..tw {
                    top[k] = m0[k] + m1[k] + m2[k];
                    bottom[k] = m1[k] - m2[k] - m3[k];
                }
            }
            for a in 0..2 {
                let y = 2 * tr + a;
                if y >= h {
                    continue;
                }
                let q = &sy[a * 4 * tw..(a + 1) * 4 * tw];
                let (q0, q1, q2, q3) = (&q[..tw], &q[tw..2 * tw], &q[2 * tw..3 * tw], &q[3 * tw..]);
                for (k, px) in row.chunks_exact_mut(2).enumerate() {
                    px[0] = q0[k] + q1[k] + q2[k] + bc;
                    px[1] = q1[k] - q2[k] - q3[k] + bc;
                }
                // SAFETY: blocks own disjoint tile rows, so disjoint output rows;
                // the row lies inside `out` (cout·h·w).
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add((co * h + y) * w), w) };
                dst.copy_from_slice(&row[..w]);
            }
        }
    }
}

/// U[co][e][ci] = (G g Gᵀ)[e] with G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1].
pub(super) fn winograd_filters(wt: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * cout * cin];
    for oc in 0..cout * cin {
        let (co, ci) = (oc / cin, oc % cin);
        let g = &wt[oc * 9..oc * 9 + 9];
        // G g: 4×3
        let mut a = [[0f32; 3]; 4];
        for j in 0..3 {
            let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
            a[0][j] = g0;
            a[1][j] = 0.5 * (g0 + g1 + g2);
            a[2][j] = 0.5 * (g0 - g1 + g2);
            a[3][j] = g2;
        }
        for (i, ai) in a.iter().enumerate() {
            let vals = [
                ai[0],
                0.5 * (ai[0] + ai[1] + ai[2]),
                0.5 * (ai[0] - ai[1] + ai[2]),
                ai[2],
            ];
            for (j, val) in vals.into_iter().enumerate() {
                u[(co * 16 + i * 4 + j) * cin + ci] = val;
            }
        }
    }
    u
}
