//! The RIFF walk on hand-built files: only headers matter to it, so the
//! bitstreams here are headers followed by filler.

use super::*;

const LIMIT: u64 = 4096 * 4096;

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
    let body: Vec<u8> = chunks.concat();
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(4 + body.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&body);
    out
}

fn u24le(v: u32) -> [u8; 3] {
    [v as u8, (v >> 8) as u8, (v >> 16) as u8]
}

fn vp8x(flags: u8, w: u32, h: u32) -> Vec<u8> {
    let mut d = vec![flags, 0, 0, 0];
    d.extend_from_slice(&u24le(w - 1));
    d.extend_from_slice(&u24le(h - 1));
    chunk(b"VP8X", &d)
}

/// A VP8 key frame header (frame tag, start code, 14-bit sizes) plus filler.
fn vp8_data(w: u16, h: u16) -> Vec<u8> {
    let mut d = vec![0x50, 0x01, 0x00, 0x9d, 0x01, 0x2a];
    d.extend_from_slice(&w.to_le_bytes());
    d.extend_from_slice(&h.to_le_bytes());
    d.extend_from_slice(&[0xaa; 11]);
    d
}

fn vp8l_data(w: u32, h: u32) -> Vec<u8> {
    let bits = (w - 1) | (h - 1) << 14;
    let mut d = vec![0x2f];
    d.extend_from_slice(&bits.to_le_bytes());
    d.extend_from_slice(&[0x55; 7]);
    d
}

fn anmf(x: u32, y: u32, w: u32, h: u32, subchunks: &[Vec<u8>]) -> Vec<u8> {
    let mut d = Vec::new();
    for v in [x / 2, y / 2, w - 1, h - 1, 100] {
        d.extend_from_slice(&u24le(v));
    }
    d.push(0);
    d.extend_from_slice(&subchunks.concat());
    chunk(b"ANMF", &d)
}

fn anim() -> Vec<u8> {
    chunk(b"ANIM", &[0, 0, 0, 0, 0, 0])
}

fn is_invalid(r: Result<(), ImageError>) -> bool {
    matches!(r, Err(ImageError::Decode(_)))
}

#[test]
fn fuzzer_repro_is_refused_as_invalid() {
    // 4x4 canvas, lossy frame announcing 16132x16383.
    let bytes = include_bytes!("../../tests/fixtures/webp/frame-larger-than-canvas.webp");
    let err = check_webp(bytes, LIMIT).unwrap_err();
    assert!(matches!(err, ImageError::Decode(_)), "{err}");
    assert!(err.to_string().contains("16132x16383"), "{err}");
}

#[test]
fn simple_files_are_left_to_the_header_check() {
    assert!(check_webp(&riff(&[chunk(b"VP8 ", &vp8_data(16383, 16383))]), LIMIT).is_ok());
    assert!(check_webp(&riff(&[chunk(b"VP8L", &vp8l_data(9, 9))]), LIMIT).is_ok());
}

#[test]
fn still_extended_frames_must_match_the_canvas() {
    let ok = riff(&[vp8x(0, 30, 20), chunk(b"VP8 ", &vp8_data(30, 20))]);
    assert!(check_webp(&ok, LIMIT).is_ok());
    let ok = riff(&[vp8x(0x10, 30, 20), chunk(b"VP8L", &vp8l_data(30, 20))]);
    assert!(check_webp(&ok, LIMIT).is_ok());
    let with_alpha = riff(&[
        vp8x(0x10, 30, 20),
        chunk(b"ALPH", &[0; 601]),
        chunk(b"VP8 ", &vp8_data(30, 20)),
    ]);
    assert!(check_webp(&with_alpha, LIMIT).is_ok());

    for bad in [
        riff(&[vp8x(0, 30, 20), chunk(b"VP8 ", &vp8_data(31, 20))]),
        riff(&[vp8x(0, 30, 20), chunk(b"VP8 ", &vp8_data(30, 19))]),
        riff(&[vp8x(0, 1, 1), chunk(b"VP8L", &vp8l_data(16384, 16384))]),
        // A second bitstream, even one the decoder would not pick, is checked too.
        riff(&[
            vp8x(0, 30, 20),
            chunk(b"VP8 ", &vp8_data(30, 20)),
            chunk(b"VP8 ", &vp8_data(9000, 9000)),
        ]),
    ] {
        assert!(is_invalid(check_webp(&bad, LIMIT)));
    }
}

#[test]
fn canvas_over_the_limit_is_too_large() {
    let big = riff(&[vp8x(0, 5000, 4000), chunk(b"VP8 ", &vp8_data(5000, 4000))]);
    let err = check_webp(&big, LIMIT).unwrap_err();
    assert!(err.is_too_large(), "{err}");
    assert!(check_webp(&big, 20_000_000).is_ok());
}

#[test]
fn animation_frames_must_match_their_rectangle() {
    let frame = |x, y, w, h, sub: Vec<u8>| anmf(x, y, w, h, &[sub]);
    let ok = riff(&[
        vp8x(0x02, 40, 30),
        anim(),
        frame(0, 0, 40, 30, chunk(b"VP8 ", &vp8_data(40, 30))),
        frame(10, 4, 16, 8, chunk(b"VP8L", &vp8l_data(16, 8))),
        anmf(
            2,
            2,
            8,
            8,
            &[chunk(b"ALPH", &[0; 65]), chunk(b"VP8 ", &vp8_data(8, 8))],
        ),
    ]);
    assert!(check_webp(&ok, LIMIT).is_ok());

    let canvas = |f: Vec<u8>| riff(&[vp8x(0x02, 40, 30), anim(), f]);
    for bad in [
        // Bitstream larger than its rectangle, first or later frame.
        canvas(frame(0, 0, 40, 30, chunk(b"VP8 ", &vp8_data(16383, 16383)))),
        riff(&[
            vp8x(0x02, 40, 30),
            anim(),
            frame(0, 0, 40, 30, chunk(b"VP8 ", &vp8_data(40, 30))),
            frame(0, 0, 8, 8, chunk(b"VP8L", &vp8l_data(9, 8))),
        ]),
        // Rectangle outside the canvas.
        canvas(frame(34, 0, 8, 8, chunk(b"VP8 ", &vp8_data(8, 8)))),
        canvas(frame(0, 0, 40, 31, chunk(b"VP8 ", &vp8_data(40, 31)))),
        // After ALPH the decoder reads the next chunk as VP8 whatever its name.
        canvas(anmf(
            0,
            0,
            8,
            8,
            &[
                chunk(b"ALPH", &[0; 65]),
                chunk(b"JUNK", &vp8_data(16000, 16000)),
            ],
        )),
        // Truncated frame header.
        canvas(chunk(b"ANMF", &[0; 15])),
    ] {
        assert!(is_invalid(check_webp(&bad, LIMIT)));
    }
}

#[test]
fn chunks_past_the_riff_size_are_still_checked() {
    let mut bytes = riff(&[vp8x(0, 4, 4), chunk(b"VP8 ", &vp8_data(4, 4))]);
    bytes.extend_from_slice(&chunk(b"VP8 ", &vp8_data(16383, 16383)));
    assert!(is_invalid(check_webp(&bytes, LIMIT)));
}

#[test]
fn malformed_headers_are_invalid() {
    let mut not_key = vp8_data(4, 4);
    not_key[0] |= 1;
    let mut bad_start = vp8_data(4, 4);
    bad_start[4] = 0;
    let mut bad_signature = vp8l_data(4, 4);
    bad_signature[0] = 0x2e;
    for bad in [
        b"RIFF\0\0\0\0WEBQ".to_vec(),
        b"RIFF\0\0\0\0WEBP".to_vec(),
        riff(&[chunk(b"ICCP", &[0; 4])]),
        riff(&[chunk(b"VP8X", &[0; 9])]),
        riff(&[vp8x(0, 4, 4), chunk(b"VP8 ", &vp8_data(4, 4)[..9])]),
        riff(&[vp8x(0, 4, 4), chunk(b"VP8L", &[0x2f, 3, 0xc0])]),
        riff(&[vp8x(0, 4, 4), chunk(b"VP8 ", &not_key)]),
        riff(&[vp8x(0, 4, 4), chunk(b"VP8 ", &bad_start)]),
        riff(&[vp8x(0, 4, 4), chunk(b"VP8L", &bad_signature)]),
    ] {
        assert!(is_invalid(check_webp(&bad, LIMIT)), "{bad:?}");
    }
}

#[test]
fn every_prefix_and_absurd_sizes_are_handled() {
    let file = riff(&[
        vp8x(0x12, 40, 30),
        anim(),
        anmf(
            2,
            2,
            8,
            8,
            &[chunk(b"ALPH", &[0; 65]), chunk(b"VP8 ", &vp8_data(8, 8))],
        ),
    ]);
    assert!(check_webp(&file, LIMIT).is_ok());
    // Cut anywhere: refused or accepted, never a panic; cut inside a frame
    // header, refused.
    for n in 0..file.len() {
        let r = check_webp(&file[..n], LIMIT);
        if n < 30 {
            assert!(r.is_err(), "prefix {n}");
        }
    }
    // A chunk claiming 4 GiB ends the walk.
    let mut huge = riff(&[vp8x(0, 4, 4)]);
    huge.extend_from_slice(b"EXIF\xff\xff\xff\xff");
    huge.extend_from_slice(&chunk(b"VP8 ", &vp8_data(9000, 9000)));
    assert!(check_webp(&huge, LIMIT).is_ok());
    let mut odd = Chunks::new(b"ABCD\x03\0\0\0xyz\0EFGH\x01\0\0\0q");
    assert_eq!(
        odd.next().map(|c| (c.fourcc, c.data)),
        Some((*b"ABCD", &b"xyz"[..]))
    );
    assert_eq!(
        odd.next().map(|c| (c.fourcc, c.data)),
        Some((*b"EFGH", &b"q"[..]))
    );
    assert!(odd.next().is_none());
}
