#!/usr/bin/env bash
# Prepare a fresh machine for kpigate: a .venv with the package and its test tools.
# Idempotent and quick when nothing changed (a stamp records what was installed).
# Needs only Python >= 3.10 and the package registries. (Debian packages such as
# prometheus are added here when a feature needs them.)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "setup: $PYTHON not found; install Python 3.10 or newer (or set PYTHON=...)" >&2
  exit 2
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "setup: $("$PYTHON" --version 2>&1) is too old; kpigate needs Python >= 3.10" >&2
  exit 2
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.kpigate-setup
want="$(cat setup.py scripts/constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setup: installing kpigate and its test tools into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install -qq --disable-pip-version-check \
    -c scripts/constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
