# Shared by the scripts: paths, the build folder, LocalStack start/stop bookkeeping.
FLEET_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The tests and the benchmark find provision.py and the API document here.
export FLEET_ROOT
# A build folder outside the clone survives fresh clones (CI) and `git clean`.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/queue-fleet/target}"
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
FLEET_STARTED_LOCALSTACK=0

# Starts LocalStack unless one answers already; remembers whether we started it.
start_localstack() {
  source "$FLEET_ROOT/localstack/env.sh"
  if ls_healthy; then
    echo "using the LocalStack already running at $LS_URL" >&2
  else
    bash "$FLEET_ROOT/localstack/start.sh"
    FLEET_STARTED_LOCALSTACK=1
  fi
}

# Stops LocalStack only if this script started it.
stop_localstack() {
  if [ "$FLEET_STARTED_LOCALSTACK" = 1 ]; then
    echo "stopping LocalStack" >&2
    bash "$FLEET_ROOT/localstack/stop.sh"
    FLEET_STARTED_LOCALSTACK=0
  fi
}
