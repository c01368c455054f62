//! `vargpt-make-checkpoint`: writes a random-weight VARGPT model directory.
//!
//! Usage: `vargpt-make-checkpoint OUT_DIR [--preset small|bench-mid|full] [--spec spec.json]
//!         [--dtype f32|f16|bf16] [--shard-mb N] [--seed N] [--fill normal|fast]`

use std::path::PathBuf;
use vargpt_testkit::{make_checkpoint, CheckpointSpec, Fill};

const USAGE: &str = "vargpt-make-checkpoint OUT_DIR [--preset small|bench-mid|full] \
[--spec spec.json] [--dtype f32|f16|bf16] [--shard-mb N] [--seed N] [--fill normal|fast]";

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let mut spec = CheckpointSpec::small();
    while let Some(a) = args.next() {
        let mut val = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match a.as_str() {
            "--preset" => {
                let p = val("--preset")?;
                spec = CheckpointSpec::preset(&p).ok_or(format!("unknown preset {p}"))?;
            }
            "--spec" => {
                let p = val("--spec")?;
                let text = std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}"))?;
                spec = serde_json::from_str(&text).map_err(|e| format!("{p}: {e}"))?;
            }
            "--dtype" => spec.dtype = val("--dtype")?,
            "--seed" => spec.seed = val("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--shard-mb" => {
                let mb: usize = val("--shard-mb")?
                    .parse()
                    .map_err(|e| format!("--shard-mb: {e}"))?;
                spec.shard_bytes = Some(mb << 20);
            }
            "--fill" => {
                spec.fill = match val("--fill")?.as_str() {
                    "normal" => Fill::Normal,
                    "fast" => Fill::Fast,
                    f => return Err(format!("--fill {f}: use normal or fast")),
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other if !other.starts_with('-') && out.is_none() => out = Some(other.into()),
            other => return Err(format!("unexpected argument {other}\n{USAGE}")),
        }
    }
    let out = out.ok_or(format!("missing OUT_DIR\n{USAGE}"))?;
    let t = std::time::Instant::now();
    let params = make_checkpoint(&out, &spec).map_err(|e| e.to_string())?;
    eprintln!(
        "wrote {} ({:.1} M parameters, {}) in {:.1}s",
        out.display(),
        params as f64 / 1e6,
        spec.dtype,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
