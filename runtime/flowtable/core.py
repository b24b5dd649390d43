"""The flowtable: offloaded connections, their timeouts, flags and garbage collection.

Modelled on ``net/netfilter/nf_flow_table_core.c`` and ``nft_flow_offload.c``:

- :meth:`FlowTable.offer` is ``nft_flow_offload_eval``: a connection enters only when conntrack has seen
  both directions (TCP: established, no FIN/RST) and the policy says so; it builds the flow from both
  directions' tuples and action lists (``flow_offload_alloc`` + ``flow_offload_route_init``), inserts both
  tuples (``flow_offload_add``) and, with hardware offload on, sets ``HW`` and queues the hardware add.
- :meth:`FlowTable.lookup` is ``flow_offload_lookup`` (a flow in teardown, or whose conntrack entry is dying,
  is not found); :meth:`FlowTable.refresh` is ``flow_offload_refresh`` (extend the timeout when it moves by
  more than a second; re-queue a hardware add that has not succeeded yet).
- :meth:`FlowTable.gc` is ``nf_flow_offload_gc_step`` run every second, with one difference the issue asks
  for: the kernel walks every flow on every run, here each flow sits in a timer wheel of one-second slots at
  the next moment the GC has something to do for it (its expiry, the next hardware stats read, a pending
  teardown), so a run costs O(flows due), not O(flows).
- FIN/RST (:meth:`FlowTable.mark_closing`) is ``flow_offload_teardown`` from ``nf_flow_state_check``: the
  hardware entries are removed and conntrack takes the connection back; the fast path hands every further
  packet to the slow path (conntrack), the flow stays listed until the close timeout, a SYN on it tears it
  down (``nf_flow_state_check``).

Everything takes time from an injected monotonic-ns clock. One re-entrant lock guards the table; the
packet-in thread, the GC thread and the offload worker all take it (the offload worker never holds it
across a switch RPC). Nothing is called outside the table under that lock: state-change events, handing a
connection back to conntrack and hardware counters for its accounting are queued and run by the thread
that releases the lock (:class:`~runtime.deferred.DeferringLock`), so the table's lock never waits on
conntrack's. The hardware state of a flow (``HW_PENDING``, ``HW_OFFLOADED``, ``HW_REFRESH``, ``HW_DYING``,
``HW_DEAD``, ``HW_UNSUPPORTED``, ``hw_installed`` and the hardware counters) has one writer, the offload
engine (:mod:`.offload`); this module reads it to decide what to queue.
"""

from __future__ import annotations

import builtins
import enum
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ..actions import ActionList, Rewrite, flatten
from ..deferred import DeferringLock
from .model import IPPROTO_TCP, IPPROTO_UDP, NS, Clock, Dir, EntryKey, FlowFlag, FlowTuple, monotonic_clock
from .policy import FlowKey, FlowtableConfig

F = FlowFlag
log = logging.getLogger(__name__)


class ConnRef(Protocol):
    """The controller's conntrack entry, as far as the flowtable needs it.

    While a connection is in the flowtable, conntrack must not expire it on its own (the kernel sets a
    day-long ct timeout and ``IPS_OFFLOAD``): the flowtable's timeout governs, and :meth:`on_teardown`
    hands the connection back (``flow_offload_fixup_ct``).
    """

    def is_dying(self) -> bool:
        """``nf_ct_is_dying``: conntrack has removed or is removing the connection. Called under the
        flowtable's lock, so it must not take conntrack's (a read of the connection's bits)."""
        ...

    def acct_add(self, direction: Dir, packets: int, nbytes: int) -> None:
        """``nf_ct_acct_add``: packets/bytes forwarded without conntrack seeing them (hardware counters)."""
        ...

    def on_teardown(self) -> None:
        """The flow is being torn down, or starts closing; conntrack takes the connection back with its
        normal timeouts (``flow_offload_teardown`` → ``flow_offload_fixup_ct``). May be called twice."""
        ...


class HwOffload(Protocol):
    """What the core asks of the offload work queues (:class:`~runtime.flowtable.offload.OffloadEngine`).

    Each returns False when the flow already has a pending operation (``NF_FLOW_HW_PENDING``: at most one
    per flow); the caller tries again on a later GC run or refresh. Queueing an add clears ``HW_REFRESH``,
    queueing a delete sets ``HW_DYING`` (``nf_flow_offload_del``); the core never writes those bits itself.
    """

    def queue_add(self, flow: Flow) -> bool: ...

    def queue_del(self, flow: Flow) -> bool: ...

    def queue_stats(self, flow: Flow) -> bool: ...


class OfferResult(enum.Enum):
    """Why :meth:`FlowTable.offer` did or did not create a flow (counted per value)."""

    OFFLOADED = "offloaded"
    EXISTS = "exists"
    NO_REPLY = "no_reply"  # conntrack has not seen both directions
    NOT_ESTABLISHED = "not_established"  # TCP not in ESTABLISHED
    CLOSING = "closing"  # TCP FIN/RST seen
    DYING = "dying"
    PROTO = "proto"  # neither TCP nor UDP
    POLICY = "policy"
    INCONSISTENT = "inconsistent"  # a direction's NAT does not lead to the other direction's tuple


@dataclass(slots=True)
class FlowDirection:
    """One direction of a flow: the tuple it arrives with, its action list (made once by the slow path)
    and the path MTU of its route (``flow_tuple->mtu``)."""

    tuple: FlowTuple
    actions: ActionList
    mtu: int = 1500
    rewrite: Rewrite = field(init=False)

    def __post_init__(self) -> None:
        self.rewrite = flatten(self.actions)

    @property
    def out_port(self) -> int:
        return self.rewrite.out_port

    def leaves_as(self) -> builtins.tuple[bytes, bytes, int, int]:
        """(src, dst, sport, dport) after this direction's NAT."""
        rw, t = self.rewrite, self.tuple
        return (rw.saddr if rw.saddr is not None else t.src, rw.daddr if rw.daddr is not None else t.dst,
                rw.sport if rw.sport is not None else t.sport, rw.dport if rw.dport is not None else t.dport)


@dataclass(slots=True, eq=False)
class Flow:
    """``struct flow_offload``. Identity-hashed (``eq=False``) so it can sit in sets and wheel slots.

    ``timeout`` is the absolute deadline (ns); ``timeout_ns`` the per-protocol flow timeout. ``hw_installed``
    has bit ``1 << dir`` set for each direction that may be on the switch (acknowledged, or written with an
    unknown outcome); ``hw_packets``/``hw_bytes`` are the last counter values read per direction.
    """

    id: int
    conn: ConnRef
    dirs: tuple[FlowDirection, FlowDirection]
    flags: int  # FlowFlag bits
    timeout: int
    timeout_ns: int
    created: int
    sw_packets: list[int] = field(default_factory=lambda: [0, 0])
    sw_bytes: list[int] = field(default_factory=lambda: [0, 0])
    hw_packets: list[int] = field(default_factory=lambda: [0, 0])
    hw_bytes: list[int] = field(default_factory=lambda: [0, 0])
    hw_installed: int = 0
    hw_retries: int = 0
    retry_at: int = 0
    last_error: str = ""
    stats_at: int = 0  # when the GC next queues a stats read (0: not scheduled)
    hw_read_at: int = 0  # when the counters in hw_packets were taken (install, adoption or the last read)
    hw_keys: tuple[EntryKey, EntryKey] | None = None  # its entries' keys in a bulk read (the engine's, once)
    tick: int = -1  # wheel slot, -1 when not scheduled

    @property
    def proto(self) -> int:
        return self.dirs[0].tuple.proto

    @property
    def family(self) -> int:
        return self.dirs[0].tuple.family

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    @property
    def hw_offloaded(self) -> bool:
        return bool(self.flags & F.HW_OFFLOADED)

    @property
    def state(self) -> str:
        """The state shown to users: offloaded, hw_offloaded, closing, teardown or dying."""
        if self.flags & F.TEARDOWN:
            return "dying" if self.flags & F.HW_DYING and not self.flags & F.HW_DEAD else "teardown"
        if self.flags & F.CLOSING:
            return "closing"
        return "hw_offloaded" if self.flags & F.HW_OFFLOADED else "offloaded"


@dataclass(slots=True)
class Counters:
    """Flowtable counters, in the spirit of ``/proc/net/stats/nf_flowtable`` but with the events too."""

    created: int = 0
    removed: int = 0
    expired: int = 0
    closed: int = 0
    teardowns: int = 0
    offer_skipped: dict[str, int] = field(default_factory=dict)
    hw_add_ok: int = 0
    hw_add_table_full: int = 0
    hw_add_errors: int = 0
    hw_add_retries: int = 0
    hw_rollbacks: int = 0
    hw_unsupported: int = 0
    hw_del_ok: int = 0
    hw_del_errors: int = 0
    hw_stats_reads: int = 0  # flows whose counters were taken (from a bulk read)
    hw_stats_passes: int = 0  # bulk reads of the flow tables' counters (at most one per stats period)
    hw_stats_waits: int = 0  # GC visits that put an expiry off until a fresher counter read (STATS_FRESH_NS)
    hw_entries_lost: int = 0
    hw_write_failures: int = 0
    idle_notifications: int = 0
    idle_ignored: int = 0
    idle_unknown: int = 0
    idle_after_delete: int = 0  # unknown entries the engine had just deleted: the notice predates the delete
    fastpath_packets: int = 0
    fastpath_bytes: int = 0
    fastpath_exceptions: dict[str, int] = field(default_factory=dict)
    gc_runs: int = 0
    gc_visits: int = 0


def _tcp_udp(proto: int) -> bool:
    return proto in (IPPROTO_TCP, IPPROTO_UDP)


class FlowTable:
    """The software flowtable. Thread-safe; see the module docstring for the kernel functions modelled."""

    #: ``flow_offload_refresh`` only writes a new timeout when it moves by more than this (the kernel's HZ).
    REFRESH_SLACK_NS = NS
    #: First and largest delay before a failed hardware add is retried (doubling in between).
    RETRY_MIN_NS = NS
    RETRY_MAX_NS = 30 * NS
    #: How often the stats read repeats for an idle hardware flow in the last 90 % of its timeout: the
    #: kernel queues it on every GC run (every second) once less than 90 % remains.
    STATS_INTERVAL_NS = NS
    #: A hardware flow past its timeout is expired only on counters read this recently; older ones are asked
    #: for again first (see :meth:`_gc_step`).
    STATS_FRESH_NS = 3 * NS

    def __init__(self, config: FlowtableConfig | None = None, clock: Clock = monotonic_clock,
                 gc_interval_ns: int = NS) -> None:
        self.config = config or FlowtableConfig()
        self.clock = clock
        self.lock = DeferringLock()
        self.counters = Counters()
        self.hw: HwOffload | None = None
        self._tuples: dict[FlowTuple, tuple[Flow, Dir]] = {}
        self._flows: dict[int, Flow] = {}
        self._next_id = 1
        self._tick_ns = gc_interval_ns
        self._wheel: dict[int, dict[Flow, None]] = {}
        self._done_tick = clock() // gc_interval_ns
        #: When the GC last ran: the offload engine reads the switch's counters once per GC run.
        self.gc_at = -1
        #: Called as flows change state: "offload" (entered the flowtable), "hw_offload" (the switch
        #: acknowledged both entries), "hw_failed", "hw_lost", "closing", "teardown", "hw_removed",
        #: "removed". They run after the thread that made the change released the table's lock, in order,
        #: so they may call into conntrack or back into the table. The controller logs them and mirrors
        #: conntrack's bits.
        self.listeners: list[Callable[[str, Flow], None]] = []

    def notify(self, event: str, flow: Flow) -> None:
        """Queue a state-change event for the listeners (delivered once the lock is released)."""
        self.lock.defer(self._deliver, event, flow)

    def _deliver(self, event: str, flow: Flow) -> None:
        for listener in self.listeners:
            try:
                listener(event, flow)
            except Exception:  # an observer must not break the table
                log.exception("flowtable listener failed on %s", event)

    # ---------------------------------------------------------------------------------------- plumbing

    def attach(self, hw: HwOffload) -> None:
        """Connect the offload work queues; without them (or with ``hw_offload = false``) every flow stays on
        the software path, like a flowtable without ``flags offload``."""
        self.hw = hw

    @property
    def hw_enabled(self) -> bool:
        return self.hw is not None and self.config.hw_offload

    def __len__(self) -> int:
        with self.lock:
            return len(self._flows)

    def flows(self) -> list[Flow]:
        with self.lock:
            return list(self._flows.values())

    def __iter__(self) -> Iterator[Flow]:
        return iter(self.flows())

    def get(self, flow_id: int) -> Flow | None:
        with self.lock:
            return self._flows.get(flow_id)

    def find(self, tuple_: FlowTuple) -> tuple[Flow, Dir] | None:
        """The flow holding this tuple, whatever its state (for reconciliation and notifications)."""
        with self.lock:
            return self._tuples.get(tuple_)

    # ----------------------------------------------------------------------------------------- creation

    def offer(self, conn: ConnRef, orig: FlowDirection, reply: FlowDirection, *, seen_reply: bool,
              tcp_established: bool = False, fin_rst_seen: bool = False,
              hw_present: bool = False) -> tuple[OfferResult, Flow | None]:
        """Offer a connection to the flowtable (``nft_flow_offload_eval``); call it from the slow path for
        each packet of a connection conntrack has seen both ways (or at least once it has).

        ``orig``/``reply`` carry each direction's arriving tuple, action list (whose NAT must produce the
        other direction's tuple reversed) and route MTU. Returns why a flow was or was not created.
        ``hw_present``: reconciliation found the entries on the switch already; no hardware add is queued
        (the offload engine adopts them when the reconciliation plan is applied).
        """
        with self.lock:
            result = self._check_offer(conn, orig, reply, seen_reply, tcp_established, fin_rst_seen)
            if result is not OfferResult.OFFLOADED:
                if result is not OfferResult.EXISTS:
                    skipped = self.counters.offer_skipped
                    skipped[result.value] = skipped.get(result.value, 0) + 1
                return result, None
            return result, self._add(conn, orig, reply, hw_present)

    def _check_offer(self, conn: ConnRef, orig: FlowDirection, reply: FlowDirection, seen_reply: bool,
                     tcp_established: bool, fin_rst_seen: bool) -> OfferResult:
        o, r = orig.tuple, reply.tuple
        if o in self._tuples or r in self._tuples:
            return OfferResult.EXISTS
        if not _tcp_udp(o.proto) or o.proto != r.proto or o.family != r.family:
            return OfferResult.PROTO
        if not seen_reply:
            return OfferResult.NO_REPLY
        if o.proto == IPPROTO_TCP:
            if fin_rst_seen:
                return OfferResult.CLOSING
            if not tcp_established:
                return OfferResult.NOT_ESTABLISHED
        if conn.is_dying():
            return OfferResult.DYING
        # Each direction leaves as the other direction arrives, reversed (flow_offload_ipv4_snat et al.
        # take the rewrite from the other tuple): anything else would forward into the void.
        if orig.leaves_as() != (r.dst, r.src, r.dport, r.sport) or reply.leaves_as() != (o.dst, o.src, o.dport, o.sport):
            return OfferResult.INCONSISTENT
        key = FlowKey(proto=o.proto, src=o.src_ip, dst=o.dst_ip, sport=o.sport, dport=o.dport,
                      iif=o.in_port, oif=orig.out_port)
        if not self.config.decide(key) or not self.config.covers(r.in_port):
            return OfferResult.POLICY
        return OfferResult.OFFLOADED

    def _add(self, conn: ConnRef, orig: FlowDirection, reply: FlowDirection, hw_present: bool = False) -> Flow:
        """``flow_offload_alloc`` + ``flow_offload_add``."""
        now = self.clock()
        o, r = orig.tuple, reply.tuple
        flags = 0
        if o.src != r.dst or o.sport != r.dport:
            flags |= F.SNAT
        if o.dst != r.src or o.dport != r.sport:
            flags |= F.DNAT
        t = self.config.timeout_ns(o.proto)
        flow = Flow(id=self._next_id, conn=conn, dirs=(orig, reply), flags=flags, timeout=now + t, timeout_ns=t,
                    created=now)
        self._next_id += 1
        self._flows[flow.id] = flow
        self._tuples[o] = (flow, Dir.ORIGINAL)
        self._tuples[r] = (flow, Dir.REPLY)
        self.counters.created += 1
        self.notify("offload", flow)
        if self.hw_enabled:
            flow.flags |= F.HW
            if not hw_present:
                self._hw_add(flow, now)
        self._reschedule(flow, now)
        return flow

    # ----------------------------------------------------------------------------------- packet path

    def lookup(self, tuple_: FlowTuple) -> tuple[Flow, Dir] | None:
        """``flow_offload_lookup``: flows in teardown or whose connection is dying are not found."""
        with self.lock:
            hit = self._tuples.get(tuple_)
            if hit is None:
                return None
            flow = hit[0]
            if flow.flags & F.TEARDOWN or flow.conn.is_dying():
                return None
            return hit

    def refresh(self, flow: Flow, now: int | None = None) -> None:
        """``flow_offload_refresh`` for a packet the software path forwarded.

        A closing flow keeps its close deadline. A flow meant for hardware that is not there yet (the add
        failed, e.g. a full table) is re-queued here once its retry delay has passed: traffic on the
        software path is what makes a hardware entry worth another try, as in the kernel.
        """
        with self.lock:
            now = self.clock() if now is None else now
            flags = flow.flags
            if flags & (F.TEARDOWN | F.CLOSING):
                return
            deadline = now + flow.timeout_ns
            if deadline - flow.timeout > self.REFRESH_SLACK_NS:
                flow.timeout = deadline
                self._reschedule(flow, now)
            if not flags & F.HW or flags & (F.HW_PENDING | F.HW_UNSUPPORTED | F.HW_DYING) or now < flow.retry_at:
                return
            if flags & F.HW_OFFLOADED:
                # The switch should have forwarded this packet itself: check that its entries are still
                # there (a stats read that finds them missing re-queues the add). At most once a second.
                flow.retry_at = now + self.RETRY_MIN_NS
                if self.hw is not None:
                    self.hw.queue_stats(flow)
            elif self.hw_enabled:
                flow.hw_retries += 1
                self.counters.hw_add_retries += 1
                self._hw_add(flow, now)

    def account(self, flow: Flow, direction: Dir, nbytes: int) -> None:
        """Software-path accounting (``nf_ct_acct_update``)."""
        with self.lock:
            flow.sw_packets[direction] += 1
            flow.sw_bytes[direction] += nbytes
            self.counters.fastpath_packets += 1
            self.counters.fastpath_bytes += nbytes

    def count_exception(self, reason: str) -> None:
        with self.lock:
            exc = self.counters.fastpath_exceptions
            exc[reason] = exc.get(reason, 0) + 1

    def mark_closing(self, flow: Flow, close_timeout_ns: int | None = None) -> None:
        """FIN or RST seen: remove the hardware entries now and hand the connection back to conntrack
        (``flow_offload_teardown`` in ``nf_flow_state_check``); the flow is no longer forwarded by the fast
        path and stays listed as closing until ``close_timeout_ns`` from now (default from config).
        Calling it again (another FIN, the last ACK) moves the deadline to the new value."""
        with self.lock:
            if flow.flags & F.TEARDOWN:
                return
            now = self.clock()
            if not flow.flags & F.CLOSING:
                flow.flags |= F.CLOSING
                self.counters.closed += 1
                # Conntrack sees every packet from now on (the fast path passes closing flows to the slow
                # path), so its TCP timeouts govern: FIN_WAIT ... TIME_WAIT as on the classic path.
                self.lock.defer(flow.conn.on_teardown)  # conntrack takes its own lock: not under ours
                self.notify("closing", flow)
            flow.timeout = now + (self.config.close_timeout_ns if close_timeout_ns is None else close_timeout_ns)
            if (flow.hw_installed and not flow.flags & (F.HW_DYING | F.HW_PENDING)) and self.hw is not None:
                self._hw_del(flow)
            self._reschedule(flow, now)

    def teardown(self, flow: Flow) -> None:
        """``flow_offload_teardown``: stop fast-pathing the flow; the GC removes it (after its hardware
        entries are gone). For a SYN on a closing flow, a route change, the connection being deleted."""
        with self.lock:
            self._teardown(flow)
            self._reschedule(flow, self.clock())

    def _teardown(self, flow: Flow) -> None:
        if flow.flags & F.TEARDOWN:
            return
        flow.flags |= F.TEARDOWN
        self.counters.teardowns += 1
        self.lock.defer(flow.conn.on_teardown)  # conntrack takes its own lock: not under ours
        self.notify("teardown", flow)

    def teardown_all(self, port: int | None = None) -> int:
        """``nf_flow_table_cleanup``: tear down every flow, or those using ``port`` in either direction."""
        n = 0
        with self.lock:
            now = self.clock()
            for flow in list(self._flows.values()):
                if port is None or port in (flow.dirs[0].tuple.in_port, flow.dirs[1].tuple.in_port):
                    self._teardown(flow)
                    self._reschedule(flow, now)
                    n += 1
        return n

    # -------------------------------------------------------------------------------------------- GC

    def gc(self) -> int:
        """One garbage-collector run (call every second): visit only the flows whose wheel slot is due.
        Returns the number of flows visited."""
        with self.lock:
            now = self.clock()
            self.gc_at = now
            now_tick = now // self._tick_ns
            self.counters.gc_runs += 1
            if now_tick <= self._done_tick:
                return 0
            if now_tick - self._done_tick > len(self._wheel):
                ticks = sorted(t for t in self._wheel if t <= now_tick)
            else:
                ticks = list(range(self._done_tick + 1, now_tick + 1))
            self._done_tick = now_tick
            visited = 0
            for tick in ticks:
                slot = self._wheel.pop(tick, None)
                if not slot:
                    continue
                for flow in slot:
                    flow.tick = -1
                    visited += 1
                    self._gc_step(flow, now)
            self.counters.gc_visits += visited
            return visited

    def _gc_step(self, flow: Flow, now: int) -> None:
        """``nf_flow_offload_gc_step``."""
        flags = flow.flags
        if (now >= flow.timeout and not self._stale_counters(flow, now)) or flow.conn.is_dying():
            if not flags & F.TEARDOWN:
                self.counters.expired += 1
            self._teardown(flow)
        flags = flow.flags
        if flags & F.TEARDOWN:
            if flags & F.HW_PENDING or (flow.hw_installed and self.hw is not None):
                # Entries may be on the switch (or an add is in flight): delete them first, remove the
                # flow once the delete completed (NF_FLOW_HW_DYING ... NF_FLOW_HW_DEAD).
                if not flags & (F.HW_DYING | F.HW_PENDING):
                    self._hw_del(flow)
            else:
                self._remove(flow)
                return
        elif flags & F.CLOSING and flow.hw_installed and not flags & F.HW_DYING and self.hw is not None:
            self._hw_del(flow)
        elif flags & F.HW_OFFLOADED and not flags & F.CLOSING:
            # nf_flow_offload_stats: read the switch only once less than 90 % of the timeout remains, then
            # on every run (STATS_INTERVAL_NS) until traffic moves the timeout on or the flow expires.
            if flow.timeout - now < (9 * flow.timeout_ns) // 10:
                if now >= flow.stats_at and self.hw is not None:
                    self._hw_stats(flow)
                    flow.stats_at = now + self.STATS_INTERVAL_NS
            else:
                flow.stats_at = flow.timeout - (9 * flow.timeout_ns) // 10 + 1
        self._reschedule(flow, now)

    def _stale_counters(self, flow: Flow, now: int) -> bool:
        """Whether a hardware flow that looks expired must wait for fresher counters (lock held).

        Its timeout moves only when a read of the switch's counters is taken in, and under load the offload
        engine's reads come seconds apart (a whole-table read that took longer than a period waits as long
        again). A flow whose last read is older than :attr:`STATS_FRESH_NS` may have carried traffic since,
        so the switch is asked again and the flow looked at on the next run, as the kernel would have
        seen that traffic in the read its GC queued a second before. Only for that long: after a further
        whole timeout without a read (the switch gone, the engine stuck) the flow expires as it stands."""
        flags = flow.flags
        if (self.hw is None or not flags & F.HW_OFFLOADED or flags & (F.CLOSING | F.TEARDOWN)
                or now - flow.hw_read_at <= self.STATS_FRESH_NS or now - flow.timeout >= flow.timeout_ns
                or flow.conn.is_dying()):
            return False
        if not flags & F.HW_PENDING and not self.hw.queue_stats(flow):  # pending: queued work's answer decides
            return False  # no stats reader: nothing fresher will come
        self.counters.hw_stats_waits += 1
        return True

    def _remove(self, flow: Flow) -> None:
        """``flow_offload_del``."""
        self._unschedule(flow)
        for d in flow.dirs:
            hit = self._tuples.get(d.tuple)
            if hit is not None and hit[0] is flow:
                del self._tuples[d.tuple]
        if self._flows.pop(flow.id, None) is not None:
            self.counters.removed += 1
            self.notify("removed", flow)

    def _next_visit(self, flow: Flow, now: int) -> int:
        flags = flow.flags
        hw_busy = flags & F.HW_PENDING or flow.hw_installed
        if flags & F.TEARDOWN or (flags & F.CLOSING and hw_busy and not flags & F.HW_DYING):
            return now  # waiting on hardware: look again on the next run
        due = flow.timeout
        if flags & F.HW_OFFLOADED and not flags & F.CLOSING:
            stats_at = flow.stats_at or flow.timeout - (9 * flow.timeout_ns) // 10 + 1
            due = min(due, max(stats_at, now))
        return due

    def _reschedule(self, flow: Flow, now: int) -> None:
        """Put the flow in the wheel slot of its next GC visit (the first run at or after that moment)."""
        tick = max(math.ceil(self._next_visit(flow, now) / self._tick_ns), self._done_tick + 1)
        if tick == flow.tick:
            return
        self._unschedule(flow)
        self._wheel.setdefault(tick, {})[flow] = None
        flow.tick = tick

    def _unschedule(self, flow: Flow) -> None:
        if flow.tick >= 0:
            slot = self._wheel.get(flow.tick)
            if slot is not None:
                slot.pop(flow, None)
                if not slot:
                    del self._wheel[flow.tick]
            flow.tick = -1

    def scheduled(self) -> int:
        """Flows in the wheel (every live flow is in exactly one slot)."""
        with self.lock:
            return sum(len(s) for s in self._wheel.values())

    # ---------------------------------------------------------------- hardware: queueing and results

    def _hw_add(self, flow: Flow, now: int) -> None:
        assert self.hw is not None
        if flow.flags & F.HW_UNSUPPORTED:
            return
        self.hw.queue_add(flow)

    def _hw_del(self, flow: Flow) -> None:
        assert self.hw is not None
        self.hw.queue_del(flow)

    def _hw_stats(self, flow: Flow) -> None:
        assert self.hw is not None
        self.hw.queue_stats(flow)

    def reschedule(self, flow: Flow, now: int | None = None) -> None:
        """Re-file the flow in the GC wheel after its state changed outside this module (the offload engine
        finished a work item). Call with the lock held."""
        if flow.id in self._flows:
            self._reschedule(flow, self.clock() if now is None else now)

    def retry_delay_ns(self, retries: int) -> int:
        """How long a flow whose hardware add failed waits before traffic may queue it again."""
        return min(self.RETRY_MIN_NS << min(retries, 16), self.RETRY_MAX_NS)

    # ------------------------------------------------------------------------- idle-timeout notices

    def idle_notification(self, tuple_: FlowTuple) -> IdleVerdict:
        """The switch says the entry for ``tuple_`` idled out. Checked against the flow, never trusted alone:
        a direction can idle while the other carries traffic, the software path may have seen packets, and
        BMv2 repeats notices every ~2 s. Only a flow already past its own deadline is torn down; one with
        recent activity gets a stats read instead. An entry for no known flow should be deleted."""
        with self.lock:
            self.counters.idle_notifications += 1
            hit = self._tuples.get(tuple_)
            if hit is None:
                self.counters.idle_unknown += 1
                return IdleVerdict.UNKNOWN_ENTRY
            flow = hit[0]
            now = self.clock()
            if flow.flags & (F.TEARDOWN | F.CLOSING | F.HW_DYING):
                self.counters.idle_ignored += 1
                return IdleVerdict.IGNORED
            if now >= flow.timeout:
                self.counters.expired += 1
                self._teardown(flow)
                self._gc_step(flow, now)
                return IdleVerdict.EXPIRED
            self.counters.idle_ignored += 1
            if flow.flags & F.HW_OFFLOADED and self.hw is not None:
                self.hw.queue_stats(flow)
            return IdleVerdict.IGNORED


class IdleVerdict(enum.Enum):
    EXPIRED = "expired"  # the flow was past its deadline: torn down, hardware delete queued
    IGNORED = "ignored"  # recent activity or already going away: nothing removed
    UNKNOWN_ENTRY = "unknown_entry"  # no flow holds this key: the entry should be deleted


class HwStats(NamedTuple):
    """One direction's entry as read from the switch: its direct counter and, where the target supports
    idle timeouts, ``time_since_last_hit`` (ns). A named tuple, not a frozen dataclass: a bulk read makes
    one per entry (60,000 a second at 30,000 flows), and this builds in under half the time."""

    packets: int
    bytes: int
    since_last_hit_ns: int | None = None
