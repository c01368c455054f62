//! The tiny reference fixture's tokenizer, processor and config files, resized to a
//! spec: these are the only files of `tests/fixtures` the maker embeds.

use super::spec::CheckpointSpec;
use super::CheckpointError;
use serde_json::{json, Value};

pub(crate) const TEMPLATE_CONFIG: &str =
    include_str!("../../../../tests/fixtures/reference-tiny/config.json");
const TEMPLATE_TOKENIZER: &str =
    include_str!("../../../../tests/fixtures/reference-tiny/tokenizer.json");
const TEMPLATE_TOKENIZER_CONFIG: &str =
    include_str!("../../../../tests/fixtures/reference-tiny/tokenizer_config.json");
pub(crate) const TEMPLATE_SPECIAL_TOKENS: &str =
    include_str!("../../../../tests/fixtures/reference-tiny/special_tokens_map.json");
const TEMPLATE_PREPROCESSOR: &str =
    include_str!("../../../../tests/fixtures/reference-tiny/preprocessor_config.json");

pub(crate) const SPECIAL_TOKENS: [&str; 5] = [
    "<image>",
    "<pad>",
    "<|image_gen_start|>",
    "<|image_gen_end|>",
    "<|image_gen_pad|>",
];

/// Parses an embedded template (compiled in, so a failure is a build mistake).
fn template(text: &str) -> Value {
    serde_json::from_str(text).expect("embedded template is valid JSON")
}

pub(crate) fn config_template() -> Value {
    template(TEMPLATE_CONFIG)
}

pub(crate) fn tokenizer_json(spec: &CheckpointSpec) -> Result<Value, CheckpointError> {
    let mut t = template(TEMPLATE_TOKENIZER);
    let vocab = t["model"]["vocab"]
        .as_object_mut()
        .expect("template tokenizer has a vocabulary");
    let have = vocab.len();
    if spec.base_vocab < have {
        return Err(CheckpointError::Spec(format!(
            "base_vocab {} is smaller than the template tokenizer's {have} tokens",
            spec.base_vocab
        )));
    }
    for i in have..spec.base_vocab {
        vocab.insert(format!("<extra_{i}>"), json!(i));
    }
    let added = t["added_tokens"]
        .as_array_mut()
        .expect("template tokenizer has added_tokens");
    added.retain(|a| !SPECIAL_TOKENS.contains(&a["content"].as_str().unwrap_or("")));
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        added.push(
            json!({"id": spec.special_id(i), "content": s, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}),
        );
    }
    Ok(t)
}

pub(crate) fn tokenizer_config_json(spec: &CheckpointSpec) -> Value {
    let mut t = template(TEMPLATE_TOKENIZER_CONFIG);
    let dec = t["added_tokens_decoder"]
        .as_object_mut()
        .expect("template tokenizer config has added_tokens_decoder");
    dec.retain(|_, v| !SPECIAL_TOKENS.contains(&v["content"].as_str().unwrap_or("")));
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        dec.insert(
            spec.special_id(i).to_string(),
            json!({"content": s, "lstrip": false, "normalized": false, "rstrip": false,
                "single_word": false, "special": true}),
        );
    }
    t
}

pub(crate) fn preprocessor_json(spec: &CheckpointSpec) -> Value {
    let mut pre = template(TEMPLATE_PREPROCESSOR);
    pre["size"] = json!({"shortest_edge": spec.image_size});
    pre["crop_size"] = json!({"height": spec.image_size, "width": spec.image_size});
    pre
}

pub(crate) fn generation_config_json(spec: &CheckpointSpec, config: &Value) -> Value {
    json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": spec.special_id(1),
        "special_tokens": config["special_tokens"], "transformers_version": "4.46.1"})
}
