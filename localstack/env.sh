# Sourced by the LocalStack scripts: where things are and how LocalStack is configured.
# Verified settings and why: docs/localstack.md.
FLEET_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LS_DIR="$FLEET_ROOT/.localstack"
LS_VENV="$LS_DIR/venv"

# The port: LOCALSTACK_PORT, else the port of an AWS_ENDPOINT_URL on this machine (e.g. after
# `source .fleet/local.env` of a run on another port), else 4566.
if [ -n "${LOCALSTACK_PORT:-}" ]; then
  LS_PORT="$LOCALSTACK_PORT"
elif [[ "${AWS_ENDPOINT_URL:-}" =~ ^http://(127\.0\.0\.1|localhost):([0-9]+)/?$ ]]; then
  LS_PORT="${BASH_REMATCH[2]}"
else
  LS_PORT=4566
fi
if ! [[ "$LS_PORT" =~ ^[0-9]+$ ]] || [ "$LS_PORT" -lt 1 ] || [ "$LS_PORT" -gt 65535 ]; then
  echo "LOCALSTACK_PORT=$LS_PORT is not a port number (1-65535)" >&2
  return 2 2>/dev/null || exit 2
fi
LS_URL="http://127.0.0.1:$LS_PORT"
# One LocalStack per port, each with its own pid file, log, lock and state; 4566 keeps the
# original names (what scripts/bench reads).
if [ "$LS_PORT" = 4566 ]; then LS_SUFFIX=""; else LS_SUFFIX="-$LS_PORT"; fi
LS_PIDFILE="$LS_DIR/localstack$LS_SUFFIX.pid"
LS_LOG="$LS_DIR/localstack$LS_SUFFIX.log"
LS_LOCK="$LS_DIR/localstack$LS_SUFFIX.lock"

export GATEWAY_LISTEN="127.0.0.1:$LS_PORT"
export GATEWAY_SERVER="${GATEWAY_SERVER:-hypercorn}"   # binds loopback only
export LOCALSTACK_HOST="127.0.0.1:$LS_PORT"
export SQS_ENDPOINT_STRATEGY=off                       # queue URLs on 127.0.0.1
export DNS_ADDRESS=0 SKIP_SSL_CERT_DOWNLOAD=1 DISABLE_EVENTS=1
export LOCALSTACK_VOLUME_DIR="$LS_DIR/volume$LS_SUFFIX"
export PROVIDER_OVERRIDE_DYNAMODB=moto                 # localstack/dynamodb-moto-provider
# LocalStack's SQS otherwise puts a CloudWatch metric for every message it sends, receives and
# deletes, on its one Python core: 16.5 instead of 8 CPU-ms per payment here, half the drain
# rate. Nothing reads them: the one SQS metric fleetctl reads, ApproximateAgeOfOldestMessage,
# is not among those LocalStack publishes (its test puts that datum itself).
export SQS_DISABLE_CLOUDWATCH_METRICS="${SQS_DISABLE_CLOUDWATCH_METRICS:-1}"
export SERVICES="sqs,dynamodb,apigateway,iam,sts,sns,s3,ec2,cloudwatch,logs,events,scheduler,kms"

ls_healthy() {
  curl -fsS --max-time 2 "$LS_URL/_localstack/health" >/dev/null 2>&1
}

# Whether anything accepts connections on the port (a LocalStack still starting, or another
# program).
ls_port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$LS_PORT") 2>/dev/null
}

# Whether PID is a running LocalStack (not a recycled pid of some other program).
ls_is_localstack() {
  local args
  [ -n "${1:-}" ] || return 1
  args="$(ps -o args= -p "$1" 2>/dev/null)" || return 1
  [[ "$args" == *localstack.runtime.main* ]]
}

# A Python >= 3.11 with venv (and ensurepip, which Debian ships apart as python3.X-venv) to
# install LocalStack with: pyenv's 3.13 first (localstack-core 2026.3.0), then python3.13,
# python3. Prints it; otherwise says what it found and returns 1.
ls_pick_python() {
  local candidates=() py found=()
  if command -v pyenv >/dev/null 2>&1; then
    local proot v
    proot="$(pyenv root)"
    for v in "$proot"/versions/3.13*/bin/python3; do [ -x "$v" ] && candidates+=("$v"); done
  fi
  candidates+=(python3.13 python3)
  for py in "${candidates[@]}"; do
    if command -v "$py" >/dev/null 2>&1 || [ -x "$py" ]; then
      if "$py" -c 'import sys, venv, ensurepip; ensurepip.version(); sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
        echo "$py"; return 0
      fi
      found+=("$py: $("$py" -c 'import sys
v = "Python %d.%d.%d" % sys.version_info[:3]
try:
    import venv, ensurepip
    ensurepip.version()
    missing = ""
except Exception:
    missing = ", without venv/ensurepip (Debian, Ubuntu: apt install python%d.%d-venv)" % sys.version_info[:2]
print(v + (" (too old)" if sys.version_info < (3, 11) else "") + missing)' 2>&1 | tail -n 1)")
    fi
  done
  echo "missing: Python >= 3.11 with venv, to install LocalStack into .localstack/venv" \
    "(pyenv install 3.13, or apt install python3 python3-venv)" >&2
  if [ ${#found[@]} -gt 0 ]; then
    printf '  found %s\n' "${found[@]}" >&2
  else
    echo "  found no python3 on PATH" >&2
  fi
  return 1
}
