//! CLIP image preprocessing for vargpt-rs, reproducing transformers 4.46.1
//! `CLIPImageProcessor.preprocess` (with Pillow 10.4 doing the resize) bit for bit.
//!
//! Per image, in order:
//! 1. decode and convert to RGB8 with PIL `convert("RGB")` semantics ([`decode_rgb8`]);
//! 2. resize with PIL `Image.resize` (bicubic by default): shortest edge -> `s`,
//!    long edge -> `int(s * long / short)` ([`resample`], a port of Pillow's `Resample.c`);
//! 3. center crop (`top = (h - ch) // 2`, `left = (w - cw) // 2`, zero padding
//!    when the image is smaller than the crop, as transformers' `center_crop`);
//! 4. rescale `f32(f64(x) * rescale_factor)`;
//! 5. normalize in f32 `(x - mean[c]) / std[c]`;
//! 6. CHW `f32` layout.
//!
//! Only the center-crop window of the resized image is computed (identical
//! results, less work, and no giant intermediate for extreme aspect ratios).
//!
//! Known, documented deviations from the Python reference:
//! * JPEG / lossy WebP are decoded by the `image` crate, not libjpeg-turbo /
//!   libwebp: a few levels of per-pixel difference are possible before resizing.
//! * transformers' channel-format inference mistakes images whose height is 1
//!   or 3 for channel-first arrays (and then produces garbage); this crate
//!   handles such images correctly instead.

mod config;
mod decode;
pub mod resample;
mod webp;

use std::path::PathBuf;

use image::RgbImage;

pub use config::{CropSize, PreprocessorConfig, ResizeSize, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD};
pub use decode::{check_image, decode_rgb8, ImageInfo, ImageLimits, InputFormat};
pub use resample::{
    pil_resize, pil_resize_region, resize_shortest_edge_pil_bicubic, shortest_edge_output_size,
    PilFilter,
};

/// Errors of decoding / preprocessing. Bad input never panics.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The data looks like a supported format but could not be decoded
    /// (corrupt, truncated, ...).
    #[error("failed to decode image: {0}")]
    Decode(String),
    /// A size limit was exceeded.
    #[error("image too large: {what}{} exceeds the limit of {limit}", .actual.map(|a| format!(" = {a}")).unwrap_or_default())]
    TooLarge {
        /// What was measured.
        what: &'static str,
        /// The measured value, when known.
        actual: Option<u64>,
        /// The limit.
        limit: u64,
    },
    /// Not PNG, JPEG or WebP (or a feature of the file the decoder does not support).
    #[error("unsupported image format: {0}")]
    UnsupportedFormat(String),
    /// The image has no pixels.
    #[error("empty image ({width}x{height})")]
    EmptyImage {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// Invalid or unsupported preprocessor configuration.
    #[error("bad preprocessor config: {0}")]
    BadConfig(String),
    /// Reading a config file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl ImageError {
    /// Whether a size limit refused the image (as opposed to bytes that are
    /// not an acceptable image, or a configuration problem).
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::TooLarge { .. })
    }
}

/// Preprocessed image: `data` is CHW `f32`, shape `[3, height, width]`.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelValues {
    /// `3 * height * width` values, channel-major (R plane, G plane, B plane).
    pub data: Vec<f32>,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

impl PixelValues {
    /// `[channels, height, width]` = `[3, height, width]`.
    pub fn shape(&self) -> [usize; 3] {
        [3, self.height, self.width]
    }
}

/// Largest resized side PIL can produce (its sizes are C `int`s).
const MAX_RESIZED_SIDE: u64 = i32::MAX as u64;
/// Largest output (after the optional crop) we agree to materialise: 2^28 pixels
/// (3 GiB of f32). Only reachable without center crop.
const MAX_OUTPUT_PIXELS: u64 = 1 << 28;

/// Runs resize / center crop / rescale / normalize on an RGB8 image, exactly
/// as `CLIPImageProcessor.preprocess` does on the corresponding PIL RGB image,
/// honouring every `do_*` flag of `cfg`.
pub fn preprocess(img: &RgbImage, cfg: &PreprocessorConfig) -> Result<PixelValues, ImageError> {
    cfg.validate()?;
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(ImageError::EmptyImage {
            width: w,
            height: h,
        });
    }

    // 1. Size of the (virtual) resized image.
    let (rw, rh) = if cfg.do_resize {
        match cfg.size {
            ResizeSize::ShortestEdge { shortest_edge } => {
                shortest_edge_output_size(w, h, shortest_edge)
            }
            ResizeSize::Exact { height, width } => (u64::from(width), u64::from(height)),
        }
    } else {
        (u64::from(w), u64::from(h))
    };
    let longest = rw.max(rh);
    if longest > MAX_RESIZED_SIDE {
        return Err(ImageError::TooLarge {
            what: "resized side (pixels)",
            actual: Some(longest),
            limit: MAX_RESIZED_SIDE,
        });
    }

    // 2. Output window in resized-image coordinates: rows top..top+out_h, cols
    // left..left+out_w; negative / past-the-end parts are zero padding.
    let (out_h, out_w, top, left) = if cfg.do_center_crop {
        let (ch, cw) = (
            u64::from(cfg.crop_size.height),
            u64::from(cfg.crop_size.width),
        );
        let top = (rh as i64 - ch as i64).div_euclid(2);
        let left = (rw as i64 - cw as i64).div_euclid(2);
        (ch, cw, top, left)
    } else {
        (rh, rw, 0, 0)
    };
    let out_pixels = out_h * out_w;
    if out_pixels > MAX_OUTPUT_PIXELS {
        return Err(ImageError::TooLarge {
            what: "output size (pixels)",
            actual: Some(out_pixels),
            limit: MAX_OUTPUT_PIXELS,
        });
    }
    let (out_h, out_w) = (out_h as usize, out_w as usize);

    // Part of the window that lies inside the resized image.
    let y0 = top.max(0) as u64;
    let y1 = ((top + out_h as i64).max(0) as u64).min(rh);
    let x0 = left.max(0) as u64;
    let x1 = ((left + out_w as i64).max(0) as u64).min(rw);
    let (win_w, win_h) = (x1.saturating_sub(x0) as u32, y1.saturating_sub(y0) as u32);
    let (x0, y0) = (x0 as u32, y0 as u32);

    let window: RgbImage = if cfg.do_resize {
        let filter = cfg
            .filter()
            .ok_or_else(|| ImageError::BadConfig(format!("resample {}", cfg.resample)))?;
        pil_resize_region(img, rw as u32, rh as u32, x0, y0, win_w, win_h, filter)
    } else {
        image::imageops::crop_imm(img, x0, y0, win_w, win_h).to_image()
    };

    // 3.-5. Rescale and normalize depend only on (channel, uint8 value): tabulate.
    let luts = value_tables(cfg);

    // 6. CHW output; padding is uint8 0 run through the same tables.
    let plane = out_h * out_w;
    let mut data = vec![0f32; 3 * plane];
    for (c, lut) in luts.iter().enumerate() {
        data[c * plane..(c + 1) * plane].fill(lut[0]);
    }
    let off_y = (i64::from(y0) - top) as usize;
    let off_x = (i64::from(x0) - left) as usize;
    for (wy, row) in window.rows().enumerate() {
        let base = (off_y + wy) * out_w + off_x;
        for (wx, px) in row.enumerate() {
            for (c, lut) in luts.iter().enumerate() {
                data[c * plane + base + wx] = lut[usize::from(px.0[c])];
            }
        }
    }
    Ok(PixelValues {
        data,
        height: out_h,
        width: out_w,
    })
}

/// Per channel, the f32 pixel value for each uint8 level, computed with
/// transformers' exact arithmetic: `rescale` multiplies in f64 and casts to
/// f32; `normalize` works in f32 with the mean/std cast to f32.
fn value_tables(cfg: &PreprocessorConfig) -> [[f32; 256]; 3] {
    let mut luts = [[0f32; 256]; 3];
    for (c, lut) in luts.iter_mut().enumerate() {
        for (v, out) in lut.iter_mut().enumerate() {
            let mut x = if cfg.do_rescale {
                (v as f64 * cfg.rescale_factor) as f32
            } else {
                v as f32
            };
            if cfg.do_normalize {
                x = (x - cfg.image_mean[c] as f32) / cfg.image_std[c] as f32;
            }
            *out = x;
        }
    }
    luts
}

/// [`decode_rgb8`] followed by [`preprocess`].
pub fn preprocess_bytes(
    bytes: &[u8],
    cfg: &PreprocessorConfig,
    limits: &ImageLimits,
) -> Result<PixelValues, ImageError> {
    cfg.validate()?;
    let img = decode_rgb8(bytes, limits)?;
    preprocess(&img, cfg)
}
