//! Portable kernels: the same 8-lane accumulation order as the AVX2 path
//! (multiply then add instead of FMA), tiled over rows and tokens so that the
//! weights are streamed once. The compiler auto-vectorises the lane arrays
//! for the target's baseline SIMD.

// Register tiles are indexed [row][token] with constant bounds; index loops
// read better than iterator chains here and compile to the same code.
#![allow(clippy::needless_range_loop)]

use crate::Weight;

/// Exact IEEE binary16 → binary32 widening (NaN payloads kept, quiet bit not
/// forced).
#[inline]
pub(crate) fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if man == 0 {
            sign
        } else {
            // Subnormal: man · 2⁻²⁴, exact in f32.
            sign | (man as f32 * (1.0 / 16_777_216.0)).to_bits()
        }
    } else if exp == 0x1f {
        sign | 0x7f80_0000 | (man << 13)
    } else {
        sign | ((exp + 112) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}

/// Lane sum in the fixed order `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
#[inline(always)]
pub(crate) fn hsum(a: &[f32; 8]) -> f32 {
    let s = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    let t = [s[0] + s[2], s[1] + s[3]];
    t[0] + t[1]
}

/// `R` weight rows × `G` tokens of dot products over the full `k`.
/// `w` starts at the first row of the tile, `x` at the first token, `out` at
/// `out[g0·ldo + r0]`.
#[inline(always)]
fn tile<W: Weight, const R: usize, const G: usize>(
    w: &[W],
    x: &[f32],
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut acc = [[[0f32; 8]; G]; R];
    let k8 = k & !7;
    let mut off = 0;
    while off < k8 {
        let mut wv = [[0f32; 8]; R];
        for r in 0..R {
            let src = &w[r * k + off..r * k + off + 8];
            for l in 0..8 {
                wv[r][l] = src[l].to_f32();
            }
        }
        for g in 0..G {
            let xs = &x[g * k + off..g * k + off + 8];
            for r in 0..R {
                for l in 0..8 {
                    acc[r][g][l] += wv[r][l] * xs[l];
                }
            }
        }
        off += 8;
    }
    if k8 < k {
        let rem = k - k8;
        let mut wv = [[0f32; 8]; R];
        for r in 0..R {
            for l in 0..rem {
                wv[r][l] = w[r * k + k8 + l].to_f32();
            }
        }
        for g in 0..G {
            let mut xs = [0f32; 8];
            xs[..rem].copy_from_slice(&x[g * k + k8..g * k + k]);
            for r in 0..R {
                for l in 0..8 {
                    acc[r][g][l] += wv[r][l] * xs[l];
                }
            }
        }
    }
    for r in 0..R {
        for g in 0..G {
            // SAFETY: the caller guarantees out[g*ldo + r] is in bounds and ours.
            unsafe { *out.add(g * ldo + r) = hsum(&acc[r][g]) };
        }
    }
}

/// Rows per register tile for the scalar path.
const SR: usize = 4;
/// Tokens per register tile for the scalar path.
const SG: usize = 2;

/// Rows `r0..r1` of `out [m, n]` for all `m` tokens.
///
/// # Safety
/// See `crate::rows`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn rows<W: Weight>(
    w: &[W],
    x: &[f32],
    out: *mut f32,
    n: usize,
    k: usize,
    m: usize,
    r0: usize,
    r1: usize,
) {
    let mut r = r0;
    while r < r1 {
        let nr = (r1 - r).min(SR);
        let wt = &w[r * k..(r + nr) * k];
        let mut g = 0;
        while g < m {
            let ng = (m - g).min(SG);
            let xt = &x[g * k..(g + ng) * k];
            let o = out.add(g * n + r);
            match (nr, ng) {
                (4, 2) => tile::<W, 4, 2>(wt, xt, k, o, n),
                (4, 1) => tile::<W, 4, 1>(wt, xt, k, o, n),
                (_, 2) => {
                    for i in 0..nr {
                        tile::<W, 1, 2>(&wt[i * k..], xt, k, o.add(i), n)
                    }
                }
                _ => {
                    for i in 0..nr {
                        tile::<W, 1, 1>(&wt[i * k..], xt, k, o.add(i), n)
                    }
                }
            }
            g += ng;
        }
        r += nr;
    }
}
