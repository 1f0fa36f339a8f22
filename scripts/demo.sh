#!/usr/bin/env bash
# The main job: a full staged rollout (shadow -> 5% -> 25% -> 50% -> 100%) of the fraud
# case study's policy, decided by the KPI gate on a simulated stream. Extra arguments go
# to `kpigate simulate` (e.g. --scenario recall-minus-5 for a candidate that is rolled back).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "$#" -eq 0 ]; then
  set -- --scenario recall-plus-3.2
fi
exec .venv/bin/kpigate simulate examples/policies/fraud.yaml "$@"
