//! `PreprocessorConfig` parsing and validation.

mod common;

use std::path::Path;

use vargpt_imageproc::{CropSize, ImageError, PreprocessorConfig, ResizeSize};

#[test]
fn default_is_clip_vit_l_336() {
    let cfg = PreprocessorConfig::default();
    assert_eq!(cfg.output_size(), (336, 336));
    assert_eq!(cfg.size, ResizeSize::ShortestEdge { shortest_edge: 336 });
    assert_eq!(cfg.resample, 3);
    assert_eq!(cfg.rescale_factor, 1.0 / 255.0);
    assert_eq!(cfg.image_mean, vec![0.48145466, 0.4578275, 0.40821073]);
    assert_eq!(cfg.image_std, vec![0.26862954, 0.26130258, 0.27577711]);
    assert!(cfg.do_resize && cfg.do_center_crop && cfg.do_rescale && cfg.do_normalize);
    cfg.validate().unwrap();
}

#[test]
fn the_real_clip_336_file_parses_to_the_default() {
    // openai/clip-vit-large-patch14-336 preprocessor_config.json (verbatim).
    let json = r#"{
      "crop_size": 336, "do_center_crop": true, "do_normalize": true, "do_resize": true,
      "feature_extractor_type": "CLIPFeatureExtractor",
      "image_mean": [0.48145466, 0.4578275, 0.40821073],
      "image_std": [0.26862954, 0.26130258, 0.27577711],
      "resample": 3, "size": 336
    }"#;
    assert_eq!(
        PreprocessorConfig::from_json_str(json).unwrap(),
        PreprocessorConfig::default()
    );
}

#[test]
fn reference_tiny_file() {
    let cfg = PreprocessorConfig::from_file(
        &common::reference_tiny_dir().join("preprocessor_config.json"),
    )
    .unwrap();
    assert_eq!(cfg.size, ResizeSize::ShortestEdge { shortest_edge: 56 });
    assert_eq!(
        cfg.crop_size,
        CropSize {
            height: 56,
            width: 56
        }
    );
    assert_eq!(cfg.output_size(), (56, 56));
}

#[test]
fn missing_fields_take_transformers_defaults() {
    let cfg = PreprocessorConfig::from_json_str("{}").unwrap();
    assert_eq!(cfg.size, ResizeSize::ShortestEdge { shortest_edge: 224 });
    assert_eq!(
        cfg.crop_size,
        CropSize {
            height: 224,
            width: 224
        }
    );
    assert_eq!(cfg.resample, 3);
    assert!(cfg.do_convert_rgb);
}

#[test]
fn size_variants() {
    let cfg = PreprocessorConfig::from_json_str(
        r#"{"size": {"height": 18, "width": 30}, "crop_size": {"height": 10, "width": 12}, "do_center_crop": false}"#,
    )
    .unwrap();
    assert_eq!(
        cfg.size,
        ResizeSize::Exact {
            height: 18,
            width: 30
        }
    );
    assert_eq!(cfg.output_size(), (18, 30));
    // shortest_edge wins over height/width, as in CLIPImageProcessor.resize
    let cfg = PreprocessorConfig::from_json_str(
        r#"{"size": {"shortest_edge": 7, "height": 18, "width": 30}}"#,
    )
    .unwrap();
    assert_eq!(cfg.size, ResizeSize::ShortestEdge { shortest_edge: 7 });
    // scalar mean/std
    let cfg = PreprocessorConfig::from_json_str(r#"{"image_mean": 0.5, "image_std": 1}"#).unwrap();
    assert_eq!(cfg.image_mean, vec![0.5; 3]);
    assert_eq!(cfg.image_std, vec![1.0; 3]);
    // round trip through serde
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(PreprocessorConfig::from_json_str(&json).unwrap(), cfg);
    let d = PreprocessorConfig::default();
    assert_eq!(
        PreprocessorConfig::from_json_str(&serde_json::to_string(&d).unwrap()).unwrap(),
        d
    );
}

fn bad(json: &str) {
    match PreprocessorConfig::from_json_str(json) {
        Err(ImageError::BadConfig(msg)) => println!("{json} -> {msg}"),
        other => panic!("{json}: expected BadConfig, got {other:?}"),
    }
}

#[test]
fn invalid_configs_are_bad_config() {
    bad("not json");
    bad(r#"{"resample": 0}"#);
    bad(r#"{"resample": 7}"#);
    bad(r#"{"size": {"longest_edge": 100}}"#);
    bad(r#"{"size": {"shortest_edge": 0}}"#);
    bad(r#"{"size": {"shortest_edge": -3}}"#);
    bad(r#"{"size": {"height": 5}}"#);
    bad(r#"{"crop_size": {"height": 0, "width": 5}}"#);
    bad(r#"{"crop_size": "big"}"#);
    bad(r#"{"image_mean": [0.5, 0.5]}"#);
    bad(r#"{"image_std": [0.5, 0.0, 0.5]}"#);
    bad(r#"{"do_resize": "yes"}"#);
    // Disabled steps are not validated (transformers ignores them too).
    PreprocessorConfig::from_json_str(r#"{"do_resize": false, "resample": 0}"#).unwrap();
    PreprocessorConfig::from_json_str(r#"{"do_normalize": false, "image_std": [0, 0, 0]}"#)
        .unwrap();
}

#[test]
fn from_file_errors() {
    let r = PreprocessorConfig::from_file(Path::new("/nonexistent/preprocessor_config.json"));
    assert!(matches!(r, Err(ImageError::Io { .. })), "{r:?}");
    // A file that is not JSON at all (the PNG test image).
    let r = PreprocessorConfig::from_file(&common::reference_tiny_dir().join("test_image.png"));
    assert!(matches!(r, Err(ImageError::BadConfig(_))), "{r:?}");
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("test_image.png"), "{msg}");
}
