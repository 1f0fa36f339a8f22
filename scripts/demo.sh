#!/usr/bin/env bash
# The main job: the fraud case study end to end on the embedded backend. Trains an XGBoost
# baseline and a LightGBM candidate, registers them in a local MLflow store, runs
# `mlflow deployments create -t kpigate` with a time-compressed staged policy
# (shadow -> 5% -> 25% -> 50% -> 100%) while traffic and delayed labels flow through the
# router, and prints the decision, the model-version tags and the report path.
#   scripts/demo.sh --degraded     a worse candidate, which the gate rolls back
#   scripts/demo.sh simulate ...   `kpigate simulate` instead (no servers, seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "${1:-}" = "simulate" ]; then
  shift
  exec .venv/bin/kpigate simulate examples/policies/fraud.yaml "$@"
fi
exec .venv/bin/python examples/fraud/rollout.py "$@"
