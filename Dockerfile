# The kpigate image: the rollout controller Job (`mlflow deployments create -t kpigate:/seldon/NS`),
# the Argo workflow steps and the in-cluster collector (`kpigate collector ...`) all run it.
#
#   docker build -t registry.example.com/mlflow-kpigate:0.1.0 .
#
# Only the files the package build needs are copied, so the image does not depend on what
# else lies in the checkout (.venv, mlruns, databases).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY setup.py README.md ./
COPY scripts/constraints.txt scripts/constraints.txt
COPY mlflow_kpigate mlflow_kpigate
# The constraints keep pip off MLflow releases whose pinned dependencies are not published.
RUN pip install -c scripts/constraints.txt . \
    && rm -rf /src

# A fixed numeric user: the Kubernetes manifests set runAsUser/fsGroup 10001 and
# runAsNonRoot, which the kubelet can only verify against a numeric UID.
RUN groupadd --gid 10001 kpigate \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin kpigate
USER 10001
WORKDIR /tmp
ENV HOME=/tmp

EXPOSE 8080 9102
ENTRYPOINT ["kpigate"]
CMD ["--help"]
