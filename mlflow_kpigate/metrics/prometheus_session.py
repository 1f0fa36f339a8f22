"""Querying Prometheus for one evaluation: bounded retries, one deadline, one error type.

A :class:`Session` sends the instant queries of one evaluation of the Prometheus source
(:mod:`mlflow_kpigate.metrics.prometheus`) and returns their series as plain labels and
finite floats. Anything that keeps an evaluation from seeing its data (Prometheus
unreachable or timing out, HTTP errors, a rejected query, a missing series, NaN or infinite
values) raises :class:`MetricsUnavailable`, after retries with exponential backoff within
the policy's ``max_wait``; the controller turns it into a hold, never a promotion.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException

from mlflow_kpigate.core import errors

__all__ = ["BACKOFF_S", "Labels", "MetricsUnavailable", "Session"]

#: First wait between retries of a failed query (doubled after each retry).
BACKOFF_S = 0.5

#: One series' labels, ``__name__`` included when Prometheus sends it.
Labels = dict[str, str]


class MetricsUnavailable(errors.MetricsUnavailable):
    """An evaluation could not get the data it needs from Prometheus.

    ``reason`` is one line naming the query (or series) and what happened; ``kind`` says
    which failure it was (``unreachable``, ``timeout``, ``http``, ``query_error``,
    ``missing``, ``not_finite``, ``malformed``), ``query`` is the PromQL sent and
    ``attempts`` how many HTTP requests this evaluation had made when it gave up. The
    controller holds the rollout (never promotes) and reports ``reason``.
    """

    def __init__(self, reason: str, *, kind: str, query: str | None = None,
                 attempts: int = 0) -> None:
        self.reason = " ".join(reason.split())
        self.kind = kind
        self.query = query
        self.attempts = attempts
        super().__init__(self.reason)


class _Failure(Exception):
    def __init__(self, kind: str, message: str, retry: bool) -> None:
        super().__init__(message)
        self.kind, self.message, self.retry = kind, message, retry


def _classify(exc: Exception) -> _Failure:
    """What a failed request means, and whether trying again could help."""
    if isinstance(exc, requests.exceptions.Timeout):
        return _Failure("timeout", "timed out", True)
    if isinstance(exc, requests.exceptions.ConnectionError):
        return _Failure("unreachable", "Prometheus is unreachable (connection failed)", True)
    if isinstance(exc, PrometheusApiClientException):
        match = re.match(r"HTTP Status Code (\d+) \((.*)\)$", str(exc), re.S)
        status = int(match.group(1)) if match else 0
        detail = _error_detail(match.group(2)) if match else str(exc)
        if 400 <= status < 500:
            # Prometheus rejects bad PromQL with 400/422: the same query fails again.
            return _Failure("query_error", f"rejected by Prometheus (HTTP {status}): {detail}",
                            False)
        return _Failure("http", f"HTTP {status} from Prometheus: {detail}", True)
    if isinstance(exc, (ValueError, KeyError, TypeError)):
        return _Failure("malformed", f"not a Prometheus API answer ({exc})", False)
    return _Failure("unreachable", f"request failed: {exc}", True)


def _error_detail(body_repr: str) -> str:
    """The ``error`` field of Prometheus' JSON error body (the client gives its repr)."""
    try:
        body = ast.literal_eval(body_repr)
        data = json.loads(body)
        return str(data.get("error") or data)[:300]
    except (ValueError, SyntaxError, TypeError, AttributeError):
        return body_repr[:300]


def _number(text: Any, query: str, labels: Mapping[str, str], attempts: int) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise MetricsUnavailable(f"{query}: value {text!r} is not a number", kind="malformed",
                                 query=query, attempts=attempts) from None
    if not math.isfinite(value):
        series = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        raise MetricsUnavailable(f"{query}: {{{series}}} is {text}; a KPI cannot use a value "
                                 "that is not finite", kind="not_finite", query=query,
                                 attempts=attempts)
    return value


class Session:
    """One evaluation's queries: retries with backoff, all within one deadline.

    ``prom`` must not retry by itself: the retries are this session's, counted in
    ``attempts`` and bounded by ``retries`` and by ``deadline`` (a ``clock`` time).
    """

    def __init__(self, prom: PrometheusConnect, timeout: float, retries: int, deadline: float,
                 clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.prom, self.timeout, self.retries = prom, timeout, retries
        self.deadline, self.clock, self.sleep = deadline, clock, sleep
        self.attempts = 0

    def _raw(self, query: str, at: float) -> Any:
        delay = BACKOFF_S
        tries = 0
        while True:
            remaining = self.deadline - self.clock()
            if remaining <= 0:
                raise MetricsUnavailable(f"{query}: max_wait is used up before this query "
                                         "could run", kind="timeout", query=query,
                                         attempts=self.attempts)
            tries += 1
            self.attempts += 1
            try:
                return self.prom.custom_query(query, params={"time": f"{at:.3f}"},
                                              timeout=min(self.timeout, remaining))
            except Exception as exc:  # every failure is classified just below
                failure = _classify(exc)
            if not failure.retry:
                raise MetricsUnavailable(f"{query}: {failure.message}", kind=failure.kind,
                                         query=query, attempts=self.attempts)
            if tries > self.retries:
                raise MetricsUnavailable(f"{query}: {failure.message}; gave up after {tries} "
                                         "attempts (metrics.prometheus.retries)",
                                         kind=failure.kind, query=query,
                                         attempts=self.attempts)
            if delay >= self.deadline - self.clock():
                raise MetricsUnavailable(f"{query}: {failure.message}; gave up after {tries} "
                                         "attempts: the next retry would pass "
                                         "metrics.prometheus.max_wait", kind=failure.kind,
                                         query=query, attempts=self.attempts)
            self.sleep(delay)
            delay *= 2

    def vector(self, query: str, at: float) -> list[tuple[Labels, float]]:
        """An instant query's series and values (a scalar answer is one unlabelled value)."""
        result = self._raw(query, at)
        if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
            return [({}, _number(result[1], query, {}, self.attempts))]
        out = []
        for item in result or []:
            if not isinstance(item, dict) or "value" not in item:
                raise MetricsUnavailable(f"{query}: expected an instant vector",
                                         kind="malformed", query=query, attempts=self.attempts)
            labels = dict(item.get("metric") or {})
            out.append((labels, _number(item["value"][1], query, labels, self.attempts)))
        return out

    def matrix(self, query: str, at: float) -> list[tuple[Labels, list[tuple[float, float]]]]:
        """A range selector's raw samples per series."""
        out = []
        for item in self._raw(query, at) or []:
            if not isinstance(item, dict) or "values" not in item:
                raise MetricsUnavailable(f"{query}: expected a range vector",
                                         kind="malformed", query=query, attempts=self.attempts)
            labels = dict(item.get("metric") or {})
            out.append((labels, [(float(t), _number(v, query, labels, self.attempts))
                                 for t, v in item["values"]]))
        return out

    def missing(self, query: str, why: str) -> MetricsUnavailable:
        """The error for a query whose data must exist but does not."""
        return MetricsUnavailable(f"{query}: {why}", kind="missing", query=query,
                                  attempts=self.attempts)
