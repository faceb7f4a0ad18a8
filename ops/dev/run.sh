#!/usr/bin/env bash
# Start (foreground or background) or stop the local system: gateway, approvals, N dispatchers, the
# notifier and a webhook sink for notify.webhook. Used by `make run`, `make up` and `make down`; `plan`
# prints what would be started.
#
# Each approvals and dispatcher process serves its own /metrics on the ports ops/prometheus/prometheus.yml
# scrapes: approvals on PJ_APPROVALS_METRICS_PORT (9101), dispatcher-N on PJ_DISPATCHER_METRICS_PORT + N - 1
# (9102, 9103, ...), the notifier on PJ_NOTIFIER_METRICS_PORT (9109); 0 turns them off. `make up` keeps
# the previous run's logs as .run/logs/<name>.log.1.
# PJ_RUN_DIR (default .run) holds the pid files and logs; the tests give each run its own.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:?foreground|background|stop|plan}
dispatchers=${2:-1}
py=.venv/bin/python
rundir=${PJ_RUN_DIR:-.run}
approvals_metrics_port=${PJ_APPROVALS_METRICS_PORT:-9101}
dispatcher_metrics_port=${PJ_DISPATCHER_METRICS_PORT:-9102}
notifier_metrics_port=${PJ_NOTIFIER_METRICS_PORT:-9109}

processes() {
  echo "approvals env PJ_APPROVALS_METRICS_PORT=$approvals_metrics_port $py -m pj_approvals"
  for i in $(seq 1 "$dispatchers"); do
    port=0
    [ "$dispatcher_metrics_port" -gt 0 ] && port=$((dispatcher_metrics_port + i - 1))
    # No token key for a dispatcher, even one exported in this shell: it verifies no token (docs/security.md).
    echo "dispatcher-$i env -u PJ_JWT_SECRET -u PJ_JWT_SECRET_FILE PJ_DISPATCHER_METRICS_PORT=$port $py -m pj_dispatcher"
  done
  # It tells approvers per the catalog's `notifications` (PJ_CATALOG); with none configured it sends
  # nothing. Like a dispatcher it verifies no token, so it gets no token key.
  echo "notifier env -u PJ_JWT_SECRET -u PJ_JWT_SECRET_FILE PJ_NOTIFIER_METRICS_PORT=$notifier_metrics_port $py -m pj_notifier"
  echo "webhook-sink $py tests/support/webhook_sink.py --port ${PJ_WEBHOOK_SINK_PORT:-9099}"
  echo "gateway $py -m pj_gateway"
}

# Each service connects to RabbitMQ as its own user, allowed only what it does (docs/security.md):
# created or updated with rabbitmqctl, their URLs kept in $rundir/broker-users.env (mode 0600). Where
# rabbitmqctl cannot manage the broker (another host), every service connects as PJ_AMQP_URL's user.
broker_users() {
  local file="$rundir/broker-users.env" err
  if err=$($py -m pj_common.broker_access apply --users-file "$file" 2>&1 >/dev/null); then
    # Read, not sourced: a URL is data (an `&` in its query must not run anything).
    while IFS='=' read -r key value; do
      case "$key" in PJ_AMQP_URL_[A-Z]*) printf -v "$key" '%s' "$value" ;; esac
    done < "$file"
  else
    echo "[run] ${err:-broker users not set}; every service connects as PJ_AMQP_URL's user" >&2
  fi
}

# The AMQP URL of the process `name` (set as PJ_AMQP_URL in its environment, never on a command line).
amqp_url_for() {
  local url
  case "$1" in
    approvals) url=${PJ_AMQP_URL_APPROVALS:-} ;;
    dispatcher-*) url=${PJ_AMQP_URL_DISPATCHER:-} ;;
    notifier) url=${PJ_AMQP_URL_NOTIFIER:-} ;;
    gateway) url=${PJ_AMQP_URL_GATEWAY:-} ;;
  esac
  echo "${url:-${PJ_AMQP_URL:-}}"
}

# The previous run's log becomes <name>.log.1 (one generation kept), so a restart loses nothing.
rotate_logs() {
  for log in "$rundir"/logs/*.log; do
    [ -s "$log" ] && mv -f "$log" "$log.1"
  done
  return 0
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
  plan)
    processes ;;
  stop)
    stop_all
    echo "stopped" ;;
  background)
    stop_all
    mkdir -p "$rundir/logs"
    rotate_logs
    broker_users
    while read -r name cmd; do
      PJ_AMQP_URL=$(amqp_url_for "$name") nohup $cmd >"$rundir/logs/$name.log" 2>&1 &
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
    mkdir -p "$rundir/logs"
    trap 'stop_all; exit 0' INT TERM
    broker_users
    while read -r name cmd; do
      PJ_AMQP_URL=$(amqp_url_for "$name") $cmd > >(sed -u "s/^/[$name] /") 2>&1 &
      echo $! >"$rundir/$name.pid"
    done < <(processes)
    if wait_healthy; then
      echo "[run] up: http://127.0.0.1:${PJ_GATEWAY_PORT:-8080} (Ctrl-C stops everything)"
    else
      echo "[run] not healthy after 60 s; still running, see the logs above" >&2
    fi
    wait ;;
  *) echo "usage: $0 foreground|background|stop|plan [dispatchers]" >&2; exit 2 ;;
esac
