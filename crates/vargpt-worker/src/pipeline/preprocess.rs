//! Input image: fetch (inline or from an allowed bucket) and check it is an
//! image within the limits, reading only its header — the full decode is
//! the engine's, and must never see a decompression bomb.

use std::io::Cursor;

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

/// Format sniffing plus the dimensions from the header.
pub fn check_image(bytes: &[u8], limits: &Limits) -> Result<(u32, u32), Failure> {
    if bytes.len() > limits.max_image_bytes {
        return Err(Failure::new(
            ErrorCode::ImageTooLarge,
            format!(
                "image is {} bytes, limit {}",
                bytes.len(),
                limits.max_image_bytes
            ),
        ));
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Failure::new(ErrorCode::InvalidImage, format!("cannot read image: {e}")))?;
    let Some(format) = reader.format() else {
        return Err(Failure::new(
            ErrorCode::InvalidImage,
            "not a PNG, JPEG or WebP image",
        ));
    };
    let (w, h) = reader.into_dimensions().map_err(|e| {
        Failure::new(
            ErrorCode::InvalidImage,
            format!("cannot read {format:?} image: {e}"),
        )
    })?;
    if w == 0 || h == 0 {
        return Err(Failure::new(ErrorCode::InvalidImage, "image has no pixels"));
    }
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_image_pixels {
        return Err(Failure::new(
            ErrorCode::ImageTooLarge,
            format!(
                "image is {w}x{h} = {pixels} pixels, limit {}",
                limits.max_image_pixels
            ),
        ));
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
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
}
