"""A real Prometheus and a loopback exporter whose series the test sets.

``running_prometheus(targets, directory)`` starts Debian's ``prometheus`` binary on
127.0.0.1 (a free port, its TSDB in ``directory``, 1 s scrapes of the given loopback
targets), waits until it is ready and has scraped every target once, and stops it on exit
(SIGTERM, then SIGKILL). ``PrometheusServer.stop()`` may also be called mid-test to take
Prometheus away (to prove that the gate holds).

``LoopbackExporter`` is a ``prometheus_client`` registry served on 127.0.0.1 whose samples
the test writes: generic ``set`` / ``add``, and helpers shaped like the series kpigate reads
(Seldon v1 executor histograms, Seldon v2 model counters, the kpigate collector's
``kpigate_stage_*`` series computed from raw predictions). Every change bumps a
generation gauge, and ``PrometheusServer.sync(exporter)`` waits until Prometheus has
scraped that generation, so a test never races a scrape.

tests/conftest.py turns them into the module-scoped fixtures ``exporter`` and
``prometheus`` (one Prometheus per test module).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import prometheus_client
from processes import free_port, stop_process_group
from prometheus_client.core import Metric
from prometheus_client.registry import CollectorRegistry

from mlflow_kpigate.metrics import exposition as ex

#: Seldon Core v1 executor's default histogram buckets (Prometheus' DefBuckets).
SELDON_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                     10.0)
EXECUTOR = "seldon_api_executor_server_requests_seconds"
GENERATION = "loopback_generation"
# Ceilings for a wedged process, not performance thresholds.
_STARTUP_LIMIT_S = 60.0
_SCRAPE_LIMIT_S = 30.0


def _le(bound: float) -> str:
    return ex.format_bound(bound)


def cumulative(values: np.ndarray, bounds: Sequence[float]) -> list[tuple[str, float]]:
    """Prometheus ``le`` buckets (``x <= bound``) of ``values``, with ``+Inf``."""
    values = np.sort(np.asarray(values, dtype=float))
    out = [(_le(b), float(np.searchsorted(values, b, side="right"))) for b in bounds]
    out.append(("+Inf", float(values.size)))
    return out


class LoopbackExporter:
    """A metrics endpoint on 127.0.0.1 whose samples the test sets (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.generation = 0
        self._registry = CollectorRegistry()
        self._registry.register(self)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- serving ----------------------------------------------------------------------

    def start(self) -> LoopbackExporter:
        self._server, self._thread = prometheus_client.start_http_server(
            0, addr="127.0.0.1", registry=self._registry)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> LoopbackExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def target(self) -> str:
        """``host:port`` for a scrape config."""
        return f"127.0.0.1:{self._server.server_port}"

    def collect(self) -> Iterator[Metric]:
        """The registry's view: one untyped family per sample name, plus the generation."""
        with self._lock:
            items = sorted(self._samples.items(), key=lambda kv: kv[0][0])
            generation = self.generation
        families: dict[str, Metric] = {}
        for (name, labels), value in items:
            family = families.get(name)
            if family is None:
                family = families[name] = Metric(name, "loopback test series", "untyped")
            family.add_sample(name, dict(labels), value)
        gen = Metric(GENERATION, "changes made to the loopback exporter", "gauge")
        gen.add_sample(GENERATION, {}, float(generation))
        yield from families.values()
        yield gen

    # -- writing samples --------------------------------------------------------------

    def _bump(self) -> None:
        self.generation += 1

    def set(self, name: str, labels: Mapping[str, str], value: float) -> None:
        """Set one sample (``NaN`` and infinities allowed)."""
        with self._lock:
            self._samples[(name, frozenset(labels.items()))] = float(value)
            self._bump()

    def add(self, name: str, labels: Mapping[str, str], delta: float) -> None:
        """Add to one sample (a counter), creating it at 0."""
        with self._lock:
            key = (name, frozenset(labels.items()))
            self._samples[key] = self._samples.get(key, 0.0) + float(delta)
            self._bump()

    def remove(self, **match: str) -> None:
        """Drop every sample whose labels include ``match``."""
        with self._lock:
            for key in [k for k in self._samples if set(match.items()) <= set(k[1])]:
                del self._samples[key]
            self._bump()

    # -- Seldon v1 ----------------------------------------------------------------------

    def add_executor_requests(self, deployment: str, predictor: str, latencies: Sequence[float],
                              code: str = "200", namespace: str | None = "models",
                              service: str = "predictions") -> None:
        """Time ``latencies`` in the executor histogram of ``predictor`` with ``code``."""
        labels = {"deployment_name": deployment, "predictor_name": predictor,
                  "predictor_version": "", "service": service, "method": "post",
                  "code": code}
        if namespace is not None:
            labels["namespace"] = namespace
        values = np.asarray(latencies, dtype=float)
        with self._lock:
            for le, count in cumulative(values, SELDON_BUCKETS):
                key = (f"{EXECUTOR}_bucket", frozenset({**labels, "le": le}.items()))
                self._samples[key] = self._samples.get(key, 0.0) + count
            for suffix, delta in (("_count", values.size), ("_sum", float(values.sum()))):
                key = (f"{EXECUTOR}{suffix}", frozenset(labels.items()))
                self._samples[key] = self._samples.get(key, 0.0) + delta
            self._bump()

    def restart_executor(self, deployment: str, predictor: str) -> None:
        """The predictor's pod restarted: its executor counters start again from zero."""
        with self._lock:
            for key in self._samples:
                labels = dict(key[1])
                if key[0].startswith(EXECUTOR) and labels.get("deployment_name") == deployment \
                        and labels.get("predictor_name") == predictor:
                    self._samples[key] = 0.0
            self._bump()

    # -- Seldon v2 ----------------------------------------------------------------------

    def add_v2_requests(self, model: str, latencies: Sequence[float], code: str | None = "200",
                        namespace: str = "models") -> None:
        """Count ``latencies`` for a Seldon v2 model (``code=None``: no code label)."""
        labels = {"model": model, "namespace": namespace}
        if code is not None:
            labels["code"] = code
        values = np.asarray(latencies, dtype=float)
        with self._lock:
            for name, labs, delta in (
                    ("seldon_model_infer_total", labels, values.size),
                    ("seldon_model_infer_seconds_total",
                     {k: v for k, v in labels.items() if k != "code"}, float(values.sum()))):
                key = (name, frozenset(labs.items()))
                self._samples[key] = self._samples.get(key, 0.0) + delta
            self._bump()

    # -- the kpigate collector --------------------------------------------------------

    def set_collector_stage(self, deployment: str, stage: int) -> None:
        self.set(ex.COLLECTOR_STAGE, {ex.LABEL_DEPLOYMENT: deployment}, stage)

    def set_kpigate_stage(self, deployment: str, stage: int, role: str, data: StageData) -> None:
        """Replace the ``kpigate_stage_*`` series of one (stage, role) with ``data``'s."""
        base = {ex.LABEL_DEPLOYMENT: deployment, ex.LABEL_STAGE: str(stage),
                ex.LABEL_ROLE: role}
        with self._lock:
            for key in [k for k in self._samples if set(base.items()) <= set(k[1])]:
                del self._samples[key]
            for name, labels, value in data.series():
                self._samples[(name, frozenset({**base, **labels}.items()))] = value
            self._bump()


@dataclass
class StageData:
    """Raw predictions of one role in one stage, as the collector would export them.

    ``latency``/``error`` cover every served request; the labelled arrays (``y_true``,
    ``y_pred``, optional ``score``, ``segments``, ``values``) the matured labelled ones.
    """

    latency: np.ndarray
    error: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    score: np.ndarray | None = None
    segments: Mapping[str, np.ndarray] | None = None
    values: Mapping[str, np.ndarray] | None = None

    def series(self) -> Iterator[tuple[str, dict[str, str], float]]:
        yield ex.STAGE_REQUESTS, {}, float(self.latency.size)
        yield ex.STAGE_ERRORS, {}, float(np.count_nonzero(self.error))
        for le, count in cumulative(self.latency, ex.LATENCY_BUCKETS):
            yield f"{ex.STAGE_LATENCY}_bucket", {ex.LABEL_LE: le}, count
        yield f"{ex.STAGE_LATENCY}_count", {}, float(self.latency.size)
        yield f"{ex.STAGE_LATENCY}_sum", {}, float(self.latency.sum())
        t, p = self.y_true.astype(bool), self.y_pred.astype(bool)
        cells = {"tp": t & p, "fp": ~t & p, "tn": ~t & ~p, "fn": t & ~p}
        for outcome, mask in cells.items():
            yield ex.STAGE_LABELLED, {ex.LABEL_OUTCOME: outcome}, float(mask.sum())
        if self.score is not None:
            for label, mask in (("1", t), ("0", ~t)):
                for le, count in cumulative(self.score[mask], ex.SCORE_BUCKETS):
                    yield f"{ex.STAGE_SCORE}_bucket", {ex.LABEL_TRUE_LABEL: label,
                                                       ex.LABEL_LE: le}, count
        for field, column in (self.segments or {}).items():
            for value in np.unique(column):
                sel = column == value
                for outcome, mask in cells.items():
                    yield ex.STAGE_SEGMENT_LABELLED, {
                        ex.LABEL_FIELD: field, ex.LABEL_VALUE: str(value),
                        ex.LABEL_OUTCOME: outcome}, float((mask & sel).sum())
        if self.values:
            names = sorted(self.values)
            yield ex.STAGE_VALUE_COUNT, {}, float(self.y_true.size)
            for a in names:
                yield ex.STAGE_VALUE_SUM, {ex.LABEL_NAME: a}, float(self.values[a].sum())
                for b in names:
                    if a <= b:
                        yield ex.STAGE_VALUE_PRODUCT_SUM, {
                            ex.LABEL_NAME_A: a, ex.LABEL_NAME_B: b}, float(
                            np.dot(self.values[a], self.values[b]))


@dataclass
class PrometheusServer:
    """A running ``prometheus`` process on 127.0.0.1."""

    url: str
    process: subprocess.Popen[bytes]
    root: Path
    log: Path

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL if it does not exit (idempotent)."""
        stop_process_group(self.process)

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", **params)["result"]

    def _wait(self, what: str, done: Any) -> None:
        limit = time.monotonic() + _SCRAPE_LIMIT_S
        while not done():
            if not self.running:
                raise RuntimeError(f"prometheus exited while waiting for {what}; see {self.log}")
            if time.monotonic() > limit:
                raise RuntimeError(f"prometheus: {what} did not happen; see {self.log}")
            time.sleep(0.1)

    def sync(self, exporter: LoopbackExporter) -> float:
        """Wait until Prometheus has scraped the exporter's current generation; return the
        scrape's timestamp."""
        want = exporter.generation
        instance = exporter.target
        found: list[float] = []

        def scraped() -> bool:
            result = self.query(f'{GENERATION}{{instance="{instance}"}}')
            if result and float(result[0]["value"][1]) >= want:
                found.append(float(result[0]["value"][0]))
                ts = self.query(f'timestamp({GENERATION}{{instance="{instance}"}})')
                found.append(float(ts[0]["value"][1]))
                return True
            return False

        self._wait(f"a scrape of generation {want}", scraped)
        return found[-1]

    def scrape_after(self, exporter: LoopbackExporter, t: float) -> None:
        """Wait until the exporter has been scraped at a time later than ``t``."""
        instance = exporter.target

        def later() -> bool:
            ts = self.query(f'timestamp({GENERATION}{{instance="{instance}"}})')
            return bool(ts) and float(ts[0]["value"][1]) > t

        self._wait(f"a scrape after {t}", later)


def _config(targets: Sequence[str], scrape_interval: str) -> str:
    return json.dumps({
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   "evaluation_interval": "1m"},
        "scrape_configs": [{
            "job_name": "loopback",
            # Keep the exporter's own labels (namespace, job-like names) as written.
            "honor_labels": True,
            "static_configs": [{"targets": list(targets)}],
        }],
    })


def start_prometheus(targets: Sequence[str], directory: Path,
                     scrape_interval: str = "1s") -> PrometheusServer:
    """Start Prometheus scraping ``targets``; return once every target was scraped."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("the prometheus binary is not on PATH (apt-get install prometheus)")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(_config(targets, scrape_interval))  # JSON is YAML
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, directory, log)
    try:
        limit = time.monotonic() + _STARTUP_LIMIT_S
        while True:
            if not server.running:
                raise RuntimeError(f"prometheus exited at startup: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > limit:
                raise RuntimeError(f"prometheus was not ready in time; see {log}")
            time.sleep(0.1)

        def all_up() -> bool:
            up = server.query('up{job="loopback"}')
            return len(up) == len(targets) and all(float(u["value"][1]) == 1 for u in up)

        server._wait("the first scrape of every target", all_up)
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def running_prometheus(targets: Sequence[str], directory: Path,
                       scrape_interval: str = "1s") -> Iterator[PrometheusServer]:
    """``start_prometheus`` as a context manager that always stops it."""
    server = start_prometheus(targets, directory, scrape_interval)
    try:
        yield server
    finally:
        server.stop()
