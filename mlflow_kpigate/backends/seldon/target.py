"""Where a Seldon rollout runs: the ``kpigate:/seldon/NAMESPACE`` target and its settings.

:class:`SeldonTarget` is a validated value; everything that builds manifests takes one.
Bad values raise :class:`~mlflow_kpigate.core.errors.UsageError` with a one-line
``field: problem; fix`` message.

The collector URL is the *base* URL of the in-cluster kpigate collector (the same value as
``-C collector_url``, e.g. ``http://kpigate-collector.NS.svc:8080``): the controller posts
stage notices to ``{base}/admin/stage`` and Seldon's request logger sends CloudEvents to
``{base}/cloudevents`` (:attr:`SeldonTarget.logger_url`). A URL already ending in
``/cloudevents`` is accepted and read as that logger URL, so either spelling works.

With an ingest token (:mod:`.collector_credentials`) the logger URL carries it as its last
path segment, ``{base}/cloudevents/<token>``: Seldon's executor cannot add an
``Authorization`` header to its logger's requests, so the path is the only place it can
travel. The token is not part of the collector URL (``-C`` values are saved in a
ConfigMap), not shown in ``repr`` and not compared.

**A shared collector** (``shared_collector=True``, ``-C shared_collector=true``): one
``kpigate collector --shared`` serves every rollout of the namespace, each under
``{base}/rollouts/NAME`` (:attr:`SeldonTarget.collector_rollout_url`): the logger URL is
``{base}/rollouts/NAME/cloudevents[/<token>]``, stage notices go to
``{base}/rollouts/NAME/admin/stage``, labels to ``{base}/rollouts/NAME/feedback``, and the
rollout is registered with ``PUT {base}/rollouts/NAME`` before its objects are applied
(:mod:`.collector_registration`). Otherwise (the default) the collector serves this one
deployment at its root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.tokens import token_problem

#: Path of the collector's CloudEvents endpoint (Seldon's request-logger sink).
LOGGER_PATH = "/cloudevents"
#: Where a shared collector keeps its rollouts: ``{base}/rollouts/NAME`` is one rollout.
ROLLOUTS_PATH = "/rollouts"
#: Path of the stage-notice endpoint (under a rollout's URL on a shared collector).
NOTICE_PATH = "/admin/stage"
#: Path of the labels endpoint (under a rollout's URL on a shared collector).
FEEDBACK_PATH = "/feedback"
#: Target URI prefix of the Seldon backend.
TARGET_PREFIX = "kpigate:/seldon"
#: Longest rollout name: ``NAME-candidate`` (the v2 Model) must stay a 63-character label.
MAX_NAME_LENGTH = 63 - len("-candidate")

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_FIX = "use lower-case letters, digits and '-', starting and ending with a letter or digit"


def dns_label_problem(value: str, limit: int = 63) -> str | None:
    """Why ``value`` is not a DNS-1123 label of at most ``limit`` characters (None if it is)."""
    if not value:
        return f"must not be empty; {_DNS_FIX}"
    if len(value) > limit:
        return f"{value!r} is {len(value)} characters long; use at most {limit}"
    if not _DNS_LABEL.fullmatch(value):
        return f"{value!r} is not a Kubernetes name; {_DNS_FIX}"
    return None


def _subdomain_problem(value: str) -> str | None:
    if not value or len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        return f"{value!r} is not a Kubernetes object name; {_DNS_FIX} (dots allowed)"
    return None


def _url_problem(value: str) -> str | None:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return f"{value!r} is not an http:// or https:// URL; give e.g. http://host:8080"
    return None


def parse_target_uri(target_uri: str) -> str:
    """The namespace of ``kpigate:/seldon/NAMESPACE`` (``UsageError`` for anything else)."""
    text = str(target_uri).strip()
    if not text.startswith(TARGET_PREFIX):
        raise UsageError(f"target {target_uri!r}: not a Seldon target; use "
                         "kpigate:/seldon/NAMESPACE")
    rest = text[len(TARGET_PREFIX):]
    if rest and not rest.startswith("/"):
        raise UsageError(f"target {target_uri!r}: not a Seldon target; use "
                         "kpigate:/seldon/NAMESPACE")
    namespace = rest.strip("/")
    if not namespace:
        raise UsageError(f"target {target_uri!r}: no namespace; use kpigate:/seldon/NAMESPACE, "
                         "e.g. kpigate:/seldon/models")
    problem = dns_label_problem(namespace)
    if problem:
        raise UsageError(f"target {target_uri!r}: namespace {problem}")
    return namespace


@dataclass(frozen=True)
class SeldonTarget:
    """A rollout on Seldon Core: namespace, deployment name and how to build its objects.

    ``collector_url`` is the collector's base URL (see the module docstring); without it
    no request logger is configured. ``gateway_url`` is the ingress base URL predictions
    are sent to; ``service_account`` the service account of the model pods (it needs read
    access to the model storage when ``env_secret`` is not used); ``ingest_token`` the
    collector's ingest token for the logger URL; ``shared_collector`` whether the
    collector serves every rollout of the namespace under ``/rollouts/NAME`` (see the
    module docstring).
    """

    namespace: str
    name: str
    seldon_version: int = 1
    env_secret: str | None = None
    collector_url: str | None = None
    gateway_url: str | None = None
    replicas: int = 1
    service_account: str | None = None
    ingest_token: str | None = field(default=None, repr=False, compare=False)
    shared_collector: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> SeldonTarget:
        """Raise ``UsageError`` naming the first bad field; return ``self`` when all are fine."""
        problem = dns_label_problem(self.namespace)
        if problem:
            raise UsageError(f"namespace: {problem}")
        problem = dns_label_problem(self.name, MAX_NAME_LENGTH)
        if problem:
            raise UsageError(f"name: {problem} (the deployment name names the "
                             "SeldonDeployment and its Models)")
        if isinstance(self.seldon_version, bool) or self.seldon_version not in (1, 2):
            raise UsageError(f"seldon_version: {self.seldon_version!r} is not a Seldon Core "
                             "major version; use 1 (SeldonDeployment) or 2 (Model + Experiment)")
        if self.env_secret is not None:
            problem = _subdomain_problem(self.env_secret)
            if problem:
                raise UsageError(f"env_secret: {problem}")
        for field_name in ("collector_url", "gateway_url"):
            value = getattr(self, field_name)
            if value is not None:
                problem = _url_problem(value)
                if problem:
                    raise UsageError(f"{field_name}: {problem}")
        if self.collector_url is not None and f"{LOGGER_PATH}/" in self.collector_url:
            raise UsageError("collector_url: give the collector's base URL (e.g. "
                             "http://kpigate-collector.NS.svc:8080); the ingest token comes "
                             "from KPIGATE_COLLECTOR_INGEST_TOKEN_FILE, never from -C")
        if not isinstance(self.shared_collector, bool):
            raise UsageError(f"shared_collector: {self.shared_collector!r} is not true or "
                             "false")
        if self.shared_collector and self.collector_url is None:
            raise UsageError("shared_collector: true needs collector_url, the shared "
                             "collector's base URL (e.g. http://kpigate-collector.NS.svc:8080)")
        if self.ingest_token is not None:
            problem = token_problem(self.ingest_token)
            if problem:
                raise UsageError(f"ingest_token: the token {problem}")
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) \
                or not 1 <= self.replicas <= 100:
            raise UsageError(f"replicas: {self.replicas!r} is not a whole number from 1 to "
                             "100; give the pods per predictor, e.g. 2")
        if self.service_account is not None:
            problem = _subdomain_problem(self.service_account)
            if problem:
                raise UsageError(f"service_account: {problem}")
        return self

    @property
    def collector_base_url(self) -> str | None:
        """The collector's base URL (stage notices go to ``{base}/admin/stage``)."""
        if self.collector_url is None:
            return None
        base = self.collector_url.rstrip("/")
        if base.endswith(LOGGER_PATH):
            base = base[: -len(LOGGER_PATH)]
        return base

    @property
    def collector_rollout_url(self) -> str | None:
        """This rollout's URL on the collector: the base URL, or ``{base}/rollouts/NAME``
        on a shared collector (where it is also the registration URL)."""
        base = self.collector_base_url
        if base is None or not self.shared_collector:
            return base
        return f"{base}{ROLLOUTS_PATH}/{self.name}"

    @property
    def logger_url(self) -> str | None:
        """Where Seldon's request logger sends CloudEvents (None: no logger); with an
        ingest token, ``{rollout URL}/cloudevents/<token>``."""
        base = self.collector_rollout_url
        if base is None:
            return None
        return base + LOGGER_PATH + (f"/{self.ingest_token}" if self.ingest_token else "")

    @property
    def notice_url(self) -> str | None:
        """Where the controller posts stage notices (None: no collector)."""
        base = self.collector_rollout_url
        return None if base is None else base + NOTICE_PATH

    @property
    def feedback_url(self) -> str | None:
        """Where labels for this rollout are posted (None: no collector)."""
        base = self.collector_rollout_url
        return None if base is None else base + FEEDBACK_PATH

    def saved_settings(self) -> dict[str, object]:
        """The settings a rollout keeps in its ConfigMap (``settings["target"]``), read back
        by ``SeldonTarget(namespace=..., name=..., **saved)``; never a token."""
        return {"seldon_version": self.seldon_version, "env_secret": self.env_secret,
                "collector_url": self.collector_url, "gateway_url": self.gateway_url,
                "replicas": self.replicas, "shared_collector": self.shared_collector}

    @property
    def state_configmap(self) -> str:
        """Name of the ConfigMap holding the rollout state."""
        return f"{self.name}-kpigate-state"
