//! Command-line structure (clap derive).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// VARGPT on the command line: caption, visual question answering, chat
/// (text and, when the model decides to draw, a picture) and text-to-image.
///
/// Text decoding is greedy (argmax, the reference scripts' `do_sample=False`)
/// unless `--sample` is given. Image codes are always sampled with
/// `--image-top-k` / `--image-top-p`; `--image-top-k 1` makes them argmax.
/// Every random draw of a run comes from `--seed` (a random seed is picked and
/// reported in `--json` output when none is given).
#[derive(Debug, Parser)]
#[command(name = "vargpt", version, about, long_about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Describe an image.
    Caption(CaptionArgs),
    /// Answer a question about an image.
    Vqa(VqaArgs),
    /// Chat turn: text out, and a PNG if the model switches to image mode.
    Chat(ChatArgs),
    /// Text-to-image: write the generated picture as a PNG.
    Generate(GenerateArgs),
    /// Print a JSON summary of a model: sizes, stored weight dtypes, parameter counts.
    Info(InfoArgs),
}

/// Where the model comes from and how it is held.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory, or a Hugging Face hub id (owner/name; uses the HF cache,
    /// HF_HUB_OFFLINE=1 forbids downloads).
    #[arg(long, short = 'm', env = "VARGPT_MODEL", value_name = "DIR|HUB_ID")]
    pub model: String,
    /// Hub revision (branch, tag or commit) when --model is a hub id.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// Compute dtype [default: f32 on CPU, bf16 on GPU].
    #[arg(long, value_parser = ["f32", "f16", "bf16"])]
    pub dtype: Option<String>,
    /// Run on CUDA device N (needs a build with CUDA support).
    #[arg(long, value_name = "N")]
    pub cuda: Option<usize>,
}

/// Sampling knobs, shared by every generating subcommand.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Upper bound on generated text tokens.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_new_tokens: usize,
    /// Argmax decoding for text (the default; kept for explicitness).
    #[arg(long, conflicts_with = "sample")]
    pub greedy: bool,
    /// Sample text tokens (temperature / top-k / top-p / seed) instead of argmax.
    #[arg(long)]
    pub sample: bool,
    /// Text sampling temperature (with --sample) [default: 1.0].
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
    /// Text top-k, 0 = off (with --sample) [default: 50].
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Text nucleus top-p (with --sample) [default: 1.0].
    #[arg(long, value_name = "P")]
    pub top_p: Option<f64>,
    /// Repetition penalty for text (1.0 = off; applies to greedy decoding too).
    #[arg(long, default_value_t = 1.0, value_name = "R")]
    pub repetition_penalty: f64,
    /// Seed for every random draw (text sampling, image sampling, CFG noise).
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,
    /// Classifier-free guidance scale of the image head (0 = no guidance).
    #[arg(long = "cfg", default_value_t = 1.5, value_name = "SCALE")]
    pub cfg_scale: f64,
    /// Top-k over image codes (1 = argmax, deterministic).
    #[arg(long, default_value_t = 900, value_name = "K")]
    pub image_top_k: usize,
    /// Top-p over image codes.
    #[arg(long, default_value_t = 0.96, value_name = "P")]
    pub image_top_p: f64,
}

/// How results are shown.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Print exactly one JSON object on stdout instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// No progress display on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print a timing summary on stderr (and engine logs at info level).
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

/// Options of the text tasks, where the model may still decide to draw.
#[derive(Debug, Clone, Args)]
pub struct TextTaskArgs {
    /// Forbid the model switching to image mode (masks <|image_gen_start|>).
    #[arg(long)]
    pub no_image: bool,
    /// Where to write the PNG if the model draws one.
    #[arg(
        long,
        short = 'o',
        value_name = "FILE.png",
        default_value = "vargpt-image.png"
    )]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct CaptionArgs {
    /// The image to describe (PNG, JPEG or WebP).
    #[arg(long, short = 'i', value_name = "FILE")]
    pub image: PathBuf,
    /// Instruction for the model.
    #[arg(
        long,
        short = 'p',
        default_value = vargpt_proto::limits::DEFAULT_CAPTION_PROMPT,
        value_name = "TEXT"
    )]
    pub prompt: String,
    #[command(flatten)]
    pub task: TextTaskArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct VqaArgs {
    /// The image the question is about (PNG, JPEG or WebP).
    #[arg(long, short = 'i', value_name = "FILE")]
    pub image: PathBuf,
    /// The question.
    #[arg(long, value_name = "TEXT")]
    pub question: String,
    #[command(flatten)]
    pub task: TextTaskArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The user message.
    #[arg(long, short = 'p', value_name = "TEXT")]
    pub prompt: String,
    /// Optional image to attach to the message.
    #[arg(long, short = 'i', value_name = "FILE")]
    pub image: Option<PathBuf>,
    #[command(flatten)]
    pub task: TextTaskArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to draw.
    #[arg(long, short = 'p', value_name = "TEXT")]
    pub prompt: String,
    /// Output PNG file.
    #[arg(long, short = 'o', value_name = "FILE.png")]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Model directory, or a Hugging Face hub id.
    #[arg(long, short = 'm', env = "VARGPT_MODEL", value_name = "DIR|HUB_ID")]
    pub model: String,
    /// Hub revision when --model is a hub id.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
}

impl Command {
    /// Whether the user asked for verbose output (controls the log level).
    pub fn verbose(&self) -> bool {
        match self {
            Command::Caption(a) => a.output.verbose,
            Command::Vqa(a) => a.output.verbose,
            Command::Chat(a) => a.output.verbose,
            Command::Generate(a) => a.output.verbose,
            Command::Info(_) => false,
        }
    }
}
