# shellcheck shell=bash
# The bundled broker binary as a child process of a test script (sourced by
# tests/interop/run-interop.sh and tests/dashboard/run-dashboard-test.sh): build it, start it with
# a fresh --data-dir, wait for its ports, stop it with SIGTERM and require a clean exit.
#
#   broker_build                 sets broker_bin: $BROKER_BIN, else `cargo build` (CARGO_TARGET_DIR honoured)
#   free_ports N                 prints N distinct free loopback ports
#   broker_start ARGS...         starts "$broker_bin" ARGS --data-dir DIR in the background
#   broker_wait_port PORT        waits until it accepts on 127.0.0.1:PORT (dies if it exits first)
#   broker_stop                  SIGTERM; fails unless it exits with status 0 in time
#   broker_cleanup STATUS        for the caller's EXIT trap: kills a broker still running, shows
#                                its stderr when STATUS is non-zero, removes DIR
#
# The caller defines `log` and `die`. READY_SECS (default 20) bounds the wait for a port,
# STOP_SECS (default 10) the wait for the exit after SIGTERM.

broker_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
broker_pid=""
broker_dir=""
broker_ready_secs=${READY_SECS:-20}
broker_stop_secs=${STOP_SECS:-10}

broker_build() {
    if [[ -n ${BROKER_BIN:-} ]]; then
        broker_bin=$BROKER_BIN
        log "using BROKER_BIN=$broker_bin (not building)"
    else
        log "building the broker: cargo build -p amqp-broker --bin amqp-broker"
        (cd "$broker_root" && cargo build -p amqp-broker --bin amqp-broker) || die "cargo build failed"
        local target_dir=${CARGO_TARGET_DIR:-$broker_root/target}
        [[ $target_dir == /* ]] || target_dir="$broker_root/$target_dir"
        broker_bin="$target_dir/debug/amqp-broker"
    fi
    [[ -x $broker_bin ]] || die "no broker binary at $broker_bin"
}

free_ports() {
    # Every socket stays bound until all are picked, so the ports differ.
    python3 - "$1" <<'EOF'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
}

broker_start() {
    broker_dir=$(mktemp -d "${TMPDIR:-/tmp}/bundled-broker.XXXXXX")
    log "starting $broker_bin $* --data-dir $broker_dir/data"
    NO_COLOR=1 "$broker_bin" "$@" --data-dir "$broker_dir/data" 2>"$broker_dir/broker.stderr" &
    broker_pid=$!
}

broker_wait_port() {
    local port=$1
    local deadline=$((SECONDS + broker_ready_secs))
    # A bare TCP connect, closed at once when the subshell exits.
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! kill -0 "$broker_pid" 2>/dev/null; then
            local rc=0
            wait "$broker_pid" || rc=$?
            broker_pid=""
            die "the broker exited (status $rc) before accepting on 127.0.0.1:$port"
        fi
        ((SECONDS < deadline)) || die "the broker did not accept on 127.0.0.1:$port within ${broker_ready_secs}s"
        sleep 0.1
    done
    log "broker accepts on 127.0.0.1:$port (pid $broker_pid)"
}

broker_stop() {
    log "sending SIGTERM to the broker (pid $broker_pid)"
    kill -TERM "$broker_pid" 2>/dev/null || true
    local deadline=$((SECONDS + broker_stop_secs))
    while kill -0 "$broker_pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "error: the broker did not exit within ${broker_stop_secs}s of SIGTERM; killing it"
            kill -KILL "$broker_pid" 2>/dev/null || true
            wait "$broker_pid" 2>/dev/null || true
            broker_pid=""
            return 1
        fi
        sleep 0.1
    done
    local rc=0
    wait "$broker_pid" || rc=$?
    broker_pid=""
    if [[ $rc -ne 0 ]]; then
        log "error: the broker exited with status $rc after SIGTERM (expected 0)"
        return 1
    fi
    log "broker exited cleanly after SIGTERM"
}

broker_cleanup() {
    local status=$1
    if [[ -n $broker_pid ]] && kill -0 "$broker_pid" 2>/dev/null; then
        log "stopping broker (pid $broker_pid)"
        kill -TERM "$broker_pid" 2>/dev/null || true
        local i
        for ((i = 0; i < broker_stop_secs * 10; i++)); do
            kill -0 "$broker_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    local stderr="$broker_dir/broker.stderr"
    if [[ $status -ne 0 && -n $broker_dir ]]; then
        if [[ -s $stderr ]]; then
            log "broker stderr (last 50 lines of $stderr):"
            tail -n 50 "$stderr" | sed 's/^/    /' >&2
        else
            log "broker stderr: (empty)"
        fi
    fi
    [[ -z $broker_dir ]] || rm -rf "$broker_dir"
}
