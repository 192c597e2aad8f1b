#!/usr/bin/env bash
# A RabbitMQ node of the project's own beside the machine's broker (fault tests, the
# cluster): its own node name, ports, data and log directories, config.
#
#   rabbit/node.sh start NAME PORT [ADVANCED_CONFIG [EXTRA_CONF]]
#                                                      start NAME@localhost on PORT; waits
#                                                      until it answers (NAME: letters,
#                                                      digits, '-'; dist port PORT+20000).
#                                                      ADVANCED_CONFIG may be '' to give
#                                                      EXTRA_CONF alone: rabbitmq.conf
#                                                      lines added to the node's own
#   rabbit/node.sh stop NAME                           stop it (and wait)
#   rabbit/node.sh ctl NAME ARGS...                    rabbitmqctl -n NAME@localhost ARGS
#   rabbit/node.sh running NAME                        exit 0 if it answers
#
# Data lives in ${POSTDATE_NODES_DIR:-/tmp/postdate-nodes}/NAME, owned by the rabbitmq
# user (a node whose directories it cannot write fails to start without a word).
set -euo pipefail

BASE="${POSTDATE_NODES_DIR:-/tmp/postdate-nodes}"
WAIT_SECONDS="${WAIT_SECONDS:-60}"

die() { printf 'node.sh: %s\n' "$*" >&2; exit 1; }
ctl() { local name=$1; shift; rabbitmqctl -q -n "$name@localhost" "$@"; }
running() { ctl "$1" status >/dev/null 2>&1; }

start() {
    local name=$1 port=$2 advanced=${3:-} extra=${4:-} dir="$BASE/$1"
    [[ $name =~ ^[A-Za-z0-9-]+$ ]] || die "bad node name: $name"
    if running "$name"; then
        die "$name@localhost is already running (starting it again would crash the new one)"
    fi
    mkdir -p "$dir/mnesia" "$dir/log"
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.local = 127.0.0.1:$port
loopback_users = none
CONF
    if [[ -n $extra ]]; then cat "$extra" >>"$dir/rabbitmq.conf"; fi
    if [[ -n $advanced ]]; then cp "$advanced" "$dir/advanced.config"; else rm -f "$dir/advanced.config"; fi
    echo "[]." >"$dir/enabled_plugins"
    chown -R rabbitmq:rabbitmq "$dir"
    env RABBITMQ_NODENAME="$name@localhost" \
        RABBITMQ_NODE_PORT="$port" \
        RABBITMQ_DIST_PORT="$((port + 20000))" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" \
        RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        RABBITMQ_PID_FILE="$dir/pid" \
        rabbitmq-server -detached
    # await_startup right after a detached start fails at once: poll until it answers.
    local deadline=$((SECONDS + WAIT_SECONDS))
    until running "$name"; do
        ((SECONDS < deadline)) || die "$name@localhost did not answer within ${WAIT_SECONDS}s; see $dir/log"
        sleep 0.5
    done
    ctl "$name" await_startup
}

stop() {
    local name=$1
    running "$name" || return 0
    ctl "$name" stop "$BASE/$name/pid" || true
}

case "${1:-}" in
start) [[ $# -ge 3 ]] || die "usage: node.sh start NAME PORT [ADVANCED_CONFIG [EXTRA_CONF]]"; start "$2" "$3" "${4:-}" "${5:-}" ;;
stop) [[ $# -eq 2 ]] || die "usage: node.sh stop NAME"; stop "$2" ;;
ctl) [[ $# -ge 3 ]] || die "usage: node.sh ctl NAME ARGS..."; name=$2; shift 2; ctl "$name" "$@" ;;
running) [[ $# -eq 2 ]] || die "usage: node.sh running NAME"; running "$2" ;;
*) die "usage: node.sh start|stop|ctl|running ..." ;;
esac
