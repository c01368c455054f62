//! Turns parsed arguments into an engine request, runs it, shows the result.

use crate::args::{Command, ModelArgs, OutputArgs, SamplingArgs};
use crate::output::{self, Display, JsonOutput};
use crate::progress::{Spinner, StageProgress};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use vargpt_engine::{
    validate_params, Engine, LoadOptions, Request, RngNoise, SamplingParams, Task,
};

/// One generating job, whatever the subcommand.
struct Job {
    task: Task,
    text: String,
    image: Option<PathBuf>,
    allow_image: bool,
    /// Where a generated picture goes.
    out: PathBuf,
    model: ModelArgs,
    sampling: SamplingArgs,
    output: OutputArgs,
}

pub fn run(command: Command) -> Result<()> {
    let job = match command {
        Command::Info(a) => return crate::info::run(&a),
        Command::Caption(a) => Job {
            task: Task::Caption,
            text: a.prompt,
            image: Some(a.image),
            allow_image: !a.task.no_image,
            out: a.task.out,
            model: a.model,
            sampling: a.sampling,
            output: a.output,
        },
        Command::Vqa(a) => Job {
            task: Task::Vqa,
            text: a.question,
            image: Some(a.image),
            allow_image: !a.task.no_image,
            out: a.task.out,
            model: a.model,
            sampling: a.sampling,
            output: a.output,
        },
        Command::Chat(a) => Job {
            task: Task::Chat,
            text: a.prompt,
            image: a.image,
            allow_image: !a.task.no_image,
            out: a.task.out,
            model: a.model,
            sampling: a.sampling,
            output: a.output,
        },
        Command::Generate(a) => Job {
            task: Task::GenerateImage,
            text: a.prompt,
            image: None,
            allow_image: true,
            out: a.out,
            model: a.model,
            sampling: a.sampling,
            output: a.output,
        },
    };
    run_job(job)
}

/// A seed when the user gave none, so that it can be reported and replayed.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// The engine's sampling parameters from the flags; warns about knobs that
/// greedy decoding ignores.
fn sampling_params(s: &SamplingArgs, allow_image: bool, seed: u64) -> SamplingParams {
    let d = SamplingParams::default();
    let greedy = !s.sample;
    if greedy {
        for (flag, given) in [
            ("--temperature", s.temperature.is_some()),
            ("--top-k", s.top_k.is_some()),
            ("--top-p", s.top_p.is_some()),
        ] {
            if given {
                eprintln!("vargpt: warning: {flag} only affects text with --sample (text decoding is greedy)");
            }
        }
    }
    SamplingParams {
        max_new_tokens: s.max_new_tokens,
        greedy,
        temperature: s.temperature.unwrap_or(d.temperature),
        top_k: s.top_k.unwrap_or(d.top_k),
        top_p: s.top_p.unwrap_or(d.top_p),
        repetition_penalty: s.repetition_penalty,
        seed: Some(seed),
        cfg_scale: s.cfg_scale,
        image_top_k: s.image_top_k,
        image_top_p: s.image_top_p,
        allow_image,
    }
}

/// Reads an input image and checks it decodes, before the (slow) model load.
/// The message is the one the engine would give.
fn read_image(path: &Path, limits: &vargpt_imageproc::ImageLimits) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    if let Err(e) = vargpt_imageproc::decode_rgb8(&bytes, limits) {
        let e = vargpt_engine::EngineError::InvalidImage(e.to_string());
        bail!("{}: {e}", path.display());
    }
    Ok(bytes)
}

/// Fails early when the directory an output file goes to does not exist.
fn check_out_dir(out: &Path) -> Result<()> {
    if out.as_os_str().is_empty() {
        bail!("empty output path");
    }
    if out.is_dir() {
        bail!("output path {} is a directory", out.display());
    }
    match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
            bail!("output directory {} does not exist", dir.display())
        }
        _ => Ok(()),
    }
}

fn load_options(m: &ModelArgs) -> LoadOptions {
    let mut opts = LoadOptions::new(m.model.clone());
    opts.revision = m.revision.clone();
    opts.dtype = m.dtype.clone();
    opts.cuda_device = m.cuda;
    opts
}

fn run_job(job: Job) -> Result<()> {
    let opts = load_options(&job.model);
    // Everything that can be checked without the model is checked first.
    let seed = job.sampling.seed.unwrap_or_else(fresh_seed);
    let params = sampling_params(&job.sampling, job.allow_image, seed);
    validate_params(&params, &opts.limits)?;
    if job.task != Task::Caption && job.text.trim().is_empty() {
        // The engine's check, made before the model is loaded.
        return Err(vargpt_engine::EngineError::InvalidRequest("prompt is empty".into()).into());
    }
    let image = match &job.image {
        Some(p) => Some(read_image(p, &opts.limits.image)?),
        None => None,
    };
    if job.allow_image {
        check_out_dir(&job.out)?;
    }
    let show_progress = !job.output.quiet;

    let spinner = Spinner::start(show_progress, format!("loading {}", job.model.model));
    let loaded = Engine::load(&opts);
    spinner.finish();
    let engine = loaded?;
    let load_s = engine.load_seconds();
    tracing::info!(model = %job.model.model, load_s, "model loaded");

    let req = Request {
        task: job.task,
        text: job.text,
        image,
        params,
    };
    let files = engine.files();
    // Text-to-image produces no text: nothing to stream.
    let stream = !job.output.json && job.task != Task::GenerateImage;
    let mut display = Display::new(
        stream.then_some(&files.tokenizer),
        files.config.special_tokens.image_gen_start_token_id,
        files.config.var().stages(),
        StageProgress::new(show_progress),
    );
    if job.task == Task::GenerateImage {
        display.start_image();
    }
    let result = engine.run_with(&req, &mut RngNoise, &mut display);
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            // Close the streamed line before the error message.
            let _ = display.finish("");
            return Err(e.into());
        }
    };
    display.finish(&resp.text)?;

    let image_path = match &resp.image {
        Some(img) => {
            let png = img
                .to_png()
                .context("encoding the generated image as PNG")?;
            std::fs::write(&job.out, png)
                .with_context(|| format!("writing {}", job.out.display()))?;
            if !job.output.json {
                eprintln!(
                    "vargpt: wrote {} ({}x{}, {} codes)",
                    job.out.display(),
                    img.width,
                    img.height,
                    img.codes.len()
                );
            }
            Some(job.out.as_path())
        }
        None => None,
    };
    if job.output.verbose {
        eprintln!("vargpt: {}", output::timing_summary(load_s, &resp));
    }
    if job.output.json {
        output::print_json(&JsonOutput::new(
            &job.model.model,
            job.task,
            &resp,
            image_path,
            engine
                .provenance_info()
                .provenance(output::VERSION, &req.params),
            load_s,
        ))?;
    }
    Ok(())
}
