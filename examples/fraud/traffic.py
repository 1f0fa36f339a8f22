"""Replay synthetic transactions through an MLflow ``/invocations`` endpoint, then post labels.

Works against anything that speaks MLflow's scoring protocol: the kpigate router, or
``mlflow models serve``. Each request carries one transaction as ``dataframe_split`` and the
header ``X-Kpigate-Routing-Key: <customer_id>`` (so a customer stays with one model version).
From each response it reads ``X-Kpigate-Request-Id``; ``--label-delay`` seconds after the
response it posts the transaction's true label to ``<url>/feedback`` in batches::

    {"labels": [{"request_id": "...", "label": 0}, ...]}

If the endpoint has no ``/feedback`` (HTTP 404/405, as with ``mlflow models serve``) or its
responses carry no request id, that is reported once and the replay carries on without
labels. Requests are open-loop: request ``i`` is due at ``start + i / rate``, spread over
``--clients`` threads with one keep-alive connection each; a late client sends at once
rather than skipping. The run ends after ``--duration`` seconds or ``--max-requests``
requests, whichever comes first, then waits for the last labels to fall due and posts
them. Ctrl-C stops sending, posts the labels already due, and prints the summary (a second
Ctrl-C quits at once). Only loopback URLs are accepted.

Usage::

    python examples/fraud/traffic.py --url http://127.0.0.1:5000 --rate 200 --duration 120 \
        --label-delay 5 [--clients 8] [--seed 1]

From Python: :func:`run_traffic` returns a :class:`TrafficStats`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import signal
import sys
import threading
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO
from urllib.parse import urlsplit

import numpy as np
import requests

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from elsewhere (tests, the end-to-end script)
    sys.path.insert(0, str(HERE))

import data  # noqa: E402

ROUTING_KEY_HEADER = "X-Kpigate-Routing-Key"
REQUEST_ID_HEADER = "X-Kpigate-Request-Id"
#: Header naming the role (baseline/candidate) that served a request, counted when present.
ROLE_HEADER = "X-Kpigate-Role"
MAX_GENERATED_ROWS = 200_000   # longer runs cycle through the generated transactions
_LOOPBACK_NAMES = {"localhost"}


class TrafficError(ValueError):
    """A bad argument to the traffic generator (the CLI exits with code 2)."""


@dataclass(frozen=True)
class TrafficStats:
    """What a replay did; a snapshot while running, the totals at the end.

    ``errors`` counts failed requests (connection errors, timeouts, non-2xx). Labels:
    ``labels_posted`` were accepted by ``/feedback``; ``labels_unknown`` of them the endpoint
    reported as unknown request ids (when its answer says so); ``labels_failed`` could not be
    posted; ``labels_unposted`` were never sent (no ``/feedback``, or the run was stopped
    before their delay). ``flagged``/``true_positives``/``positives`` are the client's view of
    the served scores (``score >= 0.5``) against the true labels.
    """

    sent: int = 0
    ok: int = 0
    errors: int = 0
    missing_request_id: int = 0
    labels_pending: int = 0
    labels_posted: int = 0
    labels_unknown: int = 0
    labels_failed: int = 0
    labels_unposted: int = 0
    label_batches: int = 0
    feedback_available: bool | None = None
    elapsed_s: float = 0.0
    achieved_rate: float = 0.0
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    flagged: int = 0
    true_positives: int = 0
    positives: int = 0
    by_role: dict[str, int] = field(default_factory=dict)
    stopped: bool = False

    def progress_line(self) -> str:
        """One line for a live display."""
        feedback = {None: "", True: "", False: " (no /feedback)"}[self.feedback_available]
        return (f"[traffic] {self.elapsed_s:6.1f}s sent {self.sent:,} ok {self.ok:,} "
                f"errors {self.errors:,} | labels posted {self.labels_posted:,} pending "
                f"{self.labels_pending:,}{feedback} | {self.achieved_rate:,.1f} req/s")

    def summary(self) -> str:
        """A few lines for the end of a run."""
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.1f} ms"
        lines = [
            f"requests: {self.sent:,} sent, {self.ok:,} ok, {self.errors:,} errors in "
            f"{self.elapsed_s:.1f}s ({self.achieved_rate:,.1f}/s); latency p50 "
            f"{ms(self.latency_p50_s)}, p95 {ms(self.latency_p95_s)}"
            + (" [stopped]" if self.stopped else ""),
            f"labels: {self.labels_posted:,} posted in {self.label_batches:,} batches"
            f" ({self.labels_unknown:,} reported unknown), {self.labels_failed:,} failed, "
            f"{self.labels_unposted:,} not posted, {self.missing_request_id:,} responses "
            "without a request id",
        ]
        if self.positives:
            precision = (f"{self.true_positives / self.flagged:.3f}" if self.flagged
                         else "-")
            lines.append(f"served scores: flagged {self.flagged:,}, recall "
                         f"{self.true_positives / self.positives:.3f}, precision "
                         f"{precision} (client-side, all roles)")
        if self.by_role:
            lines.append("served by: " + ", ".join(f"{k} {v:,}" for k, v in
                                                  sorted(self.by_role.items())))
        return "\n".join(lines)


def base_url(url: str) -> str:
    """``url`` without a trailing ``/invocations``; raises :class:`TrafficError` unless loopback."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TrafficError(f"--url must look like http://127.0.0.1:PORT, got {url!r}")
    host = parts.hostname
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host.lower() in _LOOPBACK_NAMES
    if not loopback:
        raise TrafficError(f"--url must point at this machine (127.0.0.1, ::1 or localhost); "
                           f"got host {host!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/invocations"):
        path = path[: -len("/invocations")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def _first_score(body: Any) -> float | None:
    """The first prediction in an MLflow scoring response, if it is a number."""
    value = body.get("predictions", body) if isinstance(body, dict) else body
    while isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, dict) and value:
        value = next(iter(value.values()))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


class _Replay:
    """Shared state of one run: the schedule, counters, and the pending labels."""

    def __init__(self, base: str, rows: list[list[Any]], columns: list[str],
                 labels: np.ndarray, keys: list[str], rate: float, duration_s: float,
                 label_delay_s: float, clients: int, max_requests: int | None,
                 label_batch: int, label_interval_s: float, timeout_s: float,
                 stop: threading.Event, say: Callable[[str], None]) -> None:
        self.base, self.rows, self.columns, self.labels, self.keys = (base, rows, columns,
                                                                      labels, keys)
        self.rate, self.duration_s, self.label_delay_s = rate, duration_s, label_delay_s
        self.clients, self.label_batch, self.timeout_s = clients, label_batch, timeout_s
        self.label_interval_s = label_interval_s
        planned = math.floor(rate * duration_s - 1e-9) + 1
        self.total = planned if max_requests is None else min(planned, max_requests)
        self.stop, self.say = stop, say
        self.lock = threading.Lock()
        self.next_index = 0
        self.senders_done = threading.Event()
        self.active_senders = clients
        self.pending: deque[tuple[float, str, int]] = deque()
        self.latencies = array("d")
        self.roles: Counter[str] = Counter()
        self.c: Counter[str] = Counter()   # plain integer counters, see snapshot()
        self.feedback_available: bool | None = None
        self.started = time.monotonic()
        # No request starts later than this, however far behind schedule the clients are.
        self.deadline = self.started + duration_s + 1.0
        self.finished: float | None = None
        self._said: set[str] = set()

    def say_once(self, key: str, message: str) -> None:
        with self.lock:
            if key in self._said:
                return
            self._said.add(key)
        self.say(message)

    # ---------------------------------------------------------------- requests

    def _claim(self) -> int | None:
        with self.lock:
            if self.next_index >= self.total:
                return None
            i = self.next_index
            self.next_index += 1
            return i

    def sender(self) -> None:
        session = requests.Session()
        try:
            while not self.stop.is_set():
                i = self._claim()
                if i is None:
                    return
                now = time.monotonic()
                if now > self.deadline:   # far behind schedule: the duration is over
                    return
                delay = self.started + i / self.rate - now
                if delay > 0 and self.stop.wait(delay):
                    return
                self._send(session, i)
        finally:
            session.close()
            with self.lock:
                self.active_senders -= 1
                last = self.active_senders == 0
            if last:
                self.finished = time.monotonic()
                self.senders_done.set()

    def _send(self, session: requests.Session, i: int) -> None:
        row = i % len(self.rows)
        label = int(self.labels[row])
        payload = json.dumps({"dataframe_split": {"columns": self.columns,
                                                  "data": [self.rows[row]]}})
        headers = {"Content-Type": "application/json", ROUTING_KEY_HEADER: self.keys[row]}
        with self.lock:
            self.c["sent"] += 1
        t0 = time.perf_counter()
        try:
            response = session.post(f"{self.base}/invocations", data=payload, headers=headers,
                                    timeout=self.timeout_s)
        except requests.RequestException as exc:
            with self.lock:
                self.c["errors"] += 1
            self.say_once("request-error", f"[traffic] request failed: {exc} (further "
                          "failures are counted, not printed)")
            return
        latency = time.perf_counter() - t0
        if not 200 <= response.status_code < 300:
            with self.lock:
                self.c["errors"] += 1
            self.say_once(f"http-{response.status_code}",
                          f"[traffic] /invocations answered HTTP {response.status_code}: "
                          f"{response.text[:200]!r} (counted as errors from now on)")
            return
        try:
            score = _first_score(response.json())
        except ValueError:
            score = None
        request_id = response.headers.get(REQUEST_ID_HEADER)
        role = response.headers.get(ROLE_HEADER)
        now = time.monotonic()
        with self.lock:
            self.c["ok"] += 1
            self.latencies.append(latency)
            self.c["positives"] += label
            if score is not None and score >= 0.5:
                self.c["flagged"] += 1
                self.c["true_positives"] += label
            if role:
                self.roles[role] += 1
            if request_id:
                self.pending.append((now + self.label_delay_s, request_id, label))
            else:
                self.c["missing_request_id"] += 1
        if not request_id:
            self.say_once("no-request-id", f"[traffic] responses carry no {REQUEST_ID_HEADER} "
                          "header: labels cannot be posted for them")

    # ---------------------------------------------------------------- labels

    def _due(self, now: float) -> list[tuple[float, str, int]]:
        with self.lock:
            batch = []
            while self.pending and len(batch) < self.label_batch and self.pending[0][0] <= now:
                batch.append(self.pending.popleft())
            return batch

    def labeller(self) -> None:
        """Every ``label_interval_s``, post the labels that are due, in batches."""
        session = requests.Session()
        try:
            while True:
                stopping = self.stop.is_set()
                done = self.senders_done.is_set()
                now = time.monotonic()   # drain what is due now; the rest waits a round
                while batch := self._due(now):
                    self._post(session, batch)
                with self.lock:
                    idle = not self.pending
                if stopping or (done and idle):
                    return
                self.stop.wait(self.label_interval_s)
        finally:
            with self.lock:
                self.c["labels_unposted"] += len(self.pending)
                self.pending.clear()
            session.close()

    def _post(self, session: requests.Session, batch: list[tuple[float, str, int]]) -> None:
        if self.feedback_available is False:
            with self.lock:
                self.c["labels_unposted"] += len(batch)
            return
        body = {"labels": [{"request_id": rid, "label": label} for _, rid, label in batch]}
        last_error = ""
        for attempt in range(3):
            try:
                response = session.post(f"{self.base}/feedback", json=body,
                                        timeout=self.timeout_s)
            except requests.RequestException as exc:
                last_error = str(exc)
            else:
                if response.status_code in (404, 405):
                    self.feedback_available = False
                    with self.lock:
                        self.c["labels_unposted"] += len(batch)
                    self.say_once("no-feedback", f"[traffic] {self.base}/feedback answered HTTP "
                                  f"{response.status_code}: the endpoint takes no labels; "
                                  "replaying without them")
                    return
                if 200 <= response.status_code < 300:
                    self.feedback_available = True
                    unknown = _unknown_count(response)
                    with self.lock:
                        self.c["labels_posted"] += len(batch)
                        self.c["labels_unknown"] += unknown
                        self.c["label_batches"] += 1
                    return
                last_error = f"HTTP {response.status_code}: {response.text[:200]!r}"
            if attempt < 2 and self.stop.wait(0.5 * (attempt + 1)):
                break
        with self.lock:
            self.c["labels_failed"] += len(batch)
        self.say_once("feedback-error", f"[traffic] posting labels failed ({last_error}); "
                      "further failures are counted, not printed")

    # ---------------------------------------------------------------- stats

    def snapshot(self) -> TrafficStats:
        with self.lock:
            c = dict(self.c)
            latencies = np.frombuffer(self.latencies, dtype=np.float64).copy()
            roles = dict(self.roles)
            pending = len(self.pending)
        end = self.finished if self.finished is not None else time.monotonic()
        elapsed = max(end - self.started, 1e-9)
        p50 = p95 = None
        if len(latencies):
            p50, p95 = (float(v) for v in np.quantile(latencies, [0.5, 0.95]))
        return TrafficStats(
            sent=c.get("sent", 0), ok=c.get("ok", 0), errors=c.get("errors", 0),
            missing_request_id=c.get("missing_request_id", 0), labels_pending=pending,
            labels_posted=c.get("labels_posted", 0), labels_unknown=c.get("labels_unknown", 0),
            labels_failed=c.get("labels_failed", 0),
            labels_unposted=c.get("labels_unposted", 0),
            label_batches=c.get("label_batches", 0), feedback_available=self.feedback_available,
            elapsed_s=elapsed, achieved_rate=c.get("sent", 0) / elapsed,
            latency_p50_s=p50, latency_p95_s=p95, flagged=c.get("flagged", 0),
            true_positives=c.get("true_positives", 0), positives=c.get("positives", 0),
            by_role=roles, stopped=self.stop.is_set(),
        )


def _unknown_count(response: requests.Response) -> int:
    """How many labels a ``/feedback`` answer says were for unknown ids (0 if it says not)."""
    try:
        body = response.json()
    except ValueError:
        return 0
    if not isinstance(body, dict):
        return 0
    unknown = body.get("unknown", body.get("unknown_ids", 0))
    if isinstance(unknown, list):
        return len(unknown)
    return int(unknown) if isinstance(unknown, int) and not isinstance(unknown, bool) else 0


def run_traffic(url: str, rate: float, duration_s: float, label_delay_s: float,
                clients: int = 8, seed: int = 1, stop_event: threading.Event | None = None,
                *, max_requests: int | None = None, label_batch: int = 500,
                label_interval_s: float = 0.5, timeout_s: float = 10.0,
                progress: TextIO | None = None, progress_interval_s: float = 1.0,
                on_progress: Callable[[TrafficStats], None] | None = None) -> TrafficStats:
    """Replay generated transactions at ``rate`` requests/s and post their labels.

    Returns when ``duration_s`` has passed (or ``max_requests`` were sent) and the last
    labels were posted, or soon after ``stop_event`` is set (labels already due are still
    posted). Due labels are posted every ``label_interval_s`` in batches of up to
    ``label_batch``, so a label arrives between ``label_delay_s`` and about
    ``label_delay_s + label_interval_s`` after its response. ``progress`` receives a live
    status line every ``progress_interval_s`` and one-off notices; ``on_progress`` gets the
    same snapshots. Raises :class:`TrafficError` on bad arguments (including a URL that is
    not on this machine).
    """
    base = base_url(url)
    if not (rate > 0 and math.isfinite(rate)):
        raise TrafficError(f"rate must be a positive number of requests per second, got {rate}")
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise TrafficError(f"duration must be positive seconds, got {duration_s}")
    if not (label_delay_s >= 0 and math.isfinite(label_delay_s)):
        raise TrafficError(f"label delay must be >= 0 seconds, got {label_delay_s}")
    if clients < 1:
        raise TrafficError(f"clients must be at least 1, got {clients}")
    if max_requests is not None and max_requests < 1:
        raise TrafficError(f"max requests must be at least 1, got {max_requests}")
    if label_batch < 1:
        raise TrafficError(f"label batch must be at least 1, got {label_batch}")
    if not 0 < label_interval_s <= 60:
        raise TrafficError(f"label interval must be in (0, 60] seconds, got {label_interval_s}")

    planned = math.floor(rate * duration_s - 1e-9) + 1
    if max_requests is not None:
        planned = min(planned, max_requests)
    frame = data.generate(max(min(planned, MAX_GENERATED_ROWS), 1000), seed)
    columns = data.request_columns()
    rows = frame[columns].to_dict("split")["data"]
    keys = frame[data.ROUTING_KEY_COLUMN].astype(str).tolist()
    labels = frame[data.LABEL_COLUMN].to_numpy()

    interactive = progress is not None and progress.isatty()

    def say(message: str) -> None:
        if progress is not None:
            progress.write(("\n" if interactive else "") + message + "\n")
            progress.flush()

    stop = stop_event if stop_event is not None else threading.Event()
    replay = _Replay(base, rows, columns, labels, keys, rate, duration_s, label_delay_s,
                     clients, max_requests, label_batch, label_interval_s, timeout_s, stop,
                     say)
    senders = [threading.Thread(target=replay.sender, name=f"traffic-client-{k}", daemon=True)
               for k in range(clients)]
    labeller = threading.Thread(target=replay.labeller, name="traffic-labels", daemon=True)
    for thread in [*senders, labeller]:
        thread.start()

    last_shown = 0.0
    line_every = progress_interval_s if interactive else max(progress_interval_s, 5.0)

    def show(final: bool = False) -> None:
        nonlocal last_shown
        snap = replay.snapshot()
        if on_progress is not None:
            on_progress(snap)
        if progress is not None and (final or time.monotonic() - last_shown >= line_every):
            last_shown = time.monotonic()
            end = "\n" if final or not interactive else ""
            progress.write(("\r" if interactive else "") + snap.progress_line() + end)
            progress.flush()

    tick = min(progress_interval_s, 0.25)
    try:
        while not replay.senders_done.wait(tick):
            show()
        # Bounded wait for the last labels: their delay plus time for a few slow posts.
        deadline = time.monotonic() + label_delay_s + 4 * timeout_s + 5.0
        while labeller.is_alive() and time.monotonic() < deadline:
            labeller.join(timeout=tick)
            show()
        if labeller.is_alive():  # the endpoint hangs: give up on the remaining labels
            stop.set()
            labeller.join(timeout=timeout_s + 1.0)
    except KeyboardInterrupt:
        stop.set()
        for thread in [*senders, labeller]:
            thread.join(timeout=timeout_s + 1.0)
    if replay.finished is None:
        replay.finished = time.monotonic()
    replay.senders_done.set()
    with replay.lock:  # responses that arrived after the labeller stopped
        replay.c["labels_unposted"] += len(replay.pending)
        replay.pending.clear()
    show(final=True)
    return replay.snapshot()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Replay synthetic card transactions through an MLflow /invocations "
                    "endpoint and post their labels to /feedback after a delay.")
    parser.add_argument("--url", required=True,
                        help="base URL of the endpoint, e.g. http://127.0.0.1:5000 "
                             "(loopback only)")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="target requests per second (default 200)")
    parser.add_argument("--duration", type=float, default=120.0,
                        help="seconds to send for (default 120)")
    parser.add_argument("--label-delay", type=float, default=5.0,
                        help="seconds between a response and its label (default 5)")
    parser.add_argument("--clients", type=int, default=8,
                        help="concurrent clients (default 8)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the generated transactions (default 1)")
    parser.add_argument("--max-requests", type=int, default=None,
                        help="stop after this many requests")
    parser.add_argument("--label-batch", type=int, default=500,
                        help="labels per /feedback post (default 500)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="per-request timeout in seconds (default 10)")
    parser.add_argument("--json", action="store_true", help="print the final stats as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: 0 when done, 1 if every request failed, 2 on bad input."""
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        stop.set()
        print("\n[traffic] stopping (Ctrl-C again to quit at once)", file=sys.stderr,
              flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        stats = run_traffic(args.url, args.rate, args.duration, args.label_delay,
                            clients=args.clients, seed=args.seed, stop_event=stop,
                            max_requests=args.max_requests, label_batch=args.label_batch,
                            timeout_s=args.timeout, progress=sys.stderr)
    except TrafficError as exc:
        print(f"traffic.py: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("[traffic] interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    print(json.dumps(asdict(stats), indent=2) if args.json else stats.summary())
    return 1 if stats.sent and not stats.ok else 0


if __name__ == "__main__":
    sys.exit(main())
