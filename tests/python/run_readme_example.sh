#!/usr/bin/env bash
# Runs the Python example of crates/vargpt-client/README.md exactly as written
# (the first ```python block), against the broker it names
# (amqp://guest:guest@127.0.0.1:5672/%2f) and a worker consuming `vargpt.jobs`,
# so the documented wire contract is tested from outside Rust.
#
# The worker, one of:
# * VARGPT_README_WORKER_BIN=path/to/vargpt-worker: started here with its fake
#   backend, the default queue prefix and its own s3s-fs (VARGPT_TOOLS/bin or
#   PATH), all stopped at the end;
# * VARGPT_README_WORKER_CMD: a command started here in the background and
#   stopped at the end;
# * neither: a worker must already consume `vargpt.jobs`. The example's image, cat.png, is
# VARGPT_README_IMAGE (default: a small PNG of the fuzz corpus).
#
# Needs python3 with pika (`pip install pika`). Exit 0 when the example got an
# `ok` result; non-zero otherwise.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
readme="$root/crates/vargpt-client/README.md"
image="${VARGPT_README_IMAGE:-$root/fuzz/corpus/image/png-rgb8.png}"
wait_s="${VARGPT_README_WAIT_S:-180}"

python3 -c 'import pika' 2>/dev/null || {
  echo "run_readme_example: python3 cannot import pika (pip install pika)" >&2
  exit 2
}
[ -f "$image" ] || { echo "run_readme_example: no image at $image" >&2; exit 2; }

work="$(mktemp -d)"
worker_pid=""
s3_pid=""
cleanup() {
  for pid in $worker_pid $s3_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# The first fenced python block, byte for byte.
awk '/^```python$/ {inside=1; next} inside && /^```$/ {exit} inside {print}' \
  "$readme" >"$work/example.py"
if [ ! -s "$work/example.py" ]; then
  echo "run_readme_example: no \`\`\`python block in $readme" >&2
  exit 2
fi
cp "$image" "$work/cat.png"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
if [ -n "${VARGPT_README_WORKER_BIN:-}" ]; then
  s3s_fs="${VARGPT_TOOLS:-$HOME/.cache/vargpt-rs/tools}/bin/s3s-fs"
  [ -x "$s3s_fs" ] || s3s_fs="$(command -v s3s-fs)" || {
    echo "run_readme_example: s3s-fs not found (VARGPT_TOOLS/bin or PATH)" >&2
    exit 2
  }
  mkdir -p "$work/s3/vargpt-images"
  s3_port="$(free_port)"
  "$s3s_fs" --host 127.0.0.1 --port "$s3_port" --access-key readme \
    --secret-key readme-secret "$work/s3" >"$work/s3.log" 2>&1 &
  s3_pid=$!
  AWS_ACCESS_KEY_ID=readme AWS_SECRET_ACCESS_KEY=readme-secret \
    "$VARGPT_README_WORKER_BIN" serve --model fake --fake-backend \
    --amqp-url 'amqp://guest:guest@127.0.0.1:5672/%2f' \
    --s3-bucket vargpt-images --s3-endpoint "http://127.0.0.1:$s3_port" \
    --http-addr "127.0.0.1:$(free_port)" >"$work/worker.log" 2>&1 &
  worker_pid=$!
elif [ -n "${VARGPT_README_WORKER_CMD:-}" ]; then
  bash -c "$VARGPT_README_WORKER_CMD" >"$work/worker.log" 2>&1 &
  worker_pid=$!
fi

# Wait until something consumes vargpt.jobs (the queue the example names).
python3 - "$wait_s" <<'PY' || {
import sys, time
import pika

deadline = time.monotonic() + float(sys.argv[1])
while True:
    try:
        conn = pika.BlockingConnection(
            pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f"))
        try:
            q = conn.channel().queue_declare(queue="vargpt.jobs", passive=True)
            if q.method.consumer_count > 0:
                sys.exit(0)
        finally:
            if conn.is_open:
                conn.close()
    except pika.exceptions.AMQPError:
        pass
    if time.monotonic() > deadline:
        sys.exit("no consumer on vargpt.jobs")
    time.sleep(0.5)
PY
  echo "run_readme_example: no worker consumes vargpt.jobs after ${wait_s}s" >&2
  [ -f "$work/worker.log" ] && tail -n 40 "$work/worker.log" >&2
  exit 1
}

set +e
(cd "$work" && timeout 330 python3 example.py) >"$work/out.txt" 2>"$work/err.txt"
status=$?
set -e
cat "$work/out.txt"
if [ "$status" -ne 0 ]; then
  echo "run_readme_example: the example exited with $status" >&2
  cat "$work/err.txt" >&2
  exit 1
fi
if grep -q '^failed:' "$work/out.txt" || [ ! -s "$work/out.txt" ]; then
  echo "run_readme_example: the job did not succeed" >&2
  [ -f "$work/worker.log" ] && tail -n 40 "$work/worker.log" >&2
  exit 1
fi
echo "run_readme_example: ok"
