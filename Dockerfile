# The kpigate image: the in-cluster parts (`kpigate collector`, and the operator), the rollout
# controller Job (`mlflow deployments create -t kpigate:/seldon/NS`) and the Argo workflow
# steps all run it. Build it with the script, which makes the wheelhouse this file installs:
#
#   scripts/build-image.sh --tag registry.example.com/mlflow-kpigate:0.1.0
#   scripts/build-image.sh --base python:3.11-slim --tag ...   # another base, same Python
#
# The build context is a directory with this file and `wheels/`: kpigate's wheel and every
# runtime dependency of it and of its `seldon` extra (the Kubernetes and Prometheus clients
# the operator and the cluster rollout import), built on the host against scripts/constraints.txt, plus
# `wheels/python-version` (the host Python's X.Y the wheels were built for). pip installs
# from it with --no-index, so the build never reaches a package index; apt-get (python3 on
# a Debian base) needs the network: `docker build --network host` where the default
# network has none.
#
# BASE_IMAGE: any Debian bookworm image (debian:bookworm-slim, or one made with
# debootstrap and `docker import`) gets Debian's python3 (3.11) with apt-get; an image that
# already has python3 with venv and ensurepip (python:3.11-slim) is used as it is. Its
# python3 must be the X.Y of the wheelhouse; the build stops with both versions otherwise.
ARG BASE_IMAGE=debian:bookworm-slim

# -- runtime: Python, CA certificates and the user; shared by both stages -----------------------
FROM ${BASE_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
RUN if command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip, ssl' \
         && [ -f /etc/ssl/certs/ca-certificates.crt ]; then \
      echo "kpigate: the base image has python3 $(python3 -V 2>&1); no apt-get"; \
    else \
      apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
         python3 python3-venv ca-certificates >/dev/null \
      && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt; \
    fi
# A fixed numeric user: the Kubernetes manifests set runAsUser/fsGroup 10001 and
# runAsNonRoot, which the kubelet can only verify against a numeric UID.
RUN groupadd --gid 10001 kpigate \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin kpigate

# -- build: a venv at /opt/kpigate from the wheelhouse, offline ---------------------------------
# Byte-compiled here (the root filesystem is read-only in a pod, so Python could not cache
# it at run time), by compileall on every core rather than by pip one file after another.
FROM runtime AS build
COPY wheels /wheels
RUN want="$(cat /wheels/python-version)" \
    && have="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    && if [ "$want" != "$have" ]; then \
         echo "kpigate: the wheelhouse is for Python $want but the base image's python3 is" \
              "$have: build the wheelhouse with Python $have (PYTHON=... scripts/build-image.sh)" \
              "or pick a base image with Python $want" >&2; \
         exit 1; \
       fi \
    && python3 -m venv /opt/kpigate \
    && /opt/kpigate/bin/pip install --no-index --find-links /wheels --no-cache-dir \
       --disable-pip-version-check --no-compile -q 'mlflow-kpigate[seldon]' \
    && /opt/kpigate/bin/python -m compileall -q -j 0 /opt/kpigate/lib >/dev/null

# -- the image: runtime plus the venv; the wheelhouse stays behind in the build stage ------------
# The settings come before the venv's COPY: each instruction of the classic builder starts a
# container of the image so far, which the vfs storage driver copies whole.
FROM runtime
ENV PATH=/opt/kpigate/bin:$PATH \
    HOME=/tmp
USER 10001
WORKDIR /tmp
# 8080 the collector, 9102 the rollout controller's metrics, 8081 the operator's health probes.
EXPOSE 8080 9102 8081
ENTRYPOINT ["kpigate"]
CMD ["--help"]
COPY --from=build /opt/kpigate /opt/kpigate
