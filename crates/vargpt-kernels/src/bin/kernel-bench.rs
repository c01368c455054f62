//! Micro-benchmark of the vargpt-kernels GEMV / small-m GEMM kernels.
//!
//! `cargo run -p vargpt-kernels --bin kernel-bench [-- --quick] [--rounds N] [--cold-mb MB]`
//!
//! Weights are "cold": each call uses the next of several copies of the
//! matrix, together larger than `--cold-mb` (default 512 MiB, beyond the
//! last-level cache), so the numbers are DRAM-bound like a real decode step
//! that streams every layer once. Variants of one table are interleaved in
//! rounds and the minimum (and median) over all calls is reported, which
//! keeps comparisons fair on a noisy machine.

use std::time::Instant;

use vargpt_kernels::{self as k, bf16, f16, gemm_small_m, Isa, Opts, Weight};

struct Args {
    rounds: usize,
    cold_bytes: usize,
    quick: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        rounds: 10,
        cold_bytes: 512 << 20,
        quick: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(s) = it.next() {
        match s.as_str() {
            "--quick" => {
                a.quick = true;
                a.rounds = 3;
                a.cold_bytes = 256 << 20;
            }
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--cold-mb" => {
                a.cold_bytes = it
                    .next()
                    .and_then(|v| v.parse::<usize>().ok())
                    .expect("--cold-mb MB")
                    << 20
            }
            "-h" | "--help" => {
                println!("kernel-bench [--quick] [--rounds N] [--cold-mb MB]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Deterministic pseudo-random values in [-1, 1).
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

/// Several copies of one weight matrix, together at least `cold_bytes`.
struct Cold<W> {
    copies: Vec<Vec<W>>,
}

impl<W: Weight> Cold<W> {
    fn new(w: Vec<W>, cold_bytes: usize) -> Self {
        let bytes = (w.len() * std::mem::size_of::<W>()).max(1);
        let count = cold_bytes.div_ceil(bytes).clamp(2, 4096);
        let mut copies = vec![w.clone(); count - 1];
        copies.push(w);
        Cold { copies }
    }
    fn get(&self, i: usize) -> &[W] {
        &self.copies[i % self.copies.len()]
    }
}

type Variant<'a> = (String, Box<dyn FnMut(usize) + 'a>);

/// Runs the variants interleaved for `rounds` rounds of `calls` calls each;
/// returns (min, median) seconds per call for each.
fn bench(rounds: usize, calls: usize, variants: &mut [Variant<'_>]) -> Vec<(f64, f64)> {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut counter = 0usize;
    // Warm-up (page faults, pool start-up).
    for (_, f) in variants.iter_mut() {
        f(counter);
        counter += 1;
    }
    // Each round runs every variant once, in a shuffled order, so that a
    // change of background load does not favour whichever variant ran last.
    let mut order: Vec<usize> = (0..variants.len()).collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..rounds {
        for i in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        for &vi in &order {
            let f = &mut variants[vi].1;
            for _ in 0..calls {
                let t = Instant::now();
                f(counter);
                times[vi].push(t.elapsed().as_secs_f64());
                counter += 1;
            }
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            (t[0], t[t.len() / 2])
        })
        .collect()
}

/// Like `bench` but each timed sample is `inner` back-to-back calls (for
/// microsecond-sized problems).
fn bench_inner(rounds: usize, inner: usize, variants: &mut [Variant<'_>]) -> Vec<(f64, f64)> {
    let mut wrapped: Vec<Variant<'_>> = variants
        .iter_mut()
        .map(|(name, f)| {
            let f: &mut Box<dyn FnMut(usize) + '_> = f;
            let g: Box<dyn FnMut(usize) + '_> = Box::new(move |c| {
                for i in 0..inner {
                    f(c * inner + i)
                }
            });
            (name.clone(), g)
        })
        .collect();
    bench(rounds, 5, &mut wrapped)
        .into_iter()
        .map(|(a, b)| (a / inner as f64, b / inner as f64))
        .collect()
}

/// The obvious single-threaded loop (iterator sum, no SIMD reassociation).
fn naive_gemv(w: &[f32], x: &[f32], out: &mut [f32]) {
    let k = x.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = w[i * k..(i + 1) * k]
            .iter()
            .zip(x)
            .map(|(a, b)| a * b)
            .sum();
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn gbs(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn to_f16(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

fn main() {
    let args = parse_args();
    let threads = k::default_threads();
    let isa = Isa::detect();
    let best = Opts::default();
    let one = best.with_threads(1);
    let scalar = best.with_isa(Isa::Scalar);
    println!("# vargpt-kernels kernel-bench");
    println!(
        "cpu: {} | logical cpus: {} | isa: {isa:?} | threads: {threads} | cold set: {} MiB | rounds: {}",
        cpu_model(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        args.cold_bytes >> 20,
        args.rounds
    );
    println!("(min over all calls; the read probe runs interleaved with the kernels, so '% of read bw' compares like with like)");

    // Read-bandwidth probe: a plain f32 sum with the GEMV's access pattern
    // (8 adjacent 4 KiB rows at a time, same prefetch) over a buffer beyond
    // the LLC.
    let probe = random_vec(args.cold_bytes / 4, 1);
    let sink = std::cell::Cell::new(0.0f32);
    // Each probe call reads the same number of bytes as the kernel it is
    // compared with (call lengths matter on a noisy machine), rotating
    // through the buffer like the cold weight copies.
    let probe_call = |opts: Opts, bytes: usize| {
        let len = (bytes / 4).clamp(1, probe.len());
        let count = probe.len() / len;
        let (probe, sink) = (&probe, &sink);
        move |i: usize| {
            let s = &probe[(i % count) * len..][..len];
            sink.set(sink.get() + k::sum_f32_probe(&opts, s));
        }
    };

    // ---------------------------------------------------------------- LM head GEMV
    let (n, kk) = (32064usize, 1024usize);
    let w32 = random_vec(n * kk, 2);
    let x = random_vec(kk, 3);
    let mut out = vec![0.0f32; n];
    let (t_f32, t_f16, t_naive, bw_t);
    {
        let c16 = Cold::new(to_f16(&w32), args.cold_bytes);
        let cb = Cold::new(to_bf16(&w32), args.cold_bytes);
        let c32 = Cold::new(w32, args.cold_bytes);
        // (label, weight type, threads, bytes per weight)
        let rows: Vec<(&str, &str, usize, usize)> = vec![
            ("read probe", "-", 1, 0),
            ("read probe", "-", threads, 0),
            ("naive loop", "f32", 1, 4),
            ("ours scalar", "f32", threads, 4),
            ("ours simd", "f32", 1, 4),
            ("ours simd", "f32", threads, 4),
            ("ours scalar", "f16", threads, 2),
            ("ours simd", "f16", 1, 2),
            ("ours simd", "f16", threads, 2),
            ("ours simd", "bf16", threads, 2),
        ];
        let o = std::cell::RefCell::new(&mut out);
        let mut v: Vec<Variant<'_>> = Vec::new();
        for &(name, ty, t, _) in &rows {
            let opts = if name.contains("scalar") {
                scalar
            } else {
                best
            }
            .with_threads(t);
            let (c32, c16, cb, x, o) = (&c32, &c16, &cb, &x, &o);
            let f: Box<dyn FnMut(usize)> = match (name, ty) {
                ("read probe", _) => Box::new(probe_call(best.with_threads(t), n * kk * 4)),
                ("naive loop", _) => {
                    Box::new(move |i| naive_gemv(c32.get(i), x, &mut o.borrow_mut()))
                }
                (_, "f32") => Box::new(move |i| k::gemv(&opts, c32.get(i), x, &mut o.borrow_mut())),
                (_, "f16") => Box::new(move |i| k::gemv(&opts, c16.get(i), x, &mut o.borrow_mut())),
                _ => Box::new(move |i| k::gemv(&opts, cb.get(i), x, &mut o.borrow_mut())),
            };
            v.push((name.to_string(), f));
        }
        let res = bench(args.rounds, if args.quick { 2 } else { 3 }, &mut v);
        let bw1 = gbs(n * kk * 4, res[0].0);
        bw_t = gbs(n * kk * 4, res[1].0);
        println!("\n## GEMV {n}x{kk} (LM head), cold weights, per call");
        println!("| kernel | weights | threads | min ms | median ms | GB/s (min) | % of read bw |");
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| read probe (f32 sum, same bytes) | - | 1 | {:.2} | {:.2} | {bw1:.1} | 100% |",
            res[0].0 * 1e3,
            res[0].1 * 1e3
        );
        println!(
            "| read probe (f32 sum, same bytes) | - | {threads} | {:.2} | {:.2} | {bw_t:.1} | 100% |",
            res[1].0 * 1e3,
            res[1].1 * 1e3
        );
        let find = |name: &str, ty: &str, t: usize| {
            rows.iter()
                .position(|r| r.0 == name && r.1 == ty && r.2 == t)
                .map(|i| res[i].0)
                .unwrap()
        };
        for (&(name, ty, t, b), &(mn, med)) in rows.iter().zip(&res).skip(2) {
            let g = gbs(n * kk * b, mn);
            let bound = if t == 1 { bw1 } else { bw_t };
            println!(
                "| {name} | {ty} | {t} | {:.2} | {:.2} | {g:.1} | {:.0}% |",
                mn * 1e3,
                med * 1e3,
                100.0 * g / bound
            );
        }
        t_f32 = find("ours simd", "f32", threads);
        t_f16 = find("ours simd", "f16", threads);
        t_naive = find("naive loop", "f32", 1);
        println!(
            "\nratios: simd f32 vs naive loop {:.2}x | f16 vs f32 weights {:.2}x | f32 time vs the f32 bound (bytes / probe bw) {:.0}%",
            t_naive / t_f32,
            t_f32 / t_f16,
            100.0 * (n * kk * 4) as f64 / bw_t / 1e9 / t_f32
        );
    }

    // ---------------------------------------------------------------- small m
    let ms: &[usize] = if args.quick {
        &[1, 2, 4, 8]
    } else {
        &[1, 2, 4, 8, 16]
    };
    // Every m with the detected instruction set; with AVX-512, the batched m
    // also with plain AVX2 for comparison (same bits, other tiles).
    let mut small_m_cases: Vec<(usize, Isa)> = ms.iter().map(|&m| (m, isa)).collect();
    if isa == Isa::Avx512 {
        small_m_cases.extend(ms.iter().filter(|&&m| m > 1).map(|&m| (m, Isa::Avx2)));
    }
    let mut batch8 = Vec::new();
    for (n, kk, label) in [
        (2816usize, 1024usize, "gate/up proj"),
        (1024, 2816, "down proj"),
    ] {
        let w32 = random_vec(n * kk, 4);
        let xs = random_vec(16 * kk, 5);
        let c16 = Cold::new(to_f16(&w32), args.cold_bytes);
        let c32 = Cold::new(w32, args.cold_bytes);
        let mut out = vec![0.0f32; 16 * n];
        let o = std::cell::RefCell::new(&mut out);
        let mut v: Vec<Variant<'_>> =
            vec![("probe".into(), Box::new(probe_call(best, n * kk * 4)))];
        let mut meta = vec![("-", usize::MAX, isa)];
        for ty in ["f32", "f16"] {
            for &(m, isa) in &small_m_cases {
                let opts = best.with_isa(isa);
                let (c32, c16, o) = (&c32, &c16, &o);
                let x = &xs[..m * kk];
                let f: Box<dyn FnMut(usize)> = if ty == "f32" {
                    Box::new(move |i| {
                        gemm_small_m(&opts, c32.get(i), x, &mut o.borrow_mut()[..m * n], m)
                    })
                } else {
                    Box::new(move |i| {
                        gemm_small_m(&opts, c16.get(i), x, &mut o.borrow_mut()[..m * n], m)
                    })
                };
                v.push((format!("{ty} m={m} {isa:?}"), f));
                meta.push((ty, m, isa));
            }
            // 8 separate GEMVs (8 weight passes), for contrast with the batched kernel.
            let (c32, c16, xs, o) = (&c32, &c16, &xs, &o);
            let f: Box<dyn FnMut(usize)> = if ty == "f32" {
                Box::new(move |i| {
                    for t in 0..8 {
                        k::gemv(
                            &best,
                            c32.get(i * 8 + t),
                            &xs[t * kk..(t + 1) * kk],
                            &mut o.borrow_mut()[..n],
                        )
                    }
                })
            } else {
                Box::new(move |i| {
                    for t in 0..8 {
                        k::gemv(
                            &best,
                            c16.get(i * 8 + t),
                            &xs[t * kk..(t + 1) * kk],
                            &mut o.borrow_mut()[..n],
                        )
                    }
                })
            };
            v.push((format!("{ty} 8x gemv"), f));
            meta.push((ty, 0, isa));
        }
        let res = bench(args.rounds, if args.quick { 4 } else { 8 }, &mut v);
        let bw = gbs(n * kk * 4, res[0].0);
        println!("\n## Small-m GEMM, W {n}x{kk} ({label}), cold weights; read probe in the same rounds: {bw:.1} GB/s");
        println!("| weights | m | isa | min ms | median ms | weight GB/s (min) | % of read bw | tokens/s | vs m=1 tokens/s | GFLOP/s |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        let mut base = 0.0;
        for (&(ty, m, case_isa), &(mn, med)) in meta.iter().zip(&res).skip(1) {
            let bpe = if ty == "f32" { 4 } else { 2 };
            let (calls, label_m) = if m == 0 {
                (8, "8 x gemv (unbatched)".to_string())
            } else {
                (1, m.to_string())
            };
            let tokens = if m == 0 { 8 } else { m };
            let tps = tokens as f64 / mn;
            if m == 1 {
                base = tps;
            }
            let g = gbs(calls * n * kk * bpe, mn);
            println!(
                "| {ty} | {label_m} | {case_isa:?} | {:.3} | {:.3} | {g:.1} | {:.0}% | {tps:.0} | {:.2}x | {:.1} |",
                mn * 1e3,
                med * 1e3,
                100.0 * g / bw,
                tps / base,
                2.0 * (tokens * n * kk) as f64 / mn / 1e9
            );
            if m == 8 && case_isa == isa {
                batch8.push((format!("{ty} {n}x{kk}"), tps / base));
            }
        }
    }

    // ---------------------------------------------------------------- compute (hot weights)
    // Weights that stay in L2 (n = 256, k = 1024, f32: 1 MiB), one thread:
    // what the register tiles sustain when memory is not the limit.
    println!("\n## Compute-bound small-m GEMM, hot weights 256x1024 f32, 1 thread");
    println!("| m | isa | min us | GFLOP/s |");
    println!("|---|---|---|---|");
    {
        let (n, kk) = (256usize, 1024usize);
        // 64-byte aligned, so the table does not depend on where the allocator
        // put the buffer (a straddling load costs two).
        let w_buf = random_vec(n * kk + 16, 10);
        let w = &w_buf[w_buf.as_ptr().align_offset(64).min(16)..][..n * kk];
        let xs = random_vec(64 * kk, 11);
        let mut out = vec![0.0f32; 64 * n];
        let o = std::cell::RefCell::new(&mut out);
        let mut cases = Vec::new();
        for m in [2usize, 4, 8, 16, 32, 64] {
            for isa in Isa::available().into_iter().filter(|i| *i != Isa::Scalar) {
                cases.push((m, isa));
            }
        }
        let mut v: Vec<Variant<'_>> = Vec::new();
        for &(m, isa) in &cases {
            let opts = one.with_isa(isa);
            let (w, x, o) = (w, &xs[..m * kk], &o);
            v.push((
                format!("{m} {isa:?}"),
                Box::new(move |_| gemm_small_m(&opts, w, x, &mut o.borrow_mut()[..m * n], m)),
            ));
        }
        let res = bench_inner(args.rounds, 8, &mut v);
        for (&(m, isa), &(mn, _)) in cases.iter().zip(&res) {
            println!(
                "| {m} | {isa:?} | {:.1} | {:.1} |",
                mn * 1e6,
                2.0 * (m * n * kk) as f64 / mn / 1e9
            );
        }
    }

    // ---------------------------------------------------------------- sgemm
    if Isa::Avx512.is_available() {
        // The Winograd GEMMs of the VQVAE decoder: cout × cin · cin × tiles.
        println!("\n## sgemm (AVX-512 micro-kernel), 1 thread, hot operands");
        println!("| m x n x k | min us | GFLOP/s |");
        println!("|---|---|---|");
        for (m, n, kk) in [
            (160usize, 256usize, 160usize),
            (320, 256, 320),
            (640, 64, 640),
            (96, 96, 96),
        ] {
            let a = random_vec(m * kk, 15);
            let b = random_vec(kk * n, 16);
            let mut c = vec![0f32; m * n];
            let cc = std::cell::RefCell::new(&mut c);
            let mut v: Vec<Variant<'_>> = vec![(
                "sgemm".into(),
                Box::new(|_| {
                    k::sgemm::sgemm(m, n, kk, &a, kk, &b, n, &mut cc.borrow_mut(), n);
                }),
            )];
            let r = bench_inner(args.rounds, 16, &mut v);
            println!(
                "| {m}x{n}x{kk} | {:.1} | {:.1} |",
                r[0].0 * 1e6,
                2.0 * (m * n * kk) as f64 / r[0].0 / 1e9
            );
        }
    }

    // ---------------------------------------------------------------- attention
    // The last image stage of the bench-mid LLaMA: 256 queries (causal within
    // the stage) over 954 cached positions, 16 heads of 64; and one VAR-like
    // stage (8 heads of 64, 512 queries over 680 positions, no mask).
    println!("\n## Attention (all threads), per call");
    println!("| case | min ms | GFLOP/s (QK + PV) |");
    println!("|---|---|---|");
    for (label, l, heads, d, total, causal) in [
        (
            "llama stage 10: 256 q, 954 keys, 16x64",
            256usize,
            16usize,
            64usize,
            954usize,
            true,
        ),
        (
            "var stage 10: 512 q, 680 keys, 8x64",
            512,
            8,
            64,
            680,
            false,
        ),
    ] {
        let q = random_vec(l * heads * d, 12);
        let kc = random_vec(heads * total * d, 13);
        let vc = random_vec(heads * total * d, 14);
        let vis = move |i: usize| if causal { total - l + i + 1 } else { total };
        let flops: f64 = (0..l).map(|i| 4.0 * (vis(i) * d * heads) as f64).sum();
        let mut v: Vec<Variant<'_>> = vec![(
            label.to_string(),
            Box::new(|_| {
                std::hint::black_box(k::attn::attend(
                    &q, l, heads, heads, d, &kc, &vc, total, vis, 0.125,
                ));
            }),
        )];
        let r = bench(args.rounds, 2, &mut v);
        println!(
            "| {label} | {:.2} | {:.1} |",
            r[0].0 * 1e3,
            flops / r[0].0 / 1e9
        );
    }

    // ---------------------------------------------------------------- small shapes (threading)
    println!("\n## Small GEMVs, f32, cold weights (threading overhead), per call");
    println!("| n x k | weight bytes | 1 thread us | {threads} threads us | speed-up |");
    println!("|---|---|---|---|---|");
    for (n, kk) in [
        (64usize, 64usize),
        (128, 128),
        (256, 256),
        (512, 512),
        (1024, 1024),
    ] {
        let cold = Cold::new(random_vec(n * kk, 6), args.cold_bytes.min(256 << 20));
        let x = random_vec(kk, 7);
        let mut out = vec![0.0f32; n];
        let o = std::cell::RefCell::new(&mut out);
        let inner = ((1usize << 21) / (n * kk * 4)).clamp(1, 256);
        let mut v: Vec<Variant<'_>> = vec![
            (
                "1".into(),
                Box::new(|i| k::gemv(&one, cold.get(i), &x, &mut o.borrow_mut())),
            ),
            (
                "t".into(),
                Box::new(|i| k::gemv(&best, cold.get(i), &x, &mut o.borrow_mut())),
            ),
        ];
        let r = bench_inner(args.rounds, inner, &mut v);
        println!(
            "| {n}x{kk} | {} KiB | {:.2} | {:.2} | {:.2}x |",
            n * kk * 4 / 1024,
            r[0].0 * 1e6,
            r[1].0 * 1e6,
            r[0].0 / r[1].0
        );
    }

    // ---------------------------------------------------------------- prefill (for reference)
    if !args.quick {
        let (m, n, kk) = (267usize, 2816usize, 1024usize);
        let w = random_vec(n * kk, 8);
        let x = random_vec(m * kk, 9);
        let mut out = vec![0.0f32; m * n];
        let o = std::cell::RefCell::new(&mut out);
        let mut v: Vec<Variant<'_>> = vec![(
            "prefill".into(),
            Box::new(|_| gemm_small_m(&best, &w, &x, &mut o.borrow_mut(), m)),
        )];
        let r = bench(args.rounds.min(5), 2, &mut v);
        println!(
            "\n## Prefill-sized GEMM through the small-m kernel (not its target): m={m} n={n} k={kk}: {:.2} ms, {:.1} GFLOP/s",
            r[0].0 * 1e3,
            2.0 * (m * n * kk) as f64 / r[0].0 / 1e9
        );
    }

    println!("\n## Summary");
    println!(
        "LM-head GEMV f32: {:.2} ms = {:.1} GB/s ({:.0}% of the {bw_t:.1} GB/s read probe); f16 weights {:.2} ms ({:.2}x faster than f32); naive loop {:.2} ms",
        t_f32 * 1e3,
        gbs(32064 * 1024 * 4, t_f32),
        100.0 * gbs(32064 * 1024 * 4, t_f32) / bw_t,
        t_f16 * 1e3,
        t_f32 / t_f16,
        t_naive * 1e3
    );
    for (label, r) in batch8 {
        println!("batch 8 vs batch 1 tokens/s, {label}: {r:.2}x");
    }
    std::hint::black_box(sink.get());
}
