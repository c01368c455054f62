//! Writing a checkpoint directory: the JSON files, then every safetensors file
//! at the offsets its [`Layout`] gives, with large positioned writes.

use super::fill::{rule, tensor_key, Fill, Rule};
use super::layout::{layout, Layout, Placed};
use super::spec::CheckpointSpec;
use super::templates::{
    generation_config_json, preprocessor_json, tokenizer_config_json, tokenizer_json,
    TEMPLATE_SPECIAL_TOKENS,
};
use super::CheckpointError;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;
use serde_json::Value;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Elements per piece of a [`Fill::Fast`] tensor: 8-16 MiB of output per write.
const PIECE: usize = 1 << 22;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_json(path: &Path, v: &Value) -> Result<(), CheckpointError> {
    let text = serde_json::to_string_pretty(v).expect("JSON values serialise");
    std::fs::write(path, text).map_err(io(path))
}

/// Writes the model directory `dir` (created if needed). Returns the number of parameters.
pub fn make_checkpoint(dir: &Path, spec: &CheckpointSpec) -> Result<usize, CheckpointError> {
    let plan = layout(spec)?;
    let (cfg, _) = spec.tensors()?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config = spec.config_json();
    write_json(&dir.join("config.json"), &config)?;
    write_json(
        &dir.join("generation_config.json"),
        &generation_config_json(spec, &config),
    )?;
    write_json(
        &dir.join("preprocessor_config.json"),
        &preprocessor_json(spec),
    )?;
    write_json(&dir.join("tokenizer.json"), &tokenizer_json(spec)?)?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tokenizer_config_json(spec),
    )?;
    let special = dir.join("special_tokens_map.json");
    std::fs::write(&special, TEMPLATE_SPECIAL_TOKENS).map_err(io(&special))?;

    let paths: Vec<PathBuf> = plan.files.iter().map(|f| dir.join(&f.name)).collect();
    let mut files = Vec::with_capacity(paths.len());
    for (path, f) in paths.iter().zip(&plan.files) {
        let file = File::create(path).map_err(io(path))?;
        file.set_len(f.len as u64).map_err(io(path))?;
        file.write_all_at(&f.header, 0).map_err(io(path))?;
        files.push(file);
    }
    let rules: Vec<Rule> = plan.tensors.iter().map(|t| rule(&t.spec, &cfg)).collect();
    match spec.fill {
        Fill::Normal => write_normal(&plan, &rules, &files, &paths, spec.seed)?,
        Fill::Fast => write_fast(&plan, &rules, &files, &paths, spec.seed)?,
    }
    if plan.sharded {
        write_json(
            &dir.join("model.safetensors.index.json"),
            &plan.index_json(),
        )?;
    }
    Ok(plan
        .tensors
        .iter()
        .map(|t| t.spec.shape.iter().product::<usize>())
        .sum())
}

fn numel(t: &Placed) -> usize {
    t.spec.shape.iter().product()
}

/// One Gaussian stream through all tensors in order (the values small checkpoints
/// have always had).
fn write_normal(
    plan: &Layout,
    rules: &[Rule],
    files: &[File],
    paths: &[PathBuf],
    seed: u64,
) -> Result<(), CheckpointError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bytes = Vec::new();
    for (t, r) in plan.tensors.iter().zip(rules) {
        let values = r.normal_values(numel(t), &mut rng);
        bytes.clear();
        t.dtype.encode(&values, &mut bytes);
        files[t.file]
            .write_all_at(&bytes, t.offset as u64)
            .map_err(io(&paths[t.file]))?;
    }
    Ok(())
}

/// Every tensor cut into pieces, each filled, encoded and written by whichever
/// thread takes it.
fn write_fast(
    plan: &Layout,
    rules: &[Rule],
    files: &[File],
    paths: &[PathBuf],
    seed: u64,
) -> Result<(), CheckpointError> {
    let pieces: Vec<(usize, usize, usize)> = plan
        .tensors
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| {
            let n = numel(t);
            (0..n.div_ceil(PIECE)).map(move |p| (ti, p * PIECE, PIECE.min(n - p * PIECE)))
        })
        .collect();
    pieces.par_iter().try_for_each_init(
        || (Vec::new(), Vec::new()),
        |(values, bytes): &mut (Vec<f32>, Vec<u8>), &(ti, start, len)| {
            let t = &plan.tensors[ti];
            values.resize(len, 0.0);
            rules[ti].fast_values(tensor_key(seed, ti), start, values);
            bytes.clear();
            t.dtype.encode(values, bytes);
            let at = (t.offset + start * t.dtype.size()) as u64;
            files[t.file]
                .write_all_at(bytes, at)
                .map_err(io(&paths[t.file]))
        },
    )
}
