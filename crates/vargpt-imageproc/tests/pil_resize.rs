//! `pil_resize` against real Pillow 10.4.0 `Image.resize` outputs (committed
//! fixture made by tests/gen/gen_fixtures.py): upscaling, non-integer
//! downscaling, 1-pixel-wide/tall images, extreme aspect ratios, single-pass
//! resizes, identity, and all five convolution filters. Must match exactly.

mod common;

use vargpt_imageproc::{
    pil_resize, pil_resize_region, resize_shortest_edge_pil_bicubic, shortest_edge_output_size,
    PilFilter,
};

#[test]
fn pil_resize_is_bit_exact_with_pillow() {
    let (meta, bin) = common::load_fixture("pil_resize_cases");
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for case in cases {
        let kind = case["pattern"].as_str().unwrap();
        let seed = common::u(case, "seed") as u32;
        let (in_w, in_h) = (
            common::u(case, "in_w") as u32,
            common::u(case, "in_h") as u32,
        );
        let (out_w, out_h) = (
            common::u(case, "out_w") as u32,
            common::u(case, "out_h") as u32,
        );
        let filter = PilFilter::from_pil_code(common::u(case, "filter") as u32).unwrap();
        let off = common::u(case, "offset");
        let expected = &bin[off..off + common::u(case, "len")];

        let img = common::pattern(kind, in_w, in_h, seed);
        let got = if let Some(s) = case.get("shortest_edge").and_then(|v| v.as_u64()) {
            assert_eq!(
                shortest_edge_output_size(in_w, in_h, s as u32),
                (u64::from(out_w), u64::from(out_h)),
                "output size of {case}"
            );
            if filter == PilFilter::Bicubic {
                resize_shortest_edge_pil_bicubic(&img, s as u32)
            } else {
                pil_resize(&img, out_w, out_h, filter)
            }
        } else {
            pil_resize(&img, out_w, out_h, filter)
        };
        assert_eq!(got.dimensions(), (out_w, out_h));
        let diff = got
            .as_raw()
            .iter()
            .zip(expected)
            .filter(|(a, b)| a != b)
            .count();
        let max = got
            .as_raw()
            .iter()
            .zip(expected)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        println!(
            "{kind:8} {in_w:>4}x{in_h:<4} -> {out_w:>4}x{out_h:<4} {filter:?}: {diff} of {} bytes differ (max {max})",
            expected.len()
        );
        if diff != 0 {
            failures.push(format!(
                "{in_w}x{in_h}->{out_w}x{out_h} {filter:?}: {diff} bytes differ"
            ));
        }

        // Any window of the resize equals the same window of the full resize.
        let (l, t) = (out_w / 3, out_h / 4);
        let win = pil_resize_region(
            &img,
            out_w,
            out_h,
            l,
            t,
            out_w / 2 + 1,
            out_h / 2 + 1,
            filter,
        );
        for (x, y, px) in win.enumerate_pixels() {
            assert_eq!(px, got.get_pixel(x + l, y + t));
        }
    }
    assert!(failures.is_empty(), "not bit-exact: {failures:#?}");
}
