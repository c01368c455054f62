//! Tensor parallelism on CPU (thread communicator): TP = 2 and 4 give the same
//! logits as TP = 1 (1e-4 relative), identical greedy tokens and image codes.

mod common;

use common::parity::fixture;
use common::tp::{compare, gqa_checkpoint};
use std::path::Path;
use vargpt_engine::{Engine, LoadOptions};

fn load(dir: &Path, tp: usize) -> Result<Engine, vargpt_engine::EngineError> {
    let mut o = LoadOptions::new(dir.to_str().unwrap());
    o.tp = tp;
    Engine::load(&o)
}

#[test]
fn tp2_matches_tp1_on_the_reference_fixture() {
    let base = load(&fixture(), 1).unwrap();
    compare(&base, &load(&fixture(), 2).unwrap(), "reference tp2");
    // VAR has 2 heads here: TP = 4 must be refused with a clear message.
    let err = load(&fixture(), 4).err().expect("tp4 refused").to_string();
    assert!(
        err.contains("not divisible by the tensor-parallel degree 4"),
        "{err}"
    );
}

#[test]
fn tp2_and_tp4_match_tp1_on_another_shape_with_gqa() {
    let dir = gqa_checkpoint();
    let base = load(dir.path(), 1).unwrap();
    compare(&base, &load(dir.path(), 2).unwrap(), "small tp2");
    compare(&base, &load(dir.path(), 4).unwrap(), "small tp4");
    let err = load(dir.path(), 3).err().expect("tp3 refused").to_string();
    assert!(err.contains("divisible"), "{err}");
}
