"""The flowtable's "driver": its neutral updates and reads carried over P4Runtime by :class:`SwitchClient`.

:mod:`.offload` and :mod:`.reconcile` speak :class:`FlowUpdate` / :class:`SwitchEntry` (short P4Info names,
plain integers) so they can be tested without a switch. This module is the one place that turns them into
``p4.v1`` messages (through :class:`~runtime.entities.TableEntry`, which canonicalises byte strings and
checks widths against the P4Info) and turns the switch's answers back: per-update status codes from a
continue-on-error ``Write``, counters and ``time_since_last_hit`` from a ``Read``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from p4.v1 import p4runtime_pb2

from ..client import SwitchClient
from ..entities import TableEntry
from ..errors import P4RuntimeError
from .core import HwStats
from .model import FlowTuple
from .offload import EntryRef
from .p4map import Code, FlowUpdate, PipelineCaps, SwitchEntry, UpdateResult, tuple_of

log = logging.getLogger(__name__)

#: Above this many entries, one read of the whole table is cheaper than one read entity per entry.
SINGLE_READ_LIMIT = 64


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def to_table_entry(upd: FlowUpdate) -> TableEntry:
    return TableEntry(table=upd.table, match=dict(upd.match), action=upd.action or None,
                      params=dict(upd.params), idle_timeout_ns=upd.idle_timeout_ns)


def to_switch_entry(e: TableEntry) -> SwitchEntry:
    """A read-back entry in the neutral form (short names, integers)."""
    return SwitchEntry(table=_short(e.table), match={k: v for k, v in e.match.items() if not isinstance(v, tuple)},
                       action=_short(e.action or ""), params={k: int(v) for k, v in e.params.items()},
                       idle_timeout_ns=e.idle_timeout_ns)


def entry_tuple(e: TableEntry, caps: PipelineCaps) -> FlowTuple | None:
    """The flow tuple of a flow-table entry read from the switch (or named in an idle notice)."""
    return tuple_of(_short(e.table), e.match, caps)


class P4RuntimeWriter:
    """:class:`~runtime.flowtable.offload.EntryWriter` over a connected :class:`SwitchClient`."""

    def __init__(self, client: SwitchClient) -> None:
        self.client = client

    def write(self, updates: Sequence[FlowUpdate]) -> list[UpdateResult]:
        p4info = self.client.p4info
        if p4info is None:
            raise P4RuntimeError("Write", "FAILED_PRECONDITION", "no P4Info: the pipeline is not set")
        msgs = [to_table_entry(u).encode_update(u.op.value, p4info) for u in updates]
        results = [UpdateResult(Code.OK)] * len(msgs)
        try:
            self.client.write(msgs)
        except P4RuntimeError as exc:
            if not exc.errors:
                raise  # the request as a whole failed: outcome unknown
            for err in exc.errors:
                code = Code.__members__.get(err.code, Code.UNKNOWN)
                results[err.index] = UpdateResult(code, err.message)
        return results


class P4RuntimeReader:
    """:class:`~runtime.flowtable.offload.StatsReader`: direct counters and ``time_since_last_hit``.

    A few entries are read one by one in a single request; many, or a request the switch refuses because
    one of the keys is gone (BMv2 fails the whole read with NOT_FOUND), fall back to reading the tables.
    """

    def __init__(self, client: SwitchClient, caps: PipelineCaps) -> None:
        self.client = client
        self.caps = caps

    def read_stats(self, entries: Sequence[EntryRef]) -> list[HwStats | None]:
        if not entries:
            return []
        found: dict[_Key, TableEntry] | None = None
        if len(entries) <= SINGLE_READ_LIMIT:
            try:
                found = {_key(e.table, e.match): e for e in self._read_each(entries)}
            except P4RuntimeError as exc:
                log.debug("per-entry read failed (%s); reading the whole tables", exc)
        if found is None:
            found = {_key(e.table, e.match): e for table in {t for t, _ in entries} for e in self._read_table(table)}
        out: list[HwStats | None] = []
        for table, match in entries:
            hit = found.get(_key(table, match))
            if hit is None:
                out.append(None)
                continue
            c = hit.counter
            out.append(HwStats(c.packets if c else 0, c.bytes if c else 0, hit.time_since_last_hit_ns))
        return out

    def _read_each(self, entries: Sequence[EntryRef]) -> list[TableEntry]:
        p4info = self.client.p4info
        assert p4info is not None
        ents = []
        for table, match in entries:
            te = TableEntry(table=table, match=dict(match)).encode(p4info)
            te.counter_data.SetInParent()
            if table in self.caps.idle_timeout:
                te.time_since_last_hit.SetInParent()
            ents.append(p4runtime_pb2.Entity(table_entry=te))
        return [TableEntry.decode(e.table_entry, p4info) for e in self.client.read(ents) if e.HasField("table_entry")]

    def _read_table(self, table: str) -> list[TableEntry]:
        p4info = self.client.p4info
        assert p4info is not None
        te = p4runtime_pb2.TableEntry(table_id=p4info.table(table).id)
        te.counter_data.SetInParent()
        if table in self.caps.idle_timeout:
            te.time_since_last_hit.SetInParent()
        ents = self.client.read([p4runtime_pb2.Entity(table_entry=te)])
        return [TableEntry.decode(e.table_entry, p4info) for e in ents if e.HasField("table_entry")]


_Key = tuple[str, tuple[tuple[str, int], ...]]


def _key(table: str, match: Mapping[str, object]) -> _Key:
    """One entry's identity, the same for what we asked for and what the switch answered."""
    return _short(table), tuple(sorted((k, int.from_bytes(v, "big") if isinstance(v, bytes) else int(v))  # type: ignore[call-overload]
                                       for k, v in match.items() if not isinstance(v, tuple)))


def read_flow_entries(client: SwitchClient, caps: PipelineCaps, *, counters: bool = False) -> list[TableEntry]:
    """Every entry of the flow tables (for reconciliation and ``offloadgen entries``)."""
    out: list[TableEntry] = []
    for table in caps.tables.values():
        out.extend(client.read_table(table, counters=counters))
    return out


def read_port_vlans(client: SwitchClient) -> dict[int, int]:
    """The pipeline's per-port VLAN tagging, from its const ``vlan_out`` entries (empty without VLANs).

    The runtime does not read build profiles; the switch itself says which ports the program tags."""
    p4info = client.p4info
    if p4info is None:
        return {}
    try:
        p4info.table("vlan_out")
    except LookupError:
        return {}
    out: dict[int, int] = {}
    for e in client.read_table("vlan_out"):
        port = next((v for v in e.match.values() if isinstance(v, int)), None)
        vid = next(iter(e.params.values()), None)
        if port is not None and vid is not None:
            out[int(port)] = int(vid)
    return out
