//! Input image bytes -> the worker's decode path, with the worker's default
//! limits (`--max-image-bytes` 10 MiB, `--max-image-pixels` 4096²):
//! 1. the worker's header check (`pipeline/preprocess.rs::check_image`: format
//!    sniffing and dimensions from the header, through the `image` crate);
//! 2. the engine's `vargpt_imageproc::preprocess_bytes` with VARGPT's CLIP
//!    config (`decode_rgb8`, then resize / crop / normalize).
//!
//! Properties: no panic; a decoded image is within the pixel limit and has the
//! size its header announced; decoding never holds more heap than the pixel
//! limit allows for; preprocessing gives the model's input shape, all finite.

#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use vargpt_fuzz::alloc_meter::{self, Meter};
use vargpt_imageproc::{decode_rgb8, preprocess, ImageLimits, PreprocessorConfig};

#[global_allocator]
static ALLOC: Meter = Meter;

/// The worker's defaults (crates/vargpt-worker/src/config.rs).
const LIMITS: ImageLimits = ImageLimits {
    max_bytes: 10 << 20,
    max_pixels: 4096 * 4096,
};

/// Heap `decode_rgb8` may hold at once: the decoder's own allocation cap
/// (8 bytes per pixel plus 64 MiB of slack, see vargpt-imageproc's decode.rs)
/// plus the RGB8 copy made while the decoded image is still alive.
const DECODE_HEAP_BOUND: u64 = LIMITS.max_pixels * (8 + 3) + (64 << 20);

fuzz_target!(|data: &[u8]| {
    let header = header_dimensions(data);
    let (decoded, peak) = alloc_meter::measure(|| decode_rgb8(data, &LIMITS));
    assert!(
        peak <= DECODE_HEAP_BOUND,
        "decoding held {peak} bytes (bound {DECODE_HEAP_BOUND}), header {header:?}"
    );
    let Ok(img) = decoded else { return };
    let (w, h) = img.dimensions();
    assert!(w > 0 && h > 0 && u64::from(w) * u64::from(h) <= LIMITS.max_pixels);
    // The worker checked the header before the engine decoded: they must agree.
    assert_eq!(header, Some((w, h)), "header check vs decoded size");

    let cfg = PreprocessorConfig::default();
    let px = match preprocess(&img, &cfg) {
        Ok(px) => px,
        Err(e) => panic!("preprocess refused a decoded {w}x{h} image: {e}"),
    };
    let (oh, ow) = cfg.output_size();
    assert_eq!(px.shape(), [3, oh, ow]);
    assert!(px.data.iter().all(|v| v.is_finite()));
});

/// `check_image` of the worker, minus its byte-size check: the dimensions the
/// header announces, or `None` where the worker refuses the image.
fn header_dimensions(data: &[u8]) -> Option<(u32, u32)> {
    if data.len() > LIMITS.max_bytes {
        return None;
    }
    let reader = image::ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .ok()?;
    reader.format()?;
    let (w, h) = reader.into_dimensions().ok()?;
    (w > 0 && h > 0 && u64::from(w) * u64::from(h) <= LIMITS.max_pixels).then_some((w, h))
}
