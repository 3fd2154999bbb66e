# Shared by the scripts: paths, the build folder, LocalStack start/stop bookkeeping.
FLEET_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The tests and the benchmark find provision.py and the API document here.
export FLEET_ROOT
# A build folder outside the clone survives fresh clones (CI) and `git clean`.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/queue-fleet/target}"
# Where LocalStack listens (LS_PORT, LS_URL): LOCALSTACK_PORT, else the port of a local
# AWS_ENDPOINT_URL, else 4566 (localstack/env.sh).
source "$FLEET_ROOT/localstack/env.sh"
# Everything that talks to AWS (provision.py, the workers, fleetctl, the tests) goes there. A
# LOCALSTACK_PORT given explicitly wins over a local AWS_ENDPOINT_URL left in the environment
# (e.g. by `source .fleet/local.env` of another run).
if [ -n "${LOCALSTACK_PORT:-}" ] && [ -n "${AWS_ENDPOINT_URL:-}" ] \
   && [[ "$AWS_ENDPOINT_URL" =~ ^http://(127\.0\.0\.1|localhost):([0-9]+)/?$ ]] \
   && [ "${BASH_REMATCH[2]}" != "$LS_PORT" ]; then
  echo "LOCALSTACK_PORT=$LS_PORT: AWS_ENDPOINT_URL is $LS_URL (was $AWS_ENDPOINT_URL)" >&2
  AWS_ENDPOINT_URL="$LS_URL"
fi
export LOCALSTACK_PORT="$LS_PORT"
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-$LS_URL}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
FLEET_STARTED_LOCALSTACK=0
# Names the pid of the LocalStack this script started, written by start.sh as soon as it runs:
# an interrupted start is stopped too.
FLEET_LS_OWNER_FILE=""

# Starts LocalStack unless one answers already; remembers whether we started it.
start_localstack() {
  if ls_healthy; then
    echo "using the LocalStack already running at $LS_URL (not started by this script, which leaves it running)" >&2
    return 0
  fi
  FLEET_LS_OWNER_FILE="$(mktemp "${TMPDIR:-/tmp}/fleet-localstack.XXXXXX")"
  bash "$FLEET_ROOT/localstack/start.sh" --owner-file "$FLEET_LS_OWNER_FILE"
  if [ -s "$FLEET_LS_OWNER_FILE" ]; then
    FLEET_STARTED_LOCALSTACK=1
  else
    echo "using the LocalStack another script started at $LS_URL meanwhile (it keeps running)" >&2
  fi
}

# Stops LocalStack only if this script started it (also when its start was interrupted).
stop_localstack() {
  local pid=""
  if [ -n "$FLEET_LS_OWNER_FILE" ]; then
    pid="$(cat "$FLEET_LS_OWNER_FILE" 2>/dev/null || true)"
  fi
  if [ -n "$pid" ] || [ "$FLEET_STARTED_LOCALSTACK" = 1 ]; then
    if [ -z "$pid" ] || ls_is_localstack "$pid"; then
      echo "stopping LocalStack" >&2
    fi
    bash "$FLEET_ROOT/localstack/stop.sh" ${pid:+--pid "$pid"} --grace "${FLEET_LS_STOP_GRACE:-15}"
    FLEET_STARTED_LOCALSTACK=0
  fi
  if [ -n "$FLEET_LS_OWNER_FILE" ]; then
    rm -f "$FLEET_LS_OWNER_FILE"
    FLEET_LS_OWNER_FILE=""
  fi
}

# The Rust version this workspace needs: rust-toolchain.toml's channel when it is a version,
# else the workspace `rust-version` of Cargo.toml. Prints "VERSION FILE".
required_rust() {
  local file channel
  file="$FLEET_ROOT/rust-toolchain.toml"
  if [ -f "$file" ]; then
    channel="$(sed -n 's/^[[:space:]]*channel[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$file" | head -n 1)"
    if [[ "$channel" =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]]; then
      echo "$channel rust-toolchain.toml"
      return 0
    fi
  fi
  channel="$(awk '/^\[/ { s = ($0 == "[workspace.package]") } s && /^rust-version[[:space:]]*=/ { gsub(/.*=[[:space:]]*"|".*/, ""); print; exit }' "$FLEET_ROOT/Cargo.toml")"
  [ -n "$channel" ] && echo "$channel Cargo.toml"
}

# Whether version $1 >= version $2 (major.minor[.patch]).
version_at_least() {
  local a b i
  IFS=. read -r -a a <<<"$1"
  IFS=. read -r -a b <<<"$2"
  for i in 0 1 2; do
    if [ "${a[i]:-0}" -gt "${b[i]:-0}" ]; then return 0; fi
    if [ "${a[i]:-0}" -lt "${b[i]:-0}" ]; then return 1; fi
  done
  return 0
}

# Checks what a local run needs before anything is built or started, with one message per
# missing piece: curl, a Python >= 3.11 with venv (unless LocalStack is installed already), a
# C compiler, cargo and the Rust version the workspace needs. Returns 1 when one is missing.
check_prerequisites() {
  local problems=0 need file have cc_found="" c
  if ! command -v curl >/dev/null 2>&1; then
    echo "missing: curl (the scripts ask LocalStack for its health with it): apt install curl" >&2
    problems=1
  fi
  if ! { [ -s "$LS_VENV/.fleet-installed" ] && "$LS_VENV/bin/python" -c '' 2>/dev/null; }; then
    ls_pick_python >/dev/null || problems=1   # (it says what it found)
  fi
  if [ -n "${CC:-}" ]; then
    command -v "${CC%% *}" >/dev/null 2>&1 && cc_found="$CC"
  else
    for c in cc gcc clang; do
      if command -v "$c" >/dev/null 2>&1; then cc_found="$c"; break; fi
    done
  fi
  if [ -z "$cc_found" ]; then
    echo "missing: a C compiler${CC:+ (CC=$CC)}: the build compiles C code (aws-lc-sys, ring," \
      "mimalloc): apt install build-essential (macOS: xcode-select --install)" >&2
    problems=1
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "missing: cargo and rustc: install Rust with rustup (https://rustup.rs)" >&2
    problems=1
  elif read -r need file < <(required_rust); [ -n "${need:-}" ]; then
    if ! have="$(cd "$FLEET_ROOT" && "${RUSTC:-rustc}" --version 2>&1)"; then
      echo "missing: Rust $need ($file): rustc fails here: ${have##*$'\n'}" >&2
      echo "  install it: rustup toolchain install $need" >&2
      problems=1
    else
      have="$(sed -n 's/^rustc \([0-9][0-9.]*\).*/\1/p' <<<"$have")"
      if [ -z "$have" ] || ! version_at_least "$have" "$need"; then
        echo "too old: rustc ${have:-(unknown version)}; this workspace needs Rust $need ($file):" \
          "rustup toolchain install $need, or rustup update" >&2
        problems=1
      fi
    fi
  fi
  return "$problems"
}
