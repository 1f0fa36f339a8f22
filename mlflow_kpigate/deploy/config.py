"""Deployment configuration: the ``-C key=value`` options of ``mlflow deployments``.

Values arrive as strings from the MLflow CLI (and as any type from the Python API); each
is parsed and validated here, and every problem is a :class:`UsageError` naming the key
and what would fix it.
"""

from __future__ import annotations

import difflib
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_kpigate.core.durations import parse_duration
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.deploy.config_values import (
    FALSE,
    TRUE,
    boolean,
    dns_label,
    ip_address,
    size,
    url,
)

#: Every key, with the one-line help shown by ``target_help`` and the docs.
KEYS: dict[str, str] = {
    "baseline": "models:/NAME/V or models:/NAME@ALIAS serving the rest of the traffic "
                "(default: the registered model's champion alias)",
    "policy": "path of the rollout policy YAML (default: a label-free policy on error rate "
              "and p95 latency; see docs/policy.md)",
    "stages": "stage shortcut replacing the policy's stages, e.g. shadow,5,25,50,100",
    "wait": "true: block until the rollout is promoted, rolled back or aborted "
            "(default false: return once the router serves)",
    "wait_timeout": "with wait=true, give up waiting after this long (e.g. 2h; default none)",
    "promote_alias": "alias moved to the candidate on promotion (default champion)",
    "port": "router port on 127.0.0.1 (default: the port of the rollout of the same name "
            "it replaces, else a free port)",
    "routing_key": "sticky routing key: header:NAME or column:NAME "
                   "(default header:X-Kpigate-Routing-Key)",
    "state_dir": "directory for rollout state, prediction log and audit log "
                 "(default $KPIGATE_STATE_DIR or ~/.kpigate)",
    "threshold": "score at or above which a prediction counts as positive (default 0.5)",
    "action": "update only: promote | rollback | pause | resume the running rollout",
    "expected_rps": "expected live requests per second: create prints the forecast time to "
                    "decision of every stage from the registry baseline and warns (does not "
                    "fail) when a stage cannot decide within its max_duration (default: the "
                    "controller forecasts from the measured traffic and warns once)",
    "label_delay": "with expected_rps: how long labels take to arrive, e.g. 1h (default: "
                   "the policy's evaluation.maturity)",
    "workers": "embedded router: processes serving the port (default 1; each scores on "
               "its own core)",
    "candidate_timeout": "embedded router: a live candidate call slower than this is "
                         "answered by the baseline and counted as a candidate error "
                         "(default 1s)",
    "log_fsync": "embedded router: when the prediction log reaches the disk: interval "
                 "(default: every second), always (before each answer), never (the OS "
                 "decides); every answered prediction survives a process crash in all three",
    "warm_candidate": "embedded router: in canary stages the candidate also scores "
                      "unlogged copies of baseline-served requests, so its latency is "
                      "measured as warm as the baseline's (default true; false saves "
                      "the candidate's CPU and biases latency KPIs against it)",
    "metrics_port": "embedded controller: port of its Prometheus /metrics (decision series "
                    "with namespace=\"local\"); 0 (default) takes a free port at each "
                    "start, shown by get as metrics_endpoint",
    "metrics_host": "embedded controller: address its /metrics listens on (default "
                    "127.0.0.1; 0.0.0.0 for a Prometheus on another machine)",
    "max_body": "embedded router: largest /invocations or /feedback body accepted, e.g. "
                "64MB (default 16MiB); larger ones get 413",
    # Seldon Core on Kubernetes (targets kpigate:/seldon/NAMESPACE)
    "seldon_version": "kpigate:/seldon only: 1 (SeldonDeployment, default) or 2 "
                      "(Model + Experiment)",
    "env_secret": "kpigate:/seldon only: Secret with storage credentials for the model "
                  "servers (envSecretRefName)",
    "collector_url": "kpigate:/seldon only: URL of the in-cluster kpigate collector "
                     "(request logger, labels, stage notices), e.g. "
                     "http://kpigate-collector.NS.svc:8080; its tokens come from the files "
                     "named by $KPIGATE_COLLECTOR_TOKEN_FILE (operator) and "
                     "$KPIGATE_COLLECTOR_INGEST_TOKEN_FILE (ingest)",
    "shared_collector": "kpigate:/seldon only: true when collector_url is a shared collector "
                        "(kpigate collector --shared) serving every rollout of the "
                        "namespace: the rollout registers with it at create and uses "
                        "its /rollouts/NAME/... routes (default false: a collector of its "
                        "own)",
    "gateway_url": "kpigate:/seldon only: ingress/gateway base URL used by predict",
    "prometheus_url": "kpigate:/seldon only: Prometheus base URL the gate reads KPIs from "
                      "(default: the policy's metrics.prometheus.url)",
    "kubeconfig": "kpigate:/seldon only: kubeconfig file (default: in-cluster config, else "
                  "$KUBECONFIG or ~/.kube/config)",
    "kube_context": "kpigate:/seldon only: kubeconfig context to use",
    "replicas": "kpigate:/seldon only: replicas per predictor (default 1)",
    "dry_run": "kpigate:/seldon only: true prints the manifests and patches instead of "
               "applying them",
    "operator": "kpigate:/seldon only: true creates a ModelRollout that the in-cluster "
                "kpigate operator runs; false runs the controller here (wait=true) or in "
                "the background; auto (default) uses the operator when the cluster serves "
                "the ModelRollout CRD",
}

#: Keys that only apply to the embedded router.
LOCAL_KEYS = ("workers", "candidate_timeout", "log_fsync", "max_body", "warm_candidate",
              "metrics_port", "metrics_host")
#: Keys that only apply to the Seldon target.
SELDON_KEYS = ("seldon_version", "env_secret", "collector_url", "shared_collector",
               "gateway_url", "prometheus_url", "kubeconfig", "kube_context", "replicas",
               "dry_run", "operator")

ACTIONS = ("promote", "rollback", "pause", "resume")
DEFAULT_STATE_DIR = "~/.kpigate"


@dataclass(frozen=True)
class DeploymentConfig:
    """Validated ``-C`` options."""

    baseline: str | None = None
    policy: Path | None = None
    stages: str | None = None
    wait: bool = False
    wait_timeout: float | None = None
    promote_alias: str = "champion"
    port: int | None = None
    routing_key: str = "header:X-Kpigate-Routing-Key"
    state_dir: Path | None = None
    threshold: float = 0.5
    action: str | None = None
    expected_rps: float | None = None
    label_delay: float | None = None
    seldon_version: int = 1
    env_secret: str | None = None
    collector_url: str | None = None
    shared_collector: bool = False
    gateway_url: str | None = None
    prometheus_url: str | None = None
    kubeconfig: Path | None = None
    kube_context: str | None = None
    replicas: int = 1
    dry_run: bool = False
    workers: int = 1
    candidate_timeout: float = 1.0
    log_fsync: str = "interval"
    max_body: int = 16 * 2**20
    warm_candidate: bool = True
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    operator: str = "auto"
    extra: Mapping[str, Any] = field(default_factory=dict)


def parse_config(raw: Mapping[str, Any] | None, *, allow_action: bool = False
                 ) -> DeploymentConfig:
    """Validate ``-C`` options; raises ``UsageError`` for the first bad key or value."""
    raw = dict(raw or {})
    for key in raw:
        if key not in KEYS:
            hint = difflib.get_close_matches(key, KEYS, n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"known keys: {', '.join(KEYS)}"
            raise UsageError(f"-C {key}: unknown config key; {fix}")
    values: dict[str, Any] = {}
    if "baseline" in raw:
        uri = str(raw["baseline"]).strip()
        if not uri.startswith("models:/"):
            raise UsageError(f"-C baseline={uri}: must be models:/NAME/VERSION or "
                             "models:/NAME@ALIAS")
        values["baseline"] = uri
    if "policy" in raw:
        path = Path(str(raw["policy"])).expanduser()
        if not path.is_file():
            raise UsageError(f"-C policy={raw['policy']}: file not found; give the path of "
                             "a rollout policy YAML (see docs/policy.md)")
        values["policy"] = path.resolve()
    if "stages" in raw:
        from mlflow_kpigate.policy import parse_stage_shortcut

        try:
            parse_stage_shortcut(str(raw["stages"]))
        except ValueError as exc:
            raise UsageError(f"-C stages={raw['stages']}: {exc}") from None
        values["stages"] = str(raw["stages"])
    if "wait" in raw:
        values["wait"] = boolean("wait", raw["wait"])
    if "wait_timeout" in raw:
        try:
            values["wait_timeout"] = parse_duration(str(raw["wait_timeout"]))
        except ValueError as exc:
            raise UsageError(f"-C wait_timeout={raw['wait_timeout']}: {exc}") from None
    if "promote_alias" in raw:
        alias = str(raw["promote_alias"]).strip()
        if not alias or not all(c.isalnum() or c in "_-" for c in alias) or alias.isdigit():
            raise UsageError(f"-C promote_alias={raw['promote_alias']}: use letters, digits, "
                             "'_' or '-' (not only digits), e.g. champion")
        values["promote_alias"] = alias
    if "port" in raw:
        try:
            port = int(str(raw["port"]))
        except ValueError:
            raise UsageError(f"-C port={raw['port']}: must be a whole number") from None
        if not 1024 <= port <= 65535:
            raise UsageError(f"-C port={port}: must be between 1024 and 65535")
        values["port"] = port
    if "routing_key" in raw:
        key = str(raw["routing_key"]).strip()
        kind, _, name = key.partition(":")
        if kind not in ("header", "column") or not name:
            raise UsageError(f"-C routing_key={key}: use header:NAME or column:NAME")
        values["routing_key"] = key
    if "state_dir" in raw:
        values["state_dir"] = Path(str(raw["state_dir"])).expanduser().resolve()
    if "threshold" in raw:
        try:
            threshold = float(str(raw["threshold"]))
        except ValueError:
            raise UsageError(f"-C threshold={raw['threshold']}: must be a number") from None
        if not 0 < threshold < 1:
            raise UsageError(f"-C threshold={threshold}: must be between 0 and 1")
        values["threshold"] = threshold
    if "action" in raw:
        if not allow_action:
            raise UsageError("-C action: only for update (mlflow deployments update -C "
                             "action=promote|rollback|pause|resume)")
        action = str(raw["action"]).strip().lower()
        if action not in ACTIONS:
            raise UsageError(f"-C action={raw['action']}: must be one of {', '.join(ACTIONS)}")
        values["action"] = action
    values.update(_forecast_values(raw))
    values.update(_router_values(raw))
    values.update(_seldon_values(raw))
    return DeploymentConfig(**values)


def _forecast_values(raw: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "expected_rps" in raw:
        try:
            rps = float(str(raw["expected_rps"]).strip())
        except ValueError:
            raise UsageError(f"-C expected_rps={raw['expected_rps']}: must be a number of "
                             "requests per second, e.g. 2 or 0.5") from None
        if not (math.isfinite(rps) and rps > 0):
            raise UsageError(f"-C expected_rps={raw['expected_rps']}: must be requests per "
                             "second > 0")
        values["expected_rps"] = rps
    if "label_delay" in raw:
        if "expected_rps" not in raw:
            raise UsageError("-C label_delay: only with -C expected_rps (it sizes the forecast "
                             "create prints; the controller measures the delay itself)")
        try:
            values["label_delay"] = parse_duration(str(raw["label_delay"]).strip())
        except ValueError as exc:
            raise UsageError(f"-C label_delay={raw['label_delay']}: {exc}") from None
    return values


def _router_values(raw: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "workers" in raw:
        text = str(raw["workers"]).strip()
        if not text.isdigit() or not 1 <= int(text) <= 64:
            raise UsageError(f"-C workers={raw['workers']}: must be a whole number from 1 "
                             f"to 64 (about one per core: this machine has "
                             f"{os.cpu_count() or 1})")
        values["workers"] = int(text)
    if "candidate_timeout" in raw:
        try:
            timeout = parse_duration(str(raw["candidate_timeout"]).strip())
        except ValueError as exc:
            raise UsageError(f"-C candidate_timeout={raw['candidate_timeout']}: {exc}"
                             ) from None
        if not 0 < timeout <= 600:
            raise UsageError(f"-C candidate_timeout={raw['candidate_timeout']}: must be "
                             "more than 0 and at most 10m, e.g. 500ms or 2s")
        values["candidate_timeout"] = timeout
    if "log_fsync" in raw:
        policy = str(raw["log_fsync"]).strip().lower()
        if policy not in ("interval", "always", "never"):
            raise UsageError(f"-C log_fsync={raw['log_fsync']}: must be interval, always "
                             "or never")
        values["log_fsync"] = policy
    if "max_body" in raw:
        values["max_body"] = size("max_body", raw["max_body"])
    if "warm_candidate" in raw:
        values["warm_candidate"] = boolean("warm_candidate", raw["warm_candidate"])
    if "metrics_port" in raw:
        text = str(raw["metrics_port"]).strip()
        if not text.isdigit() or int(text) > 65535:
            raise UsageError(f"-C metrics_port={raw['metrics_port']}: must be a port number "
                             "(e.g. 9102), or 0 for a free port")
        values["metrics_port"] = int(text)
    if "metrics_host" in raw:
        values["metrics_host"] = ip_address("metrics_host", raw["metrics_host"])
    return values


def _seldon_values(raw: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "seldon_version" in raw:
        if str(raw["seldon_version"]).strip() not in ("1", "2"):
            raise UsageError(f"-C seldon_version={raw['seldon_version']}: must be 1 or 2")
        values["seldon_version"] = int(str(raw["seldon_version"]).strip())
    if "env_secret" in raw:
        values["env_secret"] = dns_label("env_secret", raw["env_secret"])
    for key in ("collector_url", "gateway_url", "prometheus_url"):
        if key in raw:
            values[key] = url(key, raw[key])
    if "kubeconfig" in raw:
        path = Path(str(raw["kubeconfig"])).expanduser()
        if not path.is_file():
            raise UsageError(f"-C kubeconfig={raw['kubeconfig']}: file not found; give the "
                             "path of a kubeconfig file")
        values["kubeconfig"] = path.resolve()
    if "kube_context" in raw:
        context = str(raw["kube_context"]).strip()
        if not context:
            raise UsageError("-C kube_context: must not be empty")
        values["kube_context"] = context
    if "operator" in raw:
        mode = str(raw["operator"]).strip().lower()
        mode = "true" if mode in TRUE else "false" if mode in FALSE else mode
        if mode not in ("auto", "true", "false"):
            raise UsageError(f"-C operator={raw['operator']}: must be auto, true or false")
        values["operator"] = mode
    if "replicas" in raw:
        try:
            replicas = int(str(raw["replicas"]))
        except ValueError:
            raise UsageError(f"-C replicas={raw['replicas']}: must be a whole number") from None
        if not 1 <= replicas <= 100:
            raise UsageError(f"-C replicas={replicas}: must be between 1 and 100")
        values["replicas"] = replicas
    if "dry_run" in raw:
        values["dry_run"] = boolean("dry_run", raw["dry_run"])
    if "shared_collector" in raw:
        values["shared_collector"] = boolean("shared_collector", raw["shared_collector"])
        if values["shared_collector"] and "collector_url" not in values:
            raise UsageError("-C shared_collector=true: needs -C collector_url, the shared "
                             "collector's base URL (e.g. http://kpigate-collector.NS.svc:8080)")
    return values


def help_lines() -> list[str]:
    """``key: help`` lines for target_help and docs."""
    return [f"  {key}: {text}" for key, text in KEYS.items()]


def state_dir(path: str | Path | None = None) -> Path:
    """The state directory (``-C state_dir``, ``$KPIGATE_STATE_DIR``, or ``~/.kpigate``)."""
    chosen = path or os.environ.get("KPIGATE_STATE_DIR") or DEFAULT_STATE_DIR
    return Path(chosen).expanduser()


def writable_state_dir(path: str | Path | None = None) -> Path:
    """The state directory, created if missing and proven writable (a file is created
    and removed in it); ``UsageError`` naming where the path came from otherwise."""
    base = state_dir(path)
    env = os.environ.get("KPIGATE_STATE_DIR")
    label = (f"-C state_dir={path}" if path else f"KPIGATE_STATE_DIR={env}" if env
             else f"the state directory {base}")
    if base.exists() and not base.is_dir():
        raise UsageError(f"{label}: is not a directory; give a directory kpigate may write "
                         "(it is created if missing), e.g. ~/.kpigate")
    try:
        base.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".kpigate-write-test-", dir=base)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{label}: cannot create files there ({exc.strerror or exc}); give a "
                         "directory kpigate may write, e.g. ~/.kpigate") from None
    return base


def deployment_dir(name: str, root: str | Path | None = None) -> Path:
    """Directory of the embedded deployment ``name`` under the state directory."""
    return state_dir(root) / name
