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
# shellcheck source=tests/bundled-broker.sh
source "$root/tests/bundled-broker.sh"
checks_pid=""

# Always runs: whatever happened, neither the checks nor the broker outlive this script.
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $checks_pid ]]; then
        kill -TERM "$checks_pid" 2>/dev/null || true
        wait "$checks_pid" 2>/dev/null || true
    fi
    broker_cleanup "$status"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

broker_build
read -r port management_port < <(free_ports 2)
broker_start --port "$port" --management-port "$management_port"
broker_wait_port "$port"
broker_wait_port "$management_port"

mkdir -p "$root/target/dashboard"
screenshot="$root/target/dashboard/dashboard.png"
rm -f "$screenshot"
status=0
# In the background and waited for, so that a signal to this script is handled at once (bash
# defers traps while a foreground child runs).
CHROMIUM=$chromium NODE_PATH="$node_dir/node_modules" node "$here/dashboard-test.js" \
    "http://127.0.0.1:$management_port" "amqp://guest:guest@127.0.0.1:$port/%2f" "$screenshot" &
checks_pid=$!
wait "$checks_pid" || status=$?
checks_pid=""
broker_stop || [[ $status -ne 0 ]] || status=1
exit "$status"
