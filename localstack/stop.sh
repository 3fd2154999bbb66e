#!/usr/bin/env bash
# Stops the LocalStack started by start.sh: SIGTERM, then SIGKILL after a deadline
# (one instance was seen ignoring SIGTERM for over 20 s).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

[ -f "$LS_PIDFILE" ] || exit 0
pid="$(cat "$LS_PIDFILE")"
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "LocalStack ignored SIGTERM for 15 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null
  fi
fi
rm -f "$LS_PIDFILE"
