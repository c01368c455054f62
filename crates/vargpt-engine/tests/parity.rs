//! Parity with the authors' PyTorch implementation on the reference fixture, on
//! the CPU (the checks themselves are in `common/parity.rs`; `gpu.rs` runs the
//! same ones on CUDA).

mod common;

use common::parity::{self as check, fixture};
use vargpt_engine::{Engine, LoadOptions};

fn engine() -> Engine {
    Engine::load(&LoadOptions::new(fixture().to_str().unwrap())).expect("load reference-tiny")
}

#[test]
fn pixel_values_match_clip_image_processor() {
    check::pixel_values_match_clip_image_processor(&engine());
}

#[test]
fn image_features_match() {
    check::image_features_match(&engine());
}

#[test]
fn prompts_and_token_ids_match() {
    check::prompts_and_token_ids_match(&engine());
}

#[test]
fn prefill_logits_and_greedy_tokens_match() {
    check::prefill_logits_and_greedy_tokens_match(&engine());
}

#[test]
fn text_to_image_cfg0_is_exact() {
    check::text_to_image_cfg0_is_exact(&engine());
}

#[test]
fn text_to_image_cfg15_with_recorded_noise_matches() {
    check::text_to_image_cfg15_with_recorded_noise_matches(&engine());
}

#[test]
fn vqvae_decode_matches() {
    check::vqvae_decode_matches(&engine());
}
