//! `vargpt info`: a JSON summary of a model directory without loading the
//! weights — configuration sizes, what the checkpoint stores (dtypes,
//! parameter counts per component) and whether it matches the expected layout.

use crate::args::InfoArgs;
use crate::output::print_json;
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use vargpt_model::{expected_tensors, ModelFiles};

/// One tensor as the safetensors header describes it.
struct StoredTensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
}

/// Largest header we accept (the safetensors format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

/// Reads the JSON header of a safetensors file (not the data).
fn read_header(path: &Path) -> Result<Vec<StoredTensor>> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        bail!(
            "{}: safetensors header of {n} bytes is too large",
            path.display()
        );
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf)
        .with_context(|| format!("{}: truncated safetensors header", path.display()))?;
    let header: Map<String, Value> = serde_json::from_slice(&buf)
        .with_context(|| format!("{}: bad safetensors header", path.display()))?;
    let mut out = Vec::with_capacity(header.len());
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = v
            .get("dtype")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let shape = v
            .get("shape")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|d| d as usize)
                    .collect()
            })
            .unwrap_or_default();
        out.push(StoredTensor { name, dtype, shape });
    }
    Ok(out)
}

fn dtype_bytes(dtype: &str) -> usize {
    match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        _ => 1,
    }
}

/// Counts per key, in a JSON object.
fn counts(map: BTreeMap<String, usize>) -> Value {
    Value::Object(map.into_iter().map(|(k, v)| (k, json!(v))).collect())
}

pub fn run(args: &InfoArgs) -> Result<()> {
    let dir = vargpt_engine::hub::resolve_model(
        &args.model,
        args.revision.as_deref(),
        &vargpt_engine::hub::default_cache(),
    )?;
    let files =
        ModelFiles::open(&dir).map_err(|e| vargpt_engine::EngineError::Load(e.to_string()))?;
    let cfg = &files.config;
    let v = &cfg.vision_config;
    let t = &cfg.text_config;
    let var = cfg.var();

    let shards = vargpt_model::weights::checkpoint_files(&dir)
        .map_err(|e| vargpt_engine::EngineError::Load(e.to_string()))?;
    let mut stored = Vec::new();
    for shard in &shards {
        stored.extend(read_header(shard)?);
    }

    let mut params_by_dtype = BTreeMap::new();
    let mut params_by_component = BTreeMap::new();
    let mut total_params = 0usize;
    let mut total_bytes = 0usize;
    for s in &stored {
        let n: usize = s.shape.iter().product();
        total_params += n;
        total_bytes += n * dtype_bytes(&s.dtype);
        *params_by_dtype.entry(s.dtype.clone()).or_insert(0) += n;
        let component = s.name.split('.').next().unwrap_or_default().to_string();
        *params_by_component.entry(component).or_insert(0) += n;
    }
    // Floating-point dtype of the stored weights (integer buffers aside).
    let float_dtypes: Vec<&String> = params_by_dtype
        .keys()
        .filter(|d| d.starts_with('F') || *d == "BF16")
        .collect();
    let stored_dtype = match float_dtypes.as_slice() {
        [] => "none".to_string(),
        [one] => (*one).clone(),
        _ => "mixed".to_string(),
    };

    // The checkpoint against the layout the loader expects.
    let specs = expected_tensors(cfg);
    let by_name: HashMap<&str, &StoredTensor> =
        stored.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut problems = Vec::new();
    let mut used_params = 0usize;
    for spec in &specs {
        match by_name.get(spec.name.as_str()) {
            Some(s) if s.shape != spec.shape => problems.push(format!(
                "tensor `{}` has shape {:?}, expected {:?}",
                spec.name, s.shape, spec.shape
            )),
            Some(_) if spec.needed => used_params += spec.shape.iter().product::<usize>(),
            Some(_) => {}
            None if spec.needed => problems.push(format!("tensor `{}` is missing", spec.name)),
            None => {}
        }
    }
    let known: std::collections::HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let unknown: Vec<&str> = stored
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| !known.contains(n))
        .collect();
    for n in &unknown {
        problems.push(format!(
            "tensor `{n}` is not part of the VARGPT-LLaVA layout"
        ));
    }
    problems.sort();
    let problem_count = problems.len();
    problems.truncate(20);

    let info = json!({
        "model": args.model,
        "dir": dir.display().to_string(),
        "vision": {
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "layers": v.num_hidden_layers,
            "heads": v.num_attention_heads,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "feature_layer": cfg.vision_feature_layer,
            "select_strategy": cfg.vision_feature_select_strategy,
            "image_tokens": cfg.image_tokens_per_image(),
        },
        "text": {
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "layers": t.num_hidden_layers,
            "heads": t.num_attention_heads,
            "kv_heads": t.kv_heads(),
            "head_dim": t.head_dim(),
            "vocab_size": t.vocab_size,
            "max_position_embeddings": t.max_position_embeddings,
            "rope_theta": t.rope_theta,
            "tokenizer_vocab_size": files.tokenizer.vocab_size(),
        },
        "var": {
            "depth": var.depth,
            "width": var.width(),
            "heads": var.heads(),
            "patch_nums": var.patch_nums,
            "stages": var.stages(),
            "image_tokens": var.total_tokens(),
            "codebook_size": var.vocab_size,
            "z_channels": var.z_channels,
            "vae_ch": var.ch,
            "image_side": var.image_side(),
            "from_config": cfg.var_config.is_some(),
        },
        "special_tokens": {
            "image": cfg.image_token_index,
            "image_gen_start": cfg.special_tokens.image_gen_start_token_id,
            "image_gen_end": cfg.special_tokens.image_gen_end_token_id,
            "image_gen_pad": cfg.special_tokens.image_gen_pad_token_id,
            "eos": files.eos_ids(),
        },
        "weights": {
            "files": shards.iter().map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()).collect::<Vec<_>>(),
            "tensors": stored.len(),
            "parameters": total_params,
            "parameters_used": used_params,
            "bytes": total_bytes,
            "dtype": stored_dtype,
            "parameters_by_dtype": counts(params_by_dtype),
            "parameters_by_component": counts(params_by_component),
        },
        "layout": {
            "ok": problem_count == 0,
            "problem_count": problem_count,
            "problems": problems,
        },
    });
    print_json(&info)
}
