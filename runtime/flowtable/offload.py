"""Hardware offload work: add, delete and stats queues feeding batched P4Runtime writes and reads.

Modelled on ``net/netfilter/nf_flow_table_offload.c``: ``nf_flow_offload_add``/``_del``/``_stats`` queue a
work item on one of three workqueues, each guarded by ``NF_FLOW_HW_PENDING`` so a flow has at most one
operation in flight; ``flow_offload_work_add`` installs both directions, ``flow_offload_work_del`` removes
them and sets ``NF_FLOW_HW_DEAD``, ``flow_offload_work_stats`` reads the counters and moves the timeout to
last use plus the flow timeout. Differences, on purpose:

- Work is batched: one ``Write`` carries the updates of many flows (BMv2 and softswitch apply batches
  continue-on-error and answer per update).
- Stats work items are answered from one whole-table read of the counters per stats period (a
  second), as drivers answer ``FLOW_CLS_STATS`` from a counter cache refreshed in bulk: the switch is read
  once per period whatever the number of flows.
- Both directions or neither: the kernel accepts a half-installed pair; here a pair whose second direction
  was refused is rolled back (the first direction deleted) and only a pair the switch acknowledged in full
  becomes ``[HW_OFFLOAD]``.
- A refused add (RESOURCE_EXHAUSTED from softswitch, UNKNOWN from BMv2 for a full table) leaves the flow on
  the software path with ``HW_REFRESH``; the next software-path refresh after the retry delay queues it
  again, so it is never lost.
- ALREADY_EXISTS on insert (a stale entry with our key, e.g. after a reconnect) is answered with MODIFY.
- A write that fails as a whole (connection lost, no longer primary) has an unknown outcome: the flow's
  entries are treated as possibly installed, so teardown deletes them and reconciliation sorts them out.

The engine is the only writer of a flow's hardware state: ``HW_PENDING`` is set when a work item is
queued (:meth:`OffloadEngine._claim`, ``nf_flow_offload_work_alloc``) and cleared once, when the work
handler has finished the item (:meth:`OffloadEngine._work_handler`, ``flow_offload_work_handler``);
``HW_OFFLOADED``/``HW_REFRESH``/``HW_DYING``/``HW_DEAD``/``HW_UNSUPPORTED``, ``hw_installed`` and the
counters change only here. Counters read from the switch reach conntrack's accounting after the
flowtable's lock is released (queued on it), so the worker never holds the flowtable's lock while waiting
for conntrack's.

The switch is reached only through the :class:`EntryWriter` and :class:`StatsReader` protocols.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .core import Flow, FlowTable, HwStats
from .model import Dir, EntryKey, FlowFlag, FlowTuple
from .p4map import (
    Code,
    FlowUpdate,
    Op,
    PipelineCaps,
    Unsupported,
    UpdateKey,
    UpdateResult,
    delete_for,
    entry_for,
    flow_table,
    match_items,
    match_of,
)
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


def entry_key(table: str, match: Mapping[str, object]) -> EntryKey:
    """One entry's identity, the same for what we ask for and what the switch answers: the table's short
    name and the exact-match fields' values as integers, by field name."""
    return (table.rsplit(".", 1)[-1], *(
        int.from_bytes(v, "big") if isinstance(v, bytes) else int(v)  # type: ignore[call-overload]
        for _, v in sorted(match.items()) if not isinstance(v, tuple)))


def flow_key(t: FlowTuple, caps: PipelineCaps) -> EntryKey:
    """:func:`entry_key` of the entry :func:`~.p4map.match_of` makes for ``t``, built without the
    intermediate dict."""
    return (flow_table(t, caps).rsplit(".", 1)[-1], *(v for _, v in match_items(t)))


class StatsReader(Protocol):
    """Reads flow-table entries' direct counters and, where supported, ``time_since_last_hit``.

    Both raise when the read as a whole failed.
    """

    def read_stats(self, entries: Sequence[EntryRef]) -> list[HwStats | None]:
        """These entries now: one :class:`HwStats` per entry, in order, ``None`` for one the switch lacks."""
        ...

    def read_tables(self, tables: Sequence[str]) -> dict[EntryKey, HwStats]:
        """Every entry of these tables, keyed by :func:`entry_key` (the bulk read of a stats period)."""
        ...


class Work(enum.Enum):
    """A work item's command (``flow_offload_work->cmd``)."""

    ADD = "add"  # FLOW_CLS_REPLACE
    DEL = "del"  # FLOW_CLS_DESTROY
    STATS = "stats"  # FLOW_CLS_STATS


@dataclass(slots=True)
class QueueDepths:
    """``/proc/net/stats/nf_flowtable``: wq_add, wq_del, wq_stats."""

    wq_add: int
    wq_del: int
    wq_stats: int


class OffloadEngine:
    """The three work queues and the worker that drains them (thread: :meth:`start`; tests: :meth:`run_once`)."""

    def __init__(self, flowtable: FlowTable, writer: EntryWriter, caps: PipelineCaps,
                 reader: StatsReader | None = None, *, batch_size: int = 128,
                 stats_period_ns: int | None = None) -> None:
        self.ft = flowtable
        self.lock = flowtable.lock
        self.writer = writer
        self.reader = reader
        self.caps = caps
        self.batch_size = batch_size
        #: Counters are read in bulk once per GC run, and at least once per period when work asks for them
        #: without a GC run in between (default: the GC's stats interval, a second).
        self.stats_period_ns = flowtable.STATS_INTERVAL_NS if stats_period_ns is None else stats_period_ns
        # The last bulk read (worker thread only): counters by entry, when the read started (entries
        # installed before are in it) and when it answered (time_since_last_hit counts back from there).
        self._counters: dict[EntryKey, HwStats] = {}
        self._counters_from = -1
        self._counters_at = -1
        self._add_q: collections.deque[Flow] = collections.deque()
        self._del_q: collections.deque[Flow] = collections.deque()
        self._stats_q: collections.deque[Flow] = collections.deque()
        self._orphans: dict[UpdateKey, FlowUpdate] = {}
        #: Entries per table that flows' ``hw_installed`` bits say may be on the switch, kept by
        #: :meth:`_set_installed` (the bits' one writer) so ``stats`` reads occupancy without visiting every flow.
        self._installed: dict[str, int] = {}
        #: Entries this engine deleted (the switch confirmed, or said NOT_FOUND) in the last DELETED_MEMORY_NS,
        #: oldest first, with when: an idle notice for one of them was sent before the delete reached the
        #: switch, and deleting the entry again would only be answered NOT_FOUND (see :meth:`queue_delete`).
        self._deleted: dict[UpdateKey, int] = {}
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

    def _kick(self) -> None:
        """Wake the worker. ``Event.set`` takes the event's lock every time; a GC run that queues 30,000 stats
        items pays it once, since the worker clears the event before it drains the queues."""
        if not self._wake.is_set():
            self._wake.set()

    def queue_add(self, flow: Flow) -> bool:
        """``nf_flow_offload_add``; a queued add is the refresh ``HW_REFRESH`` asked for."""
        with self.lock:
            if not self._claim(flow):
                return False
            flow.flags &= ~F.HW_REFRESH
            self._add_q.append(flow)
        self._kick()
        return True

    def queue_del(self, flow: Flow) -> bool:
        """``nf_flow_offload_del``: ``HW_DYING`` from now until the entries are gone (or the delete failed)."""
        with self.lock:
            if not self._claim(flow):
                return False
            flow.flags |= F.HW_DYING
            self._del_q.append(flow)
        self._kick()
        return True

    def queue_stats(self, flow: Flow) -> bool:
        with self.lock:
            if self.reader is None or not self._claim(flow):
                return False
            self._stats_q.append(flow)
        self._kick()
        return True

    def depths(self) -> QueueDepths:
        with self.lock:
            return QueueDepths(len(self._add_q), len(self._del_q), len(self._stats_q))

    @property
    def orphans(self) -> list[FlowUpdate]:
        """Entries a rollback could not delete; retried on every run and handed to reconciliation."""
        with self.lock:
            return list(self._orphans.values())

    #: How long a deleted entry is remembered against late idle notices. The switch sends a notice when
    #: the entry idles and (BMv2) again every ~2 s; a notice can wait in the stream behind thousands of
    #: packet-ins when many connections close at once. Longer than the default close timeout (10 s): while a
    #: closed flow is listed its notices are ignored anyway, and the late ones come after.
    DELETED_MEMORY_NS = 20_000_000_000

    def queue_delete(self, upd: FlowUpdate) -> bool:
        """Delete an entry no flow owns (an idle notice for an unknown key); done on the next run and
        retried until the switch confirms it is gone. Returns False, queueing nothing, for an entry this
        engine deleted moments ago: the notice is older than the delete (30,000 connections closing at once
        brought 26,753 such notices, each a delete answered NOT_FOUND)."""
        key = upd.key()
        with self.lock:
            self._forget_deleted()
            if key in self._deleted:
                self.ft.counters.idle_after_delete += 1
                return False
            self._orphans[key] = upd
        self._kick()
        return True

    def _deleted_now(self, upd: FlowUpdate) -> None:
        """An entry is confirmed gone (lock held)."""
        self._forget_deleted()
        key = upd.key()
        self._deleted.pop(key, None)  # re-inserted at the end: the dict stays in time order
        self._deleted[key] = self.ft.clock()

    def _forget_deleted(self) -> None:
        """Drop the remembered deletes older than DELETED_MEMORY_NS (lock held; the oldest come first)."""
        deleted = self._deleted
        if not deleted:
            return
        horizon = self.ft.clock() - self.DELETED_MEMORY_NS
        while deleted:
            key, at = next(iter(deleted.items()))
            if at > horizon:
                break
            del deleted[key]

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
                    self._set_installed(f, 0)
                    f.flags &= ~F.HW_OFFLOADED
                self._orphans.clear()
        return answer

    def installed_entries(self) -> dict[str, int]:
        """Entries the controller believes are on the switch, per table (for occupancy)."""
        with self.lock:
            out = {table: n for table, n in self._installed.items() if n}
            for upd in self._orphans.values():
                out[upd.table] = out.get(upd.table, 0) + 1
        return out

    def _set_installed(self, flow: Flow, bits: int) -> None:
        """The one place a flow's ``hw_installed`` changes (lock held), so the per-table count stays true."""
        old = flow.hw_installed
        if old == bits:
            return
        flow.hw_installed = bits
        for d in (Dir.ORIGINAL, Dir.REPLY):
            was, now = old >> d & 1, bits >> d & 1
            if was != now:
                table = self.caps.tables.get(flow.dirs[d].tuple.family, "?")
                self._installed[table] = self._installed.get(table, 0) + now - was

    # -------------------------------------------------------------------------------------- the worker

    #: Stats work items answered per hold of the flowtable's lock (all of them against the same read).
    STATS_CHUNK = 1024

    def run_once(self) -> int:
        """Drain up to one batch from the add and delete queues and the whole stats queue: deletes first
        (they free table space for the adds), then adds, then stats, then orphan deletes. Returns the number
        of work items handled. While paused only the stats are done.

        The stats queue is drained whole because its items cost no switch I/O of their own: they are
        answered from one bulk read. Taken a batch at a time, a GC run between two batches made the next
        one read the tables again, so at 30,000 flows a period's stats took dozens of whole-table reads,
        fell behind, and busy flows expired. They are answered in chunks so the lock is released between
        them (the worker's fast path needs it)."""
        writable = self._writable.is_set()
        with self.lock:
            dels = self._pop(self._del_q) if writable else []
            adds = self._pop(self._add_q) if writable else []
            stats = list(self._stats_q)
            self._stats_q.clear()
        for kind, flows in ((Work.DEL, dels), (Work.ADD, adds)):
            if flows:
                self._work_handler(kind, flows)
        if stats:
            read = self._bulk_read()
            for i in range(0, len(stats), self.STATS_CHUNK):
                self._work_handler(Work.STATS, stats[i:i + self.STATS_CHUNK], read_ok=read)
        if writable:
            self._work_orphans()
        return len(dels) + len(adds) + len(stats)

    def _work_handler(self, kind: Work, flows: list[Flow], *, read_ok: bool = True) -> None:
        """``flow_offload_work_handler`` for a batch of one kind: do the work, then clear each flow's
        ``HW_PENDING`` -- the one place it is cleared, whatever the outcome (even an exception) -- and let
        the GC look at the flow again. A stats read that found the entries gone queues the add after that,
        as a new work item."""
        requeue: list[Flow] = []
        try:
            if kind is Work.ADD:
                self._work_add(flows)
            elif kind is Work.DEL:
                self._work_del(flows)
            else:
                requeue = self._work_stats(flows, read_ok)
        finally:
            with self.lock:
                now = self.ft.clock()
                for flow in flows:
                    flow.flags &= ~F.HW_PENDING
                    self.ft.reschedule(flow, now)
                for flow in requeue:
                    self._requeue_add(flow)

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

    # ------------------------------------------------------------------------ add / del / stats work

    def _work_add(self, flows: list[Flow]) -> None:
        """``flow_offload_work_add``, batched, with pair semantics (see the module docstring)."""
        plan: list[tuple[Flow, list[FlowUpdate]]] = []
        with self.lock:
            for flow in flows:
                if flow.flags & (F.TEARDOWN | F.CLOSING):
                    continue  # closed while queued: nothing to write, the GC takes it from here
                try:
                    ups = [entry_for(d.tuple, d.rewrite, self.caps, flow.timeout_ns) for d in flow.dirs]
                except Unsupported as exc:
                    self._add_done(flow, False, error=str(exc), unsupported=True)
                    continue
                plan.append((flow, ups))
                for u in ups:  # the key is live again (a reused 5-tuple): its idle notices are news
                    self._deleted.pop(u.key(), None)
        if not plan:
            return
        batch = [u for _, ups in plan for u in ups]
        answer = self._write(batch)
        if isinstance(answer, str):
            with self.lock:
                for flow, _ in plan:
                    self._set_installed(flow, 0b11)  # unknown outcome: maybe there
                    self._add_done(flow, False, error=answer)
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
                        self._set_installed(flow, flow.hw_installed | 1 << d)
                if all(ok):
                    self._add_done(flow, True)
                    continue
                bad = next(codes[i][d] for d in (0, 1) if not ok[d])
                if any(ok):
                    self.ft.counters.hw_rollbacks += 1
                    for d in (0, 1):
                        if ok[d]:
                            rollback.append((flow, d, ups[d].with_op(Op.DELETE)))
                error = f"{Dir(next(d for d in (0, 1) if not ok[d])).name.lower()}: {bad.code.name} {bad.message}".strip()
                self._add_done(flow, False, error=error, table_full=bad.code in TABLE_FULL_CODES)
        if rollback:
            ranswer = self._write([r[2] for r in rollback])
            with self.lock:
                for j, (flow, d, upd) in enumerate(rollback):
                    res = UpdateResult(Code.UNKNOWN, ranswer) if isinstance(ranswer, str) else ranswer[j]
                    self._set_installed(flow, flow.hw_installed & ~(1 << d))
                    if not (res.ok or res.code is Code.NOT_FOUND):
                        # Still on the switch and not ours any more: delete it on later runs.
                        self._orphans[upd.key()] = upd

    def _add_done(self, flow: Flow, ok: bool, *, error: str = "", table_full: bool = False,
                  unsupported: bool = False) -> None:
        """The result of an add (lock held). On success the switch has acknowledged both directions:
        ``[HW_OFFLOAD]``. On failure the flow stays on the software path with ``HW_REFRESH`` and a retry
        delay that doubles up to ``FlowTable.RETRY_MAX_NS``."""
        ft = self.ft
        now = ft.clock()
        if ok:
            flow.flags = (flow.flags | F.HW_OFFLOADED) & ~F.HW_REFRESH
            flow.retry_at = 0
            flow.last_error = ""
            flow.hw_packets = [0, 0]
            flow.hw_bytes = [0, 0]
            flow.stats_at = 0
            flow.hw_read_at = now
            ft.counters.hw_add_ok += 1
            ft.notify("hw_offload", flow)
            return
        flow.flags = (flow.flags | F.HW_REFRESH) & ~F.HW_OFFLOADED
        flow.last_error = error
        if unsupported:
            flow.flags |= F.HW_UNSUPPORTED
            ft.counters.hw_unsupported += 1
        elif table_full:
            ft.counters.hw_add_table_full += 1
        else:
            ft.counters.hw_add_errors += 1
        flow.retry_at = now + ft.retry_delay_ns(flow.hw_retries)
        ft.notify("hw_failed", flow)

    def _work_del(self, flows: list[Flow]) -> None:
        """``flow_offload_work_del``: read the counters a last time, then delete whichever directions may be
        installed; NOT_FOUND counts as done. ``HW_DEAD`` once nothing is left; on failure ``HW_DYING`` goes
        so the next GC run queues the delete again (the entries must not be left behind)."""
        plan: list[tuple[Flow, int, FlowUpdate]] = []
        with self.lock:
            for flow in flows:
                for d in (0, 1):
                    if flow.hw_installed & (1 << d):
                        plan.append((flow, d, delete_for(flow.dirs[d].tuple, self.caps)))
            offloaded = [f for f in flows if f.flags & F.HW_OFFLOADED and f.hw_installed == 0b11]
            refs = [match_of(f.dirs[d].tuple, self.caps) for f in offloaded for d in (0, 1)]
        if offloaded and self.reader is not None:
            # What the switch forwarded since the previous read would otherwise be lost from the flow's and
            # conntrack's accounting. Accounting only: a closing flow's deadline must not move.
            try:
                stats = self.reader.read_stats(refs)
            except Exception as exc:
                log.debug("final counter read before delete failed: %s", exc)
            else:
                if len(stats) == len(refs):
                    with self.lock:
                        for i, f in enumerate(offloaded):
                            self._account(f, [stats[2 * i], stats[2 * i + 1]])
        answer = self._write([p[2] for p in plan])
        errors: dict[int, str] = {}
        with self.lock:
            for j, (flow, d, upd) in enumerate(plan):
                res = UpdateResult(Code.UNKNOWN, answer) if isinstance(answer, str) else answer[j]
                if res.ok or res.code is Code.NOT_FOUND:
                    self._set_installed(flow, flow.hw_installed & ~(1 << d))
                    self._deleted_now(upd)
                else:
                    errors[flow.id] = f"delete {Dir(d).name.lower()}: {res.code.name} {res.message}".strip()
            for flow in flows:
                if flow.hw_installed == 0:
                    flow.flags = (flow.flags | F.HW_DEAD) & ~F.HW_OFFLOADED
                    self.ft.counters.hw_del_ok += 1
                    self.ft.notify("hw_removed", flow)
                else:
                    flow.flags &= ~F.HW_DYING
                    flow.last_error = errors.get(flow.id, "")
                    self.ft.counters.hw_del_errors += 1

    def _account(self, flow: Flow, stats: Sequence[HwStats | None]) -> list[int]:
        """Take new counter values (lock held): returns the packets that are new per direction and queues
        them for conntrack's accounting (``nf_ct_acct_add``), which runs once the lock is released. An
        adopted entry's first values are only the baseline; counters that went down were restarted (the
        entry was re-installed): all of it is new."""
        new = [0, 0]
        for d in (Dir.ORIGINAL, Dir.REPLY):
            st = stats[d]
            if st is None:
                continue
            if flow.hw_packets[d] < 0:
                dp = db = 0
            else:
                dp, db = st.packets - flow.hw_packets[d], st.bytes - flow.hw_bytes[d]
                if dp < 0 or db < 0:
                    dp, db = st.packets, st.bytes
            flow.hw_packets[d], flow.hw_bytes[d] = st.packets, st.bytes
            if dp > 0:
                self.lock.defer(flow.conn.acct_add, d, dp, db)
                new[d] = dp
        return new

    def _bulk_read(self) -> bool:
        """The counters of every flow-table entry, read whole-table once per stats period: after each GC
        run (which queues the period's stats work), or when a period has passed without one (drivers do
        the same: mlx5 refreshes its flow-counter cache in bulk on one cadence and answers
        ``FLOW_CLS_STATS`` from it). False when there is no current read (it failed)."""
        assert self.reader is not None
        now = self.ft.clock()
        taken = self._counters_from
        if taken >= 0 and taken >= self.ft.gc_at and now - taken < self.stats_period_ns:
            return True
        cost = self._counters_at - taken
        if taken >= 0 and cost > self.stats_period_ns and now - self._counters_at < cost:
            # The last read took longer than a period (a big table on a slow switch): wait as long as it
            # took before the next, so reading never takes more than half the worker's time from the
            # adds and deletes. Flows asked about meanwhile are answered from the last read.
            return True
        tables = sorted(set(self.caps.tables.values()))
        try:
            counters = self.reader.read_tables(tables)
        except Exception as exc:
            log.warning("reading the flow tables' counters failed: %s", exc)
            return False
        self._counters, self._counters_from, self._counters_at = counters, now, self.ft.clock()
        with self.lock:
            self.ft.counters.hw_stats_passes += 1
        return True

    def _work_stats(self, flows: list[Flow], read_ok: bool) -> list[Flow]:
        """``flow_offload_work_stats``, answered from the stats period's bulk read (:meth:`_bulk_read`), so
        the switch is read once per period however many flows the GC asks about. Returns the flows whose
        entries turned out missing and whose add may be queued again now.

        A flow whose counters were taken at or after that read (its entries were installed, or it was read,
        since) has nothing newer in it and is left as it is; the GC asks again in the next period.

        New packets (or ``time_since_last_hit``) move the timeout to last use plus the flow timeout and are
        added to conntrack's accounting. A direction the read does not have means the flow is not really
        ``[HW_OFFLOAD]``: the flag goes and the add is queued again at once.

        ``time_since_last_hit`` dates a hit only when it agrees with the counters: packets counted since the
        previous read were forwarded after it (:attr:`Flow.hw_read_at`), so a last hit dated before that
        read is wrong and the read time stands in (as for a target without the field). BMv2 is such a
        target: PI derives the value as idle timeout minus remaining TTL, and bmv2 computes the remaining
        TTL in 32-bit arithmetic (``ms * 1000 * 1000``), so for idle timeouts above 2^32 ns (~4.29 s) it
        reports the true value plus a multiple of ~4.29 s (about 25.8 s too much for a 30 s timeout) and a
        busy flow would look idle and expire counted from its last refresh, not from its last packet.
        ``read_ok`` says whether the caller's :meth:`_bulk_read` for this drain gave a current read.
        """
        if not read_ok:
            return []
        requeue: list[Flow] = []
        counters, taken, at = self._counters, self._counters_from, self._counters_at
        with self.lock:
            ft = self.ft
            for flow in flows:
                if flow.hw_read_at < taken:
                    keys = flow.hw_keys
                    if keys is None:  # worked out once per flow: the stats pass meets every flow each period
                        keys = flow.hw_keys = (flow_key(flow.dirs[0].tuple, self.caps),
                                               flow_key(flow.dirs[1].tuple, self.caps))
                    self._take_counters(flow, [counters.get(keys[0]), counters.get(keys[1])], at)
                if not flow.flags & F.HW_OFFLOADED and flow.flags & F.HW_REFRESH and flow.retry_at <= ft.clock():
                    requeue.append(flow)
        return requeue

    def _take_counters(self, flow: Flow, pair: list[HwStats | None], at: int) -> None:
        """One flow's counters from a read answered at ``at`` (lock held)."""
        ft = self.ft
        ft.counters.hw_stats_reads += 1
        new = self._account(flow, pair)
        lastused = 0
        for d in (Dir.ORIGINAL, Dir.REPLY):
            st = pair[d]
            if st is None:
                self._set_installed(flow, flow.hw_installed & ~(1 << d))
                continue
            since = st.since_last_hit_ns
            if new[d] > 0:
                hit = at - since if since is not None else at
                lastused = max(lastused, hit if hit >= flow.hw_read_at else at)
            elif since is not None and st.packets > 0:
                lastused = max(lastused, at - since)
        flow.hw_read_at = at
        if lastused and not flow.flags & (F.CLOSING | F.TEARDOWN):  # a closing flow's deadline stays
            flow.timeout = max(flow.timeout, lastused + flow.timeout_ns)
            flow.stats_at = flow.timeout - (9 * flow.timeout_ns) // 10 + 1
        if None in pair and flow.flags & F.HW_OFFLOADED:
            flow.flags = (flow.flags & ~F.HW_OFFLOADED) | F.HW_REFRESH
            ft.counters.hw_entries_lost += 1
            ft.notify("hw_lost", flow)
            if not flow.flags & (F.TEARDOWN | F.CLOSING):
                flow.retry_at = ft.clock()

    def _requeue_add(self, flow: Flow) -> bool:
        """Queue the hardware add again now (entries found missing, or a reinstall on reconcile); lock held."""
        ft = self.ft
        if not ft.hw_enabled or not flow.flags & F.HW or flow.flags & (F.TEARDOWN | F.CLOSING | F.HW_UNSUPPORTED):
            return False
        return self.queue_add(flow)

    def _adopt(self, flow: Flow) -> None:
        """Reconciliation found both entries on the switch as we would write them: ``[HW_OFFLOAD]``. The
        counters' history is unknown; the first stats read takes its values as the new baseline."""
        if not flow.flags & F.HW:
            return
        flow.flags = (flow.flags | F.HW_OFFLOADED) & ~(F.HW_REFRESH | F.HW_DYING | F.HW_DEAD)
        self._set_installed(flow, 0b11)
        flow.hw_packets = [-1, -1]
        flow.hw_bytes = [-1, -1]
        flow.stats_at = 0
        now = self.ft.clock()
        flow.hw_read_at = now
        self.ft.notify("hw_offload", flow)
        self.ft.reschedule(flow, now)

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
                    self._deleted_now(upd)  # BMv2 repeats a notice every ~2 s until it sees the delete

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
                self._adopt(flow)
            for flow in plan.reinstall:
                flow.flags = (flow.flags & ~F.HW_OFFLOADED) | F.HW_REFRESH
                self._set_installed(flow, 0b11)  # whatever is there gets replaced (ALREADY_EXISTS -> MODIFY) or deleted
                flow.retry_at = 0
                self._requeue_add(flow)
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
