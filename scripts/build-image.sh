#!/usr/bin/env bash
# Build the kpigate container image (the Dockerfile at the repository root).
#
#   scripts/build-image.sh [--base IMAGE] [--tag TAG]
#
#   --base IMAGE  the base image (default debian:bookworm-slim): a Debian bookworm image gets
#                 python3 with apt-get; python:3.11-slim is used as it is
#   --tag TAG     the image's name (default mlflow-kpigate:VERSION, VERSION from
#                 mlflow_kpigate/_version.py)
#
# Steps: a wheelhouse (kpigate's wheel with its `seldon` extra, which the operator and the
# cluster rollout need, and every runtime dependency, resolved against
# scripts/constraints.txt) is built here with pip from the package index, into a temporary
# build context with the Dockerfile; `docker build --network host` then installs it with
# `pip install --no-index`, so the build itself never needs the package index (only apt-get
# needs the network, for python3 on a bare Debian base). The temporary context is removed
# at the end, whatever happens.
#
# Needs: a Python whose X.Y is the base image's python3 (3.11 for bookworm and
# python:3.11-slim; PYTHON=... picks another interpreter, default python3), the package
# index, and a docker CLI that reaches a running Docker daemon (DOCKER_HOST is honoured).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

version="$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' mlflow_kpigate/_version.py)"
base="debian:bookworm-slim"
tag="mlflow-kpigate:${version:-latest}"
while [ "$#" -gt 0 ]; do
  case "$1" in
    --base) [ "$#" -ge 2 ] || { echo "build-image: --base needs an image" >&2; exit 2; }
            base="$2"; shift 2 ;;
    --tag)  [ "$#" -ge 2 ] || { echo "build-image: --tag needs a name" >&2; exit 2; }
            tag="$2"; shift 2 ;;
    --base=*) base="${1#*=}"; shift ;;
    --tag=*)  tag="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-image: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "build-image: $PYTHON not found; install Python 3.11 (or set PYTHON=...)" >&2
  exit 2
fi
if ! command -v docker >/dev/null 2>&1; then
  echo "build-image: the docker CLI is not installed (Debian: apt-get install docker.io)" >&2
  exit 2
fi
if ! docker info >/dev/null 2>&1; then
  echo "build-image: docker cannot reach a Docker daemon${DOCKER_HOST:+ at $DOCKER_HOST};" \
       "start one (or set DOCKER_HOST)" >&2
  exit 2
fi

context="$(mktemp -d "${TMPDIR:-/tmp}/kpigate-image.XXXXXX")"
trap 'rm -rf "$context"' EXIT

# A pip to build the wheelhouse with: $PYTHON's own, or a throwaway venv's where $PYTHON has
# none (a distribution's python3 without python3-pip).
pip=("$PYTHON" -m pip)
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
  echo "build-image: $PYTHON has no pip; making a throwaway venv for it"
  "$PYTHON" -m venv "$context/venv" || {
    echo "build-image: $PYTHON has neither pip nor venv (Debian: apt-get install" \
         "python3-venv)" >&2; exit 2; }
  pip=("$context/venv/bin/python" -m pip)
fi

# The package is built from a copy of the files it is made of, so nothing else in the
# checkout ends up in it and the build leaves nothing (build/, *.egg-info) in the checkout.
mkdir "$context/src"
cp setup.py pyproject.toml README.md "$context/src/"
cp -R mlflow_kpigate "$context/src/"
find "$context/src" -name __pycache__ -type d -prune -exec rm -rf {} +

py_version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
echo "build-image: wheelhouse for Python $py_version (kpigate $version with the seldon extra, and its dependencies)"
SECONDS=0
"${pip[@]}" wheel -q --disable-pip-version-check -c scripts/constraints.txt \
  -w "$context/wheels" "$context/src[seldon]"
echo "$py_version" > "$context/wheels/python-version"
rm -rf "$context/src" "$context/venv"
echo "build-image: wheelhouse ($(du -sh "$context/wheels" | cut -f1)) took $SECONDS s"

cp Dockerfile .dockerignore "$context/"
echo "build-image: docker build --build-arg BASE_IMAGE=$base -t $tag"
SECONDS=0
docker build --network host --force-rm --build-arg "BASE_IMAGE=$base" -t "$tag" "$context"
echo "build-image: docker build took $SECONDS s"
echo "build-image: built $tag"
