#!/usr/bin/env bash
# Start (foreground or background) or stop the local system: gateway, approvals, N dispatchers and a
# webhook sink for notify.webhook. Used by `make run`, `make up` and `make down`.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:?foreground|background|stop}
dispatchers=${2:-1}
py=.venv/bin/python
rundir=.run
mkdir -p "$rundir/logs"

processes() {
  echo "approvals $py -m pj_approvals"
  for i in $(seq 1 "$dispatchers"); do echo "dispatcher-$i $py -m pj_dispatcher"; done
  echo "webhook-sink $py tests/support/webhook_sink.py --port ${PJ_WEBHOOK_SINK_PORT:-9099}"
  echo "gateway $py -m pj_gateway"
}

stop_all() {
  local pids=()
  for f in "$rundir"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f"); rm -f "$f"
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid") || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

wait_healthy() {
  local url="http://127.0.0.1:${PJ_GATEWAY_PORT:-8080}/health"
  for _ in $(seq 1 120); do
    if curl -fsS "$url" 2>/dev/null | grep -q '"status":"ok"'; then return 0; fi
    sleep 0.5
  done
  return 1
}

case "$mode" in
  stop)
    stop_all
    echo "stopped" ;;
  background)
    stop_all
    while read -r name cmd; do
      nohup $cmd >"$rundir/logs/$name.log" 2>&1 &
      echo $! >"$rundir/$name.pid"
    done < <(processes)
    if wait_healthy; then
      echo "up: http://127.0.0.1:${PJ_GATEWAY_PORT:-8080} (logs in $rundir/logs, stop with make down)"
    else
      echo "the system did not become healthy within 60 s; log tails:" >&2
      tail -n 20 "$rundir"/logs/*.log >&2
      stop_all
      exit 1
    fi ;;
  foreground)
    stop_all
    trap 'stop_all; exit 0' INT TERM
    while read -r name cmd; do
      $cmd > >(sed -u "s/^/[$name] /") 2>&1 &
      echo $! >"$rundir/$name.pid"
    done < <(processes)
    if wait_healthy; then
      echo "[run] up: http://127.0.0.1:${PJ_GATEWAY_PORT:-8080} (Ctrl-C stops everything)"
    else
      echo "[run] not healthy after 60 s; still running, see the logs above" >&2
    fi
    wait ;;
  *) echo "usage: $0 foreground|background|stop [dispatchers]" >&2; exit 2 ;;
esac
