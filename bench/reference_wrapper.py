"""Run the benchmark driver bench/reference_bench.py unchanged and annotate its JSON.

    $VENV/bin/python bench/reference_wrapper.py --vargpt-src DIR --model DIR [reference_bench.py args]

Everything after the wrapper's own options is passed to reference_bench.py, which is
executed as-is (runpy, as __main__) with its stdout captured. Its JSON object is printed
again with extra keys, so that compare.sh can put it beside our `bench --json`:

  peak_rss_bytes  ru_maxrss of this process (the whole run: load + every phase)
  weight_bytes    bytes of the *.safetensors files in the model directory
  vargpt_commit   the authors' commit (from DIR/.commit written by setup-reference.sh, or git)
  loadavg_before / loadavg_after  /proc/loadavg at start and end (other work on the machine
                  makes every number slower; compare.sh warns about it too)
  cpu             lscpu model name; versions of torch / transformers / numpy

No monkeypatching beyond what reference_bench.py itself does was needed for the authors'
code at commit 453d3cf with torch 2.1.0 + transformers 4.46.1 on CPU (checked on the
project's 2-core x86-64 machine); if a later checkout needs one, put it in `_patches()`
below, before reference_bench.py runs, and document it in bench/README.md.
"""
import argparse
import contextlib
import glob
import io
import json
import os
import resource
import runpy
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCRIPT = os.environ.get("REFERENCE_BENCH", os.path.join(HERE, "reference_bench.py"))


def _loadavg():
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


def _cpu():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _commit(src):
    try:
        return open(os.path.join(src, ".commit")).read().strip()
    except OSError:
        r = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True)
        return r.stdout.strip() or None


def _patches():
    """Run-time patches for the authors' code (none needed at 453d3cf; see the docstring)."""


def main():
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--reference-bench", default=DEFAULT_SCRIPT)
    ap.add_argument("--vargpt-src", required=True)
    ap.add_argument("--model", required=True)
    own, rest = ap.parse_known_args()
    if not os.path.isfile(own.reference_bench):
        sys.exit(f"reference_wrapper: {own.reference_bench} not found (set REFERENCE_BENCH or --reference-bench)")

    before = _loadavg()
    _patches()
    buf = io.StringIO()
    sys.argv = [own.reference_bench, "--vargpt-src", own.vargpt_src, "--model", own.model] + rest
    with contextlib.redirect_stdout(buf):
        runpy.run_path(own.reference_bench, run_name="__main__")
    text = buf.getvalue()
    try:
        out = json.loads(text[text.index("{"):])
    except ValueError:
        sys.stdout.write(text)
        sys.exit("reference_wrapper: reference_bench.py printed no JSON object")

    import numpy
    import torch
    import transformers

    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["weight_bytes"] = sum(os.path.getsize(p) for p in glob.glob(os.path.join(own.model, "*.safetensors")))
    out["engine"] = "pytorch-reference"
    out["dtype"] = "f32"
    out["vargpt_commit"] = _commit(own.vargpt_src)
    out["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                       "numpy": numpy.__version__, "python": sys.version.split()[0]}
    out["cpu"] = _cpu()
    out["nproc"] = os.cpu_count()
    out["loadavg_before"] = before
    out["loadavg_after"] = _loadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
