"""Hardware offload work: add, delete and stats queues feeding batched P4Runtime writes and reads.

Modelled on ``net/netfilter/nf_flow_table_offload.c``: ``nf_flow_offload_add``/``_del``/``_stats`` queue a
work item on one of three workqueues, each guarded by ``NF_FLOW_HW_PENDING`` so a flow has at most one
operation in flight; ``flow_offload_work_add`` installs both directions, ``flow_offload_work_del`` removes
them and sets ``NF_FLOW_HW_DEAD``, ``flow_offload_work_stats`` reads the counters and moves the timeout to
last use plus the flow timeout. Differences, on purpose:

- Work is batched: one ``Write`` carries the updates of many flows (BMv2 and softswitch apply batches
  continue-on-error and answer per update).
- Both directions or neither: the kernel accepts a half-installed pair; here a pair whose second direction
  was refused is rolled back (the first direction deleted) and only a pair the switch acknowledged in full
  becomes ``[HW_OFFLOAD]``.
- A refused add (RESOURCE_EXHAUSTED from softswitch, UNKNOWN from BMv2 for a full table) leaves the flow on
  the software path with ``HW_REFRESH``; the next software-path refresh after the retry delay queues it
  again, so it is never lost.
- ALREADY_EXISTS on insert (a stale entry with our key, e.g. after a reconnect) is answered with MODIFY.
- A write that fails as a whole (connection lost, no longer primary) has an unknown outcome: the flow's
  entries are treated as possibly installed, so teardown deletes them and reconciliation sorts them out.

The switch is reached only through the :class:`EntryWriter` and :class:`StatsReader` protocols.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .core import Flow, FlowTable, HwStats
from .model import Dir, FlowFlag
from .p4map import Code, FlowUpdate, Op, PipelineCaps, Unsupported, UpdateResult, delete_for, entry_for, match_of
from .reconcile import ReconcilePlan

log = logging.getLogger(__name__)
F = FlowFlag

EntryRef = tuple[str, Mapping[str, int | bytes]]

#: Per-update answers that mean "the table had no room": softswitch follows the spec, BMv2 (PI) reports a
#: full table as UNKNOWN inside the per-update details.
TABLE_FULL_CODES = frozenset({Code.RESOURCE_EXHAUSTED, Code.UNKNOWN})


class EntryWriter(Protocol):
    """Writes a batch of flow-table updates in one P4Runtime ``Write`` (continue-on-error).

    Returns one :class:`UpdateResult` per update, in order. Raises for a failure of the whole request
    (connection lost, not primary, timeout): then the outcome of each update is unknown.
    """

    def write(self, updates: Sequence[FlowUpdate]) -> list[UpdateResult]: ...


class StatsReader(Protocol):
    """Reads flow-table entries' direct counters and, where supported, ``time_since_last_hit``.

    Returns one :class:`HwStats` per entry, in order, or ``None`` for an entry the switch does not have.
    Raises when the read as a whole failed.
    """

    def read_stats(self, entries: Sequence[EntryRef]) -> list[HwStats | None]: ...


@dataclass(slots=True)
class QueueDepths:
    """``/proc/net/stats/nf_flowtable``: wq_add, wq_del, wq_stats."""

    wq_add: int
    wq_del: int
    wq_stats: int


class OffloadEngine:
    """The three work queues and the worker that drains them (thread: :meth:`start`; tests: :meth:`run_once`)."""

    def __init__(self, flowtable: FlowTable, writer: EntryWriter, caps: PipelineCaps,
                 reader: StatsReader | None = None, *, batch_size: int = 128) -> None:
        self.ft = flowtable
        self.lock = flowtable.lock
        self.writer = writer
        self.reader = reader
        self.caps = caps
        self.batch_size = batch_size
        self._add_q: collections.deque[Flow] = collections.deque()
        self._del_q: collections.deque[Flow] = collections.deque()
        self._stats_q: collections.deque[Flow] = collections.deque()
        self._orphans: dict[tuple[str, tuple[tuple[str, int | bytes], ...]], FlowUpdate] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Cleared while the controller is not the switch's primary: a backup's writes are refused, so adds and
        # deletes wait in their queues (flows stay on the software path) instead of failing and being counted as
        # errors. Stats reads go on -- a backup may read -- so flows the switch still forwards stay alive.
        self._writable = threading.Event()
        self._writable.set()
        self._thread: threading.Thread | None = None
        flowtable.attach(self)

    # ------------------------------------------------------------------------ the writable gate

    def pause(self) -> None:
        """Stop writing (mastership lost); queued and new adds and deletes wait until :meth:`resume`."""
        self._writable.clear()

    def resume(self) -> None:
        self._writable.set()
        self._wake.set()

    @property
    def paused(self) -> bool:
        return not self._writable.is_set()

    # ----------------------------------------------------------------------------- queueing (HwOffload)

    def _claim(self, flow: Flow) -> bool:
        """``nf_flow_offload_work_alloc``: test-and-set ``HW_PENDING``."""
        if flow.flags & F.HW_PENDING:
            return False
        flow.flags |= F.HW_PENDING
        return True

    def queue_add(self, flow: Flow) -> bool:
        with self.lock:
            if not self._claim(flow):
                return False
            self._add_q.append(flow)
        self._wake.set()
        return True

    def queue_del(self, flow: Flow) -> bool:
        with self.lock:
            if not self._claim(flow):
                return False
            self._del_q.append(flow)
        self._wake.set()
        return True

    def queue_stats(self, flow: Flow) -> bool:
        with self.lock:
            if self.reader is None or not self._claim(flow):
                return False
            self._stats_q.append(flow)
        self._wake.set()
        return True

    def depths(self) -> QueueDepths:
        with self.lock:
            return QueueDepths(len(self._add_q), len(self._del_q), len(self._stats_q))

    @property
    def orphans(self) -> list[FlowUpdate]:
        """Entries a rollback could not delete; retried on every run and handed to reconciliation."""
        with self.lock:
            return list(self._orphans.values())

    def queue_delete(self, upd: FlowUpdate) -> None:
        """Delete an entry no flow owns (an idle notice for an unknown key); done on the next run and
        retried until the switch confirms it is gone."""
        with self.lock:
            self._orphans[upd.key()] = upd
        self._wake.set()

    def flush(self) -> list[UpdateResult] | str:
        """Delete every entry the controller may have on the switch, in one batch (clean shutdown): the
        switch is left holding nothing it would forward without a controller to account for it."""
        if not self._writable.is_set():
            return "not the switch's primary: its entries are left to the primary"
        with self.lock:
            ups = [delete_for(f.dirs[d].tuple, self.caps) for f in self.ft.flows() for d in (0, 1)
                   if (f.hw_installed & (1 << d) or f.flags & F.HW_PENDING) and f.family in self.caps.tables]
            ups += list(self._orphans.values())
        answer = self._write(ups)
        if not isinstance(answer, str):
            with self.lock:
                for f in self.ft.flows():
                    f.hw_installed = 0
                    f.flags &= ~F.HW_OFFLOADED
                self._orphans.clear()
        return answer

    def installed_entries(self) -> dict[str, int]:
        """Entries the controller believes are on the switch, per table (for occupancy)."""
        out: dict[str, int] = {}
        with self.lock:
            for flow in self.ft.flows():
                for d in (Dir.ORIGINAL, Dir.REPLY):
                    if flow.hw_installed & (1 << d):
                        table = self.caps.tables.get(flow.dirs[d].tuple.family, "?")
                        out[table] = out.get(table, 0) + 1
            for upd in self._orphans.values():
                out[upd.table] = out.get(upd.table, 0) + 1
        return out

    # -------------------------------------------------------------------------------------- the worker

    def run_once(self) -> int:
        """Drain up to one batch from each queue: deletes first (they free table space for the adds), then
        adds, then stats reads, then orphan deletes. Returns the number of work items handled. While paused
        only the stats reads are done."""
        writable = self._writable.is_set()
        with self.lock:
            dels = self._pop(self._del_q) if writable else []
            adds = self._pop(self._add_q) if writable else []
            stats = self._pop(self._stats_q)
        if dels:
            self._work_del(dels)
        if adds:
            self._work_add(adds)
        if stats:
            self._work_stats(stats)
        if writable:
            self._work_orphans()
        return len(dels) + len(adds) + len(stats)

    def _pop(self, q: collections.deque[Flow]) -> list[Flow]:
        out: list[Flow] = []
        while q and len(out) < self.batch_size:
            out.append(q.popleft())
        return out

    def _write(self, updates: list[FlowUpdate]) -> list[UpdateResult] | str:
        """The batch's per-update results, or the error text when the write failed as a whole."""
        if not updates:
            return []
        try:
            results = self.writer.write(updates)
        except Exception as exc:  # a lost connection must not take the worker down
            log.warning("flow offload write of %d updates failed: %s", len(updates), exc)
            with self.lock:
                self.ft.counters.hw_write_failures += 1
            return f"write failed: {exc}"
        if len(results) != len(updates):
            with self.lock:
                self.ft.counters.hw_write_failures += 1
            return f"write answered {len(results)} results for {len(updates)} updates"
        return list(results)

    def _work_add(self, flows: list[Flow]) -> None:
        """``flow_offload_work_add``, batched, with pair semantics (see the module docstring)."""
        plan: list[tuple[Flow, list[FlowUpdate]]] = []
        with self.lock:
            for flow in flows:
                if flow.flags & (F.TEARDOWN | F.CLOSING):
                    self.ft.hw_cancelled(flow)  # closed while queued; the GC takes it from here
                    continue
                try:
                    ups = [entry_for(d.tuple, d.rewrite, self.caps, flow.timeout_ns) for d in flow.dirs]
                except Unsupported as exc:
                    flow.flags &= ~F.HW_PENDING
                    self.ft.hw_add_done(flow, False, error=str(exc), unsupported=True)
                    continue
                plan.append((flow, ups))
        if not plan:
            return
        batch = [u for _, ups in plan for u in ups]
        answer = self._write(batch)
        if isinstance(answer, str):
            with self.lock:
                for flow, _ in plan:
                    flow.hw_installed |= 0b11  # unknown outcome: maybe there
                    flow.flags &= ~F.HW_PENDING
                    self.ft.hw_add_done(flow, False, error=answer)
            return

        # Per direction: OK, refused (code), or ALREADY_EXISTS -> MODIFY in a second batch.
        codes: list[list[UpdateResult]] = [[answer[2 * i], answer[2 * i + 1]] for i in range(len(plan))]
        modify: list[tuple[int, int, FlowUpdate]] = []
        for i, (_flow, ups) in enumerate(plan):
            for d in (0, 1):
                if codes[i][d].code is Code.ALREADY_EXISTS:
                    modify.append((i, d, ups[d].with_op(Op.MODIFY)))
        if modify:
            manswer = self._write([m[2] for m in modify])
            for j, (i, d, _) in enumerate(modify):
                codes[i][d] = (UpdateResult(Code.UNKNOWN, manswer) if isinstance(manswer, str) else manswer[j])

        rollback: list[tuple[Flow, int, FlowUpdate]] = []
        with self.lock:
            for i, (flow, ups) in enumerate(plan):
                ok = [codes[i][d].ok for d in (0, 1)]
                for d in (0, 1):
                    if ok[d]:
                        flow.hw_installed |= 1 << d
                if all(ok):
                    flow.flags &= ~F.HW_PENDING
                    self.ft.hw_add_done(flow, True)
                    continue
                bad = next(codes[i][d] for d in (0, 1) if not ok[d])
                if any(ok):
                    self.ft.counters.hw_rollbacks += 1
                    for d in (0, 1):
                        if ok[d]:
                            rollback.append((flow, d, ups[d].with_op(Op.DELETE)))
                error = f"{Dir(next(d for d in (0, 1) if not ok[d])).name.lower()}: {bad.code.name} {bad.message}".strip()
                flow.flags &= ~F.HW_PENDING
                self.ft.hw_add_done(flow, False, error=error, table_full=bad.code in TABLE_FULL_CODES)
        if rollback:
            ranswer = self._write([r[2] for r in rollback])
            with self.lock:
                for j, (flow, d, upd) in enumerate(rollback):
                    res = UpdateResult(Code.UNKNOWN, ranswer) if isinstance(ranswer, str) else ranswer[j]
                    if res.ok or res.code is Code.NOT_FOUND:
                        flow.hw_installed &= ~(1 << d)
                    else:
                        # Still on the switch and not ours any more: delete it on later runs.
                        flow.hw_installed &= ~(1 << d)
                        self._orphans[upd.key()] = upd

    def _work_del(self, flows: list[Flow]) -> None:
        """``flow_offload_work_del``: delete whichever directions may be installed; NOT_FOUND counts as done."""
        plan: list[tuple[Flow, int, FlowUpdate]] = []
        with self.lock:
            for flow in flows:
                for d in (0, 1):
                    if flow.hw_installed & (1 << d):
                        plan.append((flow, d, delete_for(flow.dirs[d].tuple, self.caps)))
            offloaded = [f for f in flows if f.flags & F.HW_OFFLOADED and f.hw_installed == 0b11]
        if offloaded and self.reader is not None:
            # Read the counters one last time: what the switch forwarded since the previous read would
            # otherwise be lost from the flow's and conntrack's accounting.
            try:
                refs = [match_of(f.dirs[d].tuple, self.caps) for f in offloaded for d in (0, 1)]
                stats = self.reader.read_stats(refs)
                if len(stats) == len(refs):
                    for i, f in enumerate(offloaded):
                        self.ft.hw_final_stats(f, [stats[2 * i], stats[2 * i + 1]])
            except Exception as exc:
                log.debug("final counter read before delete failed: %s", exc)
        answer = self._write([p[2] for p in plan])
        errors: dict[int, str] = {}
        with self.lock:
            for j, (flow, d, _) in enumerate(plan):
                res = UpdateResult(Code.UNKNOWN, answer) if isinstance(answer, str) else answer[j]
                if res.ok or res.code is Code.NOT_FOUND:
                    flow.hw_installed &= ~(1 << d)
                else:
                    errors[flow.id] = f"delete {Dir(d).name.lower()}: {res.code.name} {res.message}".strip()
            for flow in flows:
                flow.flags &= ~F.HW_PENDING
                self.ft.hw_del_done(flow, flow.hw_installed == 0, error=errors.get(flow.id, ""))

    def _work_stats(self, flows: list[Flow]) -> None:
        """``flow_offload_work_stats``: read both directions of each flow in one request."""
        assert self.reader is not None
        refs: list[EntryRef] = []
        with self.lock:
            for flow in flows:
                refs.extend(match_of(d.tuple, self.caps) for d in flow.dirs)
        try:
            stats = self.reader.read_stats(refs)
            if len(stats) != len(refs):
                raise ValueError(f"read answered {len(stats)} results for {len(refs)} entries")
        except Exception as exc:
            log.warning("flow stats read of %d entries failed: %s", len(refs), exc)
            with self.lock:
                for flow in flows:
                    flow.flags &= ~F.HW_PENDING
            return
        with self.lock:
            for i, flow in enumerate(flows):
                flow.flags &= ~F.HW_PENDING
                self.ft.hw_stats_done(flow, [stats[2 * i], stats[2 * i + 1]])
                if not flow.flags & F.HW_OFFLOADED and flow.flags & F.HW_REFRESH and flow.retry_at <= self.ft.clock():
                    self.ft.requeue_add(flow)

    def _work_orphans(self) -> None:
        with self.lock:
            if not self._orphans:
                return
            ups = list(self._orphans.values())[: self.batch_size]
        answer = self._write(ups)
        if isinstance(answer, str):
            return
        with self.lock:
            for upd, res in zip(ups, answer, strict=True):
                if res.ok or res.code is Code.NOT_FOUND:
                    self._orphans.pop(upd.key(), None)

    # ---------------------------------------------------------------------------- reconciliation

    def apply_reconcile(self, plan: ReconcilePlan) -> list[UpdateResult] | str:
        """Carry out a :class:`~runtime.flowtable.reconcile.ReconcilePlan` (except ``rebuild``, which needs
        the controller to recreate connections): delete the listed entries in one batch, mark adopted flows
        ``[HW_OFFLOAD]``, queue reinstalls. Returns the delete batch's results (or the error text)."""
        answer = self._write(list(plan.delete))
        with self.lock:
            if not isinstance(answer, str):
                for upd, res in zip(plan.delete, answer, strict=True):
                    if not (res.ok or res.code is Code.NOT_FOUND):
                        self._orphans[upd.key()] = upd  # retried on later runs
            else:
                for upd in plan.delete:
                    self._orphans[upd.key()] = upd
            for flow in plan.adopt:
                self.ft.hw_adopted(flow)
            for flow in plan.reinstall:
                flow.flags = (flow.flags & ~F.HW_OFFLOADED) | F.HW_REFRESH
                flow.hw_installed |= 0b11  # whatever is there gets replaced (ALREADY_EXISTS -> MODIFY) or deleted
                flow.retry_at = 0
                self.ft.requeue_add(flow)
        return answer

    # ------------------------------------------------------------------------------------ thread

    def start(self, idle_wait_s: float = 0.5) -> OffloadEngine:
        """Run the worker in a daemon thread; it wakes when work is queued."""
        if self._thread is not None:
            return self
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                self._wake.wait(idle_wait_s)
                self._wake.clear()
                try:
                    while self.run_once() and not self._stop.is_set():
                        pass
                except Exception:  # keep the worker alive; the next run retries
                    log.exception("flow offload worker run failed")

        self._thread = threading.Thread(target=loop, name="flow-offload", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
