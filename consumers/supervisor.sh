#!/bin/sh
# Run consumers/supervisord.conf with defaults for the variables it reads:
#   consumers/supervisor.sh                 supervisord, in the foreground
#   consumers/supervisor.sh ctl ARGS...     supervisorctl ARGS: status, stop all, shutdown,
#                                           tail -f expire_reservation:expire_reservation_00
# Export a variable to override its default:
#   POSTDATE_RUN_DIR               control socket, pid file and one log file per process
#                                  (default: var/supervisor in the project; created here)
#   POSTDATE_METRICS_PORT_PREFIX   worker process NN serves metrics on port <prefix>NN
#                                  (default: 98, so expire_reservation_00 on 9800, _01 on 9801)
# The project's .venv/bin, when there is one, goes first on PATH (postdate, supervisord).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
: "${POSTDATE_RUN_DIR:=$root/var/supervisor}"
: "${POSTDATE_METRICS_PORT_PREFIX:=98}"
export POSTDATE_RUN_DIR POSTDATE_METRICS_PORT_PREFIX
if [ -d "$root/.venv/bin" ]; then
    PATH="$root/.venv/bin:$PATH"
    export PATH
fi
mkdir -p "$POSTDATE_RUN_DIR"
if [ "${1:-}" = ctl ]; then
    shift
    exec supervisorctl -c "$here/supervisord.conf" "$@"
fi
exec supervisord -c "$here/supervisord.conf" "$@"
