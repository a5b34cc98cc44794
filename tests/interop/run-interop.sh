#!/usr/bin/env bash
# Runs one suite of interoperability checks: clients we did not write, against our broker.
#
#   tests/interop/run-interop.sh SUITE URL   against a running server, e.g. amqp://guest:guest@127.0.0.1:5672/%2f
#   tests/interop/run-interop.sh SUITE       against the bundled broker binary: builds it, starts it on
#                                            a free port with a fresh --data-dir, runs the checks,
#                                            stops it with SIGTERM and checks that it exits cleanly.
#
# SUITE is pika (pika_interop.py), aio-pika (aio_pika_interop.py) or amqplib (amqplib/interop.js).
# The Python clients are installed (pinned, requirements.txt) into a venv under target/interop-venv,
# amqplib with `npm ci` (pinned, amqplib/package-lock.json) under target/interop-amqplib; both are
# reused while their pins are unchanged. Environment: PYTHON (default python3) makes the venv;
# CARGO_TARGET_DIR is honoured for the broker binary, BROKER_BIN runs that binary instead of
# building one (for testing this script); READY_SECS (default 20) bounds the wait for the
# broker's port, STOP_SECS (default 10) the wait for it to exit after SIGTERM.
# Exit status: the checks' status, or non-zero if the broker fails to start or to stop cleanly.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
suite=${1:-}

log() { printf '[run-interop %s] %s\n' "$suite" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
if [[ $suite == -h || $suite == --help ]]; then
    usage
    exit 0
fi
if [[ $# -lt 1 || $# -gt 2 ]]; then
    usage >&2
    exit 2
fi
shift

# --- the clients ----------------------------------------------------------------------------------
# setup_venv: the Python clients (pika and aio-pika share one venv and one requirements file).
setup_venv() {
    local venv="$root/target/interop-venv"
    local requirements="$here/requirements.txt"
    local stamp="$venv/.requirements.txt"
    python="$venv/bin/python"
    if [[ -x $python ]] && cmp -s "$requirements" "$stamp" &&
        "$python" -c 'import pika, aio_pika' 2>/dev/null; then
        log "reusing venv $venv"
        return
    fi
    log "creating venv $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "${PYTHON:-python3}" -m venv "$venv" || die "cannot create a venv with ${PYTHON:-python3} (is python3-venv installed?)"
    "$python" -m pip install --quiet --disable-pip-version-check -r "$requirements" ||
        die "pip install -r $requirements failed"
    cp "$requirements" "$stamp"
}

# setup_node: amqplib, installed from the lock file with `npm ci` outside the source tree.
setup_node() {
    local dir="$root/target/interop-amqplib"
    local lock="$here/amqplib/package-lock.json"
    command -v node >/dev/null || die "node is not installed (amqplib needs Node 18 or later)"
    command -v npm >/dev/null || die "npm is not installed"
    node_modules="$dir/node_modules"
    if cmp -s "$lock" "$dir/package-lock.json" && [[ -f $node_modules/amqplib/package.json ]]; then
        log "reusing $node_modules"
        return
    fi
    log "installing amqplib into $dir (npm ci)"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$here/amqplib/package.json" "$lock" "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in $dir failed"
}

case $suite in
pika)
    setup_venv
    checks=("$python" -u "$here/pika_interop.py")
    ;;
aio-pika)
    setup_venv
    checks=("$python" -u "$here/aio_pika_interop.py")
    ;;
amqplib)
    setup_node
    checks=(env NODE_PATH="$node_modules" node "$here/amqplib/interop.js")
    ;;
*) die "unknown suite '$suite' (expected pika, aio-pika or amqplib)" ;;
esac

# In the background and waited for, so that a signal to this script is handled at once (bash
# defers traps while a foreground child runs); the EXIT trap stops the checks too.
checks_pid=""
run_checks() {
    local rc=0
    "${checks[@]}" "$1" &
    checks_pid=$!
    wait "$checks_pid" || rc=$?
    checks_pid=""
    return "$rc"
}

# shellcheck disable=SC2317 # called from the EXIT trap
stop_checks() {
    if [[ -n $checks_pid ]]; then
        kill -TERM "$checks_pid" 2>/dev/null || true
        wait "$checks_pid" 2>/dev/null || true
        checks_pid=""
    fi
}

if [[ $# -eq 1 ]]; then
    url=$1
    [[ -n $url ]] || die "empty URL"
    trap stop_checks EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    status=0
    run_checks "$url" || status=$?
    exit "$status"
fi

# --- the bundled broker ---------------------------------------------------------------------------
# shellcheck source=tests/bundled-broker.sh
source "$root/tests/bundled-broker.sh"

# Always runs: whatever happened, the broker must not outlive this script.
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_checks
    broker_cleanup "$status"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

broker_build
read -r port < <(free_ports 1)
broker_start --port "$port" --management-port 0
broker_wait_port "$port"

status=0
run_checks "amqp://guest:guest@127.0.0.1:$port/%2f" || status=$?
broker_stop || [[ $status -ne 0 ]] || status=1
exit "$status"
