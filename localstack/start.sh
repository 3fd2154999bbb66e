#!/usr/bin/env bash
# Starts LocalStack (no Docker) on 127.0.0.1:4566 in the background, unless one already answers.
# Installs it first when needed. Waits until it is healthy.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

if ls_healthy; then
  echo "LocalStack already running at $LS_URL" >&2
  exit 0
fi
bash "$FLEET_ROOT/localstack/install.sh"
mkdir -p "$LOCALSTACK_VOLUME_DIR"
echo "starting LocalStack at $LS_URL (log: $LS_LOG)" >&2
nohup "$LS_VENV/bin/python" -m localstack.runtime.main >"$LS_LOG" 2>&1 &
echo $! >"$LS_PIDFILE"
for _ in $(seq 1 120); do
  if ls_healthy; then
    echo "LocalStack is up" >&2
    exit 0
  fi
  if ! kill -0 "$(cat "$LS_PIDFILE")" 2>/dev/null; then
    echo "LocalStack exited; last lines of $LS_LOG:" >&2
    tail -n 30 "$LS_LOG" >&2
    exit 1
  fi
  sleep 0.5
done
echo "LocalStack did not become healthy in 60 s; see $LS_LOG" >&2
exit 1
