//! Decoding: formats, PIL `convert("RGB")` semantics, limits, and bad input.

mod common;

use std::io::Cursor;

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, RgbImage, Rgba};
use vargpt_imageproc::{
    decode_rgb8, preprocess, preprocess_bytes, ImageError, ImageLimits, PreprocessorConfig,
};

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format).expect("encode");
    buf.into_inner()
}

fn small_cfg() -> PreprocessorConfig {
    PreprocessorConfig {
        size: vargpt_imageproc::ResizeSize::ShortestEdge { shortest_edge: 16 },
        crop_size: vargpt_imageproc::CropSize {
            height: 16,
            width: 16,
        },
        ..PreprocessorConfig::default()
    }
}

fn limits() -> ImageLimits {
    ImageLimits::default()
}

// ---------------------------------------------------------------- semantics

#[test]
fn rgba_alpha_is_dropped_not_composited() {
    let mut img = ImageBuffer::<Rgba<u8>, _>::from_pixel(9, 7, Rgba([200, 100, 50, 255]));
    img.put_pixel(3, 2, Rgba([10, 20, 30, 0])); // fully transparent
    img.put_pixel(4, 2, Rgba([250, 128, 7, 77])); // half transparent
    for format in [ImageFormat::Png, ImageFormat::WebP] {
        let bytes = encode(DynamicImage::ImageRgba8(img.clone()), format);
        let rgb = decode_rgb8(&bytes, &limits()).unwrap();
        assert_eq!(rgb.dimensions(), (9, 7));
        assert_eq!(rgb.get_pixel(3, 2), &Rgb([10, 20, 30]), "{format:?}");
        assert_eq!(rgb.get_pixel(4, 2), &Rgb([250, 128, 7]), "{format:?}");
        assert_eq!(rgb.get_pixel(0, 0), &Rgb([200, 100, 50]), "{format:?}");
        let pv = preprocess_bytes(&bytes, &small_cfg(), &limits()).unwrap();
        assert_eq!(pv.shape(), [3, 16, 16]);
    }
}

#[test]
fn grayscale_is_replicated() {
    let l = ImageBuffer::<Luma<u8>, _>::from_fn(6, 5, |x, y| Luma([(x * 40 + y) as u8]));
    let rgb = decode_rgb8(
        &encode(DynamicImage::ImageLuma8(l), ImageFormat::Png),
        &limits(),
    )
    .unwrap();
    assert_eq!(rgb.get_pixel(3, 4), &Rgb([124, 124, 124]));

    let la = ImageBuffer::<LumaA<u8>, _>::from_fn(6, 5, |x, _| LumaA([(x * 40) as u8, 0]));
    let rgb = decode_rgb8(
        &encode(DynamicImage::ImageLumaA8(la), ImageFormat::Png),
        &limits(),
    )
    .unwrap();
    assert_eq!(rgb.get_pixel(5, 0), &Rgb([200, 200, 200]));

    // grayscale through the whole pipeline gives three equal planes only if
    // mean/std are equal; check instead that preprocessing works.
    let l = ImageBuffer::<Luma<u8>, _>::from_fn(40, 30, |x, y| Luma([(x * 6 + y) as u8]));
    let bytes = encode(DynamicImage::ImageLuma8(l), ImageFormat::Png);
    let pv = preprocess_bytes(&bytes, &small_cfg(), &limits()).unwrap();
    assert_eq!(pv.data.len(), 3 * 16 * 16);
}

#[test]
fn sixteen_bit_pngs_follow_pil() {
    // Values verified with Pillow 10.4.0: RGB;16B / RGBA;16B / LA;16B keep the
    // high byte; 16-bit grayscale opens as I;16 and convert("RGB") saturates.
    let vals = [0x0000u16, 0x00ff, 0x0180, 0x7fff, 0x80ff, 0xffff];
    let hi = [0u8, 0, 1, 127, 128, 255];
    let clipped = [0u8, 255, 255, 255, 255, 255];
    let w = vals.len() as u32;

    let rgb16 = ImageBuffer::<Rgb<u16>, _>::from_fn(w, 1, |x, _| Rgb([vals[x as usize]; 3]));
    let rgba16 =
        ImageBuffer::<Rgba<u16>, _>::from_fn(w, 1, |x, _| Rgba([vals[x as usize], 1, 2, 3]));
    let la16 = ImageBuffer::<LumaA<u16>, _>::from_fn(w, 1, |x, _| LumaA([vals[x as usize], 9]));
    let l16 = ImageBuffer::<Luma<u16>, _>::from_fn(w, 1, |x, _| Luma([vals[x as usize]]));

    let red = |img: DynamicImage| -> Vec<u8> {
        let rgb = decode_rgb8(&encode(img, ImageFormat::Png), &limits()).unwrap();
        rgb.pixels().map(|p| p.0[0]).collect()
    };
    assert_eq!(red(DynamicImage::ImageRgb16(rgb16)), hi);
    assert_eq!(red(DynamicImage::ImageRgba16(rgba16)), hi);
    assert_eq!(red(DynamicImage::ImageLumaA16(la16)), hi);
    assert_eq!(red(DynamicImage::ImageLuma16(l16)), clipped);
}

#[test]
fn jpeg_and_webp_decode_and_preprocess() {
    let img = RgbImage::from_fn(48, 40, |x, y| Rgb([(x * 5) as u8, (y * 6) as u8, 128]));
    for format in [ImageFormat::Jpeg, ImageFormat::WebP, ImageFormat::Png] {
        let bytes = encode(DynamicImage::ImageRgb8(img.clone()), format);
        let rgb = decode_rgb8(&bytes, &limits()).unwrap();
        assert_eq!(rgb.dimensions(), (48, 40));
        let max = rgb
            .as_raw()
            .iter()
            .zip(img.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        println!("{format:?} round trip max |d| = {max}");
        match format {
            ImageFormat::Jpeg => assert!(max <= 16, "jpeg too far off: {max}"),
            _ => assert_eq!(max, 0, "{format:?} is lossless"),
        }
        let pv = preprocess_bytes(&bytes, &PreprocessorConfig::default(), &limits()).unwrap();
        assert_eq!(pv.shape(), [3, 336, 336]);
        assert!(pv.data.iter().all(|v| v.is_finite()));
    }
}

/// Files encoded by Pillow and Pillow's own decoded RGB (fixture from
/// tests/gen/gen_fixtures.py). Lossless ones must match exactly; JPEG and lossy
/// WebP go through different decoders than libjpeg-turbo / libwebp.
#[test]
fn decoding_matches_pillow() {
    let (meta, bin) = common::load_fixture("decode_cases");
    for case in meta["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let enc = &bin[common::u(case, "encoded_offset")..][..common::u(case, "encoded_len")];
        let want = &bin[common::u(case, "rgb_offset")..][..common::u(case, "rgb_len")];
        let got = decode_rgb8(enc, &limits()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            got.dimensions(),
            (common::u(case, "w") as u32, common::u(case, "h") as u32)
        );
        let diffs: Vec<u8> = got
            .as_raw()
            .iter()
            .zip(want)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let max = *diffs.iter().max().unwrap();
        let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
        println!("{name:16} vs Pillow: max |d| = {max}, mean |d| = {mean:.4}");
        if name.starts_with("jpeg") {
            // zune-jpeg vs libjpeg-turbo: IDCT / chroma upsampling rounding
            // (measured: max 3, mean 0.37 at 4:2:0; max 2 at 4:4:4).
            assert!(max <= 6 && mean <= 0.75, "{name}: max {max}, mean {mean}");
        } else {
            // PNG, lossless WebP, and (measured) lossy WebP decode like Pillow.
            assert_eq!(max, 0, "{name} must decode exactly like Pillow");
        }
    }
}

// ---------------------------------------------------------------- bad input

fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([x as u8, y as u8, (x ^ y) as u8]));
    encode(DynamicImage::ImageRgb8(img), ImageFormat::Png)
}

/// A PNG signature + IHDR chunk (valid CRC) claiming the given size, then garbage.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    out.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 4, b'I', b'D', b'A', b'T', 1, 2, 3, 4, 0, 0, 0, 0]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn random_bytes_are_unsupported() {
    let mut state = 0x1234_5678u32;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect();
    assert!(matches!(
        decode_rgb8(&bytes, &limits()),
        Err(ImageError::UnsupportedFormat(_))
    ));
    assert!(matches!(
        decode_rgb8(&[], &limits()),
        Err(ImageError::UnsupportedFormat(_))
    ));
    assert!(matches!(
        decode_rgb8(b"GIF89a\x01\x00\x01\x00", &limits()),
        Err(ImageError::UnsupportedFormat(_))
    ));
    assert!(matches!(
        preprocess_bytes(&bytes, &PreprocessorConfig::default(), &limits()),
        Err(ImageError::UnsupportedFormat(_))
    ));
}

#[test]
fn truncated_files_are_decode_errors() {
    let png = png_bytes(64, 64);
    let jpeg = encode(
        DynamicImage::ImageRgb8(RgbImage::from_fn(64, 64, |x, y| Rgb([x as u8, y as u8, 9]))),
        ImageFormat::Jpeg,
    );
    let webp = encode(
        DynamicImage::ImageRgb8(RgbImage::from_fn(64, 64, |x, y| Rgb([x as u8, y as u8, 9]))),
        ImageFormat::WebP,
    );
    let r = decode_rgb8(&png[..png.len() / 2], &limits());
    assert!(matches!(r, Err(ImageError::Decode(_))), "{r:?}");
    // Header only, no pixel data.
    let r = decode_rgb8(&png[..40], &limits());
    assert!(matches!(r, Err(ImageError::Decode(_))), "{r:?}");
    let r = decode_rgb8(&webp[..webp.len() / 2], &limits());
    assert!(matches!(r, Err(ImageError::Decode(_))), "{r:?}");
    // A truncated JPEG may be rejected or decoded partially (libjpeg pads too),
    // but must never panic.
    let _ = decode_rgb8(&jpeg[..jpeg.len() / 2], &limits());
    // Every prefix and some corruptions: no panic, whatever the result.
    for data in [&png, &jpeg, &webp] {
        for cut in (0..data.len()).step_by(7) {
            let _ = decode_rgb8(&data[..cut], &limits());
        }
        for i in (8..data.len()).step_by(5) {
            let mut bad = data.to_vec();
            bad[i] ^= 0x5A;
            let _ = decode_rgb8(&bad, &limits());
        }
    }
}

#[test]
fn oversize_images_are_rejected_before_decoding() {
    // Real 100x100 image, limit 5000 pixels.
    let lim = ImageLimits {
        max_bytes: 1 << 20,
        max_pixels: 5000,
    };
    let r = decode_rgb8(&png_bytes(100, 100), &lim);
    assert!(
        matches!(
            r,
            Err(ImageError::TooLarge {
                actual: Some(10_000),
                limit: 5000,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(decode_rgb8(&png_bytes(50, 100), &lim).is_ok());

    // Header claims 100000 x 100000 (10 gigapixels); only the header exists.
    let r = decode_rgb8(&png_header_only(100_000, 100_000), &limits());
    assert!(matches!(r, Err(ImageError::TooLarge { .. })), "{r:?}");
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("too large"), "{msg}");

    // Encoded size limit.
    let lim = ImageLimits {
        max_bytes: 100,
        max_pixels: 1 << 30,
    };
    let r = decode_rgb8(&png_bytes(64, 64), &lim);
    assert!(
        matches!(r, Err(ImageError::TooLarge { limit: 100, .. })),
        "{r:?}"
    );
}

#[test]
fn zero_size_images_error() {
    let r = decode_rgb8(&png_header_only(0, 10), &limits());
    assert!(
        matches!(
            r,
            Err(ImageError::Decode(_)) | Err(ImageError::EmptyImage { .. })
        ),
        "{r:?}"
    );
    let r = preprocess(&RgbImage::new(0, 0), &PreprocessorConfig::default());
    assert!(matches!(r, Err(ImageError::EmptyImage { .. })), "{r:?}");
    let r = preprocess(&RgbImage::new(5, 0), &PreprocessorConfig::default());
    assert!(matches!(r, Err(ImageError::EmptyImage { .. })), "{r:?}");
}
