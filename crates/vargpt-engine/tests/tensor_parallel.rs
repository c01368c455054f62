//! Tensor parallelism on CPU (thread communicator): TP = 2, 3 and 4 give the same
//! logits as TP = 1 (1e-4 relative), identical greedy tokens and image codes —
//! also where heads do not divide by the degree (they split unevenly, and ranks
//! left without heads add zeros).

mod common;

use common::parity::fixture;
use common::tp::{compare, gqa_checkpoint, uneven_checkpoint};
use std::path::Path;
use vargpt_engine::{Engine, LoadOptions};

fn load(dir: &Path, tp: usize) -> Result<Engine, vargpt_engine::EngineError> {
    let mut o = LoadOptions::new(dir.to_str().unwrap());
    o.tp = tp;
    Engine::load(&o)
}

#[test]
fn tp2_and_tp4_match_tp1_on_the_reference_fixture() {
    // 4 LLaMA heads, 2 VAR heads: at TP 4 two ranks hold no VAR head.
    let base = load(&fixture(), 1).unwrap();
    compare(&base, &load(&fixture(), 2).unwrap(), "reference tp2");
    compare(&base, &load(&fixture(), 4).unwrap(), "reference tp4");
}

#[test]
fn tp2_and_tp4_match_tp1_on_another_shape_with_gqa() {
    let dir = gqa_checkpoint();
    let base = load(dir.path(), 1).unwrap();
    compare(&base, &load(dir.path(), 2).unwrap(), "small tp2");
    compare(&base, &load(dir.path(), 4).unwrap(), "small tp4");
}

#[test]
fn tp2_tp3_and_tp4_match_tp1_where_heads_do_not_divide() {
    // 6 heads over 3 key/value heads: TP 2 holds groups 2 + 1, TP 4 leaves a rank
    // without heads; 5 VAR heads: 3 + 2, 2 + 2 + 1, 2 + 1 + 1 + 1.
    let dir = uneven_checkpoint();
    let base = load(dir.path(), 1).unwrap();
    for tp in [2, 3, 4] {
        compare(
            &base,
            &load(dir.path(), tp).unwrap(),
            &format!("uneven tp{tp}"),
        );
    }
}

#[test]
fn a_degree_above_the_mlp_width_is_refused_with_a_clear_message() {
    // The fixture's LLaMA MLP has 128 units: 200 ranks cannot each hold one.
    let err = load(&fixture(), 200)
        .err()
        .expect("tp 200 refused")
        .to_string();
    assert!(
        err.contains("intermediate_size = 128 is smaller than the tensor-parallel degree 200"),
        "{err}"
    );
}
