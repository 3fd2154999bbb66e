#!/usr/bin/env bash
# Installs LocalStack (no Docker) into the project's ignored folder .localstack/venv.
# Idempotent: a second run with the same pins does nothing.
# Prefers Python 3.13 (localstack-core 2026.3.0); falls back to the system Python 3.11 (4.13.1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.localstack"
venv="$dir/venv"
stamp="$venv/.fleet-installed"

pick_python() {
  local candidates=()
  if command -v pyenv >/dev/null 2>&1; then
    local proot; proot="$(pyenv root)"
    for v in "$proot"/versions/3.13*/bin/python3; do [ -x "$v" ] && candidates+=("$v"); done
  fi
  candidates+=(python3.13 python3)
  for py in "${candidates[@]}"; do
    if command -v "$py" >/dev/null 2>&1 || [ -x "$py" ]; then
      if "$py" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
        echo "$py"; return 0
      fi
    fi
  done
  echo "no Python >= 3.11 found" >&2; return 1
}

py="$(pick_python)"
if "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 13) else 1)'; then
  ls_version="2026.3.0"
else
  ls_version="4.13.1"
fi
want="localstack-core==$ls_version provider=$(sha1sum "$root/localstack/dynamodb-moto-provider/fleet_dynamodb_moto/__init__.py" | cut -c1-12)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "installing LocalStack $ls_version with $("$py" --version) into $venv" >&2
mkdir -p "$dir"
"$py" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "localstack-core[runtime]==$ls_version" \
  'cbor2<6' 'pyopenssl==24.3.0' 'cryptography==44.0.3' service_identity 'joserfc<1.2' \
  boto3 pyyaml
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps \
  "$root/localstack/dynamodb-moto-provider"
echo "$want" > "$stamp"
