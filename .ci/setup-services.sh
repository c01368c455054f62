#!/usr/bin/env bash
# Services the integration tests need, installed and started idempotently:
#   * RabbitMQ on 127.0.0.1:5672 (guest/guest), from the distribution's package;
#   * s3s-fs 0.14.1 (an S3-compatible server on a folder) in $VARGPT_TOOLS/bin.
# Safe to run any number of times; prints where everything is.
set -euo pipefail

TOOLS="${VARGPT_TOOLS:-/root/.cache/vargpt-rs/tools}"
S3S_VERSION="0.14.1"

log() { printf '[setup-services] %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

amqp_listening() {
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

# --- RabbitMQ -----------------------------------------------------------
if ! command -v rabbitmq-server >/dev/null 2>&1; then
    log "installing rabbitmq-server (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi

if ! amqp_listening; then
    log "starting RabbitMQ"
    # Loopback only: tests never need the broker reachable from elsewhere.
    if [ ! -s /etc/rabbitmq/rabbitmq.conf ]; then
        as_root mkdir -p /etc/rabbitmq
        echo "listeners.tcp.local = 127.0.0.1:5672" | as_root tee /etc/rabbitmq/rabbitmq.conf >/dev/null
    fi
    as_root rabbitmq-server -detached || true
    for _ in $(seq 1 120); do
        amqp_listening && break
        sleep 0.5
    done
fi
if ! amqp_listening; then
    log "ERROR: RabbitMQ does not listen on 127.0.0.1:5672 (see /var/log/rabbitmq/)"
    exit 1
fi
# The port opens a moment before the node takes work; wait for it fully.
as_root rabbitmqctl await_startup >/dev/null 2>&1 || true
log "RabbitMQ: amqp://guest:guest@127.0.0.1:5672/%2f ($(as_root rabbitmqctl version 2>/dev/null || echo '?'))"

# The TLS test makes a throw-away CA with the openssl CLI.
if ! command -v openssl >/dev/null 2>&1; then
    log "installing openssl (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

# --- the 3-node test cluster -------------------------------------------
# The cluster integration test starts it itself (tests/cluster/cluster.sh:
# vg1..vg3@localhost, AMQP 5681-5683, distribution 25681-25683); it needs
# only rabbitmq-server and root. A cluster left running is reused.
for p in 5681 5682 5683; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        log "note: 127.0.0.1:$p is in use (a test cluster left running? tests/cluster/cluster.sh stop)"
    fi
done

# The client README's Python example runs in CI, unchanged: it needs pika.
if ! python3 -c "import pika" >/dev/null 2>&1; then
    log "installing pika (pip)"
    python3 -m pip install -q pika >/dev/null
fi

# --- s3s-fs -------------------------------------------------------------
S3S_BIN="$TOOLS/bin/s3s-fs"
if [ ! -x "$S3S_BIN" ] || ! "$S3S_BIN" --version 2>/dev/null | grep -q "$S3S_VERSION"; then
    log "installing s3s-fs $S3S_VERSION into $TOOLS (cargo install, a few minutes)"
    mkdir -p "$TOOLS"
    # A private target dir: the shared one may be locked by a running build.
    CARGO_TARGET_DIR="$TOOLS/build" cargo install s3s-fs --version "$S3S_VERSION" --locked \
        --features binary --root "$TOOLS"
    rm -rf "$TOOLS/build"
fi
log "s3s-fs: $S3S_BIN ($("$S3S_BIN" --version 2>/dev/null || echo '?'))"
log "integration tests find it via S3S_FS_BIN, \$VARGPT_TOOLS/bin or PATH"
