//! `preprocess` behaviour beyond the fixtures: padding values, flags,
//! extreme aspect ratios, the default 336 px pipeline.

mod common;

use image::{Rgb, RgbImage};
use vargpt_imageproc::{
    pil_resize, preprocess, CropSize, ImageError, PilFilter, PreprocessorConfig, ResizeSize,
};

fn cfg(shortest: u32, crop: (u32, u32)) -> PreprocessorConfig {
    PreprocessorConfig {
        size: ResizeSize::ShortestEdge {
            shortest_edge: shortest,
        },
        crop_size: CropSize {
            height: crop.0,
            width: crop.1,
        },
        ..PreprocessorConfig::default()
    }
}

fn value(c: usize, v: u8, cfg: &PreprocessorConfig) -> f32 {
    let x = (f64::from(v) * cfg.rescale_factor) as f32;
    (x - cfg.image_mean[c] as f32) / cfg.image_std[c] as f32
}

#[test]
fn padding_is_uint8_zero_normalized() {
    // 40x30 white -> shortest 16 -> 21x16, crop 20x24: pad rows 2 top/2 bottom,
    // cols: left = (21-24)//2 = -2 -> 2 left, 1 right.
    let img = RgbImage::from_pixel(40, 30, Rgb([255, 255, 255]));
    let c = cfg(16, (20, 24));
    let pv = preprocess(&img, &c).unwrap();
    assert_eq!(pv.shape(), [3, 20, 24]);
    let at = |ch: usize, y: usize, x: usize| pv.data[ch * 20 * 24 + y * 24 + x];
    for ch in 0..3 {
        let pad = value(ch, 0, &c);
        let white = value(ch, 255, &c);
        assert_eq!(at(ch, 0, 5), pad);
        assert_eq!(at(ch, 1, 5), pad);
        assert_eq!(at(ch, 2, 5), white);
        assert_eq!(at(ch, 17, 5), white);
        assert_eq!(at(ch, 18, 5), pad);
        assert_eq!(at(ch, 10, 0), pad);
        assert_eq!(at(ch, 10, 1), pad);
        assert_eq!(at(ch, 10, 2), white);
        assert_eq!(at(ch, 10, 22), white);
        assert_eq!(at(ch, 10, 23), pad);
    }
}

#[test]
fn crop_offsets_floor() {
    // No resize: 7x6 image, crop 4x3 -> top = (6-4)//2 = 1, left = (7-3)//2 = 2.
    let img = RgbImage::from_fn(7, 6, |x, y| Rgb([(10 * y + x) as u8, 0, 0]));
    let mut c = cfg(1, (4, 3));
    c.do_resize = false;
    c.do_normalize = false;
    c.do_rescale = false;
    let pv = preprocess(&img, &c).unwrap();
    assert_eq!(pv.shape(), [3, 4, 3]);
    assert_eq!(&pv.data[..3], &[12.0, 13.0, 14.0]);
    assert_eq!(&pv.data[9..12], &[42.0, 43.0, 44.0]);
}

#[test]
fn chw_layout_and_channel_order() {
    let img = RgbImage::from_pixel(20, 20, Rgb([255, 0, 128]));
    let mut c = cfg(20, (20, 20));
    c.do_normalize = false;
    let pv = preprocess(&img, &c).unwrap();
    let plane = 400;
    assert!(pv.data[..plane].iter().all(|&v| v == 1.0));
    assert!(pv.data[plane..2 * plane].iter().all(|&v| v == 0.0));
    let b = (128.0f64 / 255.0) as f32;
    assert!(pv.data[2 * plane..]
        .iter()
        .all(|&v| v == (128.0f64 * c.rescale_factor) as f32));
    assert!((b - pv.data[2 * plane]).abs() < 1e-6);
}

#[test]
fn window_equals_full_resize_then_crop() {
    let img = common::pattern("noise", 131, 77, 3);
    let c = cfg(40, (36, 30));
    let pv = preprocess(&img, &c).unwrap();
    let full = pil_resize(&img, 68, 40, PilFilter::Bicubic); // int(40*131/77) = 68
    let (top, left) = ((40 - 36) / 2, (68 - 30) / 2);
    for y in 0..36 {
        for x in 0..30 {
            let p = full.get_pixel(x + left, y + top);
            for ch in 0..3 {
                let got = pv.data[ch * 36 * 30 + y as usize * 30 + x as usize];
                assert_eq!(got, value(ch, p.0[ch], &c));
            }
        }
    }
}

#[test]
fn extreme_aspect_ratios_do_not_blow_up() {
    // 1 x 20000 -> resized 336 x 6_720_000 (never materialised), crop 336x336.
    let img = common::pattern("noise", 1, 20_000, 5);
    let t = std::time::Instant::now();
    let pv = preprocess(&img, &PreprocessorConfig::default()).unwrap();
    println!("1x20000 -> 336x336 in {:?}", t.elapsed());
    assert_eq!(pv.shape(), [3, 336, 336]);
    let img = common::pattern("noise", 20_000, 2, 6);
    let pv = preprocess(&img, &PreprocessorConfig::default()).unwrap();
    assert_eq!(pv.shape(), [3, 336, 336]);

    // Without crop the output would be gigantic: a typed error, not an abort.
    let c = PreprocessorConfig {
        do_center_crop: false,
        ..PreprocessorConfig::default()
    };
    let r = preprocess(&common::pattern("noise", 1, 20_000, 5), &c);
    assert!(matches!(r, Err(ImageError::TooLarge { .. })), "{r:?}");
}

#[test]
fn bad_config_is_reported_by_preprocess() {
    let img = RgbImage::new(4, 4);
    let c = PreprocessorConfig {
        resample: 0,
        ..PreprocessorConfig::default()
    };
    assert!(matches!(
        preprocess(&img, &c),
        Err(ImageError::BadConfig(_))
    ));
    let c = PreprocessorConfig {
        image_std: vec![1.0],
        ..PreprocessorConfig::default()
    };
    assert!(matches!(
        preprocess(&img, &c),
        Err(ImageError::BadConfig(_))
    ));
}

/// A 12 MP phone photo through the default 336 px pipeline: 4032x3024 is
/// resized to 448x336 and cropped to columns 56..392, so a seam in the middle of
/// the photo lands in the middle (column 168) of the output, and every pixel
/// farther than the bicubic support (2 output columns at this 9x downscale)
/// from the seam keeps its colour exactly.
#[test]
fn default_pipeline_maps_a_12_megapixel_photo_onto_the_336_px_crop() {
    let (left, right) = ([200u8, 30, 90], [10u8, 120, 250]);
    let img = RgbImage::from_fn(4032, 3024, |x, _| Rgb(if x < 2016 { left } else { right }));
    let c = PreprocessorConfig::default();
    let pv = preprocess(&img, &c).unwrap();
    assert_eq!(pv.shape(), [3, 336, 336]);
    let plane = 336 * 336;
    for ch in 0..3 {
        for y in 0..336 {
            for x in (0..165).chain(172..336) {
                let want = value(ch, if x < 168 { left[ch] } else { right[ch] }, &c);
                let got = pv.data[ch * plane + y * 336 + x];
                assert!(
                    (got - want).abs() <= 1e-6,
                    "channel {ch}, ({x}, {y}): {got} != {want}"
                );
            }
        }
    }
}
