//! `preprocess` against transformers 4.46.1 `CLIPImageProcessor` outputs
//! (committed fixture made by tests/gen/gen_fixtures.py) for configurations the
//! reference fixture does not cover: zero padding when the resized image is
//! smaller than the crop, exact `{height, width}` resize, every `do_*` flag off
//! in turn, bilinear, scalar mean, and the real 336 px setting (a row band).

mod common;

use vargpt_imageproc::{preprocess, PreprocessorConfig};

#[test]
fn preprocess_matches_transformers() {
    let (meta, bin) = common::load_fixture("hf_preprocess_cases");
    let cases = meta["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let cfg: PreprocessorConfig =
            serde_json::from_value(case["config"].clone()).expect("config deserializes");
        cfg.validate().expect("valid config");
        let img = common::pattern(
            case["pattern"].as_str().unwrap(),
            common::u(case, "w") as u32,
            common::u(case, "h") as u32,
            common::u(case, "seed") as u32,
        );
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let rows: Vec<usize> = case["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let off = common::u(case, "offset");
        let expected = common::f32s(&bin[off..off + 4 * common::u(case, "len")]);

        let pv = preprocess(&img, &cfg).expect("preprocess");
        assert_eq!(pv.shape().to_vec(), shape, "{name}: shape");
        if cfg.do_center_crop {
            assert_eq!(
                cfg.output_size(),
                (pv.height, pv.width),
                "{name}: output_size"
            );
        }
        // The fixture keeps rows rows[0]..rows[1] of each channel.
        let (h, w) = (pv.height, pv.width);
        let got: Vec<f32> = (0..3)
            .flat_map(|c| pv.data[c * h * w + rows[0] * w..c * h * w + rows[1] * w].to_vec())
            .collect();
        let (max, mean) = common::abs_err(&got, &expected);
        let not_identical = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
        println!(
            "{name:24} {shape:?} rows {rows:?}: max |d| = {max:e}, mean |d| = {mean:e}, {not_identical} not bit-identical"
        );
        if not_identical != 0 {
            failures.push(format!("{name}: {not_identical} values differ, max {max}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
