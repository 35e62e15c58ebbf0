#!/usr/bin/env bash
# Starts or stops the three combined nodes of config/cluster/ on 127.0.0.1.
#   scripts/cluster.sh start   builds strom (release), starts nodes 1-3 in the background
#   scripts/cluster.sh stop    SIGTERM to each node, waits for a clean exit
# Data, logs and pid files live under CLUSTER_DIR (default ./cluster-data).
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER_DIR=${CLUSTER_DIR:-./cluster-data}
BIN=${STROM_BIN:-target/release/strom}

start() {
    if [[ -z "${STROM_BIN:-}" ]]; then cargo build --release -p strom; fi
    mkdir -p "$CLUSTER_DIR"
    for n in 1 2 3; do
        pidfile="$CLUSTER_DIR/node-$n.pid"
        if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "node $n already running (pid $(cat "$pidfile"))"
            continue
        fi
        "$BIN" start --config "config/cluster/node-$n.toml" --data-dir "$CLUSTER_DIR/node-$n" \
            >"$CLUSTER_DIR/node-$n.log" 2>&1 &
        echo $! >"$pidfile"
        echo "node $n started (pid $!, log $CLUSTER_DIR/node-$n.log)"
    done
    echo "Kafka bootstrap: 127.0.0.1:9092,127.0.0.1:19092,127.0.0.1:29092"
}

stop() {
    for n in 1 2 3; do
        pidfile="$CLUSTER_DIR/node-$n.pid"
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        if kill -TERM "$pid" 2>/dev/null; then
            for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                echo "node $n did not stop within 20 s; killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$pidfile"
        echo "node $n stopped"
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
