"""Background threads for a flowtable: the GC every second (``nf_flow_offload_work_gc``) and the offload
worker. A context manager; the controller may equally drive ``FlowTable.gc`` and ``OffloadEngine.run_once``
from its own loops."""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from .core import FlowTable
from .offload import OffloadEngine

log = logging.getLogger(__name__)


class FlowtableRunner:
    def __init__(self, flowtable: FlowTable, engine: OffloadEngine | None = None, gc_interval_s: float = 1.0) -> None:
        self.ft = flowtable
        self.engine = engine
        self.gc_interval_s = gc_interval_s
        self._stop = threading.Event()
        self._gc_thread: threading.Thread | None = None

    def _gc_loop(self) -> None:
        while not self._stop.wait(self.gc_interval_s):
            try:
                self.ft.gc()
            except Exception:  # the GC must keep running
                log.exception("flowtable GC run failed")

    def start(self) -> FlowtableRunner:
        if self._gc_thread is None:
            self._stop.clear()
            self._gc_thread = threading.Thread(target=self._gc_loop, name="flowtable-gc", daemon=True)
            self._gc_thread.start()
            if self.engine is not None:
                self.engine.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._gc_thread is not None:
            self._gc_thread.join(5)
            self._gc_thread = None
        if self.engine is not None:
            self.engine.stop()

    def __enter__(self) -> FlowtableRunner:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
