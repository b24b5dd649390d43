"""A budget of log lines per second for per-connection and per-flow events (``net_ratelimit``'s idea).

The controller logs every new connection and every flow transition: what a user watching a handful of
connections wants to see. At scale the same lines are the cost of a storm: 10,000 connections closing at
once made one GC run write 20,000 lines, about half a second of the worker's time while no punted packet
was forwarded, and a hostile client opening connections could fill the log at will. The kernel answers
the same problem with ``net_ratelimit()`` and an "N callbacks suppressed" line; so do we.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class LineBudget:
    """Up to ``per_second`` lines a second pass :meth:`allow`; the rest are counted by kind and reported in
    one summary line once the second is over (on the next :meth:`allow` or :meth:`flush`, which the
    controller's tick calls). Ask before formatting: the point is not to build the line at all."""

    def __init__(self, logger: logging.Logger, what: str, per_second: int = 200,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.what = what
        self.per_second = per_second
        self.clock = clock
        self._lock = threading.Lock()  # the stream thread, the worker and the offload worker all log
        self._window = -1.0
        self._used = 0
        self._suppressed: dict[str, int] = {}
        self.suppressed_total = 0

    def allow(self, kind: str = "") -> bool:
        """Whether this line may be written now; if not, it is counted under ``kind``."""
        now = self.clock()
        with self._lock:
            report = self._roll(now)
            if self._used < self.per_second:
                self._used += 1
                ok = True
            else:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                self.suppressed_total += 1
                ok = False
        if report:
            self._report(report)
        return ok

    def flush(self) -> None:
        """Report what the last full second suppressed (from the tick, so a burst's summary is not held
        back until the next line)."""
        with self._lock:
            report = self._roll(self.clock())
        if report:
            self._report(report)

    def _roll(self, now: float) -> dict[str, int]:
        if now - self._window < 1.0:
            return {}
        self._window, self._used = now, 0
        report, self._suppressed = self._suppressed, {}
        return report

    def _report(self, counts: dict[str, int]) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        total = sum(counts.values())
        detail = ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]) if k)
        self.logger.info("%s log lines suppressed: %d in the last second (over %d a second)%s", self.what, total,
                         self.per_second, f": {detail}" if detail else "")
