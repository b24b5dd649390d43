"""Test doubles for the flowtable unit tests: a controllable clock, a conntrack entry, and an in-memory switch
flow table that answers like softswitch (RESOURCE_EXHAUSTED when full) or BMv2 (UNKNOWN when full)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from runtime.actions import Statement, route_actions
from runtime.flowtable.core import FlowDirection, FlowTable, HwStats
from runtime.flowtable.model import NS, Dir, EntryKey, FlowTuple
from runtime.flowtable.offload import OffloadEngine, entry_key
from runtime.flowtable.p4map import Code, FlowUpdate, Op, PipelineCaps, SwitchEntry, UpdateResult
from runtime.flowtable.policy import FlowtableConfig

HOST_MAC = bytes.fromhex("020000000a01")
LAN_MAC = bytes.fromhex("020000000101")
WAN_MAC = bytes.fromhex("020000000104")
GW_MAC = bytes.fromhex("02000000fe01")


class FakeClock:
    def __init__(self, start_s: float = 1000.0) -> None:
        self.now = int(start_s * NS)

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * NS)


@dataclass
class FakeConn:
    dying: bool = False
    acct: list[tuple[Dir, int, int]] = field(default_factory=list)
    torn_down: int = 0

    def is_dying(self) -> bool:
        return self.dying

    def acct_add(self, direction: Dir, packets: int, nbytes: int) -> None:
        self.acct.append((direction, packets, nbytes))

    def on_teardown(self) -> None:
        self.torn_down += 1


@dataclass
class _Entry:
    entry: SwitchEntry
    packets: int = 0
    bytes: int = 0
    last_hit: int = 0


Key = tuple[str, tuple[tuple[str, int | bytes], ...]]


class FakeSwitch:
    """An in-memory flow table: capacity, ALREADY_EXISTS / NOT_FOUND, a full table answered per update with
    ``full_code`` (RESOURCE_EXHAUSTED like softswitch, UNKNOWN like BMv2), injectable per-update rejections
    and whole-batch failures, direct counters and time_since_last_hit."""

    def __init__(self, clock: FakeClock, capacity: int | None = None, full_code: Code = Code.RESOURCE_EXHAUSTED) -> None:
        self.clock = clock
        self.capacity = capacity
        self.full_code = full_code
        self.entries: dict[Key, _Entry] = {}
        self.batches: list[list[FlowUpdate]] = []
        self.reads: list[int] = []
        self.table_reads: list[tuple[str, ...]] = []
        self.reject: Callable[[FlowUpdate], UpdateResult | None] | None = None
        self.fail_next: Exception | None = None

    def write(self, updates: Sequence[FlowUpdate]) -> list[UpdateResult]:
        self.batches.append(list(updates))
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        out = []
        for u in updates:
            forced = self.reject(u) if self.reject else None
            if forced is not None:
                out.append(forced)
                continue
            k = u.key()
            if u.op is Op.INSERT:
                if k in self.entries:
                    out.append(UpdateResult(Code.ALREADY_EXISTS, "Match entry exists, use MODIFY if you wish to change action"))
                elif self.capacity is not None and len(self.entries) >= self.capacity:
                    msg = "Table is full" if self.full_code is Code.RESOURCE_EXHAUSTED else "Error when adding match entry to target"
                    out.append(UpdateResult(self.full_code, msg))
                else:
                    self.entries[k] = _Entry(SwitchEntry(u.table, dict(u.match), u.action, dict(u.params), u.idle_timeout_ns),
                                             last_hit=self.clock())
                    out.append(UpdateResult(Code.OK))
            elif u.op is Op.MODIFY:
                if k not in self.entries:
                    out.append(UpdateResult(Code.NOT_FOUND, "Cannot find match entry"))
                else:
                    e = self.entries[k]
                    e.entry = SwitchEntry(u.table, dict(u.match), u.action, dict(u.params), u.idle_timeout_ns)
                    out.append(UpdateResult(Code.OK))
            else:
                if self.entries.pop(k, None) is None:
                    out.append(UpdateResult(Code.NOT_FOUND, "Cannot find match entry"))
                else:
                    out.append(UpdateResult(Code.OK))
        return out

    def stats_of(self, e: _Entry) -> HwStats:
        """An entry's counters and time_since_last_hit as the switch reports them now."""
        return HwStats(e.packets, e.bytes, self.clock() - e.last_hit)

    def read_stats(self, entries: Sequence[tuple[str, Mapping[str, int | bytes]]]) -> list[HwStats | None]:
        """Per-entry reads (counted in ``reads``: the number of entries named)."""
        self.reads.append(len(entries))
        out: list[HwStats | None] = []
        for table, match in entries:
            e = self.entries.get((table, tuple(sorted(match.items()))))
            out.append(None if e is None else self.stats_of(e))
        return out

    def read_tables(self, tables: Sequence[str]) -> dict[EntryKey, HwStats]:
        """Whole-table reads (counted in ``table_reads``)."""
        self.table_reads.append(tuple(tables))
        return {entry_key(t, dict(m)): self.stats_of(e) for (t, m), e in self.entries.items() if t in tables}

    def hit(self, t: FlowTuple, packets: int = 1, nbytes: int = 100) -> None:
        """Traffic through the entry keyed by ``t`` now."""
        for e in self.entries.values():
            m = e.entry.match
            if (m["in_port"], m["src_addr"], m["dst_addr"], m["src_port"], m["dst_port"]) == (
                    t.in_port, int.from_bytes(t.src, "big"), int.from_bytes(t.dst, "big"), t.sport, t.dport):
                e.packets += packets
                e.bytes += nbytes
                e.last_hit = self.clock()
                return
        raise KeyError(t)

    def switch_entries(self) -> list[SwitchEntry]:
        return [e.entry for e in self.entries.values()]


def nat_tuples(sport: int = 40000, proto: str = "tcp", nat_port: int | None = None) -> tuple[FlowTuple, FlowTuple]:
    """A LAN client 10.0.0.1 on port 1 talking to 8.8.8.8 through port 4, source-NATed to 192.0.2.1."""
    orig = FlowTuple.make(1, "10.0.0.1", "8.8.8.8", proto, sport, 80)
    reply = FlowTuple.make(4, "8.8.8.8", "192.0.2.1", proto, 80, nat_port if nat_port is not None else sport + 20000)
    return orig, reply


def directions(orig: FlowTuple, reply: FlowTuple, *, orig_out: int = 4, reply_out: int = 1, mtu: int = 1500,
               port_vlans: Mapping[int, int] | None = None,
               statements: Sequence[Statement] = ()) -> tuple[FlowDirection, FlowDirection]:
    o = FlowDirection(orig, route_actions(orig, reply, out_port=orig_out, smac=WAN_MAC, dmac=GW_MAC,  # type: ignore[arg-type]
                                          in_port=orig.in_port, port_vlans=port_vlans, statements=statements), mtu)
    r = FlowDirection(reply, route_actions(reply, orig, out_port=reply_out, smac=LAN_MAC, dmac=HOST_MAC,  # type: ignore[arg-type]
                                           in_port=reply.in_port, port_vlans=port_vlans, statements=statements), mtu)
    return o, r


def offer(ft: FlowTable, sport: int = 40000, proto: str = "tcp", conn: FakeConn | None = None,
          **kw: object) -> tuple[object, object]:
    o, r = directions(*nat_tuples(sport, proto))
    return ft.offer(conn or FakeConn(), o, r, seen_reply=True, tcp_established=True, **kw)  # type: ignore[arg-type]


def make_table(clock: FakeClock, config: FlowtableConfig | None = None, *, capacity: int | None = None,
               full_code: Code = Code.RESOURCE_EXHAUSTED,
               caps: PipelineCaps | None = None) -> tuple[FlowTable, OffloadEngine, FakeSwitch]:
    ft = FlowTable(config or FlowtableConfig(), clock=clock)
    sw = FakeSwitch(clock, capacity, full_code)
    eng = OffloadEngine(ft, sw, caps or PipelineCaps(), sw)
    return ft, eng, sw
