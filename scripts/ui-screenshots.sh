#!/usr/bin/env bash
# Screenshots of a rollout's outcome in the real MLflow UI, taken with headless Chromium:
# the candidate's model-version page, the rollout experiment, the rollout run (overview
# and model-metrics tabs) and the candidate's LoggedModel. See docs/mlflow-ui.md.
#
#   scripts/ui-screenshots.sh [--install] TRACKING_URL MODEL VERSION [OUT_DIR]
#
# TRACKING_URL is a running tracking server with its UI (`mlflow server` / `mlflow ui`),
# e.g. http://127.0.0.1:5000; MODEL/VERSION the rollout's candidate. PNGs go to OUT_DIR
# (default ./ui-screenshots). --install installs Debian's `chromium` with apt-get when it
# is missing (needs root). Each page is opened in a fresh browser profile, as a first-time
# visitor sees it. Python: $PYTHON, else .venv/bin/python, else python3 (needs mlflow).
set -euo pipefail

usage() { echo "usage: $0 [--install] TRACKING_URL MODEL VERSION [OUT_DIR]" >&2; exit 2; }
install=0
if [ "${1:-}" = "--install" ]; then install=1; shift; fi
[ $# -ge 3 ] && [ $# -le 4 ] || usage
url="${1%/}" model="$2" version="$3" out="${4:-ui-screenshots}"
case "$url" in http://*|https://*) ;; *)
  echo "Error: TRACKING_URL must be the http(s) address of a tracking server with its UI, got '$url'" >&2; exit 2;; esac

browser=""
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then browser="$name"; break; fi
done
if [ -z "$browser" ]; then
  if [ "$install" = 1 ]; then
    apt-get update -q && apt-get install -y -q chromium
    browser=chromium
  else
    echo "Error: no chromium found; install it (apt-get install chromium) or pass --install" >&2
    exit 2
  fi
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi

# The pages to open, one "name url" per line, from the version's kpigate tags.
pages="$("$python" - "$url" "$model" "$version" <<'PY'
import sys
from mlflow import MlflowClient
from mlflow_kpigate.registry.versions import model_id_of

url, model, version = sys.argv[1:]
client = MlflowClient(url, registry_uri=url)
mv = client.get_model_version(model, version)
run_id = mv.tags.get("kpigate.rollout_run_id")
if not run_id:
    sys.exit(f"Error: {model}/{version} has no kpigate.rollout_run_id tag; "
             "give the candidate version of a kpigate rollout")
exp = client.get_run(run_id).info.experiment_id
ml = "?workflowType=machine_learning"
print("version", f"{url}/#/models/{model}/versions/{version}")
print("experiment-first-visit", f"{url}/#/experiments/{exp}")
print("experiment", f"{url}/#/experiments/{exp}{ml}")
print("run", f"{url}/#/experiments/{exp}/runs/{run_id}{ml}")
print("run-model-metrics", f"{url}/#/experiments/{exp}/runs/{run_id}/model-metrics{ml}")
model_id = model_id_of(mv)
if model_id:
    logged_exp = client.get_logged_model(model_id).experiment_id
    print("logged-model", f"{url}/#/experiments/{logged_exp}/models/{model_id}{ml}")
PY
)" || { echo "$pages" >&2; exit 2; }

mkdir -p "$out"
profiles="$(mktemp -d)"
trap 'rm -rf "$profiles"' EXIT
while read -r name page; do
  # --no-sandbox: Chromium refuses to run as root otherwise (containers, CI).
  timeout 120 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --user-data-dir="$profiles/$name" --window-size=1400,1800 \
    --virtual-time-budget=20000 --screenshot="$out/$name.png" "$page" >/dev/null 2>&1 \
    || { echo "Error: chromium could not capture $page" >&2; exit 1; }
  echo "$out/$name.png  $page"
done <<<"$pages"
