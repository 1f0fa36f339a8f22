"""A shared collector's rollouts: registered by the operator, persisted, reloaded at start.

``kpigate collector --shared --data-dir DIR`` serves every rollout of a namespace. Each
rollout is *registered* (``PUT /rollouts/NAME``, :mod:`.service_shared`) with its policy
text, model versions, threshold and optionally stages and maturity (:class:`Registration`).
From that the registry builds the rollout's own service configuration exactly as ``kpigate
collector`` does for its one deployment (:func:`~.service_options.build_config`, the
deployment being NAME) and opens a :class:`~.service_app` app for it, so a rollout of a
shared collector behaves as a one-deployment collector in every respect.

On disk (``DIR``)::

    rollouts/NAME/registration.json   the registration (written last: it commits it)
    rollouts/NAME/policy.yaml         the policy text as registered
    rollouts/NAME/predictions.db      the rollout's prediction log (its own data directory)
    ended/NAME-<UTC time>/            a rollout that was deleted or replaced, as it was

At start every ``rollouts/*/registration.json`` is loaded again; a directory that cannot
be loaded is logged, left as it is and listed in ``/status`` (``unloaded``), and the
collector serves the others: one broken rollout must not stop a namespace's evidence.

**Registering again.** The same registration again is answered ``unchanged`` (200) and
changes nothing: the controller may repeat it after a restart. A different registration
for a registered NAME replaces it only when its ``versions`` differ: that is a new
rollout of NAME (``create`` after the last one ended, or ``update -m``), whose stage
indexes restart at 0, so it starts with a fresh data directory; the old one moves to
``ended/``. A different policy, threshold, stages or maturity with the *same* versions is
refused (409): mid-rollout it would change how the stored predictions are binned and which
stage notices are allowed, and the controller never does it (it freezes the policy when
the rollout starts), so it is a mistake or someone with the operator token tampering;
``DELETE`` first to start over on purpose.

**Deleting** (``DELETE /rollouts/NAME``) stops serving NAME at once and *keeps* its data:
the directory moves to ``ended/`` (the prediction log is the rollout's evidence, wanted
for an inquiry after the fact; remove old ``ended/`` directories by hand or with a cron
job). A later registration of NAME starts afresh.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from mlflow_kpigate.core.errors import PolicyError, UsageError
from mlflow_kpigate.metrics.service import CollectorService
from mlflow_kpigate.metrics.service_app import create_collector_app
from mlflow_kpigate.metrics.service_auth import REQUIRED_SCOPES, CollectorTokens
from mlflow_kpigate.metrics.service_config import UNANSWERED, CollectorServiceConfig
from mlflow_kpigate.metrics.service_options import build_config

__all__ = ["Registration", "RegistrationRefused", "RolloutRegistry", "SharedCollectorConfig"]

log = logging.getLogger("mlflow_kpigate.metrics.service")

ROLLOUTS_DIR = "rollouts"
ENDED_DIR = "ended"
REGISTRATION_FILE = "registration.json"
POLICY_FILE = "policy.yaml"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_FIELDS = ("policy", "versions", "threshold", "stages", "maturity")
_MAX_VERSION = 200
# build_config's option names, as the registration's fields.
_OPTION_FIELDS = (("--baseline-version/--candidate-version", "versions"),
                  ("--threshold", "threshold"), ("--stages", "stages"),
                  ("--maturity", "maturity"), ("--deployment", "name"))


class RegistrationRefused(ValueError):
    """A registration that cannot be taken; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a rollout (None when it can)."""
    if not _NAME.match(name or ""):
        return (f"name: {name!r} is not a DNS-1123 label; use the SeldonDeployment's name "
                "(lower-case letters, digits, '-', at most 63 characters)")
    return None


@dataclass(frozen=True)
class Registration:
    """What the operator registers a rollout with (the ``PUT /rollouts/NAME`` body)."""

    name: str
    policy: str
    versions: Mapping[str, str] = field(default_factory=dict)
    threshold: float = 0.5
    stages: str | None = None
    maturity: str | None = None

    @classmethod
    def from_body(cls, name: str, data: Any) -> Registration:
        """A body as a registration (``RegistrationRefused`` naming the first bad field)."""
        problem = name_problem(name)
        if problem:
            raise RegistrationRefused(problem)
        if not isinstance(data, dict):
            raise RegistrationRefused(f"body: must be a JSON object with {', '.join(_FIELDS)}")
        extra = sorted(set(data) - set(_FIELDS))
        if extra:
            raise RegistrationRefused(f"{extra[0]}: unknown field; expected "
                                      f"{', '.join(_FIELDS)}")
        policy = data.get("policy")
        if not isinstance(policy, str) or not policy.strip():
            raise RegistrationRefused("policy: missing or empty; give the rollout's policy "
                                      "YAML as a string")
        versions = data.get("versions")
        if not isinstance(versions, dict) or set(versions) - {"baseline", "candidate"} or \
                not all(isinstance(v, str) and 0 < len(v) <= _MAX_VERSION
                        for v in versions.values()):
            raise RegistrationRefused(
                "versions: must be an object mapping 'baseline' and 'candidate' to version "
                f"strings (1 to {_MAX_VERSION} characters), e.g. "
                '{"baseline": "3", "candidate": "4"}')
        threshold = data.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or \
                not math.isfinite(threshold):
            raise RegistrationRefused(f"threshold: must be a number in (0, 1], got "
                                      f"{threshold!r}")
        for key in ("stages", "maturity"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise RegistrationRefused(f"{key}: must be a string (e.g. "
                                          f"{'shadow,5,25' if key == 'stages' else '30m'}), "
                                          f"got {data[key]!r}")
        return cls(name, policy, dict(versions), float(threshold), data.get("stages") or None,
                   data.get("maturity") or None)

    def to_json(self) -> dict[str, Any]:
        """The registration as stored (and as ``GET /rollouts`` lists it)."""
        return asdict(self) | {"versions": dict(self.versions)}


@dataclass(frozen=True)
class SharedCollectorConfig:
    """The shared collector's own settings; the per-rollout ones come with registrations.

    ``tokens`` (or ``insecure_no_auth``) open every rollout's endpoints and the
    registrations; ``pending_ttl``/``unanswered`` apply to every rollout as
    ``kpigate collector``'s options of the same names; ``overrides`` are set on every
    rollout's service configuration (tests: ``metrics_cache_s``, ``sweep_interval_s``).
    """

    data_dir: Path
    tokens: CollectorTokens = field(default_factory=CollectorTokens)
    insecure_no_auth: bool = False
    pending_ttl: str = "10m"
    unanswered: str = "error"
    sweep_interval_s: float = 5.0
    max_registration_bytes: int = 2**20
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        if self.unanswered not in UNANSWERED:
            raise ValueError(f"unanswered: must be one of {', '.join(UNANSWERED)}, got "
                             f"{self.unanswered!r}")
        if self.insecure_no_auth and self.tokens.entries:
            raise ValueError("tokens: given together with insecure_no_auth "
                             "(--insecure-no-auth), which accepts every request; give "
                             "tokens or the flag, not both")
        missing = [] if self.insecure_no_auth else self.tokens.missing(REQUIRED_SCOPES)
        if missing:
            raise ValueError(f"tokens: none for the {missing[0]} scope; give a token file for "
                             f"each of {', '.join(REQUIRED_SCOPES)} (labels too, if labels are "
                             "posted), or turn authentication off on purpose for a local test "
                             "(--insecure-no-auth)")


@dataclass
class _Rollout:
    registration: Registration
    app: FastAPI

    @property
    def service(self) -> CollectorService:
        service: CollectorService = self.app.state.service
        return service


def _atomic_write(path: Path, text: str) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RolloutRegistry:
    """The registered rollouts of a shared collector (thread-safe; see the module doc)."""

    def __init__(self, config: SharedCollectorConfig) -> None:
        self.config = config
        self.rollouts_dir = config.data_dir / ROLLOUTS_DIR
        self.ended_dir = config.data_dir / ENDED_DIR
        self.rollouts_dir.mkdir(parents=True, exist_ok=True)
        self.ended_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._rollouts: dict[str, _Rollout] = {}
        #: Directories that could not be loaded at start: name -> why.
        self.unloaded: dict[str, str] = {}

    # -- building a rollout ------------------------------------------------------------

    def _config(self, registration: Registration, directory: Path) -> CollectorServiceConfig:
        """The rollout's service configuration, ``directory`` holding its ``policy.yaml``
        (``RegistrationRefused`` naming the field when the registration is bad)."""
        cfg = self.config
        try:
            config = build_config(
                deployment=registration.name, policy_file=str(directory / POLICY_FILE),
                data_dir=str(directory), threshold=registration.threshold,
                maturity=registration.maturity, pending_ttl=cfg.pending_ttl,
                unanswered=cfg.unanswered,
                baseline_version=registration.versions.get("baseline"),
                candidate_version=registration.versions.get("candidate"),
                insecure_no_auth=cfg.insecure_no_auth,
                tokens=None if cfg.insecure_no_auth else cfg.tokens,
                stages=registration.stages)
        except PolicyError as exc:
            field_name = "stages" if registration.stages and all(
                p.startswith("stages") for p in exc.problems) else "policy"
            raise RegistrationRefused(f"{field_name}: " + "; ".join(exc.problems)) from None
        except UsageError as exc:
            raise RegistrationRefused(_as_field(str(exc))) from None
        return replace(config, **dict(cfg.overrides)) if cfg.overrides else config

    def _open(self, registration: Registration, config: CollectorServiceConfig) -> _Rollout:
        return _Rollout(registration, create_collector_app(config))

    def _end(self, name: str, rollout: _Rollout | None) -> Path | None:
        """Close ``rollout`` and move NAME's directory to ``ended/`` (None if it has none)."""
        if rollout is not None:
            rollout.service.close()
        directory = self.rollouts_dir / name
        if not directory.exists():
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        ended = self.ended_dir / f"{name}-{stamp}"
        n = 1
        while ended.exists():
            n += 1
            ended = self.ended_dir / f"{name}-{stamp}-{n}"
        os.replace(directory, ended)
        return ended

    # -- registrations -----------------------------------------------------------------

    def register(self, name: str, data: Any) -> tuple[int, dict[str, Any]]:
        """Register (or confirm, or replace) rollout ``name``; the HTTP status and reply."""
        try:
            registration = Registration.from_body(name, data)
        except RegistrationRefused as exc:
            return exc.status, {"error": str(exc)}
        with self._lock:
            current = self._rollouts.get(name)
            if current is not None and current.registration == registration:
                return 200, {"rollout": name, "outcome": "unchanged"}
            if current is not None and \
                    dict(current.registration.versions) == dict(registration.versions):
                return 409, {"error": (
                    f"versions: rollout {name!r} is registered for the same versions with "
                    "another policy, threshold, stages or maturity; a running rollout keeps "
                    f"its registration (DELETE /rollouts/{name} first to start over)")}
            staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-",
                                            dir=self.config.data_dir))
            try:
                (staging / POLICY_FILE).write_text(registration.policy, encoding="utf-8")
                try:
                    config = self._config(registration, staging)
                except RegistrationRefused as exc:
                    return exc.status, {"error": str(exc)}
                self._rollouts.pop(name, None)
                ended = self._end(name, current)
                directory = self.rollouts_dir / name
                os.replace(staging, directory)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            try:
                rollout = self._open(registration, replace(config, data_dir=directory))
                _atomic_write(directory / REGISTRATION_FILE,
                              json.dumps(registration.to_json(), indent=2))
            except (OSError, sqlite3.Error, ValueError) as exc:
                log.error("rollout %s cannot be opened in %s: %s", name, directory, exc)
                return 503, {"error": f"the collector cannot open rollout {name}'s data "
                                      f"directory: {exc}"}
            self._rollouts[name] = rollout
            self.unloaded.pop(name, None)
        outcome = "replaced" if current is not None else "created"
        log.info("rollout %s %s (versions %s)", name, outcome, dict(registration.versions))
        reply: dict[str, Any] = {"rollout": name, "outcome": outcome}
        if ended is not None:
            reply["ended"] = str(ended.relative_to(self.config.data_dir))
        return 201, reply

    def deregister(self, name: str) -> tuple[int, dict[str, Any]]:
        """End rollout ``name``, keeping its data under ``ended/``."""
        with self._lock:
            rollout = self._rollouts.pop(name, None)
            if rollout is None:
                return 404, {"error": f"no rollout named {name!r} is registered with this "
                                      "collector"}
            ended = self._end(name, rollout)
        log.info("rollout %s deleted; its data is kept in %s", name, ended)
        return 200, {"rollout": name, "outcome": "deleted",
                     "ended": str(ended.relative_to(self.config.data_dir)) if ended else None}

    def load(self) -> None:
        """Open every registered rollout found under ``DIR/rollouts`` (at start)."""
        for directory in sorted(p for p in self.rollouts_dir.iterdir() if p.is_dir()):
            name = directory.name
            try:
                data = json.loads((directory / REGISTRATION_FILE).read_text(encoding="utf-8"))
                registration = Registration.from_body(name, {
                    k: v for k, v in data.items() if k != "name"})
                if registration.policy != (directory / POLICY_FILE).read_text(encoding="utf-8"):
                    raise RegistrationRefused("policy.yaml is not the registered policy")
                rollout = self._open(registration, self._config(registration, directory))
            except (OSError, ValueError, sqlite3.Error) as exc:  # json, RegistrationRefused
                why = f"{type(exc).__name__}: {exc}"
                log.error("rollout directory %s not loaded (%s); its events are refused until "
                          "the rollout is registered again", directory, why)
                self.unloaded[name] = why
                continue
            self._rollouts[name] = rollout
            log.info("rollout %s reloaded (versions %s)", name, dict(registration.versions))

    # -- reading -----------------------------------------------------------------------

    def app(self, name: str) -> FastAPI | None:
        """The app serving rollout ``name`` (None when it is not registered)."""
        rollout = self._rollouts.get(name)
        return None if rollout is None else rollout.app

    def services(self) -> dict[str, CollectorService]:
        """Every registered rollout's service, by name."""
        with self._lock:
            return {n: r.service for n, r in sorted(self._rollouts.items())}

    def registrations(self) -> dict[str, Registration]:
        """Every registration, by name."""
        with self._lock:
            return {n: r.registration for n, r in sorted(self._rollouts.items())}

    def close(self) -> None:
        """Close every rollout's service (at shutdown)."""
        with self._lock:
            rollouts, self._rollouts = list(self._rollouts.values()), {}
        for rollout in rollouts:
            rollout.service.close()


def _as_field(message: str) -> str:
    """``build_config``'s one line with the registration's field instead of the option."""
    for option, name in _OPTION_FIELDS:
        if message.startswith(option):
            return name + message[len(option):]
    return message
