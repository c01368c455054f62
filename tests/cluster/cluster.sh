#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on this machine for the cluster integration test,
# next to (never touching) the shared node rabbit@<host> on 5672.
#
#   cluster.sh start          start vg1..vg3 and join them (idempotent)
#   cluster.sh stop           stop the three nodes and remove their data
#   cluster.sh start-node N   (re)start node N with its existing data
#   cluster.sh kill-node N    kill -9 node N's Erlang VM
#   cluster.sh leader QUEUE   print the node that leads quorum queue QUEUE
#   cluster.sh status         print the running nodes seen by any live node
#
# Node N is vgN@localhost, AMQP on 127.0.0.1:$((BASE_PORT+N)), distribution
# on $((DIST_BASE+N)); data and logs under $VARGPT_CLUSTER_DIR. The nodes
# share the rabbitmq user's Erlang cookie (the Debian wrappers run every
# node and CLI as that user), so the CLI reaches each of them. Every wait is
# bounded; a failure prints the node's log tail and exits non-zero.
set -euo pipefail

DIR="${VARGPT_CLUSTER_DIR:-/tmp/vargpt-cluster}"
BASE_PORT="${VARGPT_CLUSTER_BASE_PORT:-5680}"
DIST_BASE="${VARGPT_CLUSTER_DIST_BASE:-25680}"
NODES=(1 2 3)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

node() { echo "vg$1@localhost"; }
amqp_port() { echo $((BASE_PORT + $1)); }

# rabbitmqctl with a wall-clock bound (a wedged node must not hang a test).
ctl() { timeout 60 rabbitmqctl "$@"; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

need_tools() {
    command -v rabbitmq-server >/dev/null || die "rabbitmq-server is not installed (run .ci/setup-services.sh)"
    command -v rabbitmqctl >/dev/null || die "rabbitmqctl is not installed"
    [ "$(id -u)" = 0 ] || [ "$(id -un)" = rabbitmq ] ||
        die "run as root or as the rabbitmq user (the Debian wrappers require it)"
}

prepare_node_dir() {
    local n=$1 d="$DIR/vg$1"
    mkdir -p "$d/mnesia" "$d/log"
    printf 'listeners.tcp.local = 127.0.0.1:%s\n' "$(amqp_port "$n")" >"$d/rabbitmq.conf"
    echo '[].' >"$d/enabled_plugins"
    if [ "$(id -u)" = 0 ]; then chown -R rabbitmq:rabbitmq "$DIR"; fi
}

start_node() {
    local n=$1 d="$DIR/vg$1"
    [ -f "$d/rabbitmq.conf" ] || prepare_node_dir "$n"
    if listening "$(amqp_port "$n")"; then
        log "$(node "$n") already listens on $(amqp_port "$n")"
        return 0
    fi
    log "starting $(node "$n") (amqp $(amqp_port "$n"), dist $((DIST_BASE + n)))"
    RABBITMQ_NODENAME="$(node "$n")" \
        RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
        RABBITMQ_MNESIA_BASE="$d/mnesia" \
        RABBITMQ_LOG_BASE="$d/log" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
        RABBITMQ_DIST_PORT=$((DIST_BASE + n)) \
        rabbitmq-server -detached >/dev/null 2>&1 || die "rabbitmq-server -detached failed for $(node "$n")"
}

await_node() {
    local n=$1
    for _ in $(seq 1 240); do
        listening "$(amqp_port "$n")" && return 0
        sleep 0.5
    done
    tail -n 30 "$DIR/vg$n/log/"*.log >&2 2>/dev/null || true
    die "$(node "$n") did not listen on $(amqp_port "$n") within 120 s"
}

running_nodes() {
    local via=$1
    ctl -n "$(node "$via")" eval 'rabbit_nodes:all_running().' 2>/dev/null | tr -d '[] \n' | tr ',' '\n' | sed "s/'//g" | sort
}

all_joined() {
    local n
    for n in "${NODES[@]}"; do listening "$(amqp_port "$n")" || return 1; done
    [ "$(running_nodes 1 | grep -c '^vg[123]@localhost$')" = 3 ]
}

cmd_start() {
    need_tools
    if all_joined; then
        log "cluster already up: $(running_nodes 1 | tr '\n' ' ')"
        return 0
    fi
    # Partial or stale state: start over from empty data directories.
    cmd_stop
    local n
    for n in "${NODES[@]}"; do prepare_node_dir "$n"; done
    for n in "${NODES[@]}"; do start_node "$n"; done
    for n in "${NODES[@]}"; do await_node "$n"; done
    for n in 2 3; do
        log "joining $(node "$n") to $(node 1)"
        ctl -n "$(node "$n")" stop_app >/dev/null
        ctl -n "$(node "$n")" join_cluster "$(node 1)" >/dev/null
        ctl -n "$(node "$n")" start_app >/dev/null
    done
    for _ in $(seq 1 60); do
        all_joined && {
            log "cluster up: $(running_nodes 1 | tr '\n' ' ')"
            return 0
        }
        sleep 1
    done
    die "the three nodes did not form a cluster within 60 s: $(running_nodes 1 | tr '\n' ' ')"
}

# Is $2 the OS pid of node $1's VM? (Its environment names the node.)
is_node_pid() {
    tr '\0' '\n' <"/proc/$2/environ" 2>/dev/null | grep -qx "RABBITMQ_NODENAME=$(node "$1")"
}

node_os_pid() {
    local n=$1 f
    # The pid file RabbitMQ writes at boot; else ask the VM itself.
    for f in "$DIR/vg$n/mnesia/$(node "$n").pid"; do
        if [ -s "$f" ]; then
            cat "$f"
            return 0
        fi
    done
    ctl -n "$(node "$n")" eval 'os:getpid().' 2>/dev/null | tr -dc '0-9'
}

cmd_kill_node() {
    local n=$1 pid
    pid=$(node_os_pid "$n")
    [ -n "$pid" ] || die "no OS pid for $(node "$n")"
    # Only ever our own node: the pid must be a beam running as that node.
    is_node_pid "$n" "$pid" || die "pid $pid is not $(node "$n")"
    log "kill -9 $(node "$n") (pid $pid)"
    kill -9 "$pid"
    for _ in $(seq 1 40); do
        listening "$(amqp_port "$n")" || return 0
        sleep 0.25
    done
    die "$(node "$n") still listens after kill -9"
}

cmd_stop() {
    local n pid
    for n in "${NODES[@]}"; do
        if listening "$(amqp_port "$n")" || ctl -n "$(node "$n")" ping >/dev/null 2>&1; then
            log "stopping $(node "$n")"
            ctl -n "$(node "$n")" stop >/dev/null 2>&1 || true
        fi
        pid=$(cat "$DIR/vg$n/mnesia/$(node "$n").pid" 2>/dev/null || true)
        if [ -n "$pid" ] && is_node_pid "$n" "$pid"; then
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$DIR"
}

cmd_leader() {
    local q=$1 n out
    for n in "${NODES[@]}"; do
        listening "$(amqp_port "$n")" || continue
        out=$(ctl -n "$(node "$n")" list_queues -q --no-table-headers name leader 2>/dev/null |
            awk -v q="$q" '$1 == q { print $2 }')
        if [ -n "$out" ]; then
            echo "$out"
            return 0
        fi
    done
    die "no live node knows a leader of queue $q"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
start-node)
    start_node "${2:?node number}"
    await_node "$2"
    ;;
kill-node) cmd_kill_node "${2:?node number}" ;;
leader) cmd_leader "${2:?queue name}" ;;
status) running_nodes "${2:-1}" ;;
*)
    echo "usage: $0 start|stop|start-node N|kill-node N|leader QUEUE|status" >&2
    exit 2
    ;;
esac
