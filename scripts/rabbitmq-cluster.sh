#!/usr/bin/env bash
# A three-node RabbitMQ cluster on loopback, beside whatever RabbitMQ already runs on this machine
# (its node, ports and data are left alone). For the cluster fail-over test and for trying an
# application on a cluster by hand.
#
#   scripts/rabbitmq-cluster.sh start        start (or find running) and join the nodes; prints the
#                                            AMQP URLs, comma-separated, on stdout
#   scripts/rabbitmq-cluster.sh stop         stop the nodes and delete their data (safe to repeat)
#   scripts/rabbitmq-cluster.sh status       each node's state, and the URLs
#   scripts/rabbitmq-cluster.sh urls         the AMQP URLs, comma-separated
#   scripts/rabbitmq-cluster.sh stop-node N  stop RabbitMQ on node N (1-3) (`rabbitmqctl stop_app`;
#                                            the Erlang node stays up, as in a rolling restart)
#   scripts/rabbitmq-cluster.sh start-node N start it again and wait until it runs
#   scripts/rabbitmq-cluster.sh leader QUEUE the number (1-3) of the node leading a quorum queue
#   scripts/rabbitmq-cluster.sh connection-node NAME
#                                            the number of the node a client connection named NAME
#                                            (its `connection_name` property) is connected to
#
# Node N is `amqptestN@localhost`, AMQP on 127.0.0.1:(BASE+N), distribution on (BASE+20000+N).
# Each node has its own data, log and configuration under RABBITMQ_CLUSTER_DIR, no plugins (so it
# binds no other port), and the Erlang cookie of the machine's RabbitMQ user (the Debian
# package's wrappers run every command as that user).
#
# Environment: RABBITMQ_CLUSTER_DIR (default ${TMPDIR:-/tmp}/amqp-rs-rabbitmq-cluster),
# RABBITMQ_CLUSTER_BASE_PORT (default 5680: AMQP on 5681-5683, distribution on 25681-25683),
# RABBITMQ_CLUSTER_WAIT_SECS (default 90) bounds each wait.
set -euo pipefail

cluster_dir=${RABBITMQ_CLUSTER_DIR:-${TMPDIR:-/tmp}/amqp-rs-rabbitmq-cluster}
base_port=${RABBITMQ_CLUSTER_BASE_PORT:-5680}
wait_secs=${RABBITMQ_CLUSTER_WAIT_SECS:-90}
nodes=(1 2 3)

log() {
    printf 'rabbitmq-cluster: %s\n' "$*" >&2
}

node_name() {
    printf 'amqptest%d@localhost' "$1"
}

amqp_port() {
    echo $((base_port + $1))
}

dist_port() {
    echo $((base_port + 20000 + $1))
}

node_dir() {
    printf '%s/node%d' "$cluster_dir" "$1"
}

urls() {
    local n list=()
    for n in "${nodes[@]}"; do
        list+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f")
    done
    local IFS=,
    echo "${list[*]}"
}

# rabbitmqctl on node N, quietly.
ctl() {
    local n=$1
    shift
    rabbitmqctl -q -n "$(node_name "$n")" "$@"
}

# quietly COMMAND...: runs it with its output kept, and shows the output only if it fails (the
# join commands print warnings that mean nothing for a fresh node).
quietly() {
    local output
    if ! output=$("$@" 2>&1); then
        printf '%s\n' "$output" >&2
        return 1
    fi
}

# Whether RabbitMQ (the application, not only the Erlang node) runs on node N.
app_running() {
    rabbitmq-diagnostics -q -n "$(node_name "$1")" check_running >/dev/null 2>&1
}

# Whether the Erlang node N answers at all.
node_answers() {
    rabbitmq-diagnostics -q -n "$(node_name "$1")" ping >/dev/null 2>&1
}

port_in_use() {
    # shellcheck disable=SC2016 # $1 is the inner shell's argument
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# wait_until WHAT COMMAND...: retries COMMAND every second up to the wait.
wait_until() {
    local what=$1
    shift
    local deadline=$((SECONDS + wait_secs))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            log "$what: not within ${wait_secs}s"
            return 1
        fi
        sleep 1
    done
}

# The node's environment file: it replaces /etc/rabbitmq/rabbitmq-env.conf, which names the
# machine's own node.
write_node_files() {
    local n=$1 dir
    dir=$(node_dir "$n")
    mkdir -p "$dir/mnesia" "$dir/log"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
log.file.level = info
EOF
    echo '[].' >"$dir/enabled_plugins"
    cat >"$dir/rabbitmq-env.conf" <<EOF
NODENAME=$(node_name "$n")
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=$(amqp_port "$n")
DIST_PORT=$(dist_port "$n")
MNESIA_BASE=$dir/mnesia
LOG_BASE=$dir/log
PID_FILE=$dir/pid
CONFIG_FILE=$dir/rabbitmq.conf
ENABLED_PLUGINS_FILE=$dir/enabled_plugins
ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
}

start_node() {
    local n=$1
    if node_answers "$n"; then
        return 0
    fi
    local port
    for port in "$(amqp_port "$n")" "$(dist_port "$n")"; do
        if port_in_use "$port"; then
            log "port $port (node $n) is taken by another program: set RABBITMQ_CLUSTER_BASE_PORT"
            return 1
        fi
    done
    write_node_files "$n"
    log "starting $(node_name "$n") on 127.0.0.1:$(amqp_port "$n")"
    RABBITMQ_CONF_ENV_FILE="$(node_dir "$n")/rabbitmq-env.conf" rabbitmq-server -detached
}

# The nodes node 1 sees running in its cluster, one per line.
running_members() {
    rabbitmqctl -q -n "$(node_name 1)" cluster_status --formatter json 2>/dev/null |
        python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["running_nodes"]))' 2>/dev/null
}

all_three_running() {
    local members
    members=$(running_members) || return 1
    local n
    for n in "${nodes[@]}"; do
        grep -qx "$(node_name "$n")" <<<"$members" || return 1
    done
}

cmd_start() {
    if all_three_running; then
        log "already running"
        urls
        return 0
    fi
    mkdir -p "$cluster_dir"
    if [[ $(id -u) == 0 ]] && id rabbitmq >/dev/null 2>&1; then
        # The package's wrappers run the nodes as the rabbitmq user.
        chown rabbitmq: "$cluster_dir"
    fi
    local n
    for n in "${nodes[@]}"; do
        if [[ $(id -u) == 0 ]] && id rabbitmq >/dev/null 2>&1; then
            write_node_files "$n"
            chown -R rabbitmq: "$(node_dir "$n")"
        fi
        start_node "$n"
    done
    for n in "${nodes[@]}"; do
        wait_until "$(node_name "$n") running" app_running "$n"
    done
    for n in 2 3; do
        if ctl 1 cluster_status --formatter json 2>/dev/null | grep -q "\"$(node_name "$n")\""; then
            continue
        fi
        log "joining $(node_name "$n") to $(node_name 1)"
        quietly ctl "$n" stop_app
        quietly ctl "$n" reset
        quietly ctl "$n" join_cluster "$(node_name 1)"
        quietly ctl "$n" start_app
    done
    wait_until "three running members" all_three_running
    log "formed: $(running_members | tr '\n' ' ')"
    urls
}

cmd_stop() {
    local n pid
    for n in "${nodes[@]}"; do
        if node_answers "$n"; then
            log "stopping $(node_name "$n")"
            ctl "$n" stop || true
        fi
        # A node that no longer answers may still be shutting down: wait for its pid, then end it.
        pid=$(cat "$(node_dir "$n")/pid" 2>/dev/null || true)
        if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            local deadline=$((SECONDS + 15))
            while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 1; done
            if kill -0 "$pid" 2>/dev/null; then
                log "$(node_name "$n") (pid $pid) did not stop: killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
    done
    if [[ -d $cluster_dir ]]; then
        rm -rf "$cluster_dir"
        log "removed $cluster_dir"
    fi
}

cmd_status() {
    local n state
    for n in "${nodes[@]}"; do
        if app_running "$n"; then
            state=running
        elif node_answers "$n"; then
            state="node up, RabbitMQ stopped"
        else
            state=down
        fi
        printf '%s  amqp://guest:guest@127.0.0.1:%d/%%2f  %s\n' "$(node_name "$n")" "$(amqp_port "$n")" "$state"
    done
    if members=$(running_members); then
        printf 'cluster members running (seen from node 1): %s\n' "$(tr '\n' ' ' <<<"$members")"
    fi
}

node_arg() {
    [[ ${1:-} =~ ^[123]$ ]] || {
        echo "a node number, 1 to 3, is needed" >&2
        exit 2
    }
}

cmd_leader() {
    local queue=$1 n m leader
    # Ask any running node: each knows every queue's leader.
    for n in "${nodes[@]}"; do
        if leader=$(ctl "$n" list_queues name leader --no-table-headers 2>/dev/null |
            awk -F '\t' -v q="$queue" '$1 == q { print $2 }') && [[ -n $leader ]]; then
            for m in "${nodes[@]}"; do
                if [[ $leader == "$(node_name "$m")" ]]; then
                    echo "$m"
                    return 0
                fi
            done
            echo "queue $queue is led by $leader, not a node of this cluster" >&2
            return 1
        fi
    done
    echo "no running node knows a queue $queue" >&2
    return 1
}

cmd_connection_node() {
    local name=$1 n
    for n in "${nodes[@]}"; do
        if ctl "$n" list_connections client_properties --no-table-headers 2>/dev/null |
            grep -qF "{\"connection_name\",\"$name\"}"; then
            echo "$n"
            return 0
        fi
    done
    echo "no running node has a connection named $name" >&2
    return 1
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
urls) urls ;;
stop-node)
    node_arg "${2:-}"
    ctl "$2" stop_app
    ;;
start-node)
    node_arg "${2:-}"
    ctl "$2" start_app
    wait_until "$(node_name "$2") running" app_running "$2"
    ;;
leader)
    [[ -n ${2:-} ]] || {
        echo "usage: $0 leader QUEUE" >&2
        exit 2
    }
    cmd_leader "$2"
    ;;
connection-node)
    [[ -n ${2:-} ]] || {
        echo "usage: $0 connection-node NAME" >&2
        exit 2
    }
    cmd_connection_node "$2"
    ;;
*)
    echo "usage: $0 start|stop|status|urls|stop-node N|start-node N|leader QUEUE|connection-node NAME" >&2
    exit 2
    ;;
esac
