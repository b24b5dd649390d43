"""The flowtable's "driver": its neutral updates and reads carried over P4Runtime by :class:`SwitchClient`.

:mod:`.offload` and :mod:`.reconcile` speak :class:`FlowUpdate` / :class:`SwitchEntry` (short P4Info names,
plain integers) so they can be tested without a switch. This module is the one place that turns them into
``p4.v1`` messages (through :class:`~runtime.entities.TableEntry`, which canonicalises byte strings and
checks widths against the P4Info) and turns the switch's answers back: per-update status codes from a
continue-on-error ``Write``, counters and ``time_since_last_hit`` from a ``Read``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from p4.v1 import p4runtime_pb2

from ..client import SwitchClient
from ..entities import TableEntry
from ..errors import P4RuntimeError
from .core import HwStats
from .model import EntryKey, FlowTuple
from .offload import EntryRef, entry_key
from .p4map import Code, FlowUpdate, PipelineCaps, SwitchEntry, UpdateResult, tuple_of

log = logging.getLogger(__name__)

#: Entries named in one per-entry Read request; more are read in several such requests (a whole-table read
#: costs the table's size, not the request's, so it is kept for the stats period's bulk read).
SINGLE_READ_LIMIT = 256


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


def _stats(e: TableEntry) -> HwStats:
    c = e.counter
    return HwStats(c.packets if c else 0, c.bytes if c else 0, e.time_since_last_hit_ns)


class P4RuntimeReader:
    """:class:`~runtime.flowtable.offload.StatsReader`: direct counters and ``time_since_last_hit``.

    :meth:`read_tables` is the stats period's bulk read: one wildcard Read per flow table with
    ``counter_data`` (and ``time_since_last_hit`` where the table has idle timeouts), whatever the number of
    flows. :meth:`read_stats` (the last counters of entries about to be deleted) names the entries, up to
    :data:`SINGLE_READ_LIMIT` per request; a request the switch refuses because one of the keys is gone
    (BMv2 fails the whole read with NOT_FOUND) falls back to reading the tables.
    """

    def __init__(self, client: SwitchClient, caps: PipelineCaps) -> None:
        self.client = client
        self.caps = caps
        # each entry's bytes as the switch answered them (counters cleared) -> its key, from the last read
        self._keys: dict[bytes, EntryKey] = {}

    def read_tables(self, tables: Sequence[str]) -> dict[EntryKey, HwStats]:
        """Keyed straight from the answer's messages, without :meth:`TableEntry.decode` (actions, parameters,
        names): at tens of thousands of entries per period, decoding them in full was most of the engine's
        time. The keys equal :func:`entry_key` of the decoded entries (a test checks it).

        An entry's key is worked out once: the entry's own bytes with the counter fields cleared are the
        same from one read to the next (until the entry changes), so they map to the key kept from the last
        read. Serializing one message in C costs a third of walking its match fields in Python."""
        p4info = self.client.p4info
        assert p4info is not None
        out: dict[EntryKey, HwStats] = {}
        known, seen = self._keys, {}
        for table in tables:
            info = p4info.table(table)
            short = _short(info.name)
            # the exact fields, sorted by name as entry_key sorts them
            fields = sorted((f.name, f.id) for f in info.match_fields if f.match_type in ("EXACT", "OPTIONAL"))
            idle = table in self.caps.idle_timeout
            for ent in self.client.read([self._wildcard_request(table)]):
                e = ent.table_entry
                cd = e.counter_data
                packets, nbytes = cd.packet_count, cd.byte_count
                since = e.time_since_last_hit.elapsed_ns if idle and e.HasField("time_since_last_hit") else None
                e.ClearField("counter_data")
                e.ClearField("time_since_last_hit")
                raw = e.SerializeToString()
                key = known.get(raw)
                if key is None:
                    vals = {m.field_id: m.exact.value or m.optional.value for m in e.match}
                    key = (short, *(int.from_bytes(vals[fid], "big") for _, fid in fields if fid in vals))
                seen[raw] = key
                out[key] = HwStats(packets, nbytes, since)
        self._keys = seen  # entries gone from the switch leave the map with this read
        return out

    def read_stats(self, entries: Sequence[EntryRef]) -> list[HwStats | None]:
        if not entries:
            return []
        found: dict[EntryKey, TableEntry] = {}
        try:
            for i in range(0, len(entries), SINGLE_READ_LIMIT):
                found.update((entry_key(e.table, e.match), e) for e in self._read_each(entries[i:i + SINGLE_READ_LIMIT]))
        except P4RuntimeError as exc:
            log.debug("per-entry read failed (%s); reading the whole tables", exc)
            found = {entry_key(e.table, e.match): e for table in {t for t, _ in entries} for e in self._read_table(table)}
        return [None if (hit := found.get(entry_key(table, match))) is None else _stats(hit) for table, match in entries]

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
        ents = self.client.read([self._wildcard_request(table)])
        return [TableEntry.decode(e.table_entry, p4info) for e in ents if e.HasField("table_entry")]

    def _wildcard_request(self, table: str) -> p4runtime_pb2.Entity:
        """Every entry of ``table`` with its counters, and its idle time where the table has timeouts."""
        p4info = self.client.p4info
        assert p4info is not None
        te = p4runtime_pb2.TableEntry(table_id=p4info.table(table).id)
        te.counter_data.SetInParent()
        if table in self.caps.idle_timeout:
            te.time_since_last_hit.SetInParent()
        return p4runtime_pb2.Entity(table_entry=te)


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


def read_indexed_counter(client: SwitchClient, name: str, indexes: Sequence[int]) -> dict[int, tuple[int, int]]:
    """``(packets, bytes)`` at each index of an indexed counter, in one read."""
    p4info = client.p4info
    if p4info is None or not indexes:
        return {}
    cid = p4info.counter(name).id
    ents = [p4runtime_pb2.Entity(counter_entry=p4runtime_pb2.CounterEntry(counter_id=cid, index=p4runtime_pb2.Index(index=i)))
            for i in indexes]
    out: dict[int, tuple[int, int]] = {}
    for e in client.read(ents):
        if e.HasField("counter_entry"):
            ce = e.counter_entry
            out[ce.index.index] = (ce.data.packet_count, ce.data.byte_count)
    return out
