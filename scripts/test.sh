#!/usr/bin/env bash
# The test suite: lint, the import contract (layers, no cycles), type checks, then every
# test. Exits non-zero on any failure, and also when pytest collects no tests at all (its
# exit code 5), so an empty run cannot pass.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache
.venv/bin/mypy
# Two pytest workers (pytest-xdist): CI has 2 cores, and most tests wait on servers they
# started, so the suite takes ~9 instead of ~15 minutes. Pass -n 0 to run serially.
.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 "$@"
