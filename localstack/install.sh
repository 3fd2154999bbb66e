#!/usr/bin/env bash
# Installs LocalStack (no Docker) into the project's ignored folder .localstack/venv.
# Idempotent: a second run with the same pins does nothing.
# Prefers Python 3.13 (localstack-core 2026.3.0); falls back to the system Python 3.11 (4.13.1).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
root="$FLEET_ROOT"
dir="$LS_DIR"
venv="$LS_VENV"
stamp="$venv/.fleet-installed"

py="$(ls_pick_python)"
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
