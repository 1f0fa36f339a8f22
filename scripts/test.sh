#!/usr/bin/env bash
# The test suite: lint, then every test. Exits non-zero on any failure, and also when
# pytest collects no tests at all (its exit code 5), so an empty run cannot pass.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
