//! What the user sees: tokens streamed to stdout as they are generated, or one
//! JSON object at the end; the image-stage progress bar on stderr either way.

use crate::progress::StageProgress;
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::{self, Write};
use std::path::Path;
use vargpt_engine::{FinishReason, Observer, Response, Task, Timings};
use vargpt_model::TextTokenizer;

/// Engine observer: streams decoded text (when `tokenizer` is set) and drives
/// the image progress bar.
pub struct Display<'a> {
    tokenizer: Option<&'a TextTokenizer>,
    image_start: u32,
    stages: usize,
    ids: Vec<u32>,
    printed: String,
    /// The first stdout error; once set, nothing more is written.
    error: Option<io::Error>,
    progress: StageProgress,
}

impl<'a> Display<'a> {
    /// `tokenizer`: Some to stream text to stdout. `image_start`: the id of
    /// `<|image_gen_start|>`; `stages`: number of image stages.
    pub fn new(
        tokenizer: Option<&'a TextTokenizer>,
        image_start: u32,
        stages: usize,
        progress: StageProgress,
    ) -> Self {
        Self {
            tokenizer,
            image_start,
            stages,
            ids: Vec::new(),
            printed: String::new(),
            error: None,
            progress,
        }
    }

    /// Shows the image progress bar now (text-to-image starts drawing at once).
    pub fn start_image(&mut self) {
        self.flush_line();
        self.progress.start(self.stages);
    }

    fn write(&mut self, s: &str) {
        if self.error.is_some() || s.is_empty() {
            return;
        }
        let mut out = io::stdout().lock();
        if let Err(e) = out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
            self.error = Some(e);
        }
    }

    /// Prints the part of `text` not yet printed, when `text` extends what was.
    /// A trailing U+FFFD (an incomplete UTF-8 sequence of byte tokens) is held back.
    fn emit(&mut self, text: &str) {
        let Some(new) = text.strip_prefix(self.printed.as_str()) else {
            // The tokenizer rewrote earlier text; wait until it extends it again.
            return;
        };
        let new = new.trim_end_matches('\u{FFFD}');
        if new.is_empty() {
            return;
        }
        let new = new.to_string();
        self.write(&new);
        self.printed.push_str(&new);
    }

    /// Moves the terminal to a fresh line before the progress bar draws, so the
    /// bar does not overwrite streamed text (stdout itself is left untouched).
    fn flush_line(&mut self) {
        if self.tokenizer.is_some()
            && !self.printed.is_empty()
            && !self.printed.ends_with('\n')
            && self.progress.visible()
        {
            eprintln!();
        }
    }

    /// Ends the streamed text: prints whatever the final text adds and a newline.
    pub fn finish(mut self, final_text: &str) -> Result<()> {
        self.progress.finish();
        if self.tokenizer.is_some() {
            if let Some(rest) = final_text.strip_prefix(self.printed.as_str()) {
                let rest = rest.to_string();
                self.write(&rest);
                self.printed.push_str(&rest);
            }
            if !self.printed.is_empty() {
                self.write("\n");
            }
        }
        match self.error.take() {
            Some(e) => Err(e).context("writing to stdout"),
            None => Ok(()),
        }
    }
}

impl Observer for Display<'_> {
    fn on_token(&mut self, id: u32) {
        self.ids.push(id);
        if let Some(tok) = self.tokenizer {
            if let Ok(text) = tok.decode(&self.ids, true) {
                self.emit(&text);
            }
        }
        if id == self.image_start {
            self.start_image();
        }
    }

    fn on_stage(
        &mut self,
        stage: usize,
        stages: usize,
        _logits: &candle_core::Tensor,
        codes: &[u32],
    ) {
        self.progress.stage_done(stage, stages, codes.len());
    }
}

/// The `--json` document.
#[derive(Debug, Serialize)]
pub struct JsonOutput<'a> {
    pub task: Task,
    pub model: &'a str,
    /// The prompt as rendered by the chat template (before `<image>` expansion).
    pub prompt: &'a str,
    pub prompt_ids: &'a [u32],
    /// Generated ids.
    pub ids: &'a [u32],
    pub text: &'a str,
    pub finish_reason: FinishReason,
    /// Path of the written PNG, when an image was generated.
    pub image: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Image codes of all stages, in order.
    pub codes: Option<&'a [u32]>,
    /// The seed every random draw came from.
    pub seed: u64,
    /// Model revision, dtype, device, this build, the seed and every
    /// sampling parameter: as in the worker's results (camelCase, the seed a
    /// string), so a run can be replayed or submitted as a job.
    pub provenance: vargpt_proto::Provenance,
    pub timings: JsonTimings<'a>,
}

/// `<crate version>+<git commit>` of this build, for the provenance.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+", env!("VARGPT_GIT_COMMIT"));

#[derive(Debug, Serialize)]
pub struct JsonTimings<'a> {
    /// Model load seconds.
    pub load_s: f64,
    #[serde(flatten)]
    pub run: &'a Timings,
}

impl<'a> JsonOutput<'a> {
    pub fn new(
        model: &'a str,
        task: Task,
        resp: &'a Response,
        image_path: Option<&Path>,
        provenance: vargpt_proto::Provenance,
        load_s: f64,
    ) -> Self {
        let img = resp.image.as_ref();
        Self {
            task,
            model,
            prompt: &resp.prompt,
            prompt_ids: &resp.prompt_ids,
            ids: &resp.ids,
            text: &resp.text,
            finish_reason: resp.finish_reason,
            image: image_path.map(|p| p.display().to_string()),
            width: img.map(|i| i.width),
            height: img.map(|i| i.height),
            codes: img.map(|i| i.codes.as_slice()),
            seed: provenance.seed,
            provenance,
            timings: JsonTimings {
                load_s,
                run: &resp.timings,
            },
        }
    }
}

/// Prints `value` as one JSON object on its own line on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, value).context("writing JSON to stdout")?;
    out.write_all(b"\n")
        .and_then(|_| out.flush())
        .context("writing JSON to stdout")
}

/// The human-readable timing summary (`--verbose`).
pub fn timing_summary(load_s: f64, resp: &Response) -> String {
    let t = &resp.timings;
    let mut s = format!(
        "load {load_s:.2}s, preprocess {:.2}s, prefill {:.2}s, decode {:.2}s",
        t.preprocess_s, t.prefill_s, t.decode_s
    );
    if resp.image.is_some() {
        s.push_str(&format!(", image {:.2}s", t.image_s));
    }
    let n = resp.ids.len();
    s.push_str(&format!(", total {:.2}s; {n} tokens", t.total_s));
    if t.decode_s > 0.0 && n > 0 {
        s.push_str(&format!(" ({:.1} tok/s)", n as f64 / t.decode_s));
    }
    s
}
