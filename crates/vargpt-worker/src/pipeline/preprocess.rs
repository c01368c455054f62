//! Input image: fetch (inline or from an allowed bucket) and check it is an
//! image within the limits, reading only its headers — the full decode is
//! the engine's, and must never see a decompression bomb.

use vargpt_imageproc::ImageLimits;
use vargpt_proto::{ErrorCode, ImageSource, Limits};

use super::ImageStore;
use crate::failure::{fetch_failure, Failure};

/// The encoded bytes of the job's input image, checked.
pub async fn load_image(
    src: &ImageSource,
    store: &dyn ImageStore,
    limits: &Limits,
) -> Result<Vec<u8>, Failure> {
    let bytes = match src {
        ImageSource::Inline(b) => b.clone(),
        ImageSource::S3 { bucket, key } => store
            .fetch(bucket, key, limits.max_image_bytes)
            .await
            .map_err(|e| fetch_failure(bucket, key, e))?,
    };
    check_image(&bytes, limits)?;
    Ok(bytes)
}

/// The gate for untrusted images, shared with the engine's decoder
/// (`vargpt_imageproc::check_image`, which `decode_rgb8` runs first): encoded
/// size, format sniffing, the dimensions from the header, and for WebP every
/// frame's own size, all before any pixel is decoded. Limits exceeded map to
/// `image_too_large`, anything else to `invalid_image`.
pub fn check_image(bytes: &[u8], limits: &Limits) -> Result<(u32, u32), Failure> {
    let image_limits = ImageLimits {
        max_bytes: limits.max_image_bytes,
        max_pixels: limits.max_image_pixels,
    };
    match vargpt_imageproc::check_image(bytes, &image_limits) {
        Ok(info) => Ok((info.width, info.height)),
        Err(e) if e.is_too_large() => Err(Failure::new(ErrorCode::ImageTooLarge, e.to_string())),
        Err(e) => Err(Failure::new(
            ErrorCode::InvalidImage,
            format!("not an acceptable PNG, JPEG or WebP image: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    pub(crate) fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::new(w, h);
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn header_checks() {
        let limits = Limits {
            max_image_pixels: 100,
            ..Default::default()
        };
        assert_eq!(check_image(&png(10, 10), &limits).unwrap(), (10, 10));
        assert_eq!(
            check_image(&png(11, 10), &limits).unwrap_err().code,
            ErrorCode::ImageTooLarge
        );
        assert_eq!(
            check_image(b"hello world, not an image", &limits)
                .unwrap_err()
                .code,
            ErrorCode::InvalidImage
        );
        let mut truncated = png(10, 10);
        truncated.truncate(12);
        assert_eq!(
            check_image(&truncated, &limits).unwrap_err().code,
            ErrorCode::InvalidImage
        );
        let small = Limits {
            max_image_bytes: 10,
            ..Default::default()
        };
        assert_eq!(
            check_image(&png(2, 2), &small).unwrap_err().code,
            ErrorCode::ImageTooLarge
        );
    }

    #[test]
    fn webp_frame_larger_than_its_canvas_is_refused() {
        // Found by the fuzzer: a 4x4 canvas whose lossy frame announces
        // 16132x16383, which the decoder would allocate for.
        let bytes = include_bytes!(
            "../../../vargpt-imageproc/tests/fixtures/webp/frame-larger-than-canvas.webp"
        );
        let failure = check_image(bytes, &Limits::default()).unwrap_err();
        assert_eq!(failure.code, ErrorCode::InvalidImage);
    }
}
