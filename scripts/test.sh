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
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
