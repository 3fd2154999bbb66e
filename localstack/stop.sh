#!/usr/bin/env bash
# Stops a LocalStack started by start.sh: SIGTERM, then SIGKILL after a deadline (one instance
# was seen ignoring SIGTERM for over 20 s), to its whole process group when it leads one.
#
#   localstack/stop.sh [--pid PID] [--grace SECS]
#
# Without --pid: the one of the pid file of $LOCALSTACK_PORT (default 4566). A pid that is not
# a running LocalStack (gone, or reused by another program) is left alone. --grace: how long
# SIGTERM may take (default 15 s). LocalStack's shutdown waits for every SQS long poll a client
# abandoned (a stopped worker's) to run out, up to 20 s; it keeps nothing across restarts, so a
# SIGKILL then loses nothing.
set -uo pipefail
# Ctrl-C is ignored here: an interrupted stop is what leaves LocalStack behind.
trap '' INT
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

pid=""
grace=15
while [ $# -gt 0 ]; do
  case "$1" in
    --pid) pid="${2:?--pid needs a pid}"; shift 2 ;;
    --grace) grace="${2:?--grace needs seconds}"; shift 2 ;;
    *) echo "usage: localstack/stop.sh [--pid PID] [--grace SECS]" >&2; exit 2 ;;
  esac
done
if ! [[ "$grace" =~ ^[0-9]+$ ]]; then
  echo "localstack/stop.sh: --grace takes whole seconds, not $grace" >&2
  exit 2
fi
if [ -z "$pid" ] && [ -f "$LS_PIDFILE" ]; then pid="$(cat "$LS_PIDFILE")"; fi
[ -n "$pid" ] || exit 0

if ls_is_localstack "$pid"; then
  target="$pid"
  # Its own process group (start.sh runs it with setsid): stop the group, helpers included.
  [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ] && target="-$pid"
  kill -TERM -- "$target" 2>/dev/null
  for _ in $(seq 1 $((grace * 2))); do
    ls_is_localstack "$pid" || break   # (not kill -0: true for a zombie not reaped yet)
    sleep 0.5
  done
  if ls_is_localstack "$pid"; then
    echo "LocalStack still stopping after $grace s (abandoned SQS long polls?): killing it" >&2
    kill -KILL -- "$target" 2>/dev/null
    for _ in $(seq 1 20); do
      ls_is_localstack "$pid" || break
      sleep 0.25
    done
  fi
fi
# The pid file goes with the instance it names.
if [ -f "$LS_PIDFILE" ] && [ "$(cat "$LS_PIDFILE" 2>/dev/null)" = "$pid" ]; then
  rm -f "$LS_PIDFILE"
fi
exit 0
