#!/usr/bin/env python3
"""Generate the committed ground-truth fixtures for vargpt-imageproc's tests.

Requires (only to regenerate; the Rust tests never run Python):
    pip install pillow==10.4.0 numpy transformers==4.46.1

Run from anywhere:
    python3 crates/vargpt-imageproc/tests/gen/gen_fixtures.py

Writes into crates/vargpt-imageproc/tests/fixtures/:
  pil_resize_cases.json / .bin   uint8 outputs of PIL Image.resize on synthetic images
  hf_preprocess_cases.json / .bin float32 pixel_values of transformers' CLIPImageProcessor
  decode_cases.json / .bin       encoded JPEG / WebP / PNG files and PIL's decoded RGB

Synthetic inputs are produced by `pattern()` below; the Rust tests re-create them
with the same integer formulas (tests/common/mod.rs), so only outputs are stored.
"""
import io
import json
import os
import sys

import numpy as np
import PIL
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures")
M32 = 0xFFFFFFFF


def pattern(kind, w, h, seed):
    """uint8 array (h, w, 3). Must match `pattern` in tests/common/mod.rs."""
    y, x, c = np.meshgrid(
        np.arange(h, dtype=np.uint64),
        np.arange(w, dtype=np.uint64),
        np.arange(3, dtype=np.uint64),
        indexing="ij",
    )
    s = np.uint64(seed)
    if kind == "noise":
        u = ((x * np.uint64(0x9E3779B1)) & M32) ^ ((y * np.uint64(0x85EBCA77)) & M32)
        u ^= ((c + np.uint64(1)) * np.uint64(0xC2B2AE3D)) & M32
        u ^= (s * np.uint64(0x27D4EB2F)) & M32
        u ^= u >> np.uint64(15)
        u = (u * np.uint64(0x2C1B3C6D)) & M32
        u ^= u >> np.uint64(12)
        u = (u * np.uint64(0x297A2D39)) & M32
        u ^= u >> np.uint64(15)
        v = u >> np.uint64(24)
    elif kind == "blocks":
        v = ((x // np.uint64(5) + y // np.uint64(3) + c + s) % np.uint64(2)) * np.uint64(255)
    elif kind == "gradient":
        v = (x * np.uint64(7) + y * np.uint64(3) + c * np.uint64(50) + s) % np.uint64(256)
    else:
        raise ValueError(kind)
    return v.astype(np.uint8)


def shortest_edge_size(w, h, s):
    """transformers get_resize_output_image_size(default_to_square=False) -> (w, h)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = s, int(s * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


# (pattern, seed, in_w, in_h, target, filter); target = ("shortest", s) or ("exact", w, h)
RESIZE_CASES = [
    ("noise", 1, 97, 61, ("shortest", 56), 3),
    ("noise", 2, 61, 97, ("shortest", 56), 3),
    ("noise", 3, 30, 20, ("exact", 75, 50), 3),
    ("noise", 4, 17, 13, ("shortest", 50), 3),
    ("blocks", 5, 333, 101, ("shortest", 40), 3),
    ("noise", 6, 400, 300, ("shortest", 27), 3),
    ("noise", 7, 1, 50, ("exact", 1, 37), 3),
    ("noise", 8, 1, 50, ("shortest", 7), 3),
    ("noise", 9, 50, 1, ("exact", 20, 1), 3),
    ("noise", 10, 200, 2, ("shortest", 5), 3),
    ("gradient", 11, 2, 300, ("shortest", 1), 3),
    ("noise", 12, 20, 20, ("exact", 20, 20), 3),
    ("blocks", 13, 64, 48, ("exact", 50, 48), 3),
    ("blocks", 14, 64, 48, ("exact", 64, 31), 3),
    ("noise", 15, 64, 64, ("exact", 32, 32), 3),
    ("noise", 16, 23, 37, ("shortest", 36), 3),
    ("gradient", 17, 257, 190, ("shortest", 40), 3),
    ("blocks", 18, 77, 1000, ("shortest", 9), 3),
    ("noise", 19, 45, 33, ("exact", 31, 70), 2),
    ("noise", 20, 45, 33, ("exact", 20, 15), 4),
    ("noise", 21, 45, 33, ("exact", 70, 29), 1),
    ("noise", 22, 45, 33, ("exact", 26, 40), 5),
    ("blocks", 23, 45, 33, ("exact", 19, 61), 2),
]


def gen_resize():
    blob = bytearray()
    cases = []
    for kind, seed, w, h, target, filt in RESIZE_CASES:
        if target[0] == "shortest":
            ow, oh = shortest_edge_size(w, h, target[1])
        else:
            ow, oh = target[1], target[2]
        im = Image.fromarray(pattern(kind, w, h, seed), "RGB")
        out = np.asarray(im.resize((ow, oh), resample=filt), dtype=np.uint8)
        assert out.shape == (oh, ow, 3)
        case = {
            "pattern": kind, "seed": seed, "in_w": w, "in_h": h,
            "out_w": ow, "out_h": oh, "filter": filt,
            "offset": len(blob), "len": out.size,
        }
        if target[0] == "shortest":
            case["shortest_edge"] = target[1]
        cases.append(case)
        blob += out.tobytes()
    return cases, bytes(blob)


CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_cfg(**over):
    cfg = {
        "crop_size": {"height": 24, "width": 24},
        "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
        "do_rescale": True, "do_resize": True,
        "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "resample": 3, "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 24},
    }
    cfg.update(over)
    return cfg


# (name, pattern, seed, w, h, config, row band (start, end) of the output to keep or None)
HF_CASES = [
    ("basic", "noise", 31, 97, 61, clip_cfg(), None),
    ("pad_both", "blocks", 32, 40, 30,
     clip_cfg(size={"shortest_edge": 16}, crop_size={"height": 20, "width": 24}), None),
    ("pad_rows_crop_cols", "noise", 33, 100, 20,
     clip_cfg(size={"shortest_edge": 10}, crop_size=12), None),
    ("exact_size", "noise", 34, 50, 40,
     clip_cfg(size={"height": 18, "width": 30}, crop_size={"height": 16, "width": 16}), None),
    ("no_crop", "gradient", 35, 30, 20, clip_cfg(size={"shortest_edge": 12}, do_center_crop=False), None),
    ("no_resize", "noise", 36, 33, 25, clip_cfg(do_resize=False, crop_size=20), None),
    ("no_normalize", "noise", 37, 29, 31, clip_cfg(do_normalize=False, crop_size=14, size={"shortest_edge": 14}), None),
    ("no_rescale", "noise", 38, 29, 31, clip_cfg(do_rescale=False, crop_size=14, size={"shortest_edge": 14}), None),
    ("bilinear_scalar_mean", "blocks", 39, 61, 45,
     clip_cfg(resample=2, image_mean=0.5, image_std=[0.5, 0.5, 0.5], rescale_factor=0.0039, size=20, crop_size=18), None),
    ("clip336_band", "noise", 40, 640, 481,
     clip_cfg(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}), (160, 164)),
    ("clip336_upscale_band", "blocks", 41, 150, 97,
     clip_cfg(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}), (100, 102)),
]


def gen_hf():
    import transformers
    from transformers import CLIPImageProcessor

    assert transformers.__version__ == "4.46.1", transformers.__version__
    blob = bytearray()
    cases = []
    for name, kind, seed, w, h, cfg, band in HF_CASES:
        proc = CLIPImageProcessor(**cfg)
        im = Image.fromarray(pattern(kind, w, h, seed), "RGB")
        pv = proc(images=im, return_tensors="np")["pixel_values"]
        assert pv.dtype == np.float32 and pv.shape[0] == 1, (pv.dtype, pv.shape)
        pv = pv[0]
        full_shape = list(pv.shape)
        if band is not None:
            pv = pv[:, band[0]:band[1], :]
        pv = np.ascontiguousarray(pv, dtype="<f4")
        cases.append({
            "name": name, "pattern": kind, "seed": seed, "w": w, "h": h, "config": cfg,
            "shape": full_shape, "rows": list(band) if band else [0, full_shape[1]],
            "offset": len(blob), "len": pv.size,
        })
        blob += pv.tobytes()
    return cases, bytes(blob)


def gen_decode():
    blob = bytearray()
    cases = []

    def add(name, data, im):
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        cases.append({
            "name": name, "w": im.size[0], "h": im.size[1], "pil_mode": im.mode,
            "encoded_offset": len(blob), "encoded_len": len(data),
            "rgb_offset": len(blob) + len(data), "rgb_len": rgb.size,
        })
        blob.extend(data)
        blob.extend(rgb.tobytes())

    smooth = pattern("gradient", 48, 32, 5).astype(np.int32)
    smooth = np.clip(smooth // 2 + pattern("blocks", 48, 32, 0) // 4, 0, 255).astype(np.uint8)
    for name, fmt, kw in [
        ("jpeg_q90_420", "JPEG", {"quality": 90}),
        ("jpeg_q95_444", "JPEG", {"quality": 95, "subsampling": 0}),
        ("webp_lossy_q80", "WEBP", {"quality": 80}),
        ("webp_lossless", "WEBP", {"lossless": True}),
    ]:
        b = io.BytesIO()
        Image.fromarray(smooth, "RGB").save(b, format=fmt, **kw)
        data = b.getvalue()
        add(name, data, Image.open(io.BytesIO(data)))

    gray = Image.fromarray(pattern("noise", 21, 17, 7)[:, :, 0], "L")
    b = io.BytesIO(); gray.save(b, format="JPEG", quality=92); data = b.getvalue()
    add("jpeg_gray", data, Image.open(io.BytesIO(data)))

    # palette PNG with a transparent entry: PIL converts via the palette, alpha dropped
    pal = Image.fromarray(pattern("noise", 19, 11, 8)[:, :, 0] % 16, "L").convert("P")
    pal.putpalette([(i * 37 + k * 91) % 256 for i in range(16) for k in range(3)])
    pal.info["transparency"] = 3
    b = io.BytesIO(); pal.save(b, format="PNG", transparency=3); data = b.getvalue()
    add("png_palette_trns", data, Image.open(io.BytesIO(data)))
    return cases, bytes(blob)


def write(stem, meta, blob):
    with open(os.path.join(OUT, stem + ".bin"), "wb") as f:
        f.write(blob)
    with open(os.path.join(OUT, stem + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{stem}: {len(meta['cases'])} cases, {len(blob)} bytes")


def main():
    assert PIL.__version__ == "10.4.0", PIL.__version__
    os.makedirs(OUT, exist_ok=True)
    versions = {"pillow": PIL.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}
    cases, blob = gen_resize()
    write("pil_resize_cases", {"generator": "tests/gen/gen_fixtures.py", "versions": versions, "cases": cases}, blob)
    cases, blob = gen_hf()
    import transformers
    versions["transformers"] = transformers.__version__
    write("hf_preprocess_cases", {"generator": "tests/gen/gen_fixtures.py", "versions": versions, "cases": cases}, blob)
    cases, blob = gen_decode()
    write("decode_cases", {"generator": "tests/gen/gen_fixtures.py", "versions": versions, "cases": cases}, blob)


if __name__ == "__main__":
    main()
