//! Side-by-side timing of these kernels and candle's CPU matmul (the
//! `x.matmul(&w.t())` of `vargpt-model`'s `Linear`), interleaved in one run.
//!
//! `cargo run -p vargpt-kernels --example vs-candle [-- --rounds N] [--shape MxNxK ...]`
//!
//! `--shape` (repeatable) times f32 products `[M, K] · [N, K]ᵀ` of your choice
//! instead of the default table (e.g. the VAR head's stage sizes).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use vargpt_kernels::{self as k, bf16, f16, Opts};

fn random_vec(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

type Variant<'a> = (String, Box<dyn FnMut(usize) + 'a>);

/// Interleaved rounds (shuffled order), min seconds per call.
fn bench(rounds: usize, calls: usize, variants: &mut [Variant<'_>]) -> Vec<f64> {
    let mut best = vec![f64::MAX; variants.len()];
    let mut order: Vec<usize> = (0..variants.len()).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut c = 0;
    for (_, f) in variants.iter_mut() {
        f(c);
        c += 1;
    }
    for _ in 0..rounds {
        for i in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        for &vi in &order {
            for _ in 0..calls {
                let t = Instant::now();
                (variants[vi].1)(c);
                best[vi] = best[vi].min(t.elapsed().as_secs_f64());
                c += 1;
            }
        }
    }
    best
}

fn main() -> candle_core::Result<()> {
    let mut rounds = 5;
    let mut shapes: Vec<(usize, usize, usize)> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--shape" => {
                let v: Vec<usize> = it
                    .next()
                    .expect("--shape MxNxK")
                    .split('x')
                    .map(|d| d.parse().expect("--shape MxNxK"))
                    .collect();
                assert_eq!(v.len(), 3, "--shape MxNxK");
                shapes.push((v[0], v[1], v[2]));
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let dev = Device::Cpu;
    let opts = Opts::default();
    let cold_bytes = 512usize << 20;
    println!(
        "# vargpt-kernels vs candle-core 0.11 CPU matmul (x.matmul(&w.t())), threads {}",
        k::default_threads()
    );
    println!("| case | candle ms | ours ms | speed-up | sgemm_nt ms | speed-up |");
    println!("|---|---|---|---|---|---|");

    let default_cases = [
        (
            1usize,
            32064usize,
            1024usize,
            &[DType::F32, DType::F16, DType::BF16][..],
        ),
        (1, 2816, 1024, &[DType::F32, DType::F16][..]),
        (8, 2816, 1024, &[DType::F32, DType::F16][..]),
        (267, 2816, 1024, &[DType::F32][..]),
        (267, 1024, 2816, &[DType::F32][..]),
    ];
    let cases: Vec<(usize, usize, usize, &[DType])> = if shapes.is_empty() {
        default_cases.to_vec()
    } else {
        shapes
            .iter()
            .map(|&(m, n, kk)| (m, n, kk, &[DType::F32][..]))
            .collect()
    };
    for (m, n, kk, dtypes) in cases {
        let w32 = random_vec(n * kk, 1);
        let x = random_vec(m * kk, 2);
        let cold = m <= 16;
        for &dt in dtypes {
            let bytes = n * kk * dt.size_in_bytes();
            let copies = if cold {
                cold_bytes.div_ceil(bytes).clamp(2, 64)
            } else {
                1
            };
            // candle side
            let wt = Tensor::from_vec(w32.clone(), (n, kk), &dev)?.to_dtype(dt)?;
            let ws: Vec<Tensor> = (0..copies)
                .map(|_| wt.copy())
                .collect::<candle_core::Result<_>>()?;
            let xt = Tensor::from_vec(x.clone(), (m, kk), &dev)?.to_dtype(dt)?;
            // our side (f32 activations always)
            let o32: Vec<Vec<f32>> = if dt == DType::F32 {
                (0..copies).map(|_| w32.clone()).collect()
            } else {
                vec![]
            };
            let o16: Vec<Vec<f16>> = if dt == DType::F16 {
                (0..copies)
                    .map(|_| w32.iter().map(|&v| f16::from_f32(v)).collect())
                    .collect()
            } else {
                vec![]
            };
            let ob: Vec<Vec<bf16>> = if dt == DType::BF16 {
                (0..copies)
                    .map(|_| w32.iter().map(|&v| bf16::from_f32(v)).collect())
                    .collect()
            } else {
                vec![]
            };
            let mut out = vec![0.0f32; m * n];
            let out_ref = std::cell::RefCell::new(&mut out);
            let mut v: Vec<Variant<'_>> = vec![
                (
                    "candle".into(),
                    Box::new(|i| {
                        let y = xt.matmul(&ws[i % copies].t().unwrap()).unwrap();
                        std::hint::black_box(y);
                    }),
                ),
                (
                    "ours".into(),
                    Box::new(|i| {
                        let o: &mut [f32] = &mut out_ref.borrow_mut();
                        match dt {
                            DType::F32 => k::gemm_small_m(&opts, &o32[i % copies], &x, o, m),
                            DType::F16 => k::gemm_small_m(&opts, &o16[i % copies], &x, o, m),
                            _ => k::gemm_small_m(&opts, &ob[i % copies], &x, o, m),
                        }
                    }),
                ),
            ];
            // The outer-product GEMM for large m (f32, AVX2): timed in the same rounds.
            let nt = dt == DType::F32 && k::Isa::Avx2.is_available();
            if nt {
                v.push((
                    "sgemm_nt".into(),
                    Box::new(|i| {
                        let o: &mut [f32] = &mut out_ref.borrow_mut();
                        k::sgemm::sgemm_nt(&o32[i % copies], &x, o, m);
                    }),
                ));
            }
            let calls = if dt == DType::BF16 { 1 } else { 4 };
            let r = bench(rounds, calls, &mut v);
            let nt_cols = if nt {
                format!("{:.3} | {:.2}x", r[2] * 1e3, r[0] / r[2])
            } else {
                "- | -".into()
            };
            println!(
                "| m={m} {n}x{kk} {dt:?} weights{} | {:.3} | {:.3} | {:.2}x | {nt_cols} |",
                if cold { " (cold)" } else { "" },
                r[0] * 1e3,
                r[1] * 1e3,
                r[0] / r[1]
            );
        }
    }
    println!("(candle f16/bf16 rows use f16/bf16 activations and outputs; ours keep f32 activations and accumulation)");
    Ok(())
}
