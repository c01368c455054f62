//! `bench`: timings of one model directory, printed as JSON.
//!
//! `bench phases` measures what `bench/reference_bench.py` measures on the
//! authors' PyTorch model, with the same inputs (a generated 320×240 picture, the
//! same prompts, 32 greedy decode steps with EOS ignored, one text-to-image at
//! cfg 1.5 with the default sampler), each the minimum over `--repeat` runs.
//! `bench batch` compares caption throughput at batch 1 and batch N in one run.

use anyhow::{Context, Result};

// Tensors of up to tens of MB are allocated and freed every step: see
// vargpt-alloc for why mimalloc, kept warm, is the allocator.
#[global_allocator]
static GLOBAL: vargpt_alloc::MiMalloc = vargpt_alloc::MiMalloc;

use candle_core::Tensor;
use clap::{Parser, Subcommand};
use serde_json::json;
use std::time::Instant;
use vargpt_engine::prefill::prefill;
use vargpt_engine::{
    Engine, LoadOptions, NoObserver, Request, RngNoise, SamplingParams, Sequence, Task,
};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct ModelArgs {
    /// Model directory (e.g. made by `vargpt-make-checkpoint --preset bench-mid`).
    #[arg(long)]
    model: String,
    /// Compute dtype: f32 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Tensor-parallel degree (CPU thread ranks, or GPUs with `--cuda`).
    #[arg(long, default_value_t = 1)]
    tp: usize,
    /// Run on this GPU (build with `--features cuda`); timings end with a host read,
    /// so they include the device work.
    #[arg(long)]
    cuda: Option<usize>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Per-phase timings (load, preprocess, prefill, decode, image).
    Phases {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        #[arg(long, default_value_t = 32)]
        decode_tokens: usize,
        /// Comma list of phases to skip: caption,image.
        #[arg(long, default_value = "")]
        skip: String,
    },
    /// Where the time goes: each component of one request timed on its own.
    Components {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// One 3×3 "same" convolution (the VQVAE decoder's workhorse): ours versus
    /// candle's conv2d, same input, in one run.
    Conv {
        #[arg(long, default_value_t = 160)]
        channels: usize,
        #[arg(long, default_value_t = 256)]
        side: usize,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Caption throughput, batch 1 versus batch N (continuous batching engine):
    /// end to end (`ratio`), decode steps only (`decode_only.ratio`, what
    /// batching changes), and the end-to-end ceiling the compute-bound prompts
    /// leave (`end_to_end_ceiling`: prompts + batched decode, no overhead).
    Batch {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 32)]
        tokens: usize,
    },
}

fn main() -> Result<()> {
    vargpt_alloc::configure();
    match Cli::parse().cmd {
        Cmd::Phases {
            model,
            repeat,
            decode_tokens,
            skip,
        } => phases(&model, repeat, decode_tokens, &skip),
        Cmd::Batch {
            model,
            batch,
            tokens,
        } => batch_throughput(&model, batch, tokens),
        Cmd::Components { model } => components(&model),
        Cmd::Conv {
            channels,
            side,
            repeat,
        } => conv(channels, side, repeat),
    }
}

fn load(m: &ModelArgs) -> Result<(Engine, f64)> {
    let mut o = LoadOptions::new(&m.model);
    o.dtype = Some(m.dtype.clone());
    o.tp = m.tp;
    o.cuda_device = m.cuda;
    let t = Instant::now();
    let e = Engine::load(&o).with_context(|| format!("loading {}", m.model))?;
    Ok((e, t.elapsed().as_secs_f64()))
}

/// The reference benchmark's picture: 320×240, pixel (x mod 256, y mod 256, x·y mod 256).
fn bench_png() -> Vec<u8> {
    bench_png_variant(0)
}

/// The benchmark picture with its colours shifted by `i` (so a batch of requests
/// carries distinct images, as a captioning job over a dataset does).
fn bench_png_variant(i: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(320, 240, |x, y| {
        let (x, y) = (x + 37 * i, y + 11 * i);
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("png");
    out
}

/// User + system CPU time of this process so far, in seconds (Linux).
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses): utime and stime
    // are the 12th and 13th of them, in clock ticks (100 per second on Linux).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Peak resident set size of this process (VmHWM), in bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn min(a: f64, b: f64) -> f64 {
    a.min(b)
}

fn phases(m: &ModelArgs, repeat: usize, decode_tokens: usize, skip: &str) -> Result<()> {
    let (e, load_s) = load(m)?;
    let rss_after_load = peak_rss();
    let skip: Vec<&str> = skip.split(',').filter(|s| !s.is_empty()).collect();
    let mut out = json!({
        "model": m.model, "dtype": m.dtype, "tp": m.tp, "cuda": m.cuda, "load_s": load_s, "repeat": repeat,
        "weight_bytes": e.weight_bytes(), "peak_rss_after_load_bytes": rss_after_load,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    let model = e.model();
    if !skip.contains(&"caption") {
        let png = bench_png();
        let req = Request {
            task: Task::Caption,
            text: "Please describe the image in detail.".into(),
            image: Some(png.clone()),
            params: SamplingParams::default(),
        };
        let (mut pre, mut pf, mut dec) = (f64::MAX, f64::MAX, f64::MAX);
        let mut prompt_tokens = 0;
        for _ in 0..repeat.max(1) {
            let t0 = Instant::now();
            let pv = e.pixel_values(&png)?;
            let prompt = e.render_prompt(&req.text, true)?;
            let ids = e.tokenize_prompt(&prompt)?;
            let t1 = Instant::now();
            let feats = model.image_features(&pv)?;
            let emb = model.embed_prompt(&ids, Some(&feats))?;
            let mut cache = model.llm.new_cache();
            let logits = prefill(model, &emb, &mut cache)?;
            let mut tok = argmax(&logits);
            let t2 = Instant::now();
            for _ in 0..decode_tokens {
                // EOS ignored: a fixed number of steps, as the reference benchmark.
                let x = model.llm.embed(&Tensor::new(&[[tok]], model.device())?)?;
                let h = model.llm.forward(&x, &mut cache)?;
                let l: Vec<f32> = model.llm.logits(&h)?.flatten_all()?.to_vec1()?;
                tok = argmax(&l);
            }
            let t3 = Instant::now();
            prompt_tokens = ids.len();
            pre = min(pre, (t1 - t0).as_secs_f64());
            pf = min(pf, (t2 - t1).as_secs_f64());
            dec = min(dec, (t3 - t2).as_secs_f64());
        }
        out["preprocess_s"] = json!(pre);
        out["prefill_s"] = json!(pf);
        out["prompt_tokens"] = json!(prompt_tokens);
        out["decode_s"] = json!(dec);
        out["decode_tokens"] = json!(decode_tokens);
        out["decode_tok_per_s"] = json!(decode_tokens as f64 / dec);
    }
    if !skip.contains(&"image") {
        let mut best = f64::MAX;
        let mut side = 0;
        for i in 0..repeat.max(1) {
            let req = Request {
                task: Task::GenerateImage,
                text: "Please design a drawing of a butterfly on a flower.".into(),
                image: None,
                params: SamplingParams {
                    seed: Some(i as u64),
                    ..Default::default()
                },
            };
            let t = Instant::now();
            let r = e.run(&req)?;
            let png = r.image.as_ref().context("no image")?.to_png()?;
            best = min(best, t.elapsed().as_secs_f64());
            side = r.image.map(|i| i.width).unwrap_or(0);
            drop(png);
        }
        out["image_s"] = json!(best);
        out["image_stages"] = json!(model.var.config().stages());
        out["image_side"] = json!(side);
    }
    out["peak_rss_bytes"] = json!(peak_rss());
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    vargpt_engine::sampling::argmax(v) as u32
}

fn batch_throughput(m: &ModelArgs, batch: usize, tokens: usize) -> Result<()> {
    let (e, _) = load(m)?;
    let req = |i: usize| Request {
        task: Task::Caption,
        text: format!("Please describe the image in detail, take {i}."),
        image: Some(bench_png_variant(i as u32)),
        params: SamplingParams {
            max_new_tokens: tokens,
            allow_image: false,
            ..Default::default()
        },
    };
    let reqs: Vec<Request> = (0..batch).map(req).collect();
    // Warm-up, untimed: the first batch of N sizes the KV caches and activations
    // of N sequences, whose pages a long-running worker faults in only once.
    e.run(&reqs[0])?;
    for r in e.run_batch(&reqs) {
        r?;
    }
    // Batch 1: one request after the other.
    let t = Instant::now();
    let mut gen1 = 0;
    for r in &reqs {
        gen1 += e.run(r)?.ids.len();
    }
    let s1 = t.elapsed().as_secs_f64();
    // Batch N: all together.
    let t = Instant::now();
    let mut gen_n = 0;
    for r in e.run_batch(&reqs) {
        gen_n += r?.ids.len();
    }
    let sn = t.elapsed().as_secs_f64();
    let (tps1, tpsn) = (gen1 as f64 / s1, gen_n as f64 / sn);
    // Decode steps only (prompts already prefilled): what batching changes.
    // Also returns how long the prompts took (vision tower + prefill step).
    let decode_only = |group: &[Request]| -> Result<(usize, f64, f64)> {
        let t = Instant::now();
        let mut seqs = group
            .iter()
            .map(|r| e.start(r, Box::new(RngNoise), Box::new(NoObserver)))
            .collect::<Result<Vec<_>, _>>()?;
        e.step(&mut seqs.iter_mut().collect::<Vec<_>>())?; // prefill
        let prompts_s = t.elapsed().as_secs_f64();
        let first: usize = seqs.iter().map(|s| s.generated()).sum();
        let t = Instant::now();
        loop {
            let mut active: Vec<&mut Sequence> = seqs.iter_mut().filter(|s| !s.is_done()).collect();
            if active.is_empty() {
                break;
            }
            e.step(&mut active)?;
        }
        let total: usize = seqs.iter().map(|s| s.generated()).sum();
        Ok((total - first, t.elapsed().as_secs_f64(), prompts_s))
    };
    let (mut d1_tokens, mut d1_s) = (0, 0.0);
    for r in &reqs {
        let (n, s, _) = decode_only(std::slice::from_ref(r))?;
        d1_tokens += n;
        d1_s += s;
    }
    let (dn_tokens, dn_s, prompts_n_s) = decode_only(&reqs)?;
    let (d1, dn) = (d1_tokens as f64 / d1_s, dn_tokens as f64 / dn_s);
    // The prompts (vision tower + prefill) are compute-bound: batching them
    // saves next to nothing, so even with no overhead at all batch N cannot
    // take less than prompts + batched decode steps. That bounds the
    // end-to-end ratio whatever the scheduler does.
    let ceiling = (gen_n as f64 / (prompts_n_s + dn_s)) / tps1;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "model": m.model, "dtype": m.dtype, "requests": batch, "max_new_tokens": tokens,
            "batch1": {"seconds": s1, "tokens": gen1, "tok_per_s": tps1},
            "batchN": {"batch": batch, "seconds": sn, "tokens": gen_n, "tok_per_s": tpsn},
            "ratio": tpsn / tps1,
            "decode_only": {"batch1_tok_per_s": d1, "batchN_tok_per_s": dn, "ratio": dn / d1},
            "prompts_batchN_seconds": prompts_n_s,
            "end_to_end_ceiling": ceiling,
        }))?
    );
    Ok(())
}

fn conv(c: usize, side: usize, repeat: usize) -> Result<()> {
    let dev = candle_core::Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, c, side, side), &dev)?;
    let w = Tensor::randn(0f32, 0.05, (c, c, 3, 3), &dev)?;
    let b = Tensor::randn(0f32, 1.0, c, &dev)?;
    let best = |f: &dyn Fn() -> Result<Tensor>| -> Result<(f64, Tensor)> {
        let mut out = f()?; // warm-up
        let mut s = f64::INFINITY;
        for _ in 0..repeat {
            let t = Instant::now();
            out = f()?;
            s = s.min(t.elapsed().as_secs_f64());
        }
        Ok((s, out))
    };
    use vargpt_model::conv::{conv2d_same_f32_with, ConvAlgo};
    let (candle_s, want) = best(&|| {
        Ok(x.conv2d(&w, 1, 1, 1, 1)?
            .broadcast_add(&b.reshape((1, c, 1, 1))?)?)
    })?;
    let gflop = 2.0 * (c * c * 9 * side * side) as f64 / 1e9;
    let mut rows = serde_json::Map::new();
    for (name, algo) in [
        ("auto", ConvAlgo::Auto),
        ("winograd", ConvAlgo::Winograd),
        ("winograd4", ConvAlgo::Winograd4),
        ("shifted_gemm", ConvAlgo::ShiftedGemm),
    ] {
        let (s, out) = best(&|| Ok(conv2d_same_f32_with(&x, &w, &b, algo)?))?;
        let err: f32 = (out - &want)?.abs()?.flatten_all()?.max(0)?.to_scalar()?;
        rows.insert(
            name.into(),
            json!({"s": s, "speedup_vs_candle": candle_s / s, "effective_gflops": gflop / s, "max_abs_diff": err}),
        );
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "channels": c, "side": side, "gflop_direct": gflop,
            "candle_s": candle_s, "candle_gflops": gflop / candle_s, "ours": rows,
        }))?
    );
    Ok(())
}

fn components(m: &ModelArgs) -> Result<()> {
    let (e, _) = load(m)?;
    let model = e.model();
    // Wall time of the second run, and how many cores it kept busy on average
    // (process CPU time / wall time: below the thread count means serial parts).
    let busy = std::cell::RefCell::new(serde_json::Map::new());
    let mut name_i = 0;
    let names = [
        "clip",
        "llm_prefill",
        "llm_stages",
        "var_stages",
        "vq_residual",
        "vqvae_decode",
    ];
    let mut time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        f()?; // warm-up
        let c = cpu_seconds();
        let t = Instant::now();
        f()?;
        let wall = t.elapsed().as_secs_f64();
        // (CPU time is counted in 10 ms ticks: too coarse for short parts.)
        if let (Some(c0), Some(c1), true) = (c, cpu_seconds(), wall >= 0.05) {
            let name = names.get(name_i).copied().unwrap_or("other");
            busy.borrow_mut()
                .insert(name.into(), json!((c1 - c0) / wall));
        }
        name_i += 1;
        Ok(wall)
    };
    let pv = e.pixel_values(&bench_png())?;
    let clip_s = time(&mut || {
        model.vision.forward(&pv)?;
        Ok(())
    })?;
    let feats = model.image_features(&pv)?;
    let prompt = e.render_prompt("Please describe the image in detail.", true)?;
    let ids = e.tokenize_prompt(&prompt)?;
    let emb = model.embed_prompt(&ids, Some(&feats))?;
    let llm_prefill_s = time(&mut || {
        model.llm.forward(&emb, &mut model.llm.new_cache())?;
        Ok(())
    })?;
    let var = model.var.config().clone();
    let total = var.total_tokens();
    let hd = model.config.llm_hidden();
    // LLM over all image-stage tokens, stage by stage, on a fresh cache (and
    // each stage's share of the second, timed run).
    let mut llm_per_stage = vec![0.0; var.patch_nums.len()];
    let llm_stages_s = time(&mut || {
        let mut cache = model.llm.new_cache();
        model.llm.forward(&emb, &mut cache)?;
        for (i, &p) in var.patch_nums.iter().enumerate() {
            let x = Tensor::zeros((1, p * p, hd), model.dtype(), model.device())?;
            let t = Instant::now();
            model.llm.forward(&x, &mut cache)?;
            llm_per_stage[i] = t.elapsed().as_secs_f64();
        }
        Ok(())
    })?;
    let cls = model.var.class_embedding(model.config.gen_class_index())?;
    let mut var_per_stage = vec![0.0; var.patch_nums.len()];
    let var_stages_s = time(&mut || {
        let (mut c1, mut c2) = (model.var.new_cache(), model.var.new_cache());
        for (i, &p) in var.patch_nums.iter().enumerate() {
            let l = p * p;
            let x = Tensor::zeros((2 * l, var.width()), model.dtype(), model.device())?;
            let t = Instant::now();
            model
                .var
                .forward_ragged(&x, &cls, &mut [(&mut c1, l), (&mut c2, l)])?;
            var_per_stage[i] = t.elapsed().as_secs_f64();
        }
        Ok(())
    })?;
    let codes: Vec<u32> = (0..total as u32)
        .map(|i| i % var.vocab_size as u32)
        .collect();
    let fhat = model.vqvae.codes_to_fhat(&codes)?;
    let residual_s = time(&mut || {
        model.vqvae.codes_to_fhat(&codes)?;
        Ok(())
    })?;
    let decode_s = time(&mut || {
        model.vqvae.decode(&fhat)?;
        Ok(())
    })?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "clip_s": clip_s, "llm_prefill_s": llm_prefill_s, "prompt_tokens": ids.len(),
            "llm_prefill_plus_image_stages_s": llm_stages_s, "var_all_stages_cfg_s": var_stages_s,
            "llm_per_stage_s": llm_per_stage, "var_per_stage_s": var_per_stage,
            "vq_residual_s": residual_s, "vqvae_decode_s": decode_s,
            "cores_busy": serde_json::Value::Object(busy.borrow().clone()),
        }))?
    );
    Ok(())
}
