"""One owner of a flow's hardware state: every change to ``HW_PENDING`` and the other hardware bits is
traced to the function that made it, across a life with every kind of outcome (add acknowledged, refused
for a full table, write lost, entries lost, closed while queued, deleted, adopted, re-installed).

As in ``nf_flow_table_offload.c``, the pending bit is set only when a work item is queued
(``OffloadEngine._claim``) and cleared only by the work handler, exactly once per work item; the other
hardware bits and ``hw_installed`` are written by the offload engine alone, the core only reads them.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from ftutil import FakeClock, FakeConn, make_table, offer

import runtime.flowtable.core as core
from runtime.flowtable.core import Flow
from runtime.flowtable.model import FlowFlag
from runtime.flowtable.p4map import Code, UpdateResult
from runtime.flowtable.policy import FlowtableConfig
from runtime.flowtable.reconcile import ReconcilePlan

F = FlowFlag
HW_BITS = F.HW_PENDING | F.HW_OFFLOADED | F.HW_REFRESH | F.HW_DYING | F.HW_DEAD | F.HW_UNSUPPORTED
_flags_slot: Any = Flow.__dict__["flags"]
_installed_slot: Any = Flow.__dict__["hw_installed"]

#: (writer's qualified name, field, bits changed, new value)
Write = tuple[str, str, int, int]


class TracedFlow(Flow):
    """A flow that records who changes its hardware bits (the writer is the caller of the setter)."""

    writes: list[Write] = []

    @property  # type: ignore[override]
    def flags(self) -> int:
        return _flags_slot.__get__(self)  # type: ignore[no-any-return]

    @flags.setter
    def flags(self, value: int) -> None:
        try:
            old = _flags_slot.__get__(self)
        except AttributeError:  # __init__
            old = value
        if (old ^ value) & HW_BITS:
            self.writes.append((sys._getframe(1).f_code.co_qualname, "flags", (old ^ value) & HW_BITS, value))
        _flags_slot.__set__(self, value)

    @property  # type: ignore[override]
    def hw_installed(self) -> int:
        return _installed_slot.__get__(self)  # type: ignore[no-any-return]

    @hw_installed.setter
    def hw_installed(self, value: int) -> None:
        try:
            old = _installed_slot.__get__(self)
        except AttributeError:
            old = value
        if old != value:
            self.writes.append((sys._getframe(1).f_code.co_qualname, "hw_installed", old ^ value, value))
        _installed_slot.__set__(self, value)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[Write]:
    log: list[Write] = []
    monkeypatch.setattr(TracedFlow, "writes", log)
    monkeypatch.setattr(core, "Flow", TracedFlow)  # what FlowTable.offer builds
    return log


def test_hardware_state_has_one_writer_and_pending_clears_once_per_work_item(writes: list[Write]) -> None:
    clock = FakeClock()
    ft, eng, sw = make_table(clock, FlowtableConfig(tcp_timeout_s=30, close_timeout_s=5), capacity=4)
    items = 0

    def work() -> None:
        nonlocal items
        while n := eng.run_once():
            items += n
        # the occupancy `stats` shows is kept as the bits change; it always equals a count of the bits
        recount: dict[str, int] = {}
        for f in ft.flows():
            for d in (0, 1):
                if f.hw_installed >> d & 1:
                    recount["flow_v4"] = recount.get("flow_v4", 0) + 1
        assert eng.installed_entries() == recount

    flows = [offer(ft, sport=s)[1] for s in (1000, 1001, 1002)]
    assert all(isinstance(f, TracedFlow) for f in flows)
    a, b, c = flows
    assert isinstance(a, Flow) and isinstance(b, Flow) and isinstance(c, Flow)
    work()  # a and b acknowledged; c refused (table full)
    assert a.hw_offloaded and b.hw_offloaded and not c.hw_offloaded and c.flags & F.HW_REFRESH

    sw.fail_next = ConnectionError("switch gone")  # c's retry: the write is lost, outcome unknown
    clock.advance(2)
    ft.refresh(c)
    work()
    assert c.hw_installed == 0b11 and not c.hw_offloaded

    del sw.entries[next(iter(sw.entries))]  # one of a's entries disappears from the switch
    clock.advance(10)  # into the last 90 % of the timeout: the GC reads the counters
    ft.refresh(c)
    ft.gc()
    work()  # a's read finds an entry missing: [HW_OFFLOAD] goes and the add is queued again
    work()
    assert a.hw_offloaded

    d = offer(ft, sport=1003)[1]
    assert isinstance(d, Flow)
    ft.mark_closing(d)  # closed while its add is queued: the work item writes nothing
    work()
    assert not d.hw_offloaded and d.hw_installed == 0

    ft.mark_closing(b)
    work()
    assert b.flags & F.HW_DEAD and b.hw_installed == 0

    sw.reject = lambda u: UpdateResult(Code.UNAVAILABLE, "busy")  # c's delete fails once, then succeeds
    ft.teardown(c)
    clock.advance(1)
    ft.gc()
    work()
    assert c.hw_installed and not c.flags & F.HW_DYING and ft.counters.hw_del_errors == 1
    sw.reject = None
    clock.advance(1)
    ft.gc()
    work()
    clock.advance(1)
    ft.gc()
    assert ft.get(c.id) is None

    e = offer(ft, sport=1004, hw_present=True)[1]
    assert isinstance(e, Flow)
    eng.apply_reconcile(ReconcilePlan(adopt=[e], reinstall=[a]))
    work()
    assert e.hw_offloaded and a.hw_offloaded

    # --- who wrote what
    pending = [w for w in writes if w[1] == "flags" and w[2] & F.HW_PENDING]
    sets = [w for w in pending if w[3] & F.HW_PENDING]
    clears = [w for w in pending if not w[3] & F.HW_PENDING]
    assert {w[0] for w in sets} == {"OffloadEngine._claim"}
    assert {w[0] for w in clears} == {"OffloadEngine._work_handler"}
    assert len(sets) == len(clears) == items, "pending set when queued, cleared once when handled"
    writers = {w[0] for w in writes}
    assert all(name.startswith("OffloadEngine.") for name in writers), writers
    assert {w[0] for w in writes if w[1] == "hw_installed"} == {"OffloadEngine._set_installed"}
    k = ft.counters
    assert all(n >= 1 for n in (k.hw_add_table_full, k.hw_write_failures, k.hw_entries_lost, k.hw_del_errors)), \
        "every kind of outcome was exercised"


def test_a_failing_work_item_still_clears_pending(writes: list[Write]) -> None:
    """Whatever happens in the work (here a bug raises out of it), the handler clears the pending bit, so
    the flow is not stuck with an operation that will never finish."""
    clock = FakeClock()
    ft, eng, _ = make_table(clock)
    _, flow = offer(ft, conn=FakeConn())
    assert isinstance(flow, Flow)

    def broken(flows: object) -> None:
        raise RuntimeError("bug in the add work")

    eng._work_add = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        eng.run_once()
    assert not flow.flags & F.HW_PENDING
    assert [w[0] for w in writes if w[2] & F.HW_PENDING] == ["OffloadEngine._claim", "OffloadEngine._work_handler"]
