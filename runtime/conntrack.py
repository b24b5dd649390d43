"""Connection tracking in software, after Linux's nf_conntrack.

A connection has two tuples, one per direction (``tuples[ORIGINAL]`` as its first packet looked,
``tuples[REPLY]`` as replies will look, NAT included) and the table is keyed by both, so a packet of either
direction finds it. TCP follows ``nf_conntrack_proto_tcp.c``'s state table and default timeouts (window
tracking is not modelled; the kernel's ``be_liberal`` would accept the same packets), including loose pick-up
of mid-stream connections (``nf_conntrack_tcp_loose``) so a restarted controller does not break established
connections. UDP is unreplied -> replied -> assured after ``nf_conntrack_proto_udp.c`` (assured once traffic
continues two seconds after creation with a reply seen), ICMP/ICMPv6 echo as request/reply pairs.

Observers subscribe with :meth:`Conntrack.subscribe` and get :class:`CtEvent`s: NEW on confirmation,
STATE on every TCP state change, REPLY when the first reply is seen, ASSURED, OFFLOADABLE once a connection
is fit for the flowtable (seen both ways; TCP established; both directions' action lists known) -- the hook
the offload policy (issue 8) listens to -- and DESTROY.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .actions import ActionList, format_actions
from .deferred import DeferringLock

log = logging.getLogger(__name__)

NS = 1_000_000_000
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58
PROTO_NAMES = {IPPROTO_ICMP: "icmp", IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMPV6: "icmpv6"}

Clock = Callable[[], int]
#: NF_CT_DAY: a connection's own timeout while the flowtable holds it.
OFFLOAD_TIMEOUT_NS = 86400 * NS


class Dir(enum.IntEnum):
    ORIGINAL = 0
    REPLY = 1

    @property
    def other(self) -> Dir:
        return Dir(1 - self)


@dataclass(frozen=True, slots=True)
class CtTuple:
    """One direction of a connection. Addresses are network-order bytes (4 or 16). For an ICMP echo both
    ports are its identifier; for other protocols without ports both are 0."""

    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int

    def invert(self) -> CtTuple:
        return CtTuple(self.dst, self.src, self.proto, self.dport, self.sport)

    @property
    def family(self) -> int:
        return 4 if len(self.src) == 4 else 6

    @classmethod
    def make(cls, src: str, dst: str, proto: int | str, sport: int = 0, dport: int = 0) -> CtTuple:
        p = {v: k for k, v in PROTO_NAMES.items()}[proto] if isinstance(proto, str) else proto
        return cls(ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed, p, sport, dport)

    def __str__(self) -> str:
        s = f"src={ipaddress.ip_address(self.src)} dst={ipaddress.ip_address(self.dst)}"
        if self.proto in (IPPROTO_TCP, IPPROTO_UDP):
            s += f" sport={self.sport} dport={self.dport}"
        elif self.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            s += f" id={self.sport}"
        return s


class TcpState(enum.IntEnum):
    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8
    SYN_SENT2 = 9


# Sentinels of the table, like sIV / sIG.
INVALID = -1
IGNORE = -2

_sNO, _sSS, _sSR, _sES, _sFW, _sCW, _sLA, _sTW, _sCL, _sS2 = range(10)
_sIV, _sIG = INVALID, IGNORE

# tcp_conntracks[dir][index][state], index: syn, synack, fin, ack, rst, none (current Linux).
TCP_CONNTRACKS: tuple[tuple[tuple[int, ...], ...], ...] = (
    (  # ORIGINAL
        #  sNO   sSS   sSR   sES   sFW   sCW   sLA   sTW   sCL   sS2
        (_sSS, _sSS, _sIG, _sIG, _sIG, _sIG, _sIG, _sSS, _sSS, _sS2),  # syn
        (_sIV, _sIV, _sSR, _sIV, _sIV, _sIV, _sIV, _sIV, _sIV, _sSR),  # synack
        (_sIV, _sIV, _sFW, _sFW, _sLA, _sLA, _sLA, _sTW, _sCL, _sIV),  # fin
        (_sES, _sIV, _sES, _sES, _sCW, _sCW, _sTW, _sTW, _sCL, _sIV),  # ack
        (_sIV, _sCL, _sCL, _sCL, _sCL, _sCL, _sCL, _sCL, _sCL, _sCL),  # rst
        (_sIV,) * 10,  # none
    ),
    (  # REPLY
        (_sIV, _sS2, _sIV, _sIV, _sIV, _sIV, _sIV, _sSS, _sIV, _sS2),  # syn
        (_sIV, _sSR, _sIG, _sIG, _sIG, _sIG, _sIG, _sIG, _sIG, _sSR),  # synack
        (_sIV, _sIV, _sFW, _sFW, _sLA, _sLA, _sLA, _sTW, _sCL, _sIV),  # fin
        (_sIV, _sIG, _sSR, _sES, _sCW, _sCW, _sTW, _sTW, _sCL, _sIG),  # ack
        (_sIV, _sCL, _sCL, _sCL, _sCL, _sCL, _sCL, _sCL, _sCL, _sCL),  # rst
        (_sIV,) * 10,  # none
    ),
)

TCP_SYN_SET, TCP_SYNACK_SET, TCP_FIN_SET, TCP_ACK_SET, TCP_RST_SET, TCP_NONE_SET = range(6)
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
SEQ_MOD = 1 << 32


def segment_end(seq: int, payload: int, flags: int) -> int:
    """``segment_seq_plus_len``: the sequence number after this segment (SYN and FIN count one each)."""
    return (seq + payload + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)) % SEQ_MOD


@dataclass(slots=True)
class TcpTrack:
    """The part of ``struct ip_ct_tcp`` the state machine needs without window tracking: the last packet
    conntrack let through (``last_index/last_dir``; for an ignored one also ``last_seq/last_end``), whether
    each direction started a close (``IP_CT_TCP_FLAG_CLOSE_INIT``), and the ``last_flags`` bits for a
    possible RFC 5961 challenge ACK and a simultaneous open."""

    last_index: int = TCP_NONE_SET
    last_dir: int = -1
    last_seq: int = 0
    last_end: int = 0
    close_init: list[bool] = field(default_factory=lambda: [False, False])
    challenge_ack: bool = False  # IP_CT_EXP_CHALLENGE_ACK: a SYN was ignored in LAST_ACK
    simultaneous_open: bool = False  # IP_CT_TCP_SIMULTANEOUS_OPEN


def tcp_index(flags: int) -> int:
    """``get_conntrack_index``."""
    if flags & RST:
        return TCP_RST_SET
    if flags & SYN:
        return TCP_SYNACK_SET if flags & ACK else TCP_SYN_SET
    if flags & FIN:
        return TCP_FIN_SET
    if flags & ACK:
        return TCP_ACK_SET
    return TCP_NONE_SET


def tcp_next(state: TcpState, direction: Dir, flags: int) -> int:
    """The table's verdict: a new :class:`TcpState` value, or INVALID / IGNORE."""
    return TCP_CONNTRACKS[direction][tcp_index(flags)][state]


@dataclass(frozen=True)
class Timeouts:
    """Default timeouts in seconds (``nf_conntrack_*_timeout*`` sysctls)."""

    tcp: dict[TcpState, float] = field(default_factory=lambda: {
        TcpState.SYN_SENT: 120, TcpState.SYN_RECV: 60, TcpState.ESTABLISHED: 5 * 86400,
        TcpState.FIN_WAIT: 120, TcpState.CLOSE_WAIT: 60, TcpState.LAST_ACK: 30, TcpState.TIME_WAIT: 120,
        TcpState.CLOSE: 10, TcpState.SYN_SENT2: 120, TcpState.NONE: 120})
    tcp_unack: float = 300
    udp_unreplied: float = 30
    udp_replied: float = 120
    udp_stream_after: float = 2
    icmp: float = 30
    generic: float = 600


class Status:
    """``IPS_*`` bits that matter here (same bit numbers as the kernel's). Plain ints, not an IntFlag: every
    packet tests and sets several of them, and on Python 3.11 each ``&`` or ``|`` of an IntFlag builds a
    new enum member through the enum machinery (a tenth of the slow path's time per packet)."""

    SEEN_REPLY = 1 << 1
    ASSURED = 1 << 2
    CONFIRMED = 1 << 3
    SRC_NAT = 1 << 4
    DST_NAT = 1 << 5
    DYING = 1 << 9
    OFFLOAD = 1 << 14
    HW_OFFLOAD = 1 << 15


class CtEvent(enum.Enum):
    NEW = "NEW"
    STATE = "STATE"
    REPLY = "REPLY"
    ASSURED = "ASSURED"
    OFFLOADABLE = "OFFLOADABLE"
    DESTROY = "DESTROY"


class Verdict(enum.Enum):
    ACCEPT = "ACCEPT"
    INVALID = "INVALID"  # drop it (``ct state invalid drop``)
    REOPEN = "REOPEN"  # a SYN reopening a closed connection: the old one is gone, track the packet as new


@dataclass(eq=False)
class Conn:
    id: int
    tuples: tuple[CtTuple, CtTuple]
    created_ns: int
    timeout_ns: int = 0  # absolute deadline
    status: int = 0  # Status bits
    tcp_state: TcpState = TcpState.NONE
    iif: list[int | None] = field(default_factory=lambda: [None, None])
    actions: list[ActionList | None] = field(default_factory=lambda: [None, None])
    packets: list[int] = field(default_factory=lambda: [0, 0])
    bytes: list[int] = field(default_factory=lambda: [0, 0])
    stream_ts_ns: int = 0
    picked_up: bool = False  # created from a mid-stream TCP packet (loose)
    offloadable_fired: bool = False
    offload_refused: str = ""  # why the flowtable turned it down for good (policy, protocol); not re-offered
    tcp: TcpTrack = field(default_factory=TcpTrack)
    gc_tick: int = -1  # the GC wheel slot the connection is filed in (-1: none)

    @property
    def proto(self) -> int:
        return self.tuples[0].proto

    @property
    def family(self) -> int:
        return self.tuples[0].family

    @property
    def nat(self) -> bool:
        return bool(self.status & (Status.SRC_NAT | Status.DST_NAT))

    def state_name(self) -> str:
        if self.proto == IPPROTO_TCP:
            return self.tcp_state.name
        if self.proto == IPPROTO_UDP:
            if self.status & Status.ASSURED:
                return "ASSURED"
            return "REPLIED" if self.status & Status.SEEN_REPLY else "UNREPLIED"
        return "REPLIED" if self.status & Status.SEEN_REPLY else "UNREPLIED"

    @property
    def closing(self) -> bool:
        return self.proto == IPPROTO_TCP and self.tcp_state >= TcpState.FIN_WAIT and self.tcp_state != TcpState.SYN_SENT2

    def offloadable(self) -> bool:
        """Fit for the flowtable: TCP/UDP, seen both ways, TCP established, both action lists known."""
        if self.proto not in (IPPROTO_TCP, IPPROTO_UDP) or not self.status & Status.SEEN_REPLY:
            return False
        if self.status & Status.DYING:
            return False
        if self.proto == IPPROTO_TCP and self.tcp_state != TcpState.ESTABLISHED:
            return False
        return self.actions[0] is not None and self.actions[1] is not None


@dataclass(frozen=True, slots=True)
class CtRecord:
    """A snapshot of one connection, for tests, ``offloadgen flows`` and the status endpoint."""

    id: int
    proto: str
    protonum: int
    family: int
    state: str
    timeout_s: float
    original: CtTuple
    reply: CtTuple
    status: tuple[str, ...]
    packets: tuple[int, int]
    bytes: tuple[int, int]
    iif: tuple[int | None, int | None]
    actions: tuple[str | None, str | None]
    # What the switch forwarded, when it is counted apart from conntrack's own counters (the kernel slow
    # path: the kernel's counters are what `conntrack -L` shows; the switch's go beside them)
    hw_packets: tuple[int, int] = (0, 0)
    hw_bytes: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict[str, object]:
        def tup(t: CtTuple) -> dict[str, object]:
            return {"src": str(ipaddress.ip_address(t.src)), "dst": str(ipaddress.ip_address(t.dst)),
                    "sport": t.sport, "dport": t.dport}
        return {"id": self.id, "proto": self.proto, "protonum": self.protonum, "family": self.family,
                "state": self.state, "timeout": round(self.timeout_s, 1), "original": tup(self.original),
                "reply": tup(self.reply), "status": list(self.status), "packets": list(self.packets),
                "bytes": list(self.bytes), "iif": list(self.iif), "actions": list(self.actions),
                "hw_packets": list(self.hw_packets), "hw_bytes": list(self.hw_bytes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CtRecord:
        """The inverse of :meth:`to_dict` (``offloadgen flows --all`` reads records from the status socket)."""
        def tup(t: Mapping[str, Any]) -> CtTuple:
            return CtTuple.make(t["src"], t["dst"], int(d["protonum"]), int(t["sport"]), int(t["dport"]))
        p, b, i, a = d["packets"], d["bytes"], d["iif"], d["actions"]
        hp, hb = d.get("hw_packets", (0, 0)), d.get("hw_bytes", (0, 0))
        return cls(int(d["id"]), str(d["proto"]), int(d["protonum"]), int(d["family"]), str(d["state"]),
                   float(d["timeout"]), tup(d["original"]), tup(d["reply"]), tuple(d["status"]), (p[0], p[1]),
                   (b[0], b[1]), (i[0], i[1]), (a[0], a[1]), (hp[0], hp[1]), (hb[0], hb[1]))


Listener = Callable[[CtEvent, Conn], None]


class Conntrack:
    """The connection table. Thread-safe for :meth:`snapshot` against the packet thread."""

    def __init__(self, clock: Clock, *, timeouts: Timeouts | None = None, tcp_loose: bool = True,
                 max_entries: int = 262144) -> None:
        self.clock = clock
        self.timeouts = timeouts or Timeouts()
        self.tcp_loose = tcp_loose
        self.max_entries = max_entries
        self._table: dict[CtTuple, tuple[Conn, Dir]] = {}
        self._conns: dict[int, Conn] = {}
        self._ids = itertools.count(1)
        self._listeners: list[Listener] = []
        # Events are queued under the lock and delivered after its release: a listener may take other parts'
        # locks (the flowtable's), and those parts call back into conntrack (accounting, fixup).
        self._lock = DeferringLock()
        self.stats = {"new": 0, "invalid": 0, "destroyed": 0, "full": 0}
        # The GC's timer wheel: second -> connections due then. Filing is lazy: a refresh that moves a
        # deadline later leaves the connection where it is, and the GC re-files it when it gets there; only a
        # deadline moved earlier (a FIN, a RST, the flowtable handing it back) files it again at once.
        self._wheel: dict[int, list[Conn]] = {}
        self._done_tick = clock() // NS

    # ------------------------------------------------------------------ observers

    def subscribe(self, listener: Listener) -> None:
        """Listeners run on the emitting thread after it released conntrack's lock (never under it), in
        the order the events happened; they may call back into conntrack."""
        self._listeners.append(listener)

    def _emit(self, event: CtEvent, conn: Conn) -> None:
        if not conn.status & Status.CONFIRMED:
            return  # like ctnetlink: no events for a connection that is not in the table (yet)
        self._lock.defer(self._deliver, event, conn)

    def _deliver(self, event: CtEvent, conn: Conn) -> None:
        for listener in self._listeners:
            try:
                listener(event, conn)
            except Exception:
                log.exception("conntrack listener failed on %s", event.value)

    # ------------------------------------------------------------------ table

    def __len__(self) -> int:
        return len(self._conns)

    def lookup(self, t: CtTuple) -> tuple[Conn, Dir] | None:
        return self._table.get(t)

    def taken(self, t: CtTuple) -> bool:
        """Is ``t`` some connection's tuple (either direction)? NAT must never create a reply tuple that is."""
        return t in self._table

    def conns(self) -> list[Conn]:
        with self._lock:
            return list(self._conns.values())

    def get(self, conn_id: int) -> Conn | None:
        return self._conns.get(conn_id)

    def new(self, original: CtTuple, reply: CtTuple | None = None, *, iif: int | None = None) -> Conn:
        """An unconfirmed connection (not in the table until :meth:`confirm`); ``reply`` defaults to the
        inverted original (no NAT)."""
        conn = Conn(0, (original, reply or original.invert()), self.clock())
        conn.iif[0] = iif
        conn.stream_ts_ns = conn.created_ns + int(self.timeouts.udp_stream_after * NS)
        return conn

    def set_reply(self, conn: Conn, reply: CtTuple) -> None:
        """Before confirmation: set the (NATed) reply tuple and the NAT status bits."""
        orig = conn.tuples[0]
        conn.tuples = (orig, reply)
        inv = orig.invert()
        if reply.src != inv.src or reply.sport != inv.sport:
            conn.status |= Status.DST_NAT
        if reply.dst != inv.dst or reply.dport != inv.dport:
            conn.status |= Status.SRC_NAT

    def confirm(self, conn: Conn) -> bool:
        """Insert both tuples. False when the table is full or a tuple is taken (a clash)."""
        with self._lock:
            if conn.status & Status.CONFIRMED:
                return True
            if len(self._conns) >= self.max_entries:
                self.stats["full"] += 1
                return False
            if conn.tuples[0] in self._table or conn.tuples[1] in self._table:
                return False
            conn.id = next(self._ids)
            conn.status |= Status.CONFIRMED
            self._table[conn.tuples[0]] = (conn, Dir.ORIGINAL)
            self._table[conn.tuples[1]] = (conn, Dir.REPLY)
            self._conns[conn.id] = conn
            self._file(conn)
            self.stats["new"] += 1
        self._emit(CtEvent.NEW, conn)
        self._check_offloadable(conn)
        return True

    def destroy(self, conn: Conn) -> None:
        with self._lock:
            if self._conns.pop(conn.id, None) is None:
                return
            conn.status |= Status.DYING
            for t in conn.tuples:
                if self._table.get(t, (None,))[0] is conn:
                    del self._table[t]
            self.stats["destroyed"] += 1
        self._emit(CtEvent.DESTROY, conn)

    def gc(self) -> list[Conn]:
        """Destroy every connection whose timeout passed; returns them. A connection in the flowtable
        (``OFFLOAD``) is not expired here: the flowtable's timeout governs it until it hands it back
        (``nf_ct_offload_timeout``).

        Visits only the wheel's slots that came due since the last run, so a run costs the connections due,
        not the table (a full scan took 130 ms of the worker's time each second at 18,000 connections; the
        kernel's gc_worker bounds its scans for the same reason)."""
        now = self.clock()
        now_tick = now // NS
        dead = []
        with self._lock:
            if now_tick - self._done_tick > len(self._wheel):
                ticks = sorted(t for t in self._wheel if t <= now_tick)
            else:
                ticks = list(range(self._done_tick + 1, now_tick + 1))
            self._done_tick = max(self._done_tick, now_tick)
            for tick in ticks:
                for c in self._wheel.pop(tick, ()):
                    if c.gc_tick != tick or self._conns.get(c.id) is not c:
                        continue  # filed again elsewhere since, or gone
                    c.gc_tick = -1
                    if c.status & Status.OFFLOAD:
                        self._offload_timeout(c, now)
                    elif c.timeout_ns <= now:
                        dead.append(c)
                        continue
                    self._file(c)
        for c in dead:
            self.destroy(c)
        return dead

    def _file(self, conn: Conn) -> None:
        """Put ``conn`` in the wheel slot of the GC run that must look at it next (lock held): its deadline,
        or for a connection in the flowtable the moment its day-long timeout needs a top-up."""
        due = conn.timeout_ns - OFFLOAD_TIMEOUT_NS // 2 if conn.status & Status.OFFLOAD else conn.timeout_ns
        tick = max(-(-due // NS), self._done_tick + 1)
        if 0 <= conn.gc_tick <= tick:
            return  # looked at no later than that anyway; re-filed then
        conn.gc_tick = tick
        self._wheel.setdefault(tick, []).append(conn)

    def _offload_timeout(self, conn: Conn, now: int) -> None:
        """``nf_ct_offload_timeout``: while the flowtable holds a connection its own timeout is a day,
        topped up whenever less than half a day is left (``conntrack -L`` shows ~86400 s)."""
        if conn.timeout_ns - now < OFFLOAD_TIMEOUT_NS // 2:
            conn.timeout_ns = now + OFFLOAD_TIMEOUT_NS

    def set_actions(self, conn: Conn, direction: Dir, actions: ActionList) -> None:
        """Record what the slow path did to this direction's packets (the flow_action list)."""
        if conn.actions[direction] == actions:
            return
        conn.actions[direction] = actions
        self._check_offloadable(conn)

    # ------------------------------------------------------------------ the flowtable's side

    def set_offload(self, conn: Conn, *, hw: bool | None = None) -> None:
        """The connection entered the flowtable (``IPS_OFFLOAD``); ``hw`` sets or clears ``IPS_HW_OFFLOAD``."""
        with self._lock:
            if not conn.status & Status.OFFLOAD:
                conn.timeout_ns = self.clock() + OFFLOAD_TIMEOUT_NS  # flow_offload_add: nf_ct_refresh(NF_CT_DAY)
            conn.status |= Status.OFFLOAD
            if hw is True:
                conn.status |= Status.HW_OFFLOAD
            elif hw is False:
                conn.status &= ~Status.HW_OFFLOAD

    def set_hw_offload(self, conn: Conn, on: bool) -> None:
        """``IPS_HW_OFFLOAD`` alone: the switch acknowledged the connection's entries, or they went (set
        by ``flow_offload_work_add``, cleared by ``flow_offload_work_del`` in the kernel)."""
        with self._lock:
            if on:
                conn.status |= Status.HW_OFFLOAD
            else:
                conn.status &= ~Status.HW_OFFLOAD

    def fixup(self, conn: Conn) -> None:
        """``flow_offload_fixup_ct``: the flowtable let the connection go; conntrack's own timeout for its
        current state applies again from now. Only once: a closing flow hands its connection back at the
        first FIN/RST and again when it is torn down, and the second must not extend a TIME_WAIT."""
        with self._lock:
            if not conn.status & Status.OFFLOAD:
                return
            conn.status &= ~(Status.OFFLOAD | Status.HW_OFFLOAD)
            t = self.timeouts
            if conn.proto == IPPROTO_TCP:
                seconds = t.tcp[conn.tcp_state]
            elif conn.proto == IPPROTO_UDP:
                seconds = t.udp_replied if conn.status & Status.ASSURED else t.udp_unreplied
            else:
                seconds = t.generic
            self._refresh(conn, seconds)

    def acct_add(self, conn: Conn, direction: Dir, packets: int, nbytes: int) -> None:
        """``nf_ct_acct_add``: packets forwarded by the flowtable (software fast path or switch)."""
        with self._lock:
            conn.packets[direction] += packets
            conn.bytes[direction] += nbytes

    def pick_up(self, original: CtTuple, reply: CtTuple, *, iif: tuple[int, int],
                actions: tuple[ActionList, ActionList]) -> Conn | None:
        """Recreate an established connection from what the switch still forwards (reconciliation after a
        controller restart: conntrack's mid-stream pick-up, ``nf_ct_tcp_loose``). None on a clash."""
        conn = self.new(original, reply, iif=iif[0])
        self.set_reply(conn, reply)
        conn.iif[1] = iif[1]
        conn.status |= Status.SEEN_REPLY | Status.ASSURED
        conn.picked_up = True
        if conn.proto == IPPROTO_TCP:
            conn.tcp_state = TcpState.ESTABLISHED
            self._refresh(conn, self.timeouts.tcp[TcpState.ESTABLISHED])
        else:
            self._refresh(conn, self.timeouts.udp_replied)
        conn.actions[0], conn.actions[1] = actions
        conn.offloadable_fired = True  # the caller puts it in the flowtable itself
        if not self.confirm(conn):
            return None
        return conn

    def _check_offloadable(self, conn: Conn) -> None:
        if not conn.offloadable_fired and conn.status & Status.CONFIRMED and conn.offloadable():
            conn.offloadable_fired = True
            self._emit(CtEvent.OFFLOADABLE, conn)

    # ------------------------------------------------------------------ per packet

    def can_create(self, proto: int, tcp_flags: int = 0, icmp_echo_request: bool = True) -> bool:
        """Would a packet without a connection start one (``tcp_new`` / ``icmp_new``)?"""
        if proto == IPPROTO_TCP:
            new = tcp_next(TcpState.NONE, Dir.ORIGINAL, tcp_flags)
            if new == TcpState.SYN_SENT:
                return True
            return new == TcpState.ESTABLISHED and self.tcp_loose
        if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            return icmp_echo_request
        return True

    def packet(self, conn: Conn, direction: Dir, *, length: int, tcp_flags: int = 0, in_port: int | None = None,
               seq: int = 0, ack_seq: int = 0, payload: int = 0) -> Verdict:
        """Account one packet of ``direction`` and move the connection's state (``nf_conntrack_in``).

        For TCP, ``seq``/``ack_seq``/``payload`` (the segment's data length) let conntrack recognise the
        SYN/ACK that answers a SYN it ignored; windows are not tracked."""
        with self._lock:
            proto = conn.proto
            if proto == IPPROTO_TCP:
                verdict = self._tcp(conn, direction, tcp_flags, seq, ack_seq, payload)
            elif proto == IPPROTO_UDP:
                verdict = self._udp(conn, direction)
            elif proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
                self._refresh(conn, self.timeouts.icmp)
                verdict = Verdict.ACCEPT
            else:
                self._refresh(conn, self.timeouts.generic)
                verdict = Verdict.ACCEPT
            if verdict is Verdict.INVALID:
                self.stats["invalid"] += 1
                return verdict
            if verdict is Verdict.REOPEN:
                return verdict
            conn.packets[direction] += 1
            conn.bytes[direction] += length
            if in_port is not None and conn.iif[direction] is None:
                conn.iif[direction] = in_port
            first_reply = direction is Dir.REPLY and not conn.status & Status.SEEN_REPLY
            if first_reply:
                conn.status |= Status.SEEN_REPLY
        if first_reply:
            self._emit(CtEvent.REPLY, conn)
        if conn.status & Status.DYING and conn.id in self._conns:
            self.destroy(conn)
        self._check_offloadable(conn)
        return verdict

    def _refresh(self, conn: Conn, seconds: float) -> None:
        conn.timeout_ns = self.clock() + int(seconds * NS)
        if conn.gc_tick >= 0 and conn.timeout_ns < conn.gc_tick * NS:
            self._file(conn)  # earlier than it is filed for (a lazy later deadline needs nothing)

    def _set_assured(self, conn: Conn) -> None:
        if not conn.status & Status.ASSURED:
            conn.status |= Status.ASSURED
            self._emit(CtEvent.ASSURED, conn)

    def _tcp(self, conn: Conn, direction: Dir, flags: int, seq: int, ack_seq: int, payload: int) -> Verdict:
        """``nf_conntrack_tcp_packet`` without window tracking (``tcp_in_window`` always agrees)."""
        old = conn.tcp_state
        index = tcp_index(flags)
        tcp = conn.tcp
        if old == TcpState.NONE:  # tcp_new
            new = tcp_next(TcpState.NONE, Dir.ORIGINAL, flags)
            if new == TcpState.ESTABLISHED:
                if not self.tcp_loose:
                    return Verdict.INVALID
                conn.picked_up = True
            elif new != TcpState.SYN_SENT:
                return Verdict.INVALID
        else:
            new = tcp_next(old, direction, flags)
        if new == TcpState.SYN_SENT and old >= TcpState.TIME_WAIT and old != TcpState.SYN_SENT2:
            # RFC 1122 reopen from TIME_WAIT (or CLOSE): when a close was started, or the last packet this
            # way was a RST, the kernel kills the old entry (nf_ct_kill) and repeats the lookup (-NF_REPEAT)
            # so the SYN creates a new connection. Otherwise the SYN is only ignored, as below.
            if any(tcp.close_init) or (tcp.last_dir == direction and tcp.last_index == TCP_RST_SET):
                self.destroy(conn)
                return Verdict.REOPEN
            new = IGNORE
        if new == IGNORE:
            if (index == TCP_SYNACK_SET and tcp.last_index == TCP_SYN_SET and tcp.last_dir != direction
                    and ack_seq == tcp.last_end):
                # This SYN/ACK answers a SYN we ignored: client and server are in sync, we are not. Get in
                # sync as if the ignored SYN had opened the connection (a new one on the same tuple).
                old, new = TcpState.SYN_SENT, TcpState.SYN_RECV
                tcp.challenge_ack = False
                tcp.close_init = [False, False]
                tcp.simultaneous_open = False
            else:
                # Accepted without a state change or refresh; remembered in case the peer answers it.
                tcp.last_index, tcp.last_dir = index, int(direction)
                tcp.last_seq, tcp.last_end = seq, segment_end(seq, payload, flags)
                if index == TCP_SYN_SET and direction is Dir.ORIGINAL:
                    # In LAST_ACK the answer may be a challenge ACK (RFC 5961), not the ACK of the last FIN.
                    tcp.challenge_ack = old == TcpState.LAST_ACK
                return Verdict.ACCEPT
        elif new == INVALID:
            return Verdict.INVALID
        elif new == TcpState.TIME_WAIT:
            if (old == TcpState.LAST_ACK and index == TCP_ACK_SET and tcp.last_dir != direction
                    and tcp.last_index == TCP_SYN_SET and tcp.challenge_ack):
                tcp.challenge_ack = False
                return Verdict.ACCEPT  # a challenge ACK to an ignored SYN: not the last ACK
        elif new == TcpState.SYN_SENT2:
            tcp.simultaneous_open = True  # the table alone cannot follow a simultaneous open
        elif (new == TcpState.SYN_RECV and direction is Dir.REPLY and index == TCP_ACK_SET
              and tcp.simultaneous_open):
            new = TcpState.ESTABLISHED
        new_state = TcpState(new)
        tcp.last_index, tcp.last_dir = index, int(direction)
        conn.tcp_state = new_state
        if old != new_state and new_state == TcpState.FIN_WAIT:
            tcp.close_init[direction] = True
        t = self.timeouts
        timeout = t.tcp[new_state]
        if index == TCP_RST_SET:
            timeout = t.tcp[TcpState.CLOSE]
        if not conn.status & Status.SEEN_REPLY:
            if flags & RST:
                conn.status |= Status.DYING  # "only reply is a RST": delete at once, after forwarding it
            if new_state == TcpState.ESTABLISHED and timeout > t.tcp_unack:
                timeout = t.tcp_unack  # mid-stream pick-up without a reply yet: no 5-day timeout
        elif (not conn.status & Status.ASSURED and old in (TcpState.SYN_RECV, TcpState.ESTABLISHED)
              and new_state == TcpState.ESTABLISHED):
            self._set_assured(conn)
        self._refresh(conn, timeout)
        if new_state != old:
            self._emit(CtEvent.STATE, conn)
        return Verdict.ACCEPT

    def _udp(self, conn: Conn, direction: Dir) -> Verdict:
        t = self.timeouts
        if conn.status & Status.SEEN_REPLY:
            extra = t.udp_unreplied
            stream = False
            if self.clock() > conn.stream_ts_ns:
                extra = t.udp_replied
                stream = not conn.status & Status.ASSURED
            self._refresh(conn, extra)
            if stream:
                self._set_assured(conn)
        else:
            self._refresh(conn, t.udp_unreplied)
        return Verdict.ACCEPT

    # ------------------------------------------------------------------ observing

    def record(self, conn: Conn) -> CtRecord:
        now = self.clock()
        flags = tuple(name for name, bit in (("UNREPLIED", None), ("ASSURED", Status.ASSURED),
                                               ("OFFLOAD", Status.OFFLOAD), ("HW_OFFLOAD", Status.HW_OFFLOAD),
                                               ("SRC_NAT", Status.SRC_NAT), ("DST_NAT", Status.DST_NAT))
                      if (bit is None and not conn.status & Status.SEEN_REPLY) or (bit is not None and conn.status & bit))
        acts = tuple(format_actions(a) if a is not None else None for a in conn.actions)
        return CtRecord(conn.id, PROTO_NAMES.get(conn.proto, str(conn.proto)), conn.proto, conn.family,
                        conn.state_name(), max(0.0, (conn.timeout_ns - now) / NS), conn.tuples[0], conn.tuples[1],
                        flags, (conn.packets[0], conn.packets[1]), (conn.bytes[0], conn.bytes[1]),
                        (conn.iif[0], conn.iif[1]), (acts[0], acts[1]))

    def snapshot(self) -> list[CtRecord]:
        with self._lock:
            return [self.record(c) for c in sorted(self._conns.values(), key=lambda c: c.id)]


def format_conntrack(records: Iterable[CtRecord]) -> str:
    """``conntrack -L``-style lines."""
    lines = []
    for r in records:
        fam = "ipv4" if r.family == 4 else "ipv6"
        state = f"{r.state} " if r.protonum == IPPROTO_TCP else ""
        orig = f"{r.original} packets={r.packets[0]} bytes={r.bytes[0]}"
        reply = f"{r.reply} packets={r.packets[1]} bytes={r.bytes[1]}"
        if any(r.hw_packets):
            orig += f" hw_packets={r.hw_packets[0]} hw_bytes={r.hw_bytes[0]}"
            reply += f" hw_packets={r.hw_packets[1]} hw_bytes={r.hw_bytes[1]}"
        marks = " ".join(f"[{f}]" for f in r.status if f not in ("SRC_NAT", "DST_NAT", "UNREPLIED"))
        unrep = " [UNREPLIED]" if "UNREPLIED" in r.status else ""
        lines.append(f"{fam:<5} {r.proto:<6} {r.protonum} {int(r.timeout_s)} {state}{orig}{unrep} {reply}"
                     f"{' ' + marks if marks else ''} id={r.id}")
    return "\n".join(lines)
