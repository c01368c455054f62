//! A bounded walk over a WebP file's RIFF chunks, run before any decoding.
//!
//! image-webp 0.2 sizes a frame's buffers from that frame's own VP8 bitstream
//! header and only compares the result with the canvas *after* decoding it
//! (and the `image` crate applies no `max_alloc` to WebP). An extended (VP8X)
//! file with a 4x4 canvas, which passes any pixel limit, can therefore hold a
//! lossy frame announcing 16383x16383 and make the decoder allocate ~400 MB.
//! This walk reads every bitstream header and refuses a frame whose size is
//! not exactly its canvas (still images) or its ANMF rectangle (animations).
//!
//! Only the first frame of an animation is ever decoded (image-webp's
//! `read_image`), and every frame rectangle lies within the canvas, so the
//! canvas pixel limit bounds every allocation.

use crate::ImageError;

const CHUNK_HEADER: usize = 8;
/// x, y, width - 1, height - 1, duration (3 bytes each) and a flags byte.
const ANMF_HEADER: usize = 16;

/// Checks a RIFF WebP file before decoding: for an extended file, the canvas
/// against `max_pixels` and every VP8 / VP8L frame against the canvas or its
/// animation rectangle. A simple (VP8 / VP8L only) file is left to the
/// caller's header check: its bitstream header *is* its image header.
pub(crate) fn check_webp(bytes: &[u8], max_pixels: u64) -> Result<(), ImageError> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WEBP" {
        return Err(invalid("not a RIFF WebP file"));
    }
    let mut chunks = Chunks::new(&bytes[12..]);
    let Some(first) = chunks.next() else {
        return Err(invalid("WebP file has no image chunk"));
    };
    match &first.fourcc {
        b"VP8 " | b"VP8L" => return Ok(()),
        b"VP8X" => {}
        other => {
            return Err(invalid(format!(
                "WebP file starts with a {} chunk",
                fourcc_str(other)
            )))
        }
    }
    if first.data.len() < 10 {
        return Err(invalid("truncated WebP VP8X header"));
    }
    // The canvas size, stored minus one in 24 bits each.
    let canvas = (u24(&first.data[4..7]) + 1, u24(&first.data[7..10]) + 1);
    let pixels = u64::from(canvas.0) * u64::from(canvas.1);
    if pixels > max_pixels {
        return Err(ImageError::TooLarge {
            what: "WebP canvas (pixels)",
            actual: Some(pixels),
            limit: max_pixels,
        });
    }
    // Every chunk to the end of the data, not just to the RIFF size: the
    // decoder's own walk may look a little past it.
    for chunk in chunks {
        match &chunk.fourcc {
            b"VP8 " => expect_size(vp8_size(chunk.data)?, canvas, "canvas")?,
            b"VP8L" => expect_size(vp8l_size(chunk.data)?, canvas, "canvas")?,
            b"ANMF" => check_animation_frame(chunk.data, canvas)?,
            _ => {}
        }
    }
    Ok(())
}

/// One ANMF chunk: its rectangle within the canvas, and its bitstream(s) the
/// size of that rectangle.
fn check_animation_frame(data: &[u8], canvas: (u32, u32)) -> Result<(), ImageError> {
    if data.len() < ANMF_HEADER {
        return Err(invalid("truncated WebP animation frame header"));
    }
    let (x, y) = (u24(&data[0..3]) * 2, u24(&data[3..6]) * 2);
    let size = (u24(&data[6..9]) + 1, u24(&data[9..12]) + 1);
    if x + size.0 > canvas.0 || y + size.1 > canvas.1 {
        return Err(invalid(format!(
            "WebP animation frame {}x{} at ({x}, {y}) lies outside the {}x{} canvas",
            size.0, size.1, canvas.0, canvas.1
        )));
    }
    let mut after_alpha = false;
    for sub in Chunks::new(&data[ANMF_HEADER..]) {
        let announced = match &sub.fourcc {
            // image-webp decodes whatever chunk follows an ALPH as VP8.
            _ if after_alpha => Some(vp8_size(sub.data)?),
            b"VP8 " => Some(vp8_size(sub.data)?),
            b"VP8L" => Some(vp8l_size(sub.data)?),
            _ => None,
        };
        if let Some(announced) = announced {
            expect_size(announced, size, "animation frame")?;
        }
        after_alpha = &sub.fourcc == b"ALPH";
    }
    Ok(())
}

fn expect_size(announced: (u32, u32), expected: (u32, u32), what: &str) -> Result<(), ImageError> {
    if announced == expected {
        return Ok(());
    }
    Err(invalid(format!(
        "WebP bitstream is {}x{} but its {what} is {}x{}",
        announced.0, announced.1, expected.0, expected.1
    )))
}

/// Width and height of a VP8 (lossy) key frame, read as image-webp reads them.
fn vp8_size(data: &[u8]) -> Result<(u32, u32), ImageError> {
    if data.len() < 10 {
        return Err(invalid("truncated WebP VP8 frame header"));
    }
    // Bit 0 of the 3-byte frame tag is 0 for a key frame.
    if data[0] & 1 != 0 {
        return Err(invalid("WebP VP8 frame is not a key frame"));
    }
    if data[3..6] != [0x9d, 0x01, 0x2a] {
        return Err(invalid("bad WebP VP8 start code"));
    }
    // 14 bits of size, 2 bits of upscaling hint (ignored by decoders).
    let w = u16::from_le_bytes([data[6], data[7]]) & 0x3fff;
    let h = u16::from_le_bytes([data[8], data[9]]) & 0x3fff;
    Ok((u32::from(w), u32::from(h)))
}

/// Width and height of a VP8L (lossless) bitstream.
fn vp8l_size(data: &[u8]) -> Result<(u32, u32), ImageError> {
    if data.len() < 5 {
        return Err(invalid("truncated WebP VP8L header"));
    }
    if data[0] != 0x2f {
        return Err(invalid("bad WebP VP8L signature"));
    }
    let bits = u32::from_le_bytes([data[1], data[2], data[3], data[4]]);
    Ok(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
}

fn u24(b: &[u8]) -> u32 {
    u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16
}

fn fourcc_str(f: &[u8; 4]) -> String {
    f.iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                char::from(c)
            } else {
                '?'
            }
        })
        .collect()
}

fn invalid(msg: impl Into<String>) -> ImageError {
    ImageError::Decode(msg.into())
}

/// A chunk's four-character code and payload (cut short at the end of the data).
struct Chunk<'a> {
    fourcc: [u8; 4],
    data: &'a [u8],
}

/// RIFF chunks one after another (payloads padded to even sizes), ending at
/// the first chunk that reaches the end of the data. Each step consumes at
/// least 8 bytes, so a walk is linear in the input.
struct Chunks<'a> {
    rest: &'a [u8],
}

impl<'a> Chunks<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Self { rest }
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Chunk<'a>;

    fn next(&mut self) -> Option<Chunk<'a>> {
        if self.rest.len() < CHUNK_HEADER {
            return None;
        }
        let (head, body) = self.rest.split_at(CHUNK_HEADER);
        let fourcc = [head[0], head[1], head[2], head[3]];
        let size = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]));
        let padded = size + (size & 1);
        let data_len = size.min(body.len() as u64) as usize;
        let data = &body[..data_len];
        self.rest = match usize::try_from(padded) {
            Ok(p) if p <= body.len() => &body[p..],
            _ => &[],
        };
        Some(Chunk { fourcc, data })
    }
}

#[cfg(test)]
mod tests;
