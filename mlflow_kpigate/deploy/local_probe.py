"""The supervisor's liveness probe of its router: is it answering, or hung?

Every ``PROBE_INTERVAL_S`` the supervisor asks ``GET /health`` on 127.0.0.1 with a
``PROBE_TIMEOUT_S`` timeout. Any HTTP answer counts as alive, a 503 included (the router
then knows what is wrong and says so); only no answer, or a router main process stopped by
a signal (its workers may still answer, but nothing restarts them, ingests their log or
manages the candidate), is a failure. The router is declared hung after
``PROBE_FAILURES`` failed probes in a row spanning at least ``HUNG_AFTER_S``; the
supervisor then kills it with its children and starts it again.

A router that is starting (loading its models) has not answered yet: its failures count
only once it is up — it answered once, or one of its workers listens on the port (the
supervisor tells :meth:`RouterProbe.up`) — or after the start time-out
(``KPIGATE_START_TIMEOUT``, 180 s) passed without either.
"""

from __future__ import annotations

import http.client
import os

__all__ = ["HUNG_AFTER_S", "PROBE_FAILURES", "PROBE_INTERVAL_S", "PROBE_TIMEOUT_S",
           "RouterProbe", "answers"]

PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 5.0
PROBE_FAILURES = 3
HUNG_AFTER_S = 15.0
START_GRACE_S = float(os.environ.get("KPIGATE_START_TIMEOUT", "180"))


def answers(port: int, timeout_s: float = 2.0) -> bool:
    """Whether something answers HTTP ``GET /health`` on 127.0.0.1:``port`` (any status)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", "/health")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class RouterProbe:
    """Counts failed probes of one router process; says when it is hung (see module doc)."""

    def __init__(self, interval_s: float = PROBE_INTERVAL_S,
                 failures: int = PROBE_FAILURES, hung_after_s: float = HUNG_AFTER_S,
                 start_grace_s: float = START_GRACE_S) -> None:
        self.interval_s, self.failures_needed = interval_s, failures
        self.hung_after_s, self.start_grace_s = hung_after_s, start_grace_s
        self.reset(0.0)

    def reset(self, now: float) -> None:
        """A router (re)started at ``now``: nothing known about it yet."""
        self.started = now
        self.answered = False
        self.failures = 0
        self.first_failure = 0.0
        self.next_probe = now + self.interval_s

    def up(self) -> None:
        """The router is up (a worker listens): from now on its failures count."""
        self.answered = True

    def due(self, now: float) -> bool:
        """Whether it is time for the next probe."""
        return now >= self.next_probe

    def observe(self, started: float, ended: float, problem: str | None) -> str | None:
        """Record a probe that ran from ``started`` to ``ended`` and found ``problem``
        (None: answered); returns why the router is hung, once it is."""
        self.next_probe = started + self.interval_s
        if problem is None:
            self.answered = True
            self.failures = 0
            return None
        if not self.answered and ended - self.started < self.start_grace_s:
            return None  # still starting
        if self.failures == 0:
            self.first_failure = started
        self.failures += 1
        silent = ended - self.first_failure
        if self.failures < self.failures_needed or silent < self.hung_after_s:
            return None
        return f"{problem} for {silent:.0f} s ({self.failures} probes)"
