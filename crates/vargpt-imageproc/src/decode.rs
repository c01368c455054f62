//! Decoding encoded bytes to RGB8 with PIL `Image.open(...).convert("RGB")` semantics.

use std::io::Cursor;

use image::{
    DynamicImage, GenericImageView, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage,
};

use crate::{webp, ImageError};

/// Resource limits for decoding untrusted images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Maximum size of the encoded file in bytes.
    pub max_bytes: usize,
    /// Maximum `width * height` of the decoded image (checked from the header,
    /// before any pixel is decoded).
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    /// 20 MiB encoded, 40 megapixels (40,000,000) decoded.
    fn default() -> Self {
        Self {
            max_bytes: 20 * 1024 * 1024,
            max_pixels: 40_000_000,
        }
    }
}

/// Extra allocation headroom granted to the decoders beyond the pixel buffer
/// (scratch buffers, metadata).
const DECODER_SLACK_BYTES: u64 = 64 * 1024 * 1024;
/// Largest decoded sample size we accept: RGBA, 16 bits per channel.
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// Decodes a PNG, JPEG or WebP file and converts it to 8-bit RGB the way PIL's
/// `Image.open(f).convert("RGB")` does (what transformers' `convert_to_rgb` calls):
///
/// * alpha is **dropped**, not composited over any background;
/// * grayscale is replicated to the three channels; palette images go through
///   the palette (the `image` crate expands them), transparency dropped;
/// * 16-bit RGB(A) / gray+alpha keep the high byte (PIL reads them with the
///   `;16B` raw modes, i.e. `v >> 8`);
/// * 16-bit grayscale is **clipped**: PIL opens it as mode `I;16` and
///   `convert("RGB")` saturates (`min(v, 255)`), so most 16-bit gray images turn
///   (almost) white in the reference. This quirk is reproduced on purpose;
/// * no EXIF orientation and no ICC / gamma handling (PIL applies none either).
///
/// PNG (all bit depths, palette, tRNS, interlacing) and lossless WebP decode
/// bit-exactly like Pillow. JPEG and lossy WebP use different decoders than
/// Pillow's libjpeg-turbo / libwebp (IDCT and chroma upsampling), so expect
/// small per-pixel differences (a few levels) there.
///
/// Limits: `bytes.len() <= max_bytes`, `width * height <= max_pixels` and, for
/// WebP, every frame's own size: all checked by [`check_image`] before any pixel
/// is decoded, plus an allocation cap for the decoder.
pub fn decode_rgb8(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    let (info, decoder, max_alloc) = open(bytes, limits)?;
    let img = DynamicImage::from_decoder(decoder).map_err(|e| from_image_error(e, max_alloc))?;
    if img.dimensions() != (info.width, info.height) {
        return Err(ImageError::Decode(format!(
            "decoded {}x{} image, header said {}x{}",
            img.width(),
            img.height(),
            info.width,
            info.height
        )));
    }
    Ok(to_rgb8_pil(img))
}

/// The gate for untrusted input images, without decoding any pixel (what
/// [`decode_rgb8`] runs first): the encoded size, the format (PNG, JPEG or
/// WebP, sniffed from the content), the dimensions from the header against
/// `limits`, and for WebP a walk over its RIFF chunks that refuses any frame
/// whose bitstream announces another size than its canvas (or its animation
/// rectangle), which the WebP decoder would otherwise allocate for before
/// noticing. Reads headers only; never panics.
///
/// [`ImageError::TooLarge`] means a limit was exceeded; every other error
/// means the bytes are not an acceptable image.
pub fn check_image(bytes: &[u8], limits: &ImageLimits) -> Result<ImageInfo, ImageError> {
    open(bytes, limits).map(|(info, ..)| info)
}

/// Format of an image accepted by [`check_image`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// WebP (lossy, lossless or extended; animations decode to their first frame).
    WebP,
}

/// What [`check_image`] read from an image's headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The format, from the content.
    pub format: InputFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Every check of [`check_image`], then the decoder ready to decode (with its
/// allocation cap, for error messages).
fn open<'a>(
    bytes: &'a [u8],
    limits: &ImageLimits,
) -> Result<(ImageInfo, impl ImageDecoder + 'a, u64), ImageError> {
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooLarge {
            what: "encoded size (bytes)",
            actual: Some(bytes.len() as u64),
            limit: limits.max_bytes as u64,
        });
    }
    let format = image::guess_format(bytes).map_err(|_| {
        ImageError::UnsupportedFormat("unrecognised image data (expected PNG, JPEG or WebP)".into())
    })?;
    let input_format = match format {
        ImageFormat::Png => InputFormat::Png,
        ImageFormat::Jpeg => InputFormat::Jpeg,
        ImageFormat::WebP => InputFormat::WebP,
        other => {
            return Err(ImageError::UnsupportedFormat(format!(
                "{other:?} (supported: PNG, JPEG, WebP)"
            )))
        }
    };
    if input_format == InputFormat::WebP {
        webp::check_webp(bytes, limits.max_pixels)?;
    }

    let mut decoder_limits = Limits::default();
    let max_alloc = limits
        .max_pixels
        .saturating_mul(MAX_BYTES_PER_PIXEL)
        .saturating_add(DECODER_SLACK_BYTES);
    decoder_limits.max_alloc = Some(max_alloc);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decoder_limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| from_image_error(e, max_alloc))?;

    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::EmptyImage { width, height });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooLarge {
            what: "decoded size (pixels)",
            actual: Some(pixels),
            limit: limits.max_pixels,
        });
    }
    let info = ImageInfo {
        format: input_format,
        width,
        height,
    };
    Ok((info, decoder, max_alloc))
}

fn from_image_error(e: image::ImageError, max_alloc: u64) -> ImageError {
    match e {
        image::ImageError::Limits(_) => ImageError::TooLarge {
            what: "decoder memory (bytes)",
            actual: None,
            limit: max_alloc,
        },
        image::ImageError::Unsupported(u) => ImageError::UnsupportedFormat(u.to_string()),
        other => ImageError::Decode(other.to_string()),
    }
}

/// PIL `convert("RGB")` of whatever the `image` crate decoded (see [`decode_rgb8`]).
fn to_rgb8_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let map = |src: &[u8], channels: usize, f: &dyn Fn(&[u8]) -> [u8; 3]| -> RgbImage {
        let data = src.chunks_exact(channels).flat_map(f).collect();
        RgbImage::from_raw(w, h, data).expect("w*h*3 bytes")
    };
    let map16 = |src: &[u16], channels: usize, f: &dyn Fn(&[u16]) -> [u8; 3]| -> RgbImage {
        let data = src.chunks_exact(channels).flat_map(f).collect();
        RgbImage::from_raw(w, h, data).expect("w*h*3 bytes")
    };
    let hi = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(b) => map(b.as_raw(), 4, &|p| [p[0], p[1], p[2]]),
        DynamicImage::ImageLuma8(b) => map(b.as_raw(), 1, &|p| [p[0]; 3]),
        DynamicImage::ImageLumaA8(b) => map(b.as_raw(), 2, &|p| [p[0]; 3]),
        DynamicImage::ImageRgb16(b) => map16(b.as_raw(), 3, &|p| [hi(p[0]), hi(p[1]), hi(p[2])]),
        DynamicImage::ImageRgba16(b) => map16(b.as_raw(), 4, &|p| [hi(p[0]), hi(p[1]), hi(p[2])]),
        DynamicImage::ImageLumaA16(b) => map16(b.as_raw(), 2, &|p| [hi(p[0]); 3]),
        // PIL mode I;16 -> RGB saturates instead of scaling.
        DynamicImage::ImageLuma16(b) => map16(b.as_raw(), 1, &|p| [p[0].min(255) as u8; 3]),
        // Not produced by the PNG / JPEG / WebP decoders; best effort.
        other => other.to_rgb8(),
    }
}
