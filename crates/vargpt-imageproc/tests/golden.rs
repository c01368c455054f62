//! End-to-end check against the reference fixture: `pixel_values` that
//! transformers 4.46.1 `CLIPImageProcessor` produced for `test_image.png`.

mod common;

use safetensors::{Dtype, SafeTensors};
use vargpt_imageproc::{
    decode_rgb8, preprocess, preprocess_bytes, ImageLimits, PixelValues, PreprocessorConfig,
};

fn golden_pixel_values() -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(common::reference_tiny_dir().join("golden.safetensors"))
        .expect("read golden.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("parse safetensors");
    let t = st.tensor("pixel_values").expect("pixel_values tensor");
    assert_eq!(t.dtype(), Dtype::F32);
    (common::f32s(t.data()), t.shape().to_vec())
}

fn run_reference() -> PixelValues {
    let dir = common::reference_tiny_dir();
    let cfg = PreprocessorConfig::from_file(&dir.join("preprocessor_config.json"))
        .expect("load preprocessor_config.json");
    let bytes = std::fs::read(dir.join("test_image.png")).expect("read test_image.png");
    preprocess_bytes(&bytes, &cfg, &ImageLimits::default()).expect("preprocess")
}

#[test]
fn matches_golden_pixel_values() {
    let (golden, shape) = golden_pixel_values();
    assert_eq!(shape, vec![1, 3, 56, 56]);
    let pv = run_reference();
    assert_eq!(pv.shape(), [3, 56, 56]);
    let (max, mean) = common::abs_err(&pv.data, &golden);
    let mismatched = pv.data.iter().zip(&golden).filter(|(a, b)| a != b).count();
    println!(
        "golden pixel_values: max |d| = {max:e}, mean |d| = {mean:e}, \
         {mismatched}/{} values not bit-identical",
        golden.len()
    );
    assert!(
        max <= 0.03 && mean <= 0.005,
        "acceptance: max {max}, mean {mean}"
    );
    // One uint8 level is 1/255/std ~ 0.015; anything above 1e-6 means the resize is off.
    assert!(max <= 1e-6, "expected a bit-exact resize, max |d| = {max}");
}

#[test]
fn golden_config_and_image_are_what_we_expect() {
    let dir = common::reference_tiny_dir();
    let cfg = PreprocessorConfig::from_file(&dir.join("preprocessor_config.json")).unwrap();
    assert_eq!(cfg.output_size(), (56, 56));
    let img = decode_rgb8(
        &std::fs::read(dir.join("test_image.png")).unwrap(),
        &ImageLimits::default(),
    )
    .unwrap();
    assert_eq!(img.dimensions(), (97, 61));
    // preprocess on the decoded image == preprocess_bytes
    assert_eq!(preprocess(&img, &cfg).unwrap(), run_reference());
}
