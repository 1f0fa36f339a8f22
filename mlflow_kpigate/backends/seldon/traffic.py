"""Seldon Core as the controller's Model Router: weights become guarded JSON patches.

:class:`SeldonTraffic` implements :class:`~mlflow_kpigate.rollout.ports.TrafficBackend`:

* ``apply`` patches the SeldonDeployment (v1) or the Experiment (v2) to the weights of a
  committed state, then, after a rollback, removes the candidate (and, after a promotion,
  the baseline) in a second guarded patch, and tells the in-cluster collector which stage
  new predictions belong to. While a rollout bakes, the baseline stays as the shadow
  predictor (v2: the mirrored Model); it is removed when the bake ends promoted. Each
  patch is built from the object as read and guarded by its ``resourceVersion`` and
  predictor names, so it applies entirely or not at all; everything is idempotent, since
  the controller repeats it after a crash. The stage notice carries the collector's
  ``operator`` token (:mod:`.collector_credentials`) as ``Authorization: Bearer``, to
  :attr:`SeldonTarget.notice_url` (``/rollouts/NAME/admin/stage`` on a shared collector).
* ``readiness`` says whether Seldon serves those weights: the object routes as the state
  asks, carries the spec hash kpigate applied, and Seldon reports it Available with every
  predictor's replicas available (v1 sets no ``observedGeneration``, hence the hash).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mlflow_kpigate.backends.seldon.cluster import Cluster
from mlflow_kpigate.backends.seldon.collector_credentials import (
    OPERATOR_TOKEN_ENV,
    CollectorCredentials,
)
from mlflow_kpigate.backends.seldon.kinds import SELDON_DEPLOYMENT, SELDON_EXPERIMENT, SELDON_MODEL
from mlflow_kpigate.backends.seldon.manifests import (
    BASELINE,
    CANDIDATE,
    ModelRef,
    managed_spec_hash,
    managed_view,
    predictor,
    role_traffic,
    v2_default,
    v2_model_name,
    v2_routing,
)
from mlflow_kpigate.backends.seldon.patches import (
    remove_predictor_patch,
    v2_experiment_patch,
    weights_patch,
)
from mlflow_kpigate.backends.seldon.readiness import readiness, readiness_v2
from mlflow_kpigate.backends.seldon.target import SeldonTarget
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.http import HttpError, RetryingSession, RetryPolicy
from mlflow_kpigate.core.state import Phase, Readiness, RolloutState

log = logging.getLogger(__name__)

#: One try per notice: the controller repeats the whole apply step when it fails.
_NOTICE_POLICY = RetryPolicy(attempts=1)


class CollectorUnreachable(KpigateError):
    """The in-cluster collector did not take a stage notice."""


class SeldonTraffic:
    """Drives one rollout's SeldonDeployment (v1) or Experiment (v2)."""

    needs_readiness = True

    def __init__(self, cluster: Cluster, target: SeldonTarget, baseline: ModelRef,
                 candidate: ModelRef, credentials: CollectorCredentials | None = None
                 ) -> None:
        self.cluster = cluster
        self.target = target
        self.baseline = baseline
        self.candidate = candidate
        self.credentials = credentials or CollectorCredentials()

    # -- apply ------------------------------------------------------------------------------
    def apply(self, state: RolloutState) -> None:
        """Patch the cluster to ``state.weights``; notify the collector of the stage."""
        if self.target.seldon_version == 2:
            self._apply_v2(state)
        else:
            self._apply_v1(state)
        self.notify_collector(state)

    def _apply_v1(self, state: RolloutState) -> None:
        objects = self.cluster.objects(SELDON_DEPLOYMENT)
        weights = state.weights
        share = role_traffic(weights)[CANDIDATE]
        cand = predictor(self.target, CANDIDATE, self.candidate, share) \
            if weights.candidate_attached else None
        objects.patch_guarded(self.target.name,
                              lambda cur: weights_patch(cur, weights, candidate_predictor=cand))
        # Seldon's webhook rejects a predictor list whose traffic does not sum to 100, so
        # the predictor that lost its traffic is removed in a second patch.
        if not weights.candidate_attached:
            objects.patch_guarded(self.target.name,
                                  lambda cur: remove_predictor_patch(cur, CANDIDATE))
        elif state.phase is Phase.PROMOTED:
            objects.patch_guarded(self.target.name,
                                  lambda cur: remove_predictor_patch(cur, BASELINE))

    def _apply_v2(self, state: RolloutState) -> None:
        weights = state.weights
        self.cluster.objects(SELDON_EXPERIMENT).patch_guarded(
            self.target.name, lambda cur: v2_experiment_patch(cur, weights))
        if not weights.candidate_attached:
            # The Experiment no longer routes to it; the candidate Model can go.
            self.cluster.objects(SELDON_MODEL).delete(v2_model_name(self.target.name,
                                                                    CANDIDATE))

    def notify_collector(self, state: RolloutState) -> None:
        """Tell the collector the stage new predictions belong to (idempotent).

        A collector that cannot be reached fails a live stage change (it is retried, and
        samples would otherwise be counted against the wrong stage); once the rollout has
        ended it is only logged, as nothing is evaluated any more.
        """
        base, url = self.target.collector_base_url, self.target.notice_url
        if base is None or url is None:
            return
        w = state.weights
        body = {"deployment": self.target.name, "stage_index": state.stage_index,
                "shadow": bool(w.shadow and w.candidate_attached),
                "candidate_percent": 0.0 if w.shadow or not w.candidate_attached
                else w.candidate_percent,
                "revision": state.revision}
        try:
            token = self.credentials.operator_token()
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            with RetryingSession(_NOTICE_POLICY) as http:
                http.call("POST", url, json_body=body, timeout_s=5,
                          headers=headers)
        except (HttpError, UsageError) as exc:
            detail = _detail(exc)
            if state.phase.terminal:
                log.warning("collector at %s did not take the final stage notice: %s",
                            base, detail)
                return
            raise CollectorUnreachable(f"collector at {base} did not take the stage notice "
                                       f"({detail}); {_fix(exc)}") from None

    # -- readiness --------------------------------------------------------------------------
    def readiness(self, state: RolloutState) -> Readiness:
        """Whether Seldon serves ``state.weights`` now."""
        if self.target.seldon_version == 2:
            return self._readiness_v2(state)
        sdep = self.cluster.objects(SELDON_DEPLOYMENT).get(self.target.name)
        if sdep is None:
            return Readiness(False, f"SeldonDeployment {self.target.name} does not exist",
                             failed=True)
        mismatch = self._routing_mismatch(sdep, state)
        if mismatch:
            return Readiness(False, mismatch)
        r = readiness(sdep, managed_spec_hash(sdep))
        return r

    def _routing_mismatch(self, sdep: Mapping[str, Any], state: RolloutState) -> str | None:
        wanted = role_traffic(state.weights)
        seen = {p["name"]: p for p in managed_view(sdep)}
        for role, share in wanted.items():
            needed = share.traffic > 0 or share.shadow
            got = seen.get(role)
            if got is None:
                if needed:
                    return f"predictor {role!r} is not in the SeldonDeployment yet"
                continue
            if (got["traffic"], got["shadow"]) != (share.traffic, share.shadow):
                return (f"predictor {role!r} routes traffic={got['traffic']} "
                        f"shadow={got['shadow']}, not yet traffic={share.traffic} "
                        f"shadow={share.shadow}")
        return None

    def _readiness_v2(self, state: RolloutState) -> Readiness:
        exp = self.cluster.objects(SELDON_EXPERIMENT).get(self.target.name)
        if exp is None:
            return Readiness(False, f"Experiment {self.target.name} does not exist",
                             failed=True)
        candidates, mirror = v2_routing(self.target.name, state.weights)
        spec = exp.get("spec") or {}
        got = sorted((c.get("name"), c.get("weight")) for c in spec.get("candidates") or ())
        if got != sorted((c["name"], c["weight"]) for c in candidates) or \
                (spec.get("mirror") or None) != mirror or \
                spec.get("default") != v2_default(self.target.name, state.weights):
            return Readiness(False, f"Experiment {self.target.name} does not route as "
                                    f"{state.weights.describe()} yet")
        roles = [BASELINE, CANDIDATE] if state.weights.candidate_attached else [BASELINE]
        models = self.cluster.objects(SELDON_MODEL)
        objects: list[Mapping[str, Any]] = [exp]
        for role in roles:
            name = v2_model_name(self.target.name, role)
            model = models.get(name)
            if model is None:
                return Readiness(False, f"Model {name} does not exist (deleted outside "
                                        "kpigate?)", failed=True)
            objects.append(model)
        for obj in objects:
            r = readiness_v2(obj)
            if not r.ready:
                return Readiness(False, r.reason, r.failed)
        return Readiness(True, f"Experiment {self.target.name} and its Models are Ready")


def _detail(exc: HttpError | UsageError) -> str:
    """What went wrong, with the collector's own one-line reason when it gave one."""
    if not isinstance(exc, HttpError):
        return str(exc)
    reason = ""
    if exc.response is not None and exc.status is not None and 400 <= exc.status < 500:
        try:
            reason = str(exc.response.json().get("error", ""))
        except (ValueError, AttributeError):
            reason = ""
    reason = " ".join(reason.split())[:300]
    return f"{exc.detail}: {reason}" if reason else exc.detail


def _fix(exc: KpigateError) -> str:
    """What to check when a stage notice failed with ``exc``."""
    status = exc.status if isinstance(exc, HttpError) else None
    if status in (401, 403):
        return (f"give the controller the collector's operator token: {OPERATOR_TOKEN_ENV}="
                "PATH of the file holding it")
    if status == 400:
        return "the collector's --policy (and --stages) must be the rollout's own"
    if isinstance(exc, UsageError):
        return f"fix {OPERATOR_TOKEN_ENV}"
    return "check -C collector_url and the collector Service"
