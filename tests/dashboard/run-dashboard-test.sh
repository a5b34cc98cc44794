#!/usr/bin/env bash
# Tests the broker's web dashboard in headless Chromium (dashboard-test.js, driven by
# playwright-core): builds the broker binary, starts it on free AMQP and management ports with a
# fresh --data-dir, runs the checks, stops it with SIGTERM and checks that it exits cleanly.
#
#   tests/dashboard/run-dashboard-test.sh
#
# Installs Debian's `chromium` with apt-get when /usr/bin/chromium is missing (as root; otherwise
# it says what to install), and amqplib and playwright-core (pinned, package-lock.json) with
# `npm ci` under target/dashboard-node, reused while the lock file is unchanged. Chromium itself is
# never downloaded by npm: playwright-core drives the system one. The screenshot is left at
# target/dashboard/dashboard.png. Environment: CARGO_TARGET_DIR is honoured for the broker binary,
# BROKER_BIN runs that binary instead of building one; CHROMIUM (default /usr/bin/chromium) names
# the browser; READY_SECS (default 20) bounds the wait for the broker's ports, STOP_SECS (default
# 10) the wait for it to exit after SIGTERM.
# Exit status: the checks' status, or non-zero if the broker fails to start or to stop cleanly.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
ready_secs=${READY_SECS:-20}
stop_secs=${STOP_SECS:-10}
chromium=${CHROMIUM:-/usr/bin/chromium}

log() { printf '[run-dashboard-test] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

if [[ $# -gt 0 ]]; then
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    [[ $1 == -h || $1 == --help ]] && exit 0
    exit 2
fi

# --- the browser and the driver -------------------------------------------------------------------
if [[ ! -x $chromium ]]; then
    [[ $chromium == /usr/bin/chromium ]] || die "CHROMIUM=$chromium is not an executable"
    [[ $(id -u) -eq 0 ]] || die "chromium is not installed: run 'apt-get install chromium' as root"
    log "installing chromium (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq chromium >/dev/null || die "apt-get install chromium failed"
fi
log "$("$chromium" --version 2>/dev/null)"

command -v node >/dev/null || die "node is not installed (the driver needs Node 18 or later)"
command -v npm >/dev/null || die "npm is not installed"
node_dir="$root/target/dashboard-node"
if cmp -s "$here/package-lock.json" "$node_dir/package-lock.json" &&
    [[ -f $node_dir/node_modules/playwright-core/package.json ]]; then
    log "reusing $node_dir/node_modules"
else
    log "installing amqplib and playwright-core into $node_dir (npm ci)"
    rm -rf "$node_dir"
    mkdir -p "$node_dir"
    cp "$here/package.json" "$here/package-lock.json" "$node_dir/"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in $node_dir failed"
fi

# --- the bundled broker ---------------------------------------------------------------------------
broker_pid=""
checks_pid=""
workdir=$(mktemp -d "${TMPDIR:-/tmp}/run-dashboard-test.XXXXXX")
broker_log="$workdir/broker.stderr"

# Always runs: whatever happened, neither the checks nor the broker outlive this script.
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $checks_pid ]]; then
        kill -TERM "$checks_pid" 2>/dev/null || true
        wait "$checks_pid" 2>/dev/null || true
    fi
    if [[ -n $broker_pid ]] && kill -0 "$broker_pid" 2>/dev/null; then
        log "stopping broker (pid $broker_pid)"
        kill -KILL "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    if [[ $status -ne 0 && -s $broker_log ]]; then
        log "broker stderr (last 50 lines):"
        tail -n 50 "$broker_log" | sed 's/^/    /' >&2
    fi
    rm -rf "$workdir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n ${BROKER_BIN:-} ]]; then
    broker_bin=$BROKER_BIN
    log "using BROKER_BIN=$broker_bin (not building)"
else
    log "building the broker: cargo build -p amqp-broker --bin amqp-broker"
    (cd "$root" && cargo build -p amqp-broker --bin amqp-broker) || die "cargo build failed"
    target_dir=${CARGO_TARGET_DIR:-$root/target}
    [[ $target_dir == /* ]] || target_dir="$root/$target_dir"
    broker_bin="$target_dir/debug/amqp-broker"
fi
[[ -x $broker_bin ]] || die "no broker binary at $broker_bin"

# Two distinct free ports (both sockets are held open until both are picked).
read -r port management_port < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')
log "starting $broker_bin --port $port --management-port $management_port"
NO_COLOR=1 "$broker_bin" --port "$port" --management-port "$management_port" \
    --data-dir "$workdir/data" 2>"$broker_log" &
broker_pid=$!

port_open() {
    # A bare TCP connect, closed at once when the subshell exits.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
deadline=$((SECONDS + ready_secs))
until port_open "$port" && port_open "$management_port"; do
    kill -0 "$broker_pid" 2>/dev/null || die "the broker exited before accepting on its ports"
    ((SECONDS < deadline)) || die "the broker did not accept on ports $port and $management_port within ${ready_secs}s"
    sleep 0.1
done
log "broker accepts on $port (AMQP) and $management_port (management), pid $broker_pid"

mkdir -p "$root/target/dashboard"
screenshot="$root/target/dashboard/dashboard.png"
rm -f "$screenshot"
status=0
# In the background and waited for, so that a signal to this script is handled at once.
CHROMIUM=$chromium NODE_PATH="$node_dir/node_modules" node "$here/dashboard-test.js" \
    "http://127.0.0.1:$management_port" "amqp://guest:guest@127.0.0.1:$port/%2f" "$screenshot" &
checks_pid=$!
wait "$checks_pid" || status=$?
checks_pid=""

log "sending SIGTERM to the broker (pid $broker_pid)"
kill -TERM "$broker_pid" 2>/dev/null || true
deadline=$((SECONDS + stop_secs))
while kill -0 "$broker_pid" 2>/dev/null; do
    ((SECONDS < deadline)) || die "the broker did not exit within ${stop_secs}s of SIGTERM"
    sleep 0.1
done
broker_status=0
wait "$broker_pid" || broker_status=$?
broker_pid=""
if [[ $broker_status -ne 0 ]]; then
    log "error: the broker exited with status $broker_status after SIGTERM (expected 0)"
    [[ $status -ne 0 ]] || status=1
else
    log "broker exited cleanly after SIGTERM"
fi
exit "$status"
