use super::*;

/// SplitMix64: tiny deterministic generator (no dev-dependency needed).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub(crate) fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub(crate) fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.f32()).collect()
    }
}

trait FromF32: Weight {
    fn from_f32(v: f32) -> Self;
}
impl FromF32 for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
}
impl FromF32 for f16 {
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}
impl FromF32 for bf16 {
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

fn weights<W: FromF32>(rng: &mut Rng, len: usize) -> Vec<W> {
    (0..len).map(|_| W::from_f32(rng.f32())).collect()
}

/// Checks `out` against the f64 reference with the documented bound.
fn check<W: Weight>(what: &str, w: &[W], x: &[f32], out: &[f32], m: usize, n: usize) {
    let k = x.len() / m;
    let (reference, mag) = reference_f64(w, x, m, n);
    for i in 0..m * n {
        let err = (out[i] as f64 - reference[i]).abs();
        let bound = error_bound(k, mag[i]);
        assert!(
            err <= bound,
            "{what}: m={m} n={n} k={k} element {i}: got {} want {} (err {err:e} > bound {bound:e})",
            out[i],
            reference[i]
        );
    }
}

fn run_random_shapes<W: FromF32>(seed: u64) {
    let mut rng = Rng(seed);
    let mut shapes = vec![
        (1, 1, 1),
        (1, 1, 7),
        (1, 7, 1),
        (1, 64, 64),
        (3, 1, 1),
        (16, 1, 9),
        (16, 33, 1),
        (2, 17, 8),
        (5, 100, 257),
        (16, 70, 65),
        (1, 300, 1000),
    ];
    for _ in 0..40 {
        let m = 1 + rng.below(16);
        let n = 1 + rng.below(90);
        let k = 1 + rng.below(300);
        shapes.push((m, n, k));
    }
    for (m, n, k) in shapes {
        let w: Vec<W> = weights(&mut rng, n * k);
        let x = rng.vec(m * k);
        for isa in Isa::available() {
            for threads in [1, 2, 3] {
                let opts = Opts { threads, isa };
                let mut out = vec![f32::NAN; m * n];
                gemm_small_m(&opts, &w, &x, &mut out, m);
                check(
                    &format!("{} {isa:?} t={threads}", W::NAME),
                    &w,
                    &x,
                    &out,
                    m,
                    n,
                );
                if m == 1 {
                    let mut out1 = vec![f32::NAN; n];
                    gemv(&opts, &w, &x, &mut out1);
                    assert_eq!(bits(&out1), bits(&out));
                }
            }
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Every row-tail / token-tail combination of the tilings.
fn run_all_tails<W: FromF32>(seed: u64) {
    let mut rng = Rng(seed);
    for n in 1..=40 {
        for k in [1, 7, 8, 9, 33] {
            for m in 1..=9 {
                let w: Vec<W> = weights(&mut rng, n * k);
                let x = rng.vec(m * k);
                for isa in Isa::available() {
                    let mut out = vec![f32::NAN; m * n];
                    gemm_small_m(&Opts { threads: 1, isa }, &w, &x, &mut out, m);
                    check(&format!("{} {isa:?} tails", W::NAME), &w, &x, &out, m, n);
                }
            }
        }
    }
}

#[test]
fn all_tails() {
    run_all_tails::<f32>(40);
    run_all_tails::<f16>(41);
    run_all_tails::<bf16>(42);
}

#[test]
fn random_shapes_f32() {
    run_random_shapes::<f32>(1);
}

#[test]
fn random_shapes_f16() {
    run_random_shapes::<f16>(2);
}

#[test]
fn random_shapes_bf16() {
    run_random_shapes::<bf16>(3);
}

/// Large enough to be split over threads (above `PAR_MIN_BYTES`).
fn run_determinism<W: FromF32>(seed: u64) {
    let mut rng = Rng(seed);
    let (n, k) = (2000, 301);
    assert!(n * k * std::mem::size_of::<W>() >= PAR_MIN_BYTES);
    let w: Vec<W> = weights(&mut rng, n * k);
    for m in [1, 2, 3, 4, 5, 8, 16] {
        let x = rng.vec(m * k);
        for isa in Isa::available() {
            let mut first: Option<Vec<u32>> = None;
            for threads in [1, 2, 3, 4, 7, 0] {
                let mut out = vec![0.0; m * n];
                gemm_small_m(&Opts { threads, isa }, &w, &x, &mut out, m);
                let b = bits(&out);
                match &first {
                    None => {
                        check(&format!("{} {isa:?}", W::NAME), &w, &x, &out, m, n);
                        first = Some(b);
                    }
                    Some(f) => assert!(
                        *f == b,
                        "{} {isa:?} m={m}: threads={threads} differs",
                        W::NAME
                    ),
                }
            }
            // Batch invariance: each row equals a lone GEMV of that row.
            let batched = first.unwrap();
            for t in 0..m {
                let mut out1 = vec![0.0; n];
                gemv(
                    &Opts { threads: 2, isa },
                    &w,
                    &x[t * k..(t + 1) * k],
                    &mut out1,
                );
                assert!(
                    bits(&out1) == batched[t * n..(t + 1) * n],
                    "{} {isa:?}: batch row {t} of {m} differs from gemv",
                    W::NAME
                );
            }
        }
    }
}

#[test]
fn deterministic_across_threads_and_batch_f32() {
    run_determinism::<f32>(10);
}

#[test]
fn deterministic_across_threads_and_batch_f16() {
    run_determinism::<f16>(11);
}

#[test]
fn deterministic_across_threads_and_batch_bf16() {
    run_determinism::<bf16>(12);
}

#[test]
fn convenience_wrappers() {
    let mut rng = Rng(20);
    let (n, k, m) = (37, 53, 3);
    let w = rng.vec(n * k);
    let x = rng.vec(m * k);
    let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    let mut out = vec![0.0; n];
    gemv_f32(&w, &x[..k], &mut out);
    check("gemv_f32", &w, &x[..k], &out, 1, n);
    gemv_f16(&w16, &x[..k], &mut out);
    check("gemv_f16", &w16, &x[..k], &out, 1, n);
    gemv_bf16(&wb, &x[..k], &mut out);
    check("gemv_bf16", &wb, &x[..k], &out, 1, n);
    let mut out = vec![0.0; m * n];
    gemm_small_m_f32(&w, &x, &mut out, m);
    check("gemm_small_m_f32", &w, &x, &out, m, n);
    gemm_small_m_f16(&w16, &x, &mut out, m);
    check("gemm_small_m_f16", &w16, &x, &out, m, n);
    gemm_small_m_bf16(&wb, &x, &mut out, m);
    check("gemm_small_m_bf16", &wb, &x, &out, m, n);
}

#[test]
fn degenerate_shapes() {
    let opts = Opts::default();
    // k = 0: zeros.
    let mut out = vec![1.0; 4];
    gemm_small_m::<f32>(&opts, &[], &[], &mut out, 2);
    assert_eq!(out, vec![0.0; 4]);
    // n = 0.
    let mut out: Vec<f32> = vec![];
    gemv::<f32>(&opts, &[], &[1.0, 2.0], &mut out);
    // m = 0.
    gemm_small_m::<f32>(&opts, &[1.0], &[], &mut [], 0);
}

#[test]
#[should_panic(expected = "w.len() must be n*k")]
fn length_mismatch_panics() {
    let mut out = vec![0.0; 3];
    gemv_f32(&[0.0; 5], &[0.0; 2], &mut out);
}

#[test]
#[should_panic(expected = "multiples of m")]
fn bad_m_panics() {
    let mut out = vec![0.0; 3];
    gemm_small_m_f32(&[0.0; 6], &[0.0; 4], &mut out, 2);
}

fn same_value(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

#[test]
fn f16_conversion_exact_all_patterns() {
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let want: Vec<f32> = all.iter().map(|h| h.to_f32()).collect();
    for isa in Isa::available() {
        let mut got = vec![0.0f32; all.len()];
        widen_to_f32(isa, &all, &mut got);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(same_value(g, w), "{isa:?} f16 {i:#06x}: {g} vs {w}");
        }
        // Odd length (exercises the tail).
        let mut got = vec![0.0f32; 13];
        widen_to_f32(isa, &all[1000..1013], &mut got);
        assert_eq!(bits(&got), bits(&want[1000..1013]));
    }
    // Weight::to_f32 (used by the scalar kernels) too.
    for (h, &w) in all.iter().zip(&want) {
        assert!(same_value(Weight::to_f32(*h), w));
    }
}

#[test]
fn bf16_conversion_exact_all_patterns() {
    let all: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
    let want: Vec<f32> = all.iter().map(|h| h.to_f32()).collect();
    for isa in Isa::available() {
        let mut got = vec![0.0f32; all.len()];
        widen_to_f32(isa, &all, &mut got);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(same_value(g, w), "{isa:?} bf16 {i:#06x}: {g} vs {w}");
            if !w.is_nan() {
                assert_eq!(g.to_bits(), (i as u32) << 16);
            }
        }
    }
    for (h, &w) in all.iter().zip(&want) {
        assert!(same_value(Weight::to_f32(*h), w));
    }
}

#[test]
fn scalar_and_avx2_agree_within_bound() {
    // Both paths satisfy the bound (checked above); here also check they are
    // close to each other on a larger k where the bound is loose.
    let mut rng = Rng(30);
    let (n, k) = (64, 4096);
    let w = rng.vec(n * k);
    let x = rng.vec(k);
    let (reference, mag) = reference_f64(&w, &x, 1, n);
    for isa in Isa::available() {
        let mut out = vec![0.0; n];
        gemv(&Opts { threads: 1, isa }, &w, &x, &mut out);
        let worst = (0..n)
            .map(|i| (out[i] as f64 - reference[i]).abs() / mag[i])
            .fold(0.0, f64::max);
        // Typical (random-walk) error is far below the worst-case bound.
        assert!(worst < 2e-6, "{isa:?}: worst relative error {worst:e}");
    }
}

#[test]
fn sum_probe() {
    let v: Vec<f32> = (0..100_000).map(|i| (i % 7) as f32).collect();
    let want: f32 = v.iter().map(|&x| x as f64).sum::<f64>() as f32;
    for isa in Isa::available() {
        let got = sum_f32_probe(&Opts { threads: 2, isa }, &v);
        assert!((got - want).abs() / want < 1e-5);
    }
}

#[test]
fn scalar_f16_helper_matches_half() {
    for b in [
        0u16, 1, 0x3ff, 0x400, 0x3c00, 0x7bff, 0x7c00, 0xfc00, 0x8001, 0x7e00,
    ] {
        assert!(same_value(
            scalar::f16_bits_to_f32(b),
            f16::from_bits(b).to_f32()
        ));
    }
}

#[test]
fn concurrent_callers_share_the_pool() {
    // Several threads calling parallel kernels at once (as engine workers
    // might): every result must equal the single-threaded one, bit for bit.
    let mut rng = Rng(50);
    let (n, k) = (1500, 256);
    let w = rng.vec(n * k);
    let xs: Vec<Vec<f32>> = (0..4).map(|_| rng.vec(3 * k)).collect();
    let want: Vec<Vec<u32>> = xs
        .iter()
        .map(|x| {
            let mut out = vec![0.0; 3 * n];
            gemm_small_m(&Opts::default().with_threads(1), &w, x, &mut out, 3);
            bits(&out)
        })
        .collect();
    std::thread::scope(|s| {
        for (x, want) in xs.iter().zip(&want) {
            let w = &w;
            s.spawn(move || {
                for threads in [2, 3, 2, 4, 2, 2, 3, 2] {
                    let mut out = vec![0.0; 3 * n];
                    gemm_small_m(&Opts::default().with_threads(threads), w, x, &mut out, 3);
                    assert!(bits(&out) == *want);
                }
            });
        }
    });
}

/// The AVX-512 tiles promise the AVX2 tiles' bits (same per-lane FMA order),
/// which is what keeps batched and unbatched decoding identical on any CPU.
#[test]
fn avx512_has_the_avx2_bits() {
    if !Isa::Avx512.is_available() {
        eprintln!("SKIPPED: this CPU has no AVX-512F");
        return;
    }
    let mut rng = Rng(40);
    for _ in 0..60 {
        let m = 2 + rng.below(40);
        let n = 1 + rng.below(70);
        let k = 1 + rng.below(600);
        let w32 = rng.vec(n * k);
        let x = rng.vec(m * k);
        let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        let run = |isa: Isa, out: &mut [f32]| {
            let o = Opts { threads: 1, isa };
            gemm_small_m(&o, &w32, &x, &mut out[..m * n], m);
            gemm_small_m(&o, &w16, &x, &mut out[m * n..2 * m * n], m);
            gemm_small_m(&o, &wb, &x, &mut out[2 * m * n..], m);
        };
        let (mut a, mut b) = (vec![0.0; 3 * m * n], vec![0.0; 3 * m * n]);
        run(Isa::Avx2, &mut a);
        run(Isa::Avx512, &mut b);
        assert!(
            bits(&a) == bits(&b),
            "m={m} n={n} k={k}: AVX-512 differs from AVX2"
        );
    }
}

#[test]
fn isa_cap_parses_and_only_lowers() {
    assert_eq!(parse_isa_cap("avx2"), Isa::Avx2);
    assert_eq!(parse_isa_cap(" AVX2\n"), Isa::Avx2);
    assert_eq!(parse_isa_cap("scalar"), Isa::Scalar);
    assert_eq!(parse_isa_cap(""), Isa::Avx512);
    assert_eq!(parse_isa_cap("sse9"), Isa::Avx512);
    // Whatever the cap of this process, nothing above it (or above the CPU)
    // is reported available, and the detected set is the best available one.
    let cap = isa_cap();
    let rank = |i: Isa| {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .iter()
            .position(|&j| j == i)
    };
    for isa in Isa::available() {
        assert!(
            rank(isa) <= rank(cap),
            "{isa:?} available above the cap {cap:?}"
        );
    }
    assert_eq!(Some(&Isa::detect()), Isa::available().last());
}
