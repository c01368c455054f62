"""Time the authors' PyTorch VARGPT on a model directory, for side-by-side benchmarks.

Our own driver (not the authors' code): bench/reference_wrapper.py runs it, and
crates/vargpt-bench's `bench phases` measures the same phases on our engine.

The model directory uses the published VARGPT_LLaVA-v1 layout (config.json with
an optional `var_config`, safetensors, tokenizer files, preprocessor_config.json),
e.g. one written by the project's checkpoint maker. The authors' code is imported
from a checkout given by --vargpt-src (public repo VARGPT-family/VARGPT).

Needs: torch==2.1.0 transformers==4.46.1 torchvision==0.16.0 (--no-deps)
"numpy<2" safetensors pillow accelerate sentencepiece protobuf.

Prints one JSON object: the seconds for each measured phase (the minimum over
--repeat runs) and derived rates.
"""
import argparse
import json
import os
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--vargpt-src", required=True)
ap.add_argument("--model", required=True)
ap.add_argument("--image", help="image for the caption case (default: a generated 320x240 picture)")
ap.add_argument("--decode-tokens", type=int, default=32)
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
ap.add_argument("--skip", default="", help="comma list of phases to skip: caption,image")
args = ap.parse_args()

sys.path.insert(0, args.vargpt_src)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
import vargpt_llava.modeling_vargpt_llava as M  # noqa: E402
from vargpt_llava.var_model import models as var_models  # noqa: E402
from transformers import AutoTokenizer, CLIPImageProcessor, DynamicCache  # noqa: E402

if args.threads:
    torch.set_num_threads(args.threads)
cfg_json = json.load(open(os.path.join(args.model, "config.json")))
var = cfg_json.get("var_config") or dict(depth=30, patch_nums=[1, 2, 3, 4, 5, 6, 8, 10, 13, 16],
                                          vocab_size=4096, z_channels=32, ch=160, share_quant_resi=4)
_orig = var_models.build_vae_vargpt_v1


def _build(device, num_classes, depth=30, **kw):
    return _orig(device, patch_nums=tuple(var["patch_nums"]), V=var["vocab_size"], Cvae=var["z_channels"],
                 ch=var["ch"], share_quant_resi=var["share_quant_resi"], num_classes=num_classes,
                 depth=var["depth"])


M.build_vae_vargpt_v1 = _build
_sample = M.sample_with_top_k_top_p_


def _clamped_sample(logits_BlV, rng=None, top_k=0, top_p=0.0, num_samples=1):
    """The authors' sampler fails when top_k (900) exceeds a small codebook: clamp it."""
    return _sample(logits_BlV, rng=rng, top_k=min(top_k, logits_BlV.shape[-1]), top_p=top_p,
                   num_samples=num_samples)


M.sample_with_top_k_top_p_ = _clamped_sample

t0 = time.perf_counter()
model = M.VARGPTLlavaForConditionalGeneration.from_pretrained(args.model, torch_dtype=torch.float32).eval()
load_s = time.perf_counter() - t0
tok = AutoTokenizer.from_pretrained(args.model)
improc = CLIPImageProcessor.from_pretrained(args.model)
n_img = model.config.image_seq_length if getattr(model.config, "image_seq_length", None) else \
    (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2

if args.image:
    pil = Image.open(args.image).convert("RGB")
else:
    yy, xx = np.mgrid[0:240, 0:320]
    pil = Image.fromarray(np.stack([xx % 256, yy % 256, (xx * yy) % 256], -1).astype(np.uint8))


def ids_for(text, with_image):
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
    prompt = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                     tokenize=False)
    return tok(prompt.replace("<image>", "<image>" * n_img), return_tensors="pt")["input_ids"]


out = {"model": os.path.abspath(args.model), "torch": torch.__version__, "threads": torch.get_num_threads(),
       "load_s": load_s, "repeat": args.repeat}
skip = set(s for s in args.skip.split(",") if s)

if "caption" not in skip:
    best = {"preprocess_s": 1e9, "prefill_s": 1e9, "decode_s": 1e9}
    for _ in range(args.repeat):
        with torch.no_grad():
            t0 = time.perf_counter()
            pv = improc(pil, return_tensors="pt")["pixel_values"]
            ids = ids_for("Please describe the image in detail.", True)
            t1 = time.perf_counter()
            o = model(input_ids=ids, pixel_values=pv, past_key_values=DynamicCache(), use_cache=True,
                      return_dict=True)
            nxt = o.logits[:, -1:].argmax(-1)
            t2 = time.perf_counter()
            past = o.past_key_values
            for _i in range(args.decode_tokens):  # EOS ignored: a fixed number of steps
                o = model(input_ids=nxt, past_key_values=past, use_cache=True, return_dict=True)
                nxt = o.logits[:, -1:].argmax(-1)
            t3 = time.perf_counter()
        best = {"preprocess_s": min(best["preprocess_s"], t1 - t0), "prefill_s": min(best["prefill_s"], t2 - t1),
                "decode_s": min(best["decode_s"], t3 - t2)}
    out.update(best)
    out["prompt_tokens"] = int(ids.shape[1])
    out["decode_tokens"] = args.decode_tokens
    out["decode_tok_per_s"] = args.decode_tokens / best["decode_s"]

if "image" not in skip:
    # the authors' own sampler (top-k 900, top-p 0.96) and CFG 1.5, PNG written to a temp file
    import tempfile
    start = model.config.special_tokens["image_gen_start_token_id"]
    ids = torch.cat([ids_for("Please design a drawing of a butterfly on a flower.", False),
                     torch.tensor([[start]])], dim=1)
    model._IMAGE_GEN_PATH = os.path.join(tempfile.mkdtemp(), "bench.png")
    best = 1e9
    for _ in range(args.repeat):
        with torch.no_grad():
            t0 = time.perf_counter()
            o = model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True, return_dict=True)
            model(input_ids=ids[:, -1:], past_key_values=o.past_key_values, use_cache=True, return_dict=True,
                  inference_image_gen=True)
            best = min(best, time.perf_counter() - t0)
    out["image_s"] = best
    out["image_stages"] = len(var["patch_nums"])
    out["image_side"] = Image.open(model._IMAGE_GEN_PATH).size[0]

print(json.dumps(out, indent=1))
