#!/usr/bin/env python3
"""Make a reference fixture of other shapes with the authors' own PyTorch VARGPT.

    PY=/root/.cache/vargpt-rs/ref/venv/bin/python      # made by bench/setup-reference.sh
    $PY scripts/reference/make_fixture.py --vargpt-src /root/.cache/vargpt-rs/ref/VARGPT \
        --out tests/fixtures/reference-shapes
    $PY scripts/reference/make_fixture.py --vargpt-src ... --replay tests/fixtures/reference-tiny

The first form writes a fixture: config files (tokenizer files copied from
reference-tiny), `weights.json` + `buffers.safetensors` (the recipe of the random
checkpoint, see below), the golden data of the authors' model on it
(`golden.json`, `golden.safetensors`, two PNGs) and README.md. The second form
runs the same golden-data code on an existing model directory and compares the
result with the golden data stored there (a check of this script's conventions
against the fixture that was made by other means).

Weights. A checkpoint at these sizes is ~80 MB, mostly the VQVAE (its channel
multipliers are hard-coded by the authors and GroupNorm needs 32 groups), so the
fixture holds a recipe instead, from which `model.safetensors` (exact published
layout, float32) is rebuilt bit for bit by this script and by the Rust tests:
every parameter is

    v[i] = f32(offset + 2^scale_log2 * (u[i] - 32768) / 32768)      (exact in f32)
    u[i] = splitmix64(fnv1a64(name) + (i + 1) * 0x9E3779B97F4A7C15) >> 48

with `name`, `shape`, `offset` (0 or 1) and `scale_log2` listed in weights.json;
the buffers the model registers (lvl_1L, attn_bias_for_masking, zero_k_bias,
ema_vocab_hit_SV) are copied from the authors' model into buffers.safetensors.

The authors' code is imported from --vargpt-src, never copied, and run as
bench/reference_bench.py runs it (float32, CPU, the same build_vae_vargpt_v1
patch that reads `var_config`). What the golden data needs beyond that is done
by wrapping, not editing: the VAR sampler is replaced by argmax (top-k 1) that
records the CFG-mixed logits, torch.randn is wrapped to record the CFG noise,
fhat_to_img is wrapped to record f_hat and the image, and for cfg 0 the forward
is re-compiled from its own source with the constant `cfg = 1.5` set to 0.
"""
import argparse
import inspect
import json
import math
import os
import shutil
import sys
import tempfile
import textwrap

import numpy as np

# ---- the shapes of the `reference-shapes` fixture -------------------------------------
# Chosen to differ from reference-tiny wherever the published architecture allows:
# GQA (6 query / 2 key-value heads), an odd CLIP head count and another patch size and
# count (60 px / patch 12 -> 25 tokens), an odd VAR head count (depth 3 -> 3 heads, width
# 192), patch_nums ending at 5 (80 px images), another codebook / Cvae / ch (64 -> group
# size 2 in the GroupNorms) and 3 Phi convs for 4 stages (the non-4 tick formula).
SHAPES = {
    "vision": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=3,
                   image_size=60, patch_size=12, projection_dim=48),
    "text": dict(hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=6,
                 num_key_value_heads=2, head_dim=16),
    "var": dict(depth=3, patch_nums=[1, 2, 3, 5], vocab_size=48, z_channels=4, ch=64, share_quant_resi=3),
}
CASES = {
    "caption": ("Describe the image.", True),
    "vqa": ("What is the color of the car?", True),
    "text": ("Please describe a cat on a sofa.", False),
}
GEN_PROMPT = "Please design a drawing of a butterfly on a flower."
GREEDY_STEPS = 12
COPIED = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
          "test_image.png"]

# ---- the weight recipe ------------------------------------------------------------------
M64 = (1 << 64) - 1


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def recipe_values(name, n, scale_log2, offset):
    """The parameter values of the recipe (see the module docstring)."""
    with np.errstate(over="ignore"):
        x = np.uint64(fnv1a64(name)) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(48)).astype(np.int64) - 32768
    v = float(offset) + math.ldexp(1.0, scale_log2) * (u.astype(np.float64) / 32768.0)
    out = v.astype(np.float32)
    assert np.array_equal(out.astype(np.float64), v), f"{name}: recipe value not exact in f32"
    return out


def role(name, shape):
    """(offset, target std) for a parameter, mirroring reference-tiny's statistics."""
    leaf = name.rsplit(".", 1)[-1]
    is_norm = any(k in name for k in ("norm", "layrnorm", "ln_q", "layer_norm"))
    if len(shape) == 1 or leaf in ("q_bias", "v_bias"):
        if is_norm and leaf == "weight":
            return 1, 0.1
        return 0, 0.05
    if "scale_mul_1H11" in name:
        return 0, 0.4
    if any(k in name for k in ("embed_tokens", "class_emb", "position_embedding", "pos_start", "pos_1LC",
                               "lvl_embed", "quantize.embedding", "word_embed.weight", "patch_embedding")):
        return 0, 0.5
    if name == "vargpt_gen.head.weight":
        return 0, 0.35
    fan_in = int(np.prod(shape[1:]))
    return 0, 1.0 / math.sqrt(fan_in)


def scale_log2_for(std):
    # uniform on [-s, s) has std s / sqrt(3); s is rounded to a power of two
    return int(round(math.log2(std * math.sqrt(3.0))))


# ---- the authors' code, driven as reference_bench.py drives it --------------------------
def import_reference(src, model_dir):
    sys.path.insert(0, src)
    import torch
    import vargpt_llava.modeling_vargpt_llava as M
    from vargpt_llava.var_model import models as var_models

    cfg_json = json.load(open(os.path.join(model_dir, "config.json")))
    var = cfg_json.get("var_config") or dict(depth=30, patch_nums=[1, 2, 3, 4, 5, 6, 8, 10, 13, 16],
                                              vocab_size=4096, z_channels=32, ch=160, share_quant_resi=4)
    orig = getattr(var_models.build_vae_vargpt_v1, "_orig", var_models.build_vae_vargpt_v1)

    def build(device, num_classes, depth=30, **kw):
        return orig(device, patch_nums=tuple(var["patch_nums"]), V=var["vocab_size"], Cvae=var["z_channels"],
                    ch=var["ch"], share_quant_resi=var["share_quant_resi"], num_classes=num_classes,
                    depth=var["depth"])

    build._orig = orig
    M.build_vae_vargpt_v1 = build
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return torch, M, var


def write_checkpoint(src, model_dir, fixture_dir):
    """Build the recipe (weights.json, buffers.safetensors) and model.safetensors from it."""
    torch, M, _ = import_reference(src, model_dir)
    from safetensors.torch import save_file

    cfg = M.VARGPTLlavaConfig.from_pretrained(model_dir)
    model = M.VARGPTLlavaForConditionalGeneration(cfg)
    sd = model.state_dict()
    buffer_names = {n for n, _ in model.named_buffers()}
    entries, buffers, tensors = [], {}, {}
    for name, t in sd.items():
        shape = list(t.shape)
        if name in buffer_names:
            b = t.detach().clone().contiguous()
            buffers[name] = b
            tensors[name] = b
            entries.append({"name": name, "shape": shape, "buffer": True})
            continue
        offset, std = role(name, shape)
        e = scale_log2_for(std)
        v = recipe_values(name, int(np.prod(shape)) if shape else 1, e, offset)
        tensors[name] = torch.from_numpy(v.reshape(shape))
        entries.append({"name": name, "shape": shape, "offset": offset, "scale_log2": e})
    recipe = {
        "what": "recipe of model.safetensors (float32 params, buffers from buffers.safetensors); "
                "see scripts/reference/make_fixture.py",
        "value": "f32(offset + 2^scale_log2 * (u - 32768) / 32768), "
                 "u = splitmix64(fnv1a64(name) + (i + 1) * 0x9E3779B97F4A7C15) >> 48",
        "tensors": entries,
    }
    with open(os.path.join(fixture_dir, "weights.json"), "w") as f:  # one tensor a line
        head = {k: v for k, v in recipe.items() if k != "tensors"}
        f.write(json.dumps(head, indent=1)[:-2] + ',\n "tensors": [\n  ')
        f.write(",\n  ".join(json.dumps(e) for e in entries) + "\n ]\n}\n")
    save_file(buffers, os.path.join(fixture_dir, "buffers.safetensors"))
    save_file(tensors, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    print(f"[make_fixture] {len(entries)} tensors ({len(buffers)} buffers), "
          f"{sum(int(np.prod(e['shape'])) for e in entries):,} elements", file=sys.stderr)


def cfg0_forward(M):
    """The authors' forward with its hard-coded `cfg = 1.5` set to 0 (compiled from its own source)."""
    cls = M.VARGPTLlavaForConditionalGeneration
    src = textwrap.dedent(inspect.getsource(cls.forward.__wrapped__ if hasattr(cls.forward, "__wrapped__")
                                            else cls.forward))
    src = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith("@"))
    assert src.count("cfg = 1.5") == 1, "the authors' forward changed: no single `cfg = 1.5`"
    ns = {}
    exec(compile(src.replace("cfg = 1.5", "cfg = 0.0"), inspect.getsourcefile(cls), "exec"), vars(M), ns)
    return ns["forward"]


def golden(src, model_dir, image_path, seed):
    """Run the authors' model on model_dir; return (json cases, tensors, png bytes)."""
    torch, M, var = import_reference(src, model_dir)
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessor, DynamicCache

    model = M.VARGPTLlavaForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    improc = CLIPImageProcessor.from_pretrained(model_dir)
    c = model.config
    n_img = c.image_seq_length if getattr(c, "image_seq_length", None) else \
        (c.vision_config.image_size // c.vision_config.patch_size) ** 2
    eos = tok.eos_token_id

    def prompt_for(text, with_image):
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
        return tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                       tokenize=False)

    def ids_for(prompt):
        return tok(prompt.replace("<image>", "<image>" * n_img), return_tensors="pt")["input_ids"]

    out, cases, pngs = {}, {}, {}
    pv = improc(Image.open(image_path), return_tensors="pt")["pixel_values"]
    out["pixel_values"] = pv
    with torch.no_grad():
        out["image_features"] = model.get_image_features(pv, c.vision_feature_layer,
                                                         c.vision_feature_select_strategy)[0]
        margins = []
        for case, (text, with_image) in CASES.items():
            prompt = prompt_for(text, with_image)
            ids = ids_for(prompt)
            o = model(input_ids=ids, pixel_values=pv if with_image else None, past_key_values=DynamicCache(),
                      use_cache=True, return_dict=True)
            out[f"{case}_prefill_logits"] = o.logits[0, -1].clone()
            new = []
            for _ in range(GREEDY_STEPS):
                lg = o.logits[0, -1]
                top2 = torch.topk(lg, 2).values
                margins.append(float(top2[0] - top2[1]) / float(lg.abs().max().clamp(min=1)))
                t = int(lg.argmax())
                new.append(t)
                if t == eos:
                    break
                o = model(input_ids=torch.tensor([[t]]), past_key_values=o.past_key_values, use_cache=True,
                          return_dict=True)
            cases[case] = {"user_text": text, "image": os.path.basename(image_path) if with_image else None,
                           "prompt": prompt, "input_ids": ids[0].tolist(), "greedy_new_ids": new,
                           "greedy_text": tok.decode(new, skip_special_tokens=True)}

    # ---- text to image: argmax codes, recorded logits / noise / f_hat / image ----------
    start = c.special_tokens["image_gen_start_token_id"]
    gen_prompt = prompt_for(GEN_PROMPT, False)
    gen_ids = torch.cat([ids_for(gen_prompt), torch.tensor([[start]])], dim=1)
    vae = model.vargpt_gen.vae_proxy[0]
    orig_randn, orig_sampler, orig_f2i = torch.randn, M.sample_with_top_k_top_p_, vae.fhat_to_img

    def run_gen(forward):
        rec = {"logits": [], "noise": [], "codes": []}

        def randn(*a, **k):
            t = orig_randn(*a, **k)
            rec["noise"].append(t[0].clone())
            return t

        def argmax_sampler(logits_BlV, rng=None, top_k=0, top_p=0.0, num_samples=1):
            rec["logits"].append(logits_BlV[0].clone())
            idx = logits_BlV.argmax(-1, keepdim=True)
            srt = logits_BlV[0].sort(-1, descending=True).values
            rec.setdefault("margins", []).append(float((srt[:, 0] - srt[:, 1]).min()))
            rec["codes"].append(idx[0, :, 0].clone())
            return idx

        def f2i(f_hat):
            rec["f_hat"] = f_hat[0].clone()
            img = orig_f2i(f_hat)
            rec["image"] = img[0].clone()
            return img

        png = os.path.join(tempfile.mkdtemp(), "gen.png")
        model._IMAGE_GEN_PATH = png
        M.sample_with_top_k_top_p_, vae.fhat_to_img = argmax_sampler, f2i
        torch.manual_seed(seed)
        try:
            with torch.no_grad():
                o = model(input_ids=gen_ids, past_key_values=DynamicCache(), use_cache=True, return_dict=True)
                torch.randn = randn
                forward(model, input_ids=gen_ids[:, -1:], past_key_values=o.past_key_values, use_cache=True,
                        return_dict=True, inference_image_gen=True)
        finally:
            torch.randn, M.sample_with_top_k_top_p_, vae.fhat_to_img = orig_randn, orig_sampler, orig_f2i
        rec["cache_len"] = o.past_key_values.get_seq_length()
        rec["png"] = open(png, "rb").read()
        return rec

    g15 = run_gen(M.VARGPTLlavaForConditionalGeneration.forward)
    g0 = run_gen(cfg0_forward(M))
    for k, (lg, nz) in enumerate(zip(g15["logits"], g15["noise"])):
        out[f"gen_stage{k}_logits"] = lg
        out[f"gen_stage{k}_noise"] = nz
    out["gen_codes"] = torch.cat(g15["codes"]).long()
    out["gen_f_hat"] = g15["f_hat"]
    out["gen_image"] = g15["image"]
    out["gen_cfg0_codes"] = torch.cat(g0["codes"]).long()
    out["gen_cfg0_image"] = g0["image"]
    pngs["reference_image_cfg1.5.png"] = g15["png"]
    pngs["reference_image_cfg0.png"] = g0["png"]
    cases["generate"] = {
        "prompt": gen_prompt, "input_ids": gen_ids[0].tolist(), "cfg": 1.5,
        "sampling": "argmax at every stage (top_k=1)",
        "cfg0": "gen_cfg0_codes / gen_cfg0_image: the same prompt with cfg = 0 (no noise involved)",
        "noise": "gen_stage{i}_noise is the Gaussian tensor the reference drew at stage i",
        "stages": len(var["patch_nums"]), "llm_cache_len_after": g15["cache_len"],
    }

    # ---- VQVAE alone: random codes for every scale -> image ------------------------------
    gen = torch.Generator().manual_seed(seed + 1)
    codes = [torch.randint(var["vocab_size"], (1, pn * pn), generator=gen) for pn in var["patch_nums"]]
    with torch.no_grad():
        out["vq_image"] = vae.idxBl_to_img(codes, same_shape=True, last_one=True)[0].clone()
    out["vq_codes"] = torch.cat(codes, dim=1)[0]
    margins_info = {"greedy_top2_rel_min": min(margins), "gen_cfg15_top2_min": min(g15["margins"]),
                    "gen_cfg0_top2_min": min(g0["margins"])}
    return cases, {k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
                   for k, v in out.items()}, pngs, margins_info


# ---- fixture files --------------------------------------------------------------------------
def write_configs(base, fixture_dir):
    cfg = json.load(open(os.path.join(base, "config.json")))
    v, t = SHAPES["vision"], SHAPES["text"]
    cfg["vision_config"].update(v)
    cfg["text_config"].update(t)
    cfg["hidden_size"] = t["hidden_size"]
    cfg["image_seq_length"] = (v["image_size"] // v["patch_size"]) ** 2
    cfg["var_config"] = dict(SHAPES["var"])
    json.dump(cfg, open(os.path.join(fixture_dir, "config.json"), "w"), indent=2, sort_keys=True)
    pre = json.load(open(os.path.join(base, "preprocessor_config.json")))
    pre["crop_size"] = {"height": v["image_size"], "width": v["image_size"]}
    pre["size"] = {"shortest_edge": v["image_size"]}
    json.dump(pre, open(os.path.join(fixture_dir, "preprocessor_config.json"), "w"), indent=2)
    for f in COPIED:
        shutil.copy(os.path.join(base, f), os.path.join(fixture_dir, f))


def special_ids(cfg):
    st = cfg["special_tokens"]
    return {"image": cfg["image_token_index"], "pad": cfg["pad_token_id"], "start": st["image_gen_start_token_id"],
            "end": st["image_gen_end_token_id"], "gen_pad": st["image_gen_pad_token_id"]}


def save_golden(fixture_dir, cases, tensors, pngs, meta):
    from safetensors.torch import save_file
    doc = dict(meta)
    doc["cases"] = cases
    json.dump(doc, open(os.path.join(fixture_dir, "golden.json"), "w"), indent=1)
    save_file(tensors, os.path.join(fixture_dir, "golden.safetensors"))
    for name, data in pngs.items():
        open(os.path.join(fixture_dir, name), "wb").write(data)


def replay(src, model_dir, seed):
    """Recompute an existing fixture's golden data and report the differences."""
    from safetensors.numpy import load_file
    cases, tensors, _, margins = golden(src, model_dir, os.path.join(model_dir, "test_image.png"), seed)
    want_j = json.load(open(os.path.join(model_dir, "golden.json")))["cases"]
    want_t = load_file(os.path.join(model_dir, "golden.safetensors"))
    bad = 0
    for case, c in cases.items():
        for k, v in c.items():
            if want_j[case].get(k) != v:
                bad += 1
                print(f"[replay] {case}.{k}: ours {v!r} != stored {want_j[case].get(k)!r}")
    for k, v in tensors.items():
        w = want_t[k]
        a = v.numpy()
        if a.shape != w.shape:
            bad += 1
            print(f"[replay] {k}: shape {a.shape} != {w.shape}")
        elif a.dtype.kind == "i":
            if not np.array_equal(a, w):
                bad += 1
                print(f"[replay] {k}: {a.tolist()} != {w.tolist()}")
        else:
            d = float(np.abs(a - w).max())
            print(f"[replay] {k}: max|diff| {d:.3e}")
            bad += d > 1e-5 * max(1.0, float(np.abs(w).max()))
    print(f"[replay] margins {margins}; {bad} differences")
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vargpt-src", required=True, help="checkout of VARGPT-family/VARGPT (commit 453d3cf)")
    ap.add_argument("--out", help="fixture directory to write")
    ap.add_argument("--base", default=os.path.join(os.path.dirname(__file__), "../../tests/fixtures/reference-tiny"),
                    help="fixture whose tokenizer files, config and test image are reused")
    ap.add_argument("--model-out", help="also keep the rebuilt model directory here")
    ap.add_argument("--replay", help="recompute this fixture's golden data and compare")
    ap.add_argument("--seed", type=int, default=0, help="torch seed of the CFG noise and the VQ codes")
    args = ap.parse_args()
    src = os.path.abspath(args.vargpt_src)
    if args.replay:
        sys.exit(1 if replay(src, os.path.abspath(args.replay), args.seed) else 0)
    if not args.out:
        ap.error("--out or --replay is required")
    fixture = os.path.abspath(args.out)
    os.makedirs(fixture, exist_ok=True)
    model_dir = os.path.abspath(args.model_out) if args.model_out else tempfile.mkdtemp(prefix="vargpt-shapes-")
    os.makedirs(model_dir, exist_ok=True)
    write_configs(os.path.abspath(args.base), fixture)
    for f in os.listdir(fixture):
        if f.endswith(".json") and f not in ("golden.json", "weights.json") or f in COPIED:
            shutil.copy(os.path.join(fixture, f), os.path.join(model_dir, f))
    write_checkpoint(src, model_dir, fixture)
    cases, tensors, pngs, margins = golden(src, model_dir, os.path.join(fixture, "test_image.png"), args.seed)
    import torch
    import transformers
    commit = None
    try:
        commit = open(os.path.join(src, ".commit")).read().strip()
    except OSError:
        pass
    meta = {"chat_template": "tokenizer_config.json", "variant": "shapes", "seed": args.seed,
            "special_ids": special_ids(json.load(open(os.path.join(fixture, "config.json")))),
            "var_config": SHAPES["var"], "made_by": "scripts/reference/make_fixture.py",
            "vargpt_commit": commit, "torch": torch.__version__, "transformers": transformers.__version__,
            "argmax_margins": margins}
    save_golden(fixture, cases, tensors, pngs, meta)
    print(f"[make_fixture] wrote {fixture} (model dir {model_dir}); margins {margins}", file=sys.stderr)


if __name__ == "__main__":
    main()
