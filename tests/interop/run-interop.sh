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
ready_secs=${READY_SECS:-20}
stop_secs=${STOP_SECS:-10}
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
broker_pid=""
workdir=$(mktemp -d "${TMPDIR:-/tmp}/run-interop.XXXXXX")
broker_log="$workdir/broker.stderr"

# shellcheck disable=SC2317 # called from the EXIT trap
show_broker_log() {
    if [[ -s $broker_log ]]; then
        log "broker stderr (last 50 lines of $broker_log):"
        tail -n 50 "$broker_log" | sed 's/^/    /' >&2
    else
        log "broker stderr: (empty)"
    fi
}

# Always runs: whatever happened, the broker must not outlive this script.
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_checks
    if [[ -n $broker_pid ]] && kill -0 "$broker_pid" 2>/dev/null; then
        log "stopping broker (pid $broker_pid)"
        kill -TERM "$broker_pid" 2>/dev/null || true
        for _ in $(seq 1 $((stop_secs * 10))); do
            kill -0 "$broker_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    if [[ $status -ne 0 ]]; then
        show_broker_log
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

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data_dir="$workdir/data"
log "starting $broker_bin --port $port --management-port 0 --data-dir $data_dir"
NO_COLOR=1 "$broker_bin" --port "$port" --management-port 0 --data-dir "$data_dir" 2>"$broker_log" &
broker_pid=$!

port_open() {
    # A bare TCP connect (no AMQP), closed at once when the subshell exits.
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

deadline=$((SECONDS + ready_secs))
until port_open; do
    if ! kill -0 "$broker_pid" 2>/dev/null; then
        rc=0
        wait "$broker_pid" || rc=$?
        broker_pid=""
        die "the broker exited (status $rc) before accepting on 127.0.0.1:$port"
    fi
    if ((SECONDS >= deadline)); then
        die "the broker did not accept on 127.0.0.1:$port within ${ready_secs}s"
    fi
    sleep 0.1
done
log "broker accepts on 127.0.0.1:$port (pid $broker_pid)"

status=0
run_checks "amqp://guest:guest@127.0.0.1:$port/%2f" || status=$?

log "sending SIGTERM to the broker (pid $broker_pid)"
kill -TERM "$broker_pid" 2>/dev/null || true
stopped=false
for _ in $(seq 1 $((stop_secs * 10))); do
    if ! kill -0 "$broker_pid" 2>/dev/null; then
        stopped=true
        break
    fi
    sleep 0.1
done
if ! $stopped; then
    log "error: the broker did not exit within ${stop_secs}s of SIGTERM; killing it"
    kill -KILL "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
    exit 1
fi
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
