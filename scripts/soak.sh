#!/usr/bin/env bash
# Soak test of the bundled broker (minutes; not part of the unit suite, CI does not run it).
#
#   scripts/soak.sh [--minutes N] [any other `amqp-perf soak` flag]
#
# Builds (release) and starts target/release/amqp-broker on a free port with a temporary
# --data-dir, runs `amqp-perf soak` against it (500 connections x 4 channels by default:
# persistent publishes with confirms to durable queues, consumers, one slow consumer, random
# abrupt disconnects, a probe connection every 100 ms, the broker's RSS every second), then
# stops the broker and removes the directory. Exits non-zero if a confirmed message was lost.
# SOAK_BROKER_ARGS adds broker flags, e.g. SOAK_BROKER_ARGS="--queue-memory-bytes 1048576".
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# Each soak connection is three sockets in the load tool (client, relay in, relay out) and one
# in the broker: raise the open-file limit as far as allowed (up to 65536).
limit="$(ulimit -Hn)"
if [[ "$limit" == unlimited || "$limit" -gt 65536 ]]; then
    limit=65536
fi
ulimit -n "$limit"

cargo build --release -p amqp-broker -p amqp-perf

work="$(mktemp -d "${TMPDIR:-/tmp}/amqp-soak.XXXXXX")"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
broker_pid=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [[ -n "$broker_pid" ]] && kill -0 "$broker_pid" 2>/dev/null; then
        kill -TERM "$broker_pid"
        wait "$broker_pid" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

read -r -a broker_args <<<"${SOAK_BROKER_ARGS:-}"
RUST_LOG=warn target/release/amqp-broker --port "$port" --no-management \
    --data-dir "$work/data" "${broker_args[@]}" 2>"$work/broker.log" &
broker_pid=$!

ready=no
for _ in $(seq 1 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        ready=yes
        break
    fi
    sleep 0.2
done
if [[ "$ready" != yes ]]; then
    echo "the broker did not accept connections within 10 s; its log:" >&2
    cat "$work/broker.log" >&2
    exit 1
fi

echo "broker pid $broker_pid on 127.0.0.1:$port, data in $work/data"
status=0
target/release/amqp-perf soak --broker "127.0.0.1:$port" --broker-pid "$broker_pid" "$@" || status=$?
if ! kill -0 "$broker_pid" 2>/dev/null; then
    echo "the broker died during the soak; its log:" >&2
    cat "$work/broker.log" >&2
    status=1
fi
warnings="$(grep -c -E 'WARN|ERROR' "$work/broker.log" || true)"
echo "broker log: $warnings warnings or errors"
grep -E 'WARN|ERROR' "$work/broker.log" | sort | uniq -c | sort -rn | head -5 || true
exit "$status"
