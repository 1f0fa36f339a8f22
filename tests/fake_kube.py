"""A fake Kubernetes API server for tests: real HTTP on 127.0.0.1, the subset kpigate uses.

:class:`FakeKube` serves ConfigMaps, Secrets and Events (``/api/v1/namespaces/NS/PLURAL``),
Leases (``coordination.k8s.io/v1``) and Seldon's custom resources
(``/apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME[/status]]`` for SeldonDeployment v1,
Model and Experiment v1alpha1, and kpigate's own ModelRollout ``kpigate.io/v1alpha1``), plus
list and watch across all namespaces (``/api/v1/PLURAL``, ``/apis/GROUP/VERSION/PLURAL``),
with the semantics a client can observe: create / get / list (equality label selectors,
``metadata.name`` field selector) / watch / replace (optimistic concurrency on
``metadata.resourceVersion``) / JSON patch (RFC 6902, including ``test``) / merge patch
(RFC 7386) / delete with ownerReference garbage collection, a global resourceVersion
counter, ``uid``, ``creationTimestamp``, ``generation`` bumped on spec changes, the status
subresource, and Kubernetes ``Status`` error bodies shaped as the real server sends them.
Watches (``?watch=true``) stream chunked watch events from a bounded change history
(resume from a resourceVersion, 410 ``Expired`` when it is too old, bookmarks,
``timeoutSeconds``); see :mod:`fake_kube_watch`. Secret, Event and Lease decoding and
validation (``stringData``, required Event fields, MicroTime) live in
:mod:`fake_kube_kinds`, JSON/merge patch in :mod:`fake_kube_patch`.
When ``tests/data/seldon-crds/`` holds the Seldon CRDs, custom resources are pruned and
validated against their ``openAPIV3Schema`` like the real server does (422 when invalid);
ModelRollouts always are, against ``deploy/kubernetes/base/crd/``.

Tests drive the rest through Python methods (not HTTP): move an object's status
(:meth:`FakeKube.set_seldon_state`, :meth:`FakeKube.set_ready_v2`), inject 409 conflicts
(:meth:`FakeKube.inject_conflicts`) or a concurrent modification that lands just before the
next write (:meth:`FakeKube.inject_concurrent_modification`), deny verbs as RBAC would
(:meth:`FakeKube.forbid`, ``watch`` included), cut every open watch so clients must resume
(:meth:`FakeKube.drop_watches`), and read every request made (:attr:`FakeKube.requests`,
:meth:`FakeKube.count`; a watch is recorded with verb ``watch`` when it starts).
``docs/fake-kube.md`` lists what is emulated and what is not.

Fixtures: ``fake_kube`` (a started server with a kubeconfig file, stopped at teardown) and
``fake_kube_factory`` (start more, e.g. one that requires a bearer token or a short
``bookmark_interval``). Use them with
``from fake_kube import fake_kube, fake_kube_factory  # noqa: F401`` (or from conftest).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import socket
import threading
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fake_kube_kinds import DecodeError
from fake_kube_kinds import normalize as normalize_builtin
from fake_kube_kinds import problems as builtin_problems
from fake_kube_kinds import update_problems as builtin_update_problems
from fake_kube_patch import PatchError, apply_json_patch, apply_merge_patch, json_equal
from fake_kube_watch import DEFAULT_HISTORY, Change, WatchHub, WatchStream

__all__ = ["FakeKube", "PatchError", "RecordedRequest", "apply_json_patch",
           "apply_merge_patch", "fake_kube", "fake_kube_factory", "json_equal"]

CRD_DIR = Path(__file__).parent / "data" / "seldon-crds"
#: kpigate's own CRD (ModelRollout); always used, whatever ``crd_dir`` says, since it ships
#: with the repository.
KPIGATE_CRD_DIR = Path(__file__).parent.parent / "deploy" / "kubernetes" / "base" / "crd"
CONFIGMAP_MAX_BYTES = 1024 * 1024  # the API server's limit on a ConfigMap's data
DEFAULT_USER = "system:serviceaccount:default:kpigate"


@dataclass(frozen=True)
class Resource:
    """A REST resource the fake serves."""

    group: str  # "" for the core API
    version: str
    plural: str
    kind: str
    status_subresource: bool
    generation: bool  # whether metadata.generation is maintained (custom resources)
    builtin: bool = False  # a built-in kind (typed lists, Status on delete, strategic merge)
    unconditional_update: bool = False  # PUT without metadata.resourceVersion allowed

    @property
    def api_version(self) -> str:
        """``group/version``, or ``v1`` for the core group."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``plural.group`` as the API server names the resource in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "configmaps", "ConfigMap", False, False, True, True),
    Resource("", "v1", "secrets", "Secret", False, False, True, True),
    Resource("", "v1", "events", "Event", False, False, True, True),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", False, False, True, False),
    Resource("machinelearning.seldon.io", "v1", "seldondeployments", "SeldonDeployment",
             True, True),
    Resource("mlops.seldon.io", "v1alpha1", "models", "Model", True, True),
    Resource("mlops.seldon.io", "v1alpha1", "experiments", "Experiment", True, True),
    Resource("kpigate.io", "v1alpha1", "modelrollouts", "ModelRollout", True, True),
)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, as the client sent it, and the status it got."""

    method: str
    verb: str  # Kubernetes verb: get, list, create, update, patch, delete ("" if unrouted)
    path: str
    query: dict[str, str]
    content_type: str | None
    body: Any  # parsed JSON, or the raw text when it was not JSON, or None
    status: int
    plural: str = ""
    name: str = ""
    subresource: str = ""


class ApiError(Exception):
    """A failure answered with a Kubernetes ``Status`` body."""

    def __init__(self, code: int, reason: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details if details is not None else {}

    def body(self) -> dict[str, Any]:
        """The ``Status`` object the real API server returns for this failure."""
        out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                               "status": "Failure", "message": self.message,
                               "reason": self.reason, "details": self.details,
                               "code": self.code}
        if not self.message:
            del out["message"]
        return out


def _not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found',
                    _details(res, name))


def _details(res: Resource, name: str) -> dict[str, Any]:
    out = {"name": name, "group": res.group, "kind": res.plural}
    return {k: v for k, v in out.items() if v}


def _conflict(res: Resource, name: str) -> ApiError:
    return ApiError(409, "Conflict",
                    f'Operation cannot be fulfilled on {res.qualified} "{name}": the object '
                    "has been modified; please apply your changes to the latest version and "
                    "try again", _details(res, name))


def _invalid(res: Resource, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid; ``causes`` are (reason, field, message) like field.ErrorList."""
    text = ", ".join(f"{f}: {m}" if f else m for _, f, m in causes)
    kind = f"{res.kind}.{res.group}" if res.group else res.kind
    details = {"name": name, "group": res.group, "kind": res.kind,
               "causes": [{"reason": r, "message": m, "field": f} for r, f, m in causes]}
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {text}',
                    {k: v for k, v in details.items() if v})


def _patch_failed() -> ApiError:
    """What the API server answers when a JSON patch does not apply (a failed ``test``, a
    missing path): a generic 422 without the patch library's reason (patch.go uses
    NewGenericServerResponse, whose message hides the cause)."""
    return ApiError(422, "Invalid",
                    "the server rejected our request due to an error in our request")


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


# -- label selectors ---------------------------------------------------------------------------
def parse_label_selector(text: str) -> list[tuple[str, str, str | None]]:
    """Equality-based selector → [(key, op, value)] with op ``=``, ``!=``, ``exists``,
    ``!exists``. Set-based requirements (``in``, ``notin``) are not emulated: 400."""
    out: list[tuple[str, str, str | None]] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "(" in part or re.search(r"\s(in|notin)\s", part):
            raise _bad_request(f"unable to parse requirement: {part!r}: set-based "
                               "selectors are not emulated by the fake API server")
        m = re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*(\S*)", part)
        if m:
            out.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
        elif re.fullmatch(r"![^=!\s]+", part):
            out.append((part[1:], "!exists", None))
        elif re.fullmatch(r"[^=!\s]+", part):
            out.append((part, "exists", None))
        else:
            raise _bad_request(f"unable to parse requirement: {part!r}")
    return out


def _matches(labels: dict[str, str], selector: list[tuple[str, str, str | None]]) -> bool:
    for key, op, value in selector:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!exists" and key in labels:
            return False
    return True


# -- validation -----------------------------------------------------------------------------
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _meta_problems(obj: dict[str, Any]) -> list[tuple[str, str, str]]:
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    problems: list[tuple[str, str, str]] = []
    if not name:
        problems.append(("FieldValueRequired", "metadata.name",
                         "Required value: name or generateName is required"))
    elif len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        problems.append(("FieldValueInvalid", "metadata.name",
                         f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must '
                         "consist of lower case alphanumeric characters, '-' or '.', and "
                         "must start and end with an alphanumeric character"))
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            problems.append(("FieldValueInvalid", "metadata.labels",
                             f"Invalid value: {value!r}: a valid label must be an empty "
                             "string or consist of alphanumeric characters, '-', '_' or '.' "
                             "(at most 63)"))
        name_part = key.rsplit("/", 1)[-1]
        if len(name_part) > 63 or not _LABEL_NAME.fullmatch(name_part):
            problems.append(("FieldValueInvalid", "metadata.labels",
                             f"Invalid value: {key!r}: name part must consist of "
                             "alphanumeric characters, '-', '_' or '.'"))
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        for required in ("apiVersion", "kind", "name", "uid"):
            if not (isinstance(ref, dict) and ref.get(required)):
                problems.append(("FieldValueRequired",
                                 f"metadata.ownerReferences[{i}].{required}", "Required value"))
    return problems


def _configmap_problems(obj: dict[str, Any]) -> list[tuple[str, str, str]]:
    problems: list[tuple[str, str, str]] = []
    total = 0
    for section in ("data", "binaryData"):
        for key, value in (obj.get(section) or {}).items():
            if not _CONFIG_KEY.fullmatch(key) or len(key) > 253:
                problems.append(("FieldValueInvalid", f"{section}[{key}]",
                                 f'Invalid value: "{key}": a valid config key must consist '
                                 "of alphanumeric characters, '-', '_' or '.'"))
            if not isinstance(value, str):
                problems.append(("FieldValueInvalid", f"{section}[{key}]",
                                 "Invalid value: must be a string"))
                continue
            total += len(value.encode())
    if total > CONFIGMAP_MAX_BYTES:
        problems.append(("FieldValueTooLong", "[]",
                         f"Too long: must have at most {CONFIGMAP_MAX_BYTES} bytes"))
    return problems


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI v3 schema → JSON Schema: ``nullable`` becomes a ``null`` type alternative."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@lru_cache(maxsize=8)
def _crd_schemas(directory: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(group, version, plural) → openAPIV3Schema of every CRD file in ``directory``."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for ver in spec.get("versions", []):
                schema = (ver.get("schema") or {}).get("openAPIV3Schema")
                if schema:
                    out[(spec["group"], ver["name"], spec["names"]["plural"])] = schema
    return out


@lru_cache(maxsize=16)
def _validator(directory: str, group: str, version: str, plural: str) -> Any:
    import jsonschema

    schema = _crd_schemas(directory).get((group, version, plural))
    if schema is None:
        return None
    converted = _openapi_to_jsonschema(schema)
    return jsonschema.Draft4Validator(converted)


def prune(value: Any, schema: dict[str, Any], root: bool = False) -> Any:
    """Drop the fields a structural schema does not declare, as the API server does.

    Known ``properties`` are kept (and pruned recursively); other keys survive only under
    ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields``; ``apiVersion``,
    ``kind`` and ``metadata`` are kept at the root and in embedded resources.
    """
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
        keep_meta = root or schema.get("x-kubernetes-embedded-resource") is True
        out: dict[str, Any] = {}
        for key, item in value.items():
            if keep_meta and key in ("apiVersion", "kind", "metadata"):
                out[key] = item
            elif key in props:
                out[key] = prune(item, props[key])
            elif isinstance(additional, dict):
                out[key] = prune(item, additional)
            elif preserve or additional is True:
                out[key] = item
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"]) for item in value]
    return value


def _json_path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# -- the server ---------------------------------------------------------------------------------
@dataclass
class _Injection:
    remaining: int
    verbs: frozenset[str]
    plural: str | None


@dataclass
class _Pending:
    plural: str
    namespace: str
    name: str
    mutate: Callable[[dict[str, Any]], None]


class FakeKube:
    """An in-process Kubernetes API server over real HTTP (see the module docstring).

    ``token``: when set, every request must carry ``Authorization: Bearer <token>`` (else
    401, as a real server with bad credentials answers). ``crd_dir``: CRD files used to
    prune and validate custom resources (default ``tests/data/seldon-crds``; validation is
    skipped when the directory does not exist). ``user``: the identity named in 403
    messages. ``bookmark_interval``: seconds between BOOKMARK events of a watch that asked
    for them; ``watch_history``: how many changes a watch can resume from (older
    resourceVersions get 410 Expired).
    """

    def __init__(self, *, token: str | None = None, crd_dir: Path | None = CRD_DIR,
                 user: str = DEFAULT_USER, bookmark_interval: float = 1.0,
                 watch_history: int = DEFAULT_HISTORY) -> None:
        self.token = token
        self.user = user
        self.crd_dir = crd_dir if crd_dir is not None and crd_dir.is_dir() else None
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._rv = 1000
        self._watch = WatchHub(self._lock, lambda: self._rv, history=watch_history,
                               bookmark_interval=bookmark_interval)
        self._requests: list[RecordedRequest] = []
        self._conflicts: list[_Injection] = []
        self._pending: list[_Pending] = []
        self._forbidden: set[tuple[str, str]] = set()
        self._served = {(r.group, r.plural): r for r in RESOURCES}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self.kubeconfig: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL of the API server (``http://127.0.0.1:PORT``)."""
        if self._server is None:
            raise RuntimeError("FakeKube is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def validating(self) -> bool:
        """Whether custom resources are validated against CRD schemas."""
        return self.crd_dir is not None

    def start(self) -> FakeKube:
        """Bind 127.0.0.1 on a free port and serve in a background thread."""
        fake = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def process_request(self, request: Any, client_address: Any) -> None:
                # Registered before the thread starts, so stop() always sees it.
                thread = threading.Thread(target=self._serve_one, args=(request, client_address),
                                          name="fake-kube-conn", daemon=True)
                with fake._lock:
                    fake._connections.add(request)
                    fake._handlers.add(thread)
                thread.start()

            def _serve_one(self, request: Any, client_address: Any) -> None:
                try:
                    self.process_request_thread(request, client_address)
                finally:
                    with fake._lock:
                        fake._connections.discard(request)
                        fake._handlers.discard(threading.current_thread())

        self._server = Server(("127.0.0.1", 0), _handler_class(self))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="fake-kube", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close kept-alive client connections, join every thread."""
        if self._server is None:
            return
        self._watch.close()  # open watch streams end; their handler threads return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._connections)
            handlers = list(self._handlers)
        for conn in conns:  # handler threads block reading the next keep-alive request
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in handlers:
            thread.join(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, *, token: str | None = None,
                         namespace: str = "default", context: str = "fake") -> Path:
        """Write a kubeconfig for this server (no TLS); ``token`` defaults to the server's."""
        user: dict[str, Any] = {}
        if token or self.token:
            user["token"] = token or self.token
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": user}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context,
                                                       "namespace": namespace}}],
            "current-context": context,
        }
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")  # JSON is YAML
        if self.kubeconfig is None:
            self.kubeconfig = path
        return path

    # -- control API (Python, not HTTP) ------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    def count(self, verb: str | None = None, plural: str | None = None) -> int:
        """Requests with Kubernetes ``verb`` (get/list/create/update/patch/delete) and/or
        resource ``plural``."""
        return sum(1 for r in self.requests
                   if (verb is None or r.verb == verb) and (plural is None or r.plural == plural))

    def verb_counts(self) -> Counter[str]:
        """Number of requests per Kubernetes verb."""
        return Counter(r.verb for r in self.requests)

    def get_object(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A copy of a stored object, or None."""
        with self._lock:
            key = self._key_for(plural, namespace, name)
            obj = self._objects.get(key)
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Copies of the stored objects of ``plural`` (in ``namespace``), sorted by name."""
        with self._lock:
            res = self._resource_by_plural(plural)
            return [copy.deepcopy(o) for (g, p, ns, _), o in sorted(self._objects.items())
                    if g == res.group and p == plural and namespace in (None, ns)]

    def seed(self, manifest: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
        """Store an object directly (as another actor would create it); returns it."""
        res = next(r for r in RESOURCES
                   if r.api_version == manifest.get("apiVersion") and r.kind == manifest["kind"])
        with self._lock:
            return copy.deepcopy(self._create(res, namespace, copy.deepcopy(manifest)))

    def modify(self, plural: str, namespace: str, name: str,
               mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Change a stored object now, out of band (another writer): ``mutate`` edits it in
        place; resourceVersion (and generation on spec changes) move as for a write."""
        with self._lock:
            key = self._key_for(plural, namespace, name)
            if key not in self._objects:
                raise KeyError(f"{plural}/{namespace}/{name} does not exist")
            old = self._objects[key]
            new = copy.deepcopy(old)
            mutate(new)
            return copy.deepcopy(self._commit(self._resource_by_plural(plural), key, old, new))

    def set_status(self, plural: str, namespace: str, name: str,
                   status: dict[str, Any] | None) -> dict[str, Any]:
        """Replace an object's ``status`` (as its operator would)."""
        def mutate(obj: dict[str, Any]) -> None:
            if status is None:
                obj.pop("status", None)
            else:
                obj["status"] = copy.deepcopy(status)
        return self.modify(plural, namespace, name, mutate)

    def set_seldon_state(self, namespace: str, name: str, state: str, *,
                         available: int | None = None, replicas: int = 1,
                         description: str = "") -> dict[str, Any]:
        """Status of a SeldonDeployment as Seldon's operator writes it: ``state``
        (Creating | Available | Failed) and a ``deploymentStatus`` entry per predictor,
        named ``{sdep}-{predictor}-0-{containers}`` like Seldon's Deployments, with
        ``available`` (default: ``replicas`` when Available, else 0) available replicas."""
        sdep = self.get_object("seldondeployments", namespace, name)
        if sdep is None:
            raise KeyError(f"seldondeployments/{namespace}/{name} does not exist")
        if available is None:
            available = replicas if state == "Available" else 0
        deployments: dict[str, Any] = {}
        for pred in sdep.get("spec", {}).get("predictors", []):
            specs = pred.get("componentSpecs") or [{}]
            for i, comp in enumerate(specs):
                containers = (comp.get("spec") or {}).get("containers") or [
                    {"name": pred.get("graph", {}).get("name", "model")}]
                dep = f"{name}-{pred['name']}-{i}-" + "-".join(c["name"] for c in containers)
                deployments[dep] = {"replicas": replicas, "availableReplicas": available}
        status: dict[str, Any] = {"state": state, "deploymentStatus": deployments,
                                  "replicas": replicas}
        if description:
            status["description"] = description
        if state == "Available":
            status["address"] = {"url": f"http://{name}-default.{namespace}.svc.cluster."
                                        "local:8000/api/v1.0/predictions"}
        return self.set_status("seldondeployments", namespace, name, status)

    def set_ready_v2(self, plural: str, namespace: str, name: str, ready: bool, *,
                     reason: str = "", message: str = "") -> dict[str, Any]:
        """Seldon v2 status: a ``Ready`` condition (True/False) with ``reason``."""
        cond: dict[str, Any] = {"type": "Ready", "status": "True" if ready else "False",
                                "lastTransitionTime": _now()}
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message

        def mutate(obj: dict[str, Any]) -> None:
            obj["status"] = {"conditions": [cond],
                             "observedGeneration": obj["metadata"].get("generation", 1)}
        return self.modify(plural, namespace, name, mutate)

    def inject_conflicts(self, n: int, *, verbs: tuple[str, ...] = ("update", "patch"),
                         plural: str | None = None) -> None:
        """Answer the next ``n`` writes with these verbs (on ``plural``) 409 Conflict, as if
        another writer won each race; nothing is stored for them."""
        with self._lock:
            self._conflicts.append(_Injection(n, frozenset(verbs), plural))

    def inject_concurrent_modification(self, plural: str, namespace: str, name: str,
                                       mutate: Callable[[dict[str, Any]], None]) -> None:
        """Apply ``mutate`` to the object just before the next write to it is processed —
        after the client read it, so its resourceVersion/test ops see a changed object."""
        with self._lock:
            self._pending.append(_Pending(plural, namespace, name, mutate))

    def forbid(self, verb: str, plural: str) -> None:
        """Deny ``verb`` on ``plural`` with 403 Forbidden, as missing RBAC would."""
        with self._lock:
            self._forbidden.add((verb, plural))

    def drop_watches(self, *, clean: bool = True) -> int:
        """End every open watch stream now, so clients must reconnect and resume:
        ``clean`` ends the HTTP body as the server's watch timeout does, otherwise the
        connection is cut mid-stream (a network failure). Returns how many were open."""
        return self._watch.drop(clean=clean)

    def open_watches(self) -> int:
        """How many watch streams are open now."""
        with self._lock:
            return len(self._watch.streams)

    def uninstall(self, plural: str) -> None:
        """Stop serving ``plural`` (its CRD is not installed): its paths answer 404."""
        with self._lock:
            res = self._resource_by_plural(plural)
            self._served.pop((res.group, res.plural), None)

    # -- internals -----------------------------------------------------------------------------
    def _resource_by_plural(self, plural: str) -> Resource:
        for res in RESOURCES:
            if res.plural == plural:
                return res
        raise KeyError(f"the fake serves no resource {plural!r}")

    def _key_for(self, plural: str, namespace: str, name: str) -> tuple[str, str, str, str]:
        return (self._resource_by_plural(plural).group, plural, namespace, name)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def handle(self, method: str, raw_path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, Any]:
        """Serve one request; returns (status, JSON body), or (200, :class:`WatchStream`)
        for a watch, which the caller serves. Thread-safe: one at a time."""
        parsed = urllib.parse.urlsplit(raw_path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        ctype = headers.get("content-type")
        try:
            payload: Any = json.loads(body) if body else None
        except ValueError:
            payload = body.decode("utf-8", "replace")
        route = _route(parsed.path)
        verb = _verb(method, route, query)
        with self._lock:
            try:
                status, out = self._dispatch(method, verb, route, query, headers, payload)
            except ApiError as err:
                status, out = err.code, err.body()
            route = route or {}
            self._requests.append(RecordedRequest(
                method, verb, parsed.path, query, ctype, payload, status,
                route.get("plural") or "", route.get("name") or "", route.get("sub") or ""))
        return status, out

    def _dispatch(self, method: str, verb: str, route: dict[str, str] | None,
                  query: dict[str, str], headers: dict[str, str],
                  payload: Any) -> tuple[int, Any]:
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if route is not None and route.get("version_endpoint"):
            return 200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-kpigate-fake",
                         "gitCommit": "0" * 40, "gitTreeState": "clean",
                         "buildDate": "2024-01-01T00:00:00Z", "goVersion": "go1.22.0",
                         "compiler": "gc", "platform": "linux/amd64"}
        res = self._served.get((route["group"], route["plural"])) if route else None
        if route is None or res is None or res.version != route["version"] or (
                route.get("sub") and (route["sub"] != "status" or not res.status_subresource)):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns, name, sub = route["ns"], route.get("name"), route.get("sub") or ""
        if ns is None and verb not in ("list", "watch"):
            raise ApiError(405, "MethodNotAllowed",
                           "the server does not allow this method on the requested resource")
        if (verb, res.plural) in self._forbidden:
            target = f'{res.qualified} "{name}"' if name else res.qualified
            scope = f'in the namespace "{ns}"' if ns is not None else "at the cluster scope"
            raise ApiError(403, "Forbidden",
                           f'{target} is forbidden: User "{self.user}" cannot {verb} resource '
                           f'"{res.plural}" in API group "{res.group}" {scope}',
                           _details(res, name or ""))
        if query.get("dryRun"):
            raise _bad_request("dryRun is not emulated by the fake API server")
        if verb == "watch":
            return 200, self._watch_stream(res, ns, query)
        if verb in ("update", "patch", "create", "delete"):
            target = name or ""
            if not target and isinstance(payload, dict):
                target = str((payload.get("metadata") or {}).get("name", ""))
            self._run_pending(res, ns, name)
            self._take_conflict(verb, res, target)
        if verb == "list":
            return 200, self._list(res, ns, query)
        if verb == "create":
            if not isinstance(payload, dict):
                raise _bad_request("the body of the request was not a JSON object")
            return 201, self._create(res, ns, payload)
        assert name is not None
        key = (res.group, res.plural, ns, name)
        if verb == "get":
            obj = self._objects.get(key)
            if obj is None:
                raise _not_found(res, name)
            return 200, copy.deepcopy(obj)
        if verb == "update":
            return 200, self._replace(res, key, sub, payload)
        if verb == "patch":
            return 200, self._patch(res, key, sub, headers.get("content-type") or "", payload)
        if verb == "delete":
            return 200, self._delete_request(res, key, query, payload)
        raise ApiError(405, "MethodNotAllowed",
                       "the server does not allow this method on the requested resource")

    def _run_pending(self, res: Resource, ns: str, name: str | None) -> None:
        for pending in list(self._pending):
            if (pending.plural, pending.namespace, pending.name) == (res.plural, ns, name):
                self._pending.remove(pending)
                key = (res.group, res.plural, ns, pending.name)
                old = self._objects.get(key)
                if old is not None:
                    new = copy.deepcopy(old)
                    pending.mutate(new)
                    self._commit(res, key, old, new)

    def _take_conflict(self, verb: str, res: Resource, name: str) -> None:
        for inj in self._conflicts:
            if inj.remaining > 0 and verb in inj.verbs and inj.plural in (None, res.plural):
                inj.remaining -= 1
                raise _conflict(res, name)

    def _selector(self, res: Resource, ns: str | None,
                  query: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
        """The request's namespace, label and field selectors as a predicate on objects."""
        selector = parse_label_selector(query.get("labelSelector", ""))
        field_sel = query.get("fieldSelector", "")
        names: tuple[str, str] | None = None
        if field_sel:
            m = re.fullmatch(r"metadata\.name(==|=|!=)([^,]*)", field_sel)
            if not m:
                raise _bad_request(f"field selector {field_sel!r} is not emulated (only "
                                   "metadata.name=VALUE)")
            names = ("!=" if m.group(1) == "!=" else "=", m.group(2))

        def matches(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata") or {}
            if ns is not None and meta.get("namespace") != ns:
                return False
            if not _matches(meta.get("labels") or {}, selector):
                return False
            return not (names and ((names[0] == "=") != (meta.get("name") == names[1])))
        return matches

    def _watch_stream(self, res: Resource, ns: str | None,
                      query: dict[str, str]) -> WatchStream:
        matches = self._selector(res, ns, query)
        if query.get("sendInitialEvents"):
            raise _bad_request("sendInitialEvents is not emulated by the fake API server")
        rv_text = query.get("resourceVersion", "")
        timeout: float | None = None
        if query.get("timeoutSeconds"):
            try:
                timeout = float(int(query["timeoutSeconds"]))
            except ValueError as exc:
                raise _bad_request(f"invalid timeoutSeconds {query['timeoutSeconds']!r}") \
                    from exc
        initial: list[dict[str, Any]] = []
        if rv_text in ("", "0"):
            since = self._rv
            initial = [copy.deepcopy(o) for (g, p, _, _), o in sorted(self._objects.items())
                       if (g, p) == (res.group, res.plural) and matches(o)]
        else:
            if not rv_text.isdigit():
                raise _bad_request(f'invalid resource version "{rv_text}"')
            since = int(rv_text)
        return WatchStream(self._watch, res.group, res.plural, res.kind, res.api_version,
                           matches, since, initial,
                           bookmarks=query.get("allowWatchBookmarks") in ("true", "1"),
                           timeout=timeout if timeout and timeout > 0 else None)

    def _list(self, res: Resource, ns: str | None, query: dict[str, str]) -> dict[str, Any]:
        matches = self._selector(res, ns, query)
        items = []
        for (g, p, _, _), obj in sorted(self._objects.items()):
            if (g, p) != (res.group, res.plural) or not matches(obj):
                continue
            item = copy.deepcopy(obj)
            if res.builtin:  # typed lists carry no kind/apiVersion on their items
                item.pop("kind", None)
                item.pop("apiVersion", None)
            items.append(item)
        return {"apiVersion": res.api_version, "kind": f"{res.kind}List",
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def _check(self, res: Resource, obj: dict[str, Any], ns: str,
               old: dict[str, Any] | None = None) -> dict[str, Any]:
        """Decode, prune and validate ``obj`` as the API server would before storing it."""
        name = obj.get("metadata", {}).get("name", "")
        if res.builtin and res.kind != "ConfigMap":
            try:
                obj = normalize_builtin(res.kind, obj)
            except DecodeError as exc:
                raise _bad_request(str(exc)) from exc
        problems = _meta_problems(obj)
        if res.kind == "ConfigMap":
            problems += _configmap_problems(obj)
        elif res.builtin:
            problems += builtin_problems(res.kind, obj, ns)
            if old is not None:
                problems += builtin_update_problems(res.kind, old, obj)
        else:
            directory = KPIGATE_CRD_DIR if res.group == "kpigate.io" else self.crd_dir
            schema = None if directory is None else _crd_schemas(str(directory)).get(
                (res.group, res.version, res.plural))
            if schema is not None:
                obj = prune(obj, schema, root=True)
                validator = _validator(str(directory), res.group, res.version, res.plural)
                body = {k: v for k, v in obj.items() if k != "metadata"}
                for err in sorted(validator.iter_errors(body), key=lambda e: list(e.path))[:10]:
                    path = _json_path(err.absolute_path)
                    if err.validator == "required":
                        missing = re.match(r"'([^']+)'", err.message)
                        field_name = missing.group(1) if missing else "?"
                        problems.append(("FieldValueRequired",
                                         f"{path}.{field_name}" if path else field_name,
                                         "Required value"))
                    else:
                        problems.append(("FieldValueInvalid", path,
                                         f"Invalid value: {json.dumps(err.instance)[:80]}: "
                                         f"{err.message[:200]}"))
        if problems:
            raise _invalid(res, name, problems)
        return obj

    def _create(self, res: Resource, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        if not res.builtin:
            if obj.get("apiVersion") != res.api_version or obj.get("kind") != res.kind:
                raise _bad_request(
                    f"the API version in the data ({obj.get('apiVersion')}) does not match "
                    f"the expected API version ({res.api_version}) or the kind "
                    f"({obj.get('kind')}) is not {res.kind}")
        else:
            obj.setdefault("apiVersion", res.api_version)
            obj.setdefault("kind", res.kind)
        if meta.get("namespace") not in (None, "", ns):
            raise _bad_request("the namespace of the provided object does not match the "
                               "namespace sent on the request")
        if meta.get("resourceVersion"):
            raise ApiError(500, "InternalError", "Internal error occurred: resourceVersion "
                           "should not be set on objects to be created",
                           {"causes": [{"message": "resourceVersion should not be set on "
                                                   "objects to be created"}]})
        if res.status_subresource:
            obj.pop("status", None)  # the status subresource owns it
        obj = self._check(res, obj, ns)
        meta = obj["metadata"]
        key = (res.group, res.plural, ns, meta["name"])
        if key in self._objects:
            raise ApiError(409, "AlreadyExists",
                           f'{res.qualified} "{meta["name"]}" already exists',
                           _details(res, meta["name"]))
        meta.update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion=self._next_rv(),
                    creationTimestamp=_now())
        if res.generation:
            meta["generation"] = 1
        self._objects[key] = obj
        self._record("ADDED", res, ns, obj)
        return copy.deepcopy(obj)

    def _commit(self, res: Resource, key: tuple[str, str, str, str], old: dict[str, Any],
                new: dict[str, Any]) -> dict[str, Any]:
        """Store ``new`` over ``old`` with the server-owned fields; a no-op keeps the rv."""
        meta = new.setdefault("metadata", {})
        for system in ("uid", "creationTimestamp", "namespace", "name", "generation",
                       "resourceVersion"):
            if system in old["metadata"]:
                meta[system] = old["metadata"][system]
            else:
                meta.pop(system, None)
        if json_equal(new, old):
            return copy.deepcopy(old)
        if res.generation and not json_equal(_spec_part(new), _spec_part(old)):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        meta["resourceVersion"] = self._next_rv()
        self._objects[key] = new
        self._record("MODIFIED", res, key[2], new, old)
        return copy.deepcopy(new)

    def _update(self, res: Resource, key: tuple[str, str, str, str], sub: str,
                new: Any, *, require_rv: bool) -> dict[str, Any]:
        old = self._objects.get(key)
        name = key[3]
        if old is None:
            raise _not_found(res, name)
        if not isinstance(new, dict) or not isinstance(new.get("metadata", {}), dict):
            raise _bad_request("the body of the request was not a JSON object")
        meta = new.setdefault("metadata", {})
        if meta.get("name") not in (None, "", name):
            raise _bad_request(f"the name of the object ({meta.get('name')}) does not match "
                               f"the name on the URL ({name})")
        if meta.get("namespace") not in (None, "", key[2]):
            raise _bad_request("the namespace of the provided object does not match the "
                               "namespace sent on the request")
        rv = meta.get("resourceVersion")
        if not rv and require_rv:
            raise _invalid(res, name, [("FieldValueInvalid", "metadata.resourceVersion",
                                        "Invalid value: 0x0: must be specified for an "
                                        "update")])
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise _conflict(res, name)
        if meta.get("uid") not in (None, "", old["metadata"]["uid"]):
            raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: "
                           f"{meta.get('uid')}, UID in object meta: {old['metadata']['uid']}",
                           _details(res, name))
        if not res.builtin and (new.get("apiVersion"), new.get("kind")) != (res.api_version,
                                                                      res.kind):
            raise _bad_request(f"apiVersion/kind must be {res.api_version}/{res.kind}")
        new = copy.deepcopy(new)
        new.setdefault("apiVersion", res.api_version)
        new.setdefault("kind", res.kind)
        if res.status_subresource:
            if sub == "status":  # only status moves; everything else stays as stored
                status = new.get("status")
                new = copy.deepcopy(old)
                if status is None:
                    new.pop("status", None)
                else:
                    new["status"] = status
            elif "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        new = self._check(res, new, key[2], old)
        return self._commit(res, key, old, new)

    def _replace(self, res: Resource, key: tuple[str, str, str, str], sub: str,
                 payload: Any) -> dict[str, Any]:
        # Custom resources and Leases refuse unconditional updates; ConfigMaps allow them.
        return self._update(res, key, sub, payload, require_rv=not res.unconditional_update)

    def _patch(self, res: Resource, key: tuple[str, str, str, str], sub: str, ctype: str,
               payload: Any) -> dict[str, Any]:
        old = self._objects.get(key)
        if old is None:
            raise _not_found(res, key[3])
        media = ctype.split(";")[0].strip().lower()
        # Custom resources do not support strategic merge patch; ConfigMaps have no list
        # with a merge key in data, so there it behaves as a merge patch.
        strategic = media == "application/strategic-merge-patch+json" and res.builtin
        if media == "application/json-patch+json":
            if not isinstance(payload, list):
                raise _bad_request("json: cannot unmarshal object into Go value of type "
                                   "jsonpatch.Patch")
            try:
                new = apply_json_patch(old, payload)
            except PatchError as exc:
                raise _patch_failed() from exc
        elif media == "application/merge-patch+json" or strategic:
            if not isinstance(payload, dict):
                raise _bad_request("the body of a merge patch must be a JSON object")
            new = apply_merge_patch(old, payload)
        else:
            accepted = ["application/json-patch+json", "application/merge-patch+json"]
            if res.builtin:
                accepted.append("application/strategic-merge-patch+json")
            raise ApiError(415, "UnsupportedMediaType",
                           "the body of the request was in an unknown format - accepted "
                           f"media types include: {', '.join(accepted)}")
        if not isinstance(new, dict):
            raise _patch_failed()
        return self._update(res, key, sub, new, require_rv=False)

    def _delete_request(self, res: Resource, key: tuple[str, str, str, str],
                        query: dict[str, str], payload: Any) -> dict[str, Any]:
        options = payload if isinstance(payload, dict) else {}
        policy = query.get("propagationPolicy") or options.get("propagationPolicy") or \
            "Background"
        if policy not in ("Orphan", "Background", "Foreground"):
            raise _invalid(res, key[3], [("FieldValueNotSupported", "propagationPolicy",
                                          f'Unsupported value: "{policy}"')])
        obj = self._objects.get(key)
        if obj is None:
            raise _not_found(res, key[3])
        pre = options.get("preconditions") or {}
        if pre.get("resourceVersion") and pre["resourceVersion"] != \
                obj["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f"Precondition failed: ResourceVersion in "
                           f"precondition: {pre['resourceVersion']}, ResourceVersion in object "
                           f"meta: {obj['metadata']['resourceVersion']}", _details(res, key[3]))
        if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
            raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: "
                           f"{pre['uid']}, UID in object meta: {obj['metadata']['uid']}",
                           _details(res, key[3]))
        deleted = self._delete(key, policy)
        if not res.builtin:  # custom resources answer with the deleted object
            return deleted
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": key[3], "kind": res.plural,
                            "uid": deleted["metadata"]["uid"]}}

    def _delete(self, key: tuple[str, str, str, str], policy: str) -> dict[str, Any]:
        """Remove ``key`` and collect its garbage (synchronously, unlike the real GC)."""
        obj = self._objects.pop(key)
        gone = copy.deepcopy(obj)  # the DELETED event carries the deletion's version
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._record("DELETED", self._resource_by_plural(key[1]), key[2], gone)
        uid = obj["metadata"]["uid"]
        live = {o["metadata"]["uid"] for o in self._objects.values()}
        for dkey, dep in list(self._objects.items()):
            if dkey not in self._objects or dkey[2] != key[2]:
                continue
            refs = dep["metadata"].get("ownerReferences") or []
            if not any(r.get("uid") == uid for r in refs):
                continue
            if policy == "Orphan":
                new = copy.deepcopy(dep)
                kept = [r for r in refs if r.get("uid") != uid]
                if kept:
                    new["metadata"]["ownerReferences"] = kept
                else:
                    new["metadata"].pop("ownerReferences", None)
                dres = self._resource_by_plural(dkey[1])
                self._commit(dres, dkey, dep, new)
            elif not any(r.get("uid") in live for r in refs if r.get("uid") != uid):
                self._delete(dkey, "Background")
                live = {o["metadata"]["uid"] for o in self._objects.values()}
        return obj


    def _record(self, kind: str, res: Resource, ns: str, obj: dict[str, Any],
                old: dict[str, Any] | None = None) -> None:
        self._watch.record(Change(int(obj["metadata"]["resourceVersion"]), kind, res.group,
                                  res.plural, ns, copy.deepcopy(obj),
                                  copy.deepcopy(old) if old is not None else None))


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_CORE = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
                   r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?/?")
_GROUP = re.compile(r"/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/"
                    r"(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?/?")
# All namespaces (list and watch only): /api/v1/PLURAL, /apis/GROUP/VERSION/PLURAL
_CORE_ALL = re.compile(r"/api/v1/(?P<plural>[^/]+)/?")
_GROUP_ALL = re.compile(r"/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/(?P<plural>[^/]+)/?")


def _route(path: str) -> dict[str, Any] | None:
    path = urllib.parse.unquote(path)
    if path.rstrip("/") == "/version":
        return {"version_endpoint": True}
    m = _CORE.fullmatch(path)
    if m:
        return {"group": "", "version": "v1", **m.groupdict()}
    m = _GROUP.fullmatch(path)
    if m:
        return dict(m.groupdict())
    m = _CORE_ALL.fullmatch(path)
    if m and m.group("plural") != "namespaces":
        return {"group": "", "version": "v1", "ns": None, **m.groupdict()}
    m = _GROUP_ALL.fullmatch(path)
    if m and m.group("plural") != "namespaces":
        return {"ns": None, **m.groupdict()}
    return None


def _verb(method: str, route: dict[str, Any] | None, query: dict[str, str]) -> str:
    if route is None or route.get("version_endpoint"):
        return "get" if route else ""
    named = bool(route.get("name"))
    if method == "GET" and not named and query.get("watch") in ("true", "1"):
        return "watch"
    return {("GET", False): "list", ("GET", True): "get", ("POST", False): "create",
            ("PUT", True): "update", ("PATCH", True): "patch",
            ("DELETE", True): "delete", ("DELETE", False): "deletecollection"}.get(
        (method, named), "")


def _handler_class(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the kubernetes client's pool expects
        # Headers and body leave in separate writes; with Nagle on, each response would
        # wait for the client's delayed ACK (~40 ms).
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, out = fake.handle(self.command, self.path, headers, body)
            if isinstance(out, WatchStream):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if not out.serve(self.wfile, self.connection):
                    self.close_connection = True
                return
            data = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the recorded requests are the log

    return Handler


# -- fixtures -------------------------------------------------------------------------------
def _start(tmp_path_factory: pytest.TempPathFactory, **kwargs: Any) -> FakeKube:
    fake = FakeKube(**kwargs).start()
    try:
        fake.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
    except BaseException:
        fake.stop()
        raise
    return fake


@pytest.fixture
def fake_kube_factory(tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[Callable[..., FakeKube]]:
    """Start fake API servers (keyword arguments go to :class:`FakeKube`), each with a
    kubeconfig at ``.kubeconfig``; all are stopped when the test ends."""
    started: list[FakeKube] = []

    def start(**kwargs: Any) -> FakeKube:
        fake = _start(tmp_path_factory, **kwargs)
        started.append(fake)
        return fake

    try:
        yield start
    finally:
        for fake in started:
            fake.stop()


@pytest.fixture
def fake_kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKube]:
    """A started fake API server (no auth) with ``.url``, ``.kubeconfig`` and controls."""
    fake = _start(tmp_path_factory)
    try:
        yield fake
    finally:
        fake.stop()
