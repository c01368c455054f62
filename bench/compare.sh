#!/usr/bin/env bash
# Side-by-side benchmark: the authors' PyTorch VARGPT vs our Rust engine, same model dir.
#
#   bench/compare.sh MODEL_DIR [--repeat N] [--f16] [--decode-tokens N] [--threads N]
#                    [--out FILE] [--ref-json FILE] [--skip-ref] [--skip-ours] [--wait-idle SECS]
#
#   --repeat N        runs per phase, each engine reports the minimum (default 3)
#   --f16             also run ours with --dtype f16 and add its rows
#   --decode-tokens N greedy decode steps, EOS ignored (default 32)
#   --threads N       torch threads for the reference (default: torch's default = all cores)
#   --out FILE        combined JSON (default bench/results/compare-<model>-<UTC time>.json)
#   --ref-json FILE   reuse a saved reference JSON instead of running the reference again
#   --skip-ref / --skip-ours   run one side only
#   --wait-idle SECS  wait up to SECS for the 1-minute load average to drop below 0.5 first
#   --ours-args "..." extra arguments for our bench binary (e.g. "--tp 2")
#
# Environment: VARGPT_REF_DIR (default /root/.cache/vargpt-rs/ref; made by
# bench/setup-reference.sh), REFERENCE_BENCH (default bench/reference_bench.py),
# CARGO_TARGET_DIR (default /root/.cache/vargpt-rs/target), OURS_BIN (a prebuilt `bench`
# binary; default: cargo build -p vargpt-bench --bin bench with the workspace's dev profile,
# which is its benchmark profile, or BENCH_PROFILE=release; built BEFORE anything is timed so
# compilation never overlaps a measurement).
#
# The two engines run one after the other, never together. The model files are read once
# beforehand so both load from a warm page cache. Ratio = reference_time / our_time (for
# tok/s: ours / reference), i.e. >1 means ours is faster.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
REF_DIR=${VARGPT_REF_DIR:-/root/.cache/vargpt-rs/ref}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/root/.cache/vargpt-rs/target}

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
[[ $# -ge 1 ]] || usage 2
[[ $1 == -h || $1 == --help ]] && usage 0
MODEL=$1; shift
REPEAT=3; F16=0; DECODE=32; THREADS=0; OUT=""; REF_JSON=""; SKIP_REF=0; SKIP_OURS=0; WAIT_IDLE=0; OURS_EXTRA=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --repeat) REPEAT=$2; shift 2 ;;
    --f16) F16=1; shift ;;
    --decode-tokens) DECODE=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --ref-json) REF_JSON=$2; shift 2 ;;
    --skip-ref) SKIP_REF=1; shift ;;
    --skip-ours) SKIP_OURS=1; shift ;;
    --wait-idle) WAIT_IDLE=$2; shift 2 ;;
    --ours-args) OURS_EXTRA=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
[[ -f $MODEL/config.json ]] || { echo "compare.sh: $MODEL/config.json not found" >&2; exit 2; }
MODEL=$(cd "$MODEL" && pwd)
mkdir -p "$HERE/results"
OUT=${OUT:-$HERE/results/compare-$(basename "$MODEL")-$(date -u +%Y%m%dT%H%M%SZ).json}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
log() { printf '[compare] %s\n' "$*" >&2; }

load1() { cut -d' ' -f1 /proc/loadavg; }
busy_note() {
  # what else is running (compilers are the usual culprit here)
  ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 > 10 {printf "%s(%s%%) ", $2, $1}' | head -c 300
}
check_load() {
  local l; l=$(load1)
  if awk -v l="$l" 'BEGIN{exit !(l > 0.5)}'; then
    local busy; busy=$(busy_note)
    log "WARNING: load average is $l on $(nproc) cores${busy:+ (now busy: $busy)} - other work is running;"
    log "         every number below will be slower and noisier than on an idle machine."
    if [[ -z ${LOAD_NOTED:-} ]]; then
      LOAD_NOTED=1
      log "         (torch's OpenMP threads suffer most: on 2 busy cores its default 2 threads ran"
      log "         up to 4.5x slower than --threads 1; see bench/README.md. Consider --wait-idle 600.)"
    fi
  fi
}

# ---- 0. build ours first (never while timing) -------------------------------------
OURS_AVAILABLE=0; OURS_WHY=""
if [[ $SKIP_OURS == 0 ]]; then
  if [[ -n ${OURS_BIN:-} ]]; then
    [[ -x $OURS_BIN ]] && OURS_AVAILABLE=1 || OURS_WHY="OURS_BIN=$OURS_BIN is not executable"
  elif ! grep -q '"name":"vargpt-bench"' <<<"$(cd "$ROOT" && cargo metadata --no-deps --format-version 1 2>/dev/null)"; then
    OURS_WHY="the workspace has no vargpt-bench crate yet (the Rust 'bench' binary is not written); reference only"
  else
    # The workspace's dev profile is its benchmark profile (deps opt-level 3, ours 2; see the
    # root Cargo.toml); BENCH_PROFILE=release picks release instead.
    prof=${BENCH_PROFILE:-dev}; pdir=$([[ $prof == dev ]] && echo debug || echo "$prof")
    log "building ours: cargo build --profile $prof -p vargpt-bench --bin bench (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    if (cd "$ROOT" && cargo build --profile "$prof" -p vargpt-bench --bin bench >&2); then
      OURS_BIN=$CARGO_TARGET_DIR/$pdir/bench; OURS_AVAILABLE=1
    else
      OURS_WHY="cargo build --profile $prof -p vargpt-bench --bin bench failed (see above)"
    fi
  fi
  [[ $OURS_AVAILABLE == 1 ]] || log "ours: SKIPPED - $OURS_WHY"
fi

# ---- 1. quiet machine, warm page cache ----------------------------------------------
if [[ $WAIT_IDLE -gt 0 ]]; then
  for ((i = 0; i < WAIT_IDLE; i += 10)); do
    awk -v l="$(load1)" 'BEGIN{exit !(l > 0.5)}' || break
    log "waiting for the machine to go idle (load $(load1))..."; sleep 10
  done
fi
check_load
cat "$MODEL"/* >/dev/null 2>&1 || true
LOAD_START=$(cat /proc/loadavg)

# ---- 2. reference ---------------------------------------------------------------------
if [[ -n $REF_JSON ]]; then
  # a reference_wrapper.py / reference_bench.py JSON, or a combined compare.sh JSON
  python3 -c 'import sys,json; d=json.load(open(sys.argv[1])); d=d.get("reference", d) if "reference" in d else d
assert d and "load_s" in d, "no reference numbers in "+sys.argv[1]; json.dump(d, open(sys.argv[2],"w"))' \
    "$REF_JSON" "$TMP/ref.json"
  log "reference: reusing $REF_JSON"
elif [[ $SKIP_REF == 0 ]]; then
  PY=$REF_DIR/venv/bin/python; SRC=$REF_DIR/VARGPT
  if [[ ! -x $PY || ! -f $SRC/vargpt_llava/modeling_vargpt_llava.py ]]; then
    log "reference: SKIPPED - no venv/checkout under $REF_DIR; run bench/setup-reference.sh first"
  else
    args=(--vargpt-src "$SRC" --model "$MODEL" --repeat "$REPEAT" --decode-tokens "$DECODE")
    [[ $THREADS != 0 ]] && args+=(--threads "$THREADS")
    log "reference: $PY bench/reference_wrapper.py ${args[*]}"
    if ! "$PY" "$HERE/reference_wrapper.py" "${args[@]}" >"$TMP/ref.json" 2>"$TMP/ref.err"; then
      cat "$TMP/ref.err" >&2; log "reference: FAILED"; rm -f "$TMP/ref.json"
    fi
  fi
fi

# ---- 3. ours ----------------------------------------------------------------------------
# Adapt to the binary's CLI: `bench phases --model ...` (subcommand, always JSON) or a flat
# `bench --model ... --json`.
OURS_PRE=(); OURS_JSON=()
if [[ $OURS_AVAILABLE == 1 ]]; then
  # (help captured first: with pipefail, `cmd | grep -q` can fail on SIGPIPE)
  help=$("$OURS_BIN" --help 2>&1 || true)
  if grep -qE '^[[:space:]]+phases' <<<"$help"; then OURS_PRE=(phases); fi
  help=$("$OURS_BIN" "${OURS_PRE[@]}" --help 2>&1 || true)
  if grep -q -- '--json' <<<"$help"; then OURS_JSON=(--json); fi
fi
# shellcheck disable=SC2206
OURS_EXTRA_ARR=($OURS_EXTRA)
run_ours() {  # $1 = output file, rest = extra args
  local out=$1; shift
  local cmd=("$OURS_BIN" "${OURS_PRE[@]}" --model "$MODEL" --repeat "$REPEAT" --decode-tokens "$DECODE"
             "${OURS_JSON[@]}" "${OURS_EXTRA_ARR[@]}" "$@")
  check_load
  log "ours: ${cmd[*]}"
  if ! "${cmd[@]}" >"$out.raw" 2>"$out.err"; then
    cat "$out.err" >&2; log "ours: FAILED ($*)"; return 0
  fi
  python3 -c 'import sys,json; t=open(sys.argv[1]).read(); json.dump(json.loads(t[t.index("{"):t.rindex("}")+1]), open(sys.argv[2],"w"))' \
    "$out.raw" "$out" || { cat "$out.raw" >&2; log "ours: no JSON object in its output"; rm -f "$out"; }
}
if [[ $OURS_AVAILABLE == 1 ]]; then
  run_ours "$TMP/ours.json"
  [[ $F16 == 1 ]] && run_ours "$TMP/ours_f16.json" --dtype f16
fi

# ---- 4. table + combined JSON ------------------------------------------------------------
python3 - "$TMP" "$OUT" "$MODEL" "$LOAD_START" "$(cat /proc/loadavg)" "$OURS_WHY" "$REPEAT" <<'EOF'
import json, os, subprocess, sys
tmp, out_path, model, load_start, load_end, ours_why, repeat = sys.argv[1:]
def rd(name):
    p = os.path.join(tmp, name)
    return json.load(open(p)) if os.path.exists(p) else None
ref, ours, f16 = rd("ref.json"), rd("ours.json"), rd("ours_f16.json")
cpu = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True)
            .stdout.splitlines() if l.startswith("Model name:")), None)

def g(d, k):
    v = (d or {}).get(k)
    return v if isinstance(v, (int, float)) else None
# (label, key, unit, higher_is_better)
rows = [("load", "load_s", "s", False), ("preprocess", "preprocess_s", "s", False),
        ("prefill", "prefill_s", "s", False), ("decode", "decode_s", "s", False),
        ("decode tok/s", "decode_tok_per_s", "tok/s", True), ("image (t2i, cfg 1.5)", "image_s", "s", False),
        ("peak RSS", "peak_rss_bytes", "MiB", False)]
def fmt(v, unit):
    if v is None: return "n/a"
    if unit == "MiB": return f"{v / 2**20:.0f} MiB"
    if unit == "tok/s": return f"{v:.2f}"
    return f"{v:.3f} s" if v < 100 else f"{v:.1f} s"
def ratio(r, o, hib):
    if r is None or o is None or r == 0 or o == 0: return None
    return o / r if hib else r / o
table, ratios = [], {}
for label, key, unit, hib in rows:
    r, o = g(ref, key), g(ours, key)
    x = ratio(r, o, hib); ratios[key] = x
    table.append((label, fmt(r, unit), fmt(o, unit), f"{x:.2f}x" if x else "n/a"))
if f16 is not None:
    for label, key, unit, hib in rows:
        if key in ("preprocess_s",): continue
        r, o = g(ref, key), g(f16, key)
        x = ratio(r, o, hib); ratios[key + "_f16"] = x
        table.append((label + " [ours f16 vs ref f32]", fmt(r, unit), fmt(o, unit), f"{x:.2f}x" if x else "n/a"))
w = [max(len(t[i]) for t in table + [("phase", "reference", "ours", "speed-up")]) for i in range(4)]
line = lambda t: f"{t[0]:<{w[0]}}  {t[1]:>{w[1]}}  {t[2]:>{w[2]}}  {t[3]:>{w[3]}}"
print(f"model: {model}   repeat: {repeat} (min over runs)   cpu: {cpu} x{os.cpu_count()}")
print(f"loadavg at start: {load_start}   at end: {load_end}")
if ref and ours and ref.get("prompt_tokens") != ours.get("prompt_tokens"):
    print(f"NOTE: prompt tokens differ (reference {ref.get('prompt_tokens')}, ours {ours.get('prompt_tokens')}): "
          "prefill times are not like for like")
if ref and ref.get("model") and os.path.realpath(ref["model"]) != os.path.realpath(model):
    print(f"NOTE: the reference JSON is for {ref['model']}, not {model}")
for side, d in (("ours", ours), ("ours f16", f16)):
    if ref and d and ref.get("weight_bytes") and d.get("weight_bytes") and d.get("dtype", "f32") == "f32" \
            and abs(d["weight_bytes"] - ref["weight_bytes"]) > 0.05 * ref["weight_bytes"]:
        print(f"NOTE: weight bytes differ ({side} {d['weight_bytes']}, reference files {ref['weight_bytes']})")
print(line(("phase", "reference", "ours", "speed-up")))
print(line(tuple("-" * n for n in w)))
for t in table: print(line(t))
print("speed-up = reference time / our time (tok/s and RSS: ours vs reference, >1 = ours better)")
if ours is None: print(f"ours: not run - {ours_why or 'failed or skipped (see above)'}")
if ref is None: print("reference: not run (see above)")
combined = {"model": model, "repeat": int(repeat), "cpu": cpu, "nproc": os.cpu_count(),
            "loadavg_start": load_start, "loadavg_end": load_end,
            "reference": ref, "ours": ours, "ours_f16": f16, "speedup": ratios}
if ours is None: combined["ours_missing"] = ours_why or "failed or skipped"
os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
json.dump(combined, open(out_path, "w"), indent=1)
print(f"combined JSON: {out_path}")
EOF
