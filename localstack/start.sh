#!/usr/bin/env bash
# Starts LocalStack (no Docker) on 127.0.0.1:$LOCALSTACK_PORT (default 4566) in the background,
# unless one already answers there. Installs it first when needed. Waits until it is healthy.
#
#   localstack/start.sh [--owner-file FILE]
#
# --owner-file FILE: writes the pid of the LocalStack this script starts to FILE as soon as it
# runs (nothing when one was running already), so that a caller interrupted at any point can
# stop exactly what it started (scripts/lib.sh).
#
# LocalStack runs in a session of its own: a Ctrl-C in the terminal reaches the scripts, which
# stop their workers first and LocalStack last, not LocalStack at once. If it does not become
# healthy, or this script is interrupted before it is, it is stopped again.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

owner_file=""
while [ $# -gt 0 ]; do
  case "$1" in
    --owner-file) owner_file="${2:?--owner-file needs a file}"; shift 2 ;;
    *) echo "usage: localstack/start.sh [--owner-file FILE]" >&2; exit 2 ;;
  esac
done

mkdir -p "$LS_DIR"
# One starter per port at a time: a second one waits here and then finds it healthy.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$LS_LOCK"
  if ! flock -w 300 9; then
    echo "another localstack/start.sh for port $LS_PORT has held $LS_LOCK for 5 minutes" >&2
    exit 1
  fi
fi

if ls_healthy; then
  echo "LocalStack already running at $LS_URL" >&2
  exit 0
fi
if [ -f "$LS_PIDFILE" ] && ls_is_localstack "$(cat "$LS_PIDFILE")"; then
  echo "the LocalStack of $LS_PIDFILE (pid $(cat "$LS_PIDFILE")) runs but does not answer at $LS_URL;" \
    "stop it first: LOCALSTACK_PORT=$LS_PORT localstack/stop.sh (log: $LS_LOG)" >&2
  exit 1
fi
if ls_port_open; then
  echo "127.0.0.1:$LS_PORT is taken by a program that is not a healthy LocalStack;" \
    "stop it, or choose another port: LOCALSTACK_PORT=<port>" >&2
  exit 1
fi
bash "$FLEET_ROOT/localstack/install.sh"
mkdir -p "$LOCALSTACK_VOLUME_DIR"

rm -f "$LS_PIDFILE"   # stale: no LocalStack runs under it (checked above)
pid=""
# Stops what this script started (a failed or interrupted start); ignores further Ctrl-C
# meanwhile, since an interrupted stop is what leaves LocalStack behind.
abandon() {
  trap '' INT TERM HUP
  [ -n "$pid" ] || pid="$(cat "$LS_PIDFILE" 2>/dev/null || true)"
  [ "$1" = 1 ] || echo "interrupted: stopping the LocalStack being started" >&2
  [ -n "$pid" ] && bash "$FLEET_ROOT/localstack/stop.sh" --pid "$pid"
  exit "$1"
}
trap 'abandon 130' INT
trap 'abandon 143' TERM
trap 'abandon 129' HUP

echo "starting LocalStack at $LS_URL (log: $LS_LOG)" >&2
# `setsid` gives it its own session and process group (stop.sh stops the group); the inner
# shell writes its own pid, which `exec` hands on to LocalStack, whether or not setsid forked.
session=()
command -v setsid >/dev/null 2>&1 && session=(setsid)
nohup "${session[@]}" bash -c 'echo $$ >"$0"; exec "$@"' "$LS_PIDFILE" \
  "$LS_VENV/bin/python" -m localstack.runtime.main </dev/null >"$LS_LOG" 2>&1 9>&- &
for _ in $(seq 1 100); do
  [ -s "$LS_PIDFILE" ] && break
  sleep 0.05
done
pid="$(cat "$LS_PIDFILE" 2>/dev/null || true)"
if [ -z "$pid" ]; then
  echo "LocalStack did not start; see $LS_LOG" >&2
  exit 1
fi
[ -z "$owner_file" ] || echo "$pid" >"$owner_file"

for _ in $(seq 1 120); do
  if ls_healthy; then
    echo "LocalStack is up (pid $pid)" >&2
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "LocalStack exited; last lines of $LS_LOG:" >&2
    tail -n 30 "$LS_LOG" >&2
    rm -f "$LS_PIDFILE"
    exit 1
  fi
  sleep 0.5
done
echo "LocalStack did not become healthy in 60 s; stopping it (see $LS_LOG)" >&2
abandon 1
