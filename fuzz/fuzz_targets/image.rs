//! Input image bytes -> the worker's decode path, with the worker's default
//! limits (`--max-image-bytes` 10 MiB, `--max-image-pixels` 4096²):
//! 1. the worker's gate, `vargpt_imageproc::check_image` (what
//!    `pipeline/preprocess.rs::check_image` calls: format sniffing, dimensions
//!    from the header, every WebP frame's own size);
//! 2. the engine's path, `vargpt_imageproc::decode_rgb8` (which runs the same
//!    check first) and `preprocess` with VARGPT's CLIP config.
//!
//! Properties: no panic; a decoded image is within the pixel limit and has the
//! size its header announced; neither the check nor decoding ever holds more
//! heap than the pixel limit allows for; preprocessing gives the model's input shape, all finite.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vargpt_fuzz::alloc_meter::{self, Meter};
use vargpt_imageproc::{check_image, decode_rgb8, preprocess, ImageLimits, PreprocessorConfig};

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
    // The worker's gate (`pipeline/preprocess.rs::check_image` calls it).
    let (checked, check_peak) = alloc_meter::measure(|| check_image(data, &LIMITS));
    assert!(
        check_peak <= DECODE_HEAP_BOUND,
        "checking the header held {check_peak} bytes (bound {DECODE_HEAP_BOUND})"
    );
    let header = checked.ok().map(|i| (i.width, i.height));
    if let Some((w, h)) = header {
        assert!(w > 0 && h > 0 && u64::from(w) * u64::from(h) <= LIMITS.max_pixels);
    }

    let (decoded, peak) = alloc_meter::measure(|| decode_rgb8(data, &LIMITS));
    assert!(
        peak <= DECODE_HEAP_BOUND,
        "decoding held {peak} bytes (bound {DECODE_HEAP_BOUND}), header {header:?}"
    );
    let Ok(img) = decoded else { return };
    let (w, h) = img.dimensions();
    // The engine decodes only what the worker's gate let through, at its size.
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
