#!/usr/bin/env bash
# A three-node RabbitMQ cluster of the project's own on this machine (the cluster tests),
# beside the machine's broker: nodes rc1, rc2, rc3 @localhost, each a rabbit/node.sh node
# (own ports, data under ${POSTDATE_NODES_DIR:-/tmp/postdate-nodes}/rcN), with
# rabbit/advanced.config. The machine's broker (5672) is never touched.
#
#   rabbit/cluster.sh start          a fresh cluster: stops and wipes any left-over rcN,
#                                    starts all three, joins rc2 and rc3 to rc1
#   rabbit/cluster.sh stop           stop every node and delete their data (KEEP_DATA=1 keeps
#                                    it, logs included, for a look)
#   rabbit/cluster.sh status         which nodes answer, and the cluster as rc1..rc3 see it
#   rabbit/cluster.sh kill NODE      kill -9 NODE's Erlang VM (a crash, not a stop)
#   rabbit/cluster.sh stop-node NODE stop NODE gracefully
#   rabbit/cluster.sh restart NODE   start NODE again (it rejoins with its data)
#   rabbit/cluster.sh url NODE       NODE's AMQP URL
#
# NODE is rc1, rc2 or rc3; AMQP ports CLUSTER_PORT (default 5691) + 0, 1, 2; Erlang
# distribution ports those + 20000. Needs root and rabbitmq-server (as rabbit/node.sh).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
NODE_SH="$HERE/node.sh"
ADVANCED="$HERE/advanced.config"
BASE="${POSTDATE_NODES_DIR:-/tmp/postdate-nodes}"
PORT0="${CLUSTER_PORT:-5691}"
NODES=(rc1 rc2 rc3)

die() { printf 'cluster.sh: %s\n' "$*" >&2; exit 1; }
log() { printf 'cluster.sh: %s\n' "$*" >&2; }

port_of() {
    case "$1" in
    rc1) echo "$PORT0" ;;
    rc2) echo "$((PORT0 + 1))" ;;
    rc3) echo "$((PORT0 + 2))" ;;
    *) die "unknown node: $1 (rc1, rc2 or rc3)" ;;
    esac
}

# The OS pid of NODE's Erlang VM, from the pid file rabbitmq-server writes in its data dir.
beam_pid() {
    local file="$BASE/$1/pid"
    [[ -s $file ]] || return 1
    local pid
    pid=$(tr -dc '0-9' <"$file")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start_node() { "$NODE_SH" start "$1" "$(port_of "$1")" "$ADVANCED"; }

# Start the given nodes at once and wait for all: a node that was clustered waits at boot
# for its peers, so a full restart started one by one would hang on the first.
start_nodes() {
    local pids=() node failed=0
    for node in "$@"; do
        start_node "$node" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    ((failed == 0)) || die "a node did not start; see $BASE/rcN/log"
}

stop_all() {
    local node pid
    for node in "${NODES[@]}"; do
        "$NODE_SH" stop "$node" || true
        # a node that does not answer (killed, half started) may still have a VM
        if pid=$(beam_pid "$node"); then
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    if [[ ${KEEP_DATA:-0} != 1 ]]; then
        for node in "${NODES[@]}"; do rm -rf "${BASE:?}/$node"; done
    fi
}

start() {
    KEEP_DATA=0 stop_all
    mkdir -p "$BASE"
    start_nodes "${NODES[@]}"
    local node
    for node in rc2 rc3; do
        "$NODE_SH" ctl "$node" stop_app
        "$NODE_SH" ctl "$node" join_cluster rc1@localhost
        "$NODE_SH" ctl "$node" start_app
    done
    "$NODE_SH" ctl rc1 await_online_nodes 3
    log "cluster up: rc1, rc2, rc3 on ports $PORT0-$((PORT0 + 2))"
}

kill_node() {
    local node=$1 pid
    port_of "$node" >/dev/null
    pid=$(beam_pid "$node") || die "$node has no running VM (pid file $BASE/$node/pid)"
    kill -9 "$pid"
    # gone, or a zombie its parent has not reaped yet (which no longer holds any socket)
    while kill -0 "$pid" 2>/dev/null && [[ $(ps -o stat= -p "$pid" 2>/dev/null) != Z* ]]; do
        sleep 0.05
    done
    log "killed $node (pid $pid)"
}

status() {
    local node
    for node in "${NODES[@]}"; do
        if "$NODE_SH" running "$node"; then echo "$node: running on $(port_of "$node")"; else echo "$node: down"; fi
    done
    for node in "${NODES[@]}"; do
        if "$NODE_SH" running "$node"; then
            "$NODE_SH" ctl "$node" cluster_status
            return 0
        fi
    done
}

case "${1:-}" in
start) start ;;
stop) stop_all ;;
status) status ;;
kill) [[ $# -eq 2 ]] || die "usage: cluster.sh kill NODE"; kill_node "$2" ;;
stop-node) [[ $# -eq 2 ]] || die "usage: cluster.sh stop-node NODE"; port_of "$2" >/dev/null; "$NODE_SH" stop "$2" ;;
restart) [[ $# -eq 2 ]] || die "usage: cluster.sh restart NODE"; start_node "$2" ;;
url) [[ $# -eq 2 ]] || die "usage: cluster.sh url NODE"; echo "amqp://guest:guest@127.0.0.1:$(port_of "$2")/" ;;
*) die "usage: cluster.sh start|stop|status|kill NODE|stop-node NODE|restart NODE|url NODE" ;;
esac
