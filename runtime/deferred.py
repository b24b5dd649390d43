"""A re-entrant lock whose holder runs callbacks only after letting go of it: how events leave a locked part.

Conntrack and the flowtable each guard their state with one lock and tell other parts what changed
(conntrack events, flowtable state changes, hardware counters for conntrack's accounting). Calling those
parts while holding the lock makes the lock order depend on who listens: the controller thread held
conntrack's lock and waited for the flowtable's while the offload worker held the flowtable's and waited
for conntrack's. So a part never calls out under its lock: it queues the call with :meth:`defer`, and the
thread that lets go of the outermost hold runs the queue (the kernel does the same with its deferred
conntrack event cache and work queues).

Each thread delivers what it queued itself, in queueing order, right after its outermost release (so
``conntrack.packet()`` has delivered its events when it returns, as before). A callback that queues more
(a listener destroying a connection) appends to the same thread's queue instead of nesting.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class DeferringLock:
    """``with lock:`` like :class:`threading.RLock`; :meth:`defer` runs a call after the last release."""

    __slots__ = ("_depth", "_local", "_lock", "_owner")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._owner: int | None = None
        self._depth = 0
        self._local = threading.local()  # per thread: queue (deque) and delivering (bool)

    def __enter__(self) -> DeferringLock:
        self._lock.acquire()
        self._owner = threading.get_ident()
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth:
            self._lock.release()
            return
        self._owner = None
        self._lock.release()
        self.deliver()

    def held(self) -> bool:
        """Does the calling thread hold the lock?"""
        return self._owner == threading.get_ident()

    def _queue(self) -> collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]]:
        q = getattr(self._local, "queue", None)
        if q is None:
            q = self._local.queue = collections.deque()
        return q

    def defer(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` once the calling thread holds the lock no more (at once when it does not)."""
        self._queue().append((fn, args))
        if not self.held():
            self.deliver()

    def pending(self) -> int:
        """Calls the calling thread has queued and not yet run."""
        return len(self._queue())

    def deliver(self) -> None:
        """Run the calling thread's queued calls (unless it is already running them further up its stack)."""
        local = self._local
        if getattr(local, "delivering", False) or self.held():
            return
        q = self._queue()
        local.delivering = True
        try:
            while q:
                fn, args = q.popleft()
                try:
                    fn(*args)
                except Exception:  # an observer must not break the part that emitted
                    log.exception("deferred call %s failed", getattr(fn, "__qualname__", fn))
        finally:
            local.delivering = False
