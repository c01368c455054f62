#!/usr/bin/env bash
# Set up the authors' PyTorch VARGPT as a benchmark reference, OUTSIDE the repo.
#
#   bench/setup-reference.sh            # venv + deps; the authors' code from VARGPT_SRC or the cache
#   VARGPT_SRC=/path/to/VARGPT bench/setup-reference.sh
#
# Idempotent: a second run only checks what is there. Everything goes under
# $VARGPT_REF_DIR (default /root/.cache/vargpt-rs/ref):
#   venv/     python3.11 venv with torch==2.1.0, transformers==4.46.1, ... (see PINS below)
#   VARGPT/   the authors' checkout (public repo VARGPT-family/VARGPT; we match commit 453d3cf)
#
# The authors' code is never copied into this repository and never edited:
# anything it needs to run on CPU is monkeypatched at run time by
# bench/reference_bench.py and bench/reference_wrapper.py.
set -euo pipefail

REF_DIR=${VARGPT_REF_DIR:-/root/.cache/vargpt-rs/ref}
VENV=$REF_DIR/venv
SRC_DEST=$REF_DIR/VARGPT
WANT_COMMIT=453d3cf88d88199b1c1505d20beb53208e977840
PY=${PYTHON:-python3.11}

# The reference_bench.py pins. torch 2.1.0 on PyPI is the CUDA 12.1 build: it pulls
# ~2.6 GB of nvidia-* wheels (there is no +cpu variant on PyPI) but runs on CPU fine.
# torchvision is installed with --no-deps so it cannot drag in another torch.
PINS=(
  "torch==2.1.0"
  "transformers==4.46.1"
  "numpy<2"
  "safetensors"
  "pillow"
  "accelerate==1.0.1"
  "sentencepiece"
  "protobuf"
)
NODEPS_PINS=("torchvision==0.16.0")

log() { printf '[setup-reference] %s\n' "$*" >&2; }

mkdir -p "$REF_DIR"

# ---- 1. the authors' code -------------------------------------------------------
if [[ -n "${VARGPT_SRC:-}" ]]; then
  src=$(cd "$VARGPT_SRC" && pwd)
  if [[ ! -f "$src/vargpt_llava/modeling_vargpt_llava.py" ]]; then
    # a bare git dir (e.g. a mirror) is accepted too: extract the wanted commit
    if git --git-dir="$src" rev-parse --git-dir >/dev/null 2>&1; then
      commit=$WANT_COMMIT
      if ! git --git-dir="$src" cat-file -t "$commit" >/dev/null 2>&1; then
        commit=$(git --git-dir="$src" rev-parse HEAD)
        log "commit ${WANT_COMMIT:0:7} not in $src; using HEAD $commit"
      fi
      rm -rf "$SRC_DEST.tmp" && mkdir -p "$SRC_DEST.tmp"
      git --git-dir="$src" archive "$commit" | tar -x -C "$SRC_DEST.tmp"
      echo "$commit" >"$SRC_DEST.tmp/.commit"
      rm -rf "$SRC_DEST" && mv "$SRC_DEST.tmp" "$SRC_DEST"
      log "extracted $commit into $SRC_DEST"
    else
      log "VARGPT_SRC=$VARGPT_SRC has no vargpt_llava/modeling_vargpt_llava.py and is not a git dir"
      exit 2
    fi
  elif [[ "$src" != "$SRC_DEST" ]]; then
    rm -rf "$SRC_DEST" && mkdir -p "$SRC_DEST"
    cp -a "$src/." "$SRC_DEST/"
    if git -C "$src" rev-parse HEAD >/dev/null 2>&1; then git -C "$src" rev-parse HEAD >"$SRC_DEST/.commit"; fi
    log "copied $src into $SRC_DEST"
  fi
fi
if [[ ! -f "$SRC_DEST/vargpt_llava/modeling_vargpt_llava.py" ]]; then
  cat >&2 <<EOF
[setup-reference] The authors' code is not in $SRC_DEST.
  Get a checkout of the public GitHub repository VARGPT-family/VARGPT (we match commit 453d3cf):
  a clone checked out at 453d3cf, or a bare mirror of it (the wanted commit is then extracted,
  HEAD if the mirror lacks it), and rerun with
    VARGPT_SRC=/path/to/VARGPT bench/setup-reference.sh
  Never copy it into this repository.
EOF
  exit 2
fi
log "authors' code: $SRC_DEST (commit $(cat "$SRC_DEST/.commit" 2>/dev/null || echo unknown))"

# ---- 2. the venv ------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  command -v "$PY" >/dev/null || { log "$PY not found (set PYTHON=...)"; exit 2; }
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi

check() {
  "$VENV/bin/python" - <<'EOF2'
import importlib.metadata as md, sys
bad = []
for name, want in [("torch", "2.1.0"), ("transformers", "4.46.1"), ("torchvision", "0.16.0"),
                   ("accelerate", None), ("safetensors", None), ("pillow", None),
                   ("sentencepiece", None), ("protobuf", None), ("numpy", None)]:
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        bad.append(f"{name} (missing)")
        continue
    if want and have != want:
        bad.append(f"{name}=={want} (have {have})")
    if name == "numpy" and int(have.split(".")[0]) >= 2:
        bad.append(f"numpy<2 (have {have})")
if bad:
    print("[setup-reference] missing/wrong: " + ", ".join(bad), file=sys.stderr)
    sys.exit(1)
EOF2
}

if check 2>/dev/null; then
  log "venv already has the pinned packages"
else
  log "installing pinned packages into $VENV (torch 2.1.0 + nvidia wheels: ~3 GB download, ~5 GB on disk)"
  "$VENV/bin/python" -m pip install --upgrade "pip<25" wheel >/dev/null
  "$VENV/bin/python" -m pip install "${PINS[@]}"
  "$VENV/bin/python" -m pip install --no-deps "${NODEPS_PINS[@]}"
  check
fi

# ---- 3. smoke: import the authors' model module on CPU ------------------------------
"$VENV/bin/python" - "$SRC_DEST" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import torch, transformers, torchvision, numpy
import vargpt_llava.modeling_vargpt_llava  # noqa: F401
print(f"[setup-reference] ok: torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, torchvision {torchvision.__version__}, numpy {numpy.__version__}",
      file=sys.stderr)
EOF
log "done. venv: $VENV  src: $SRC_DEST  ($(du -sh "$REF_DIR" 2>/dev/null | cut -f1) in $REF_DIR)"
