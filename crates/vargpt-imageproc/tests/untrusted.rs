//! The gate for untrusted images (`check_image`) and the decode behind it
//! (`decode_rgb8`), on small real and crafted files of every format.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use vargpt_imageproc::{check_image, decode_rgb8, ImageError, ImageInfo, ImageLimits, InputFormat};

const LOSSY: &[u8] = include_bytes!("fixtures/webp/lossy.webp");
const LOSSLESS: &[u8] = include_bytes!("fixtures/webp/lossless.webp");
const ANIMATED: &[u8] = include_bytes!("fixtures/webp/animated.webp");
/// Found by the fuzzer: a 4x4 VP8X canvas whose lossy frame announces
/// 16132x16383 (image-webp allocated ~400 MB before comparing the two).
const FRAME_LARGER_THAN_CANVAS: &[u8] =
    include_bytes!("fixtures/webp/frame-larger-than-canvas.webp");

/// Its animated twin: a 4x4 ANMF frame whose lossy bitstream announces 16132x16383.
const ANMF_FRAME_LARGER_THAN_RECTANGLE: &[u8] =
    include_bytes!("fixtures/webp/anmf-frame-larger-than-rectangle.webp");

/// The worker's defaults.
const LIMITS: ImageLimits = ImageLimits {
    max_bytes: 10 << 20,
    max_pixels: 4096 * 4096,
};

fn info(format: InputFormat, width: u32, height: u32) -> ImageInfo {
    ImageInfo {
        format,
        width,
        height,
    }
}

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format).expect("encode");
    buf.into_inner()
}

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 20) as u8, (y * 30) as u8, 128]))
}

fn chunk(fourcc: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = fourcc.to_vec();
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
    out
}

fn riff(chunks: &[Vec<u8>]) -> Vec<u8> {
    let body = chunks.concat();
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(4 + body.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&body);
    out
}

/// The lossy fixture's 8x6 VP8 chunk, re-wrapped as an extended file with a
/// raw (uncompressed) ALPH chunk of `alpha`.
fn lossy_with_alpha(alpha: u8) -> Vec<u8> {
    assert_eq!(&LOSSY[12..16], b"VP8 ");
    let vp8 = LOSSY[12..].to_vec();
    // Flags: alpha; canvas 8x6, stored minus one in 24 bits each.
    let vp8x = chunk(b"VP8X", &[0x10, 0, 0, 0, 7, 0, 0, 5, 0, 0]);
    let mut alph = vec![0u8]; // no compression, filter or preprocessing
    alph.extend_from_slice(&[alpha; 8 * 6]);
    riff(&[vp8x, chunk(b"ALPH", &alph), vp8])
}

#[test]
fn fuzzer_repros_are_refused_before_decoding() {
    for result in [
        check_image(FRAME_LARGER_THAN_CANVAS, &LIMITS).map(|_| ()),
        decode_rgb8(FRAME_LARGER_THAN_CANVAS, &LIMITS).map(|_| ()),
        check_image(ANMF_FRAME_LARGER_THAN_RECTANGLE, &LIMITS).map(|_| ()),
        decode_rgb8(ANMF_FRAME_LARGER_THAN_RECTANGLE, &LIMITS).map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, ImageError::Decode(_)), "{err}");
        assert!(!err.is_too_large());
    }
}

#[test]
fn valid_webp_lossy_lossless_alpha_animated() {
    assert_eq!(
        check_image(LOSSY, &LIMITS).unwrap(),
        info(InputFormat::WebP, 8, 6)
    );
    let lossy = decode_rgb8(LOSSY, &LIMITS).unwrap();
    assert_eq!(lossy.dimensions(), (8, 6));

    // Alpha is dropped: the colour planes decode as without it.
    let with_alpha = lossy_with_alpha(77);
    assert_eq!(
        check_image(&with_alpha, &LIMITS).unwrap(),
        info(InputFormat::WebP, 8, 6)
    );
    assert_eq!(decode_rgb8(&with_alpha, &LIMITS).unwrap(), lossy);

    let (w, h) = {
        let i = check_image(LOSSLESS, &LIMITS).unwrap();
        assert_eq!(i.format, InputFormat::WebP);
        (i.width, i.height)
    };
    assert_eq!(decode_rgb8(LOSSLESS, &LIMITS).unwrap().dimensions(), (w, h));

    // Lossless round trip, with and without alpha.
    let img = gradient(7, 5);
    let bytes = encode(DynamicImage::ImageRgb8(img.clone()), ImageFormat::WebP);
    assert_eq!(decode_rgb8(&bytes, &LIMITS).unwrap(), img);
    let rgba = RgbaImage::from_fn(7, 5, |x, y| Rgba([x as u8 * 9, y as u8 * 9, 3, x as u8]));
    let bytes = encode(DynamicImage::ImageRgba8(rgba), ImageFormat::WebP);
    assert_eq!(
        check_image(&bytes, &LIMITS).unwrap(),
        info(InputFormat::WebP, 7, 5)
    );

    // Animations decode to their first frame, on the canvas.
    assert_eq!(
        check_image(ANIMATED, &LIMITS).unwrap(),
        info(InputFormat::WebP, 4, 4)
    );
    assert_eq!(decode_rgb8(ANIMATED, &LIMITS).unwrap().dimensions(), (4, 4));
}

#[test]
fn png_and_jpeg() {
    let img = gradient(10, 6);
    let png = encode(DynamicImage::ImageRgb8(img.clone()), ImageFormat::Png);
    assert_eq!(
        check_image(&png, &LIMITS).unwrap(),
        info(InputFormat::Png, 10, 6)
    );
    assert_eq!(decode_rgb8(&png, &LIMITS).unwrap(), img);
    let jpeg = encode(DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
    assert_eq!(
        check_image(&jpeg, &LIMITS).unwrap(),
        info(InputFormat::Jpeg, 10, 6)
    );
    assert_eq!(decode_rgb8(&jpeg, &LIMITS).unwrap().dimensions(), (10, 6));
}

#[test]
fn limits_are_too_large_everything_else_invalid() {
    let png = encode(DynamicImage::ImageRgb8(gradient(10, 6)), ImageFormat::Png);
    let tight = |max_bytes, max_pixels| ImageLimits {
        max_bytes,
        max_pixels,
    };
    for (bytes, limits) in [
        (&png[..], tight(png.len() - 1, 60)),
        (&png[..], tight(png.len(), 59)),
        (LOSSY, tight(LOSSY.len(), 47)),
        (ANIMATED, tight(ANIMATED.len(), 15)),
    ] {
        let err = check_image(bytes, &limits).unwrap_err();
        assert!(err.is_too_large(), "{err}");
        assert!(decode_rgb8(bytes, &limits).unwrap_err().is_too_large());
    }
    assert!(check_image(&png, &tight(png.len(), 60)).is_ok());

    let gif = b"GIF89a\x02\0\x02\0\0\0\0;";
    for bytes in [&b"hello, not an image"[..], &[], gif] {
        let err = check_image(bytes, &LIMITS).unwrap_err();
        assert!(!err.is_too_large(), "{err}");
    }
}

#[test]
fn truncated_files_never_panic_and_short_cuts_are_refused() {
    let png = encode(DynamicImage::ImageRgb8(gradient(10, 6)), ImageFormat::Png);
    let jpeg = encode(DynamicImage::ImageRgb8(gradient(10, 6)), ImageFormat::Jpeg);
    let with_alpha = lossy_with_alpha(200);
    for file in [&png[..], &jpeg, LOSSY, LOSSLESS, &with_alpha, ANIMATED] {
        let full = check_image(file, &LIMITS).unwrap();
        for n in 0..file.len() {
            let cut = &file[..n];
            match check_image(cut, &LIMITS) {
                // A header that survives the cut must still say the same size,
                // and so must whatever the decoder makes of the rest.
                Ok(i) => {
                    assert_eq!(i, full, "prefix {n}");
                    if let Ok(img) = decode_rgb8(cut, &LIMITS) {
                        assert_eq!(img.dimensions(), (full.width, full.height));
                    }
                }
                Err(e) => {
                    assert!(!e.is_too_large(), "prefix {n}: {e}");
                    assert!(decode_rgb8(cut, &LIMITS).is_err(), "prefix {n}");
                }
            }
        }
        // Cut inside the header: refused.
        assert!(check_image(&file[..16], &LIMITS).is_err());
    }
    // PNG and WebP pixel data cut short does not decode.
    for file in [&png[..], LOSSY, &with_alpha] {
        assert!(decode_rgb8(&file[..file.len() - 8], &LIMITS).is_err());
    }
}
