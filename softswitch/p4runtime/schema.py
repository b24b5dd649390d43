"""An index of a P4Info for request validation, and the byte-string rules of the P4Runtime specification.

The server validates every request against the P4Info that the primary pushed (ids, match kinds, widths),
before anything reaches the dataplane, so that a bad request gets a precise INVALID_ARGUMENT that names the
place instead of a dataplane exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.rpc import code_pb2
from p4.config.v1 import p4info_pb2

# P4Info id prefixes (the most significant byte of an id), P4Runtime spec "ID Allocation for P4Info Objects".
PREFIX_ACTION = 0x01
PREFIX_TABLE = 0x02
PREFIX_COUNTER = 0x12
PREFIX_DIRECT_COUNTER = 0x13
PREFIX_CONTROLLER_HEADER = 0x04

MatchType = p4info_pb2.MatchField.MatchType


class P4RuntimeError(Exception):
    """A request the server refuses: a google.rpc code and a message naming the place and the fix."""

    def __init__(self, code: int, message: str) -> None:
        message = bounded(message)
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{code_pb2.Code.Name(self.code)}: {self.message}"


def invalid(message: str) -> P4RuntimeError:
    return P4RuntimeError(code_pb2.INVALID_ARGUMENT, message)


@dataclass(frozen=True, slots=True)
class MatchFieldInfo:
    id: int
    name: str
    bitwidth: int
    match_type: int


@dataclass(frozen=True, slots=True)
class ParamInfo:
    id: int
    name: str
    bitwidth: int


@dataclass(slots=True)
class ActionInfo:
    id: int
    name: str
    params: dict[int, ParamInfo]


@dataclass(slots=True)
class TableInfo:
    id: int
    name: str
    fields: dict[int, MatchFieldInfo]
    action_scopes: dict[int, int]  # action id -> p4info ActionRef.Scope
    const_default_action_id: int
    is_const: bool
    size: int
    supports_idle_timeout: bool
    direct_counter_id: int  # 0 when the table has no direct counter
    needs_priority: bool


@dataclass(slots=True)
class CounterInfo:
    id: int
    name: str
    size: int
    unit: int


@dataclass(slots=True)
class ControllerHeader:
    """A @controller_header: its fields in P4Info order, which is also their order on the wire."""

    id: int
    name: str
    fields: list[ParamInfo]

    @property
    def nbytes(self) -> int:
        return (sum(f.bitwidth for f in self.fields) + 7) // 8


@dataclass(slots=True)
class Schema:
    p4info: p4info_pb2.P4Info
    tables: dict[int, TableInfo] = field(default_factory=dict)
    actions: dict[int, ActionInfo] = field(default_factory=dict)
    counters: dict[int, CounterInfo] = field(default_factory=dict)
    direct_counters: dict[int, int] = field(default_factory=dict)  # direct counter id -> table id
    packet_in: ControllerHeader | None = None
    packet_out: ControllerHeader | None = None

    @classmethod
    def from_p4info(cls, p4info: p4info_pb2.P4Info) -> Schema:
        s = cls(p4info)
        for a in p4info.actions:
            s.actions[a.preamble.id] = ActionInfo(
                a.preamble.id, a.preamble.name, {p.id: ParamInfo(p.id, p.name, p.bitwidth) for p in a.params})
        direct_counter_ids = {dc.preamble.id for dc in p4info.direct_counters}
        for t in p4info.tables:
            fields = {mf.id: MatchFieldInfo(mf.id, mf.name, mf.bitwidth, mf.match_type) for mf in t.match_fields}
            dc = next((r for r in t.direct_resource_ids if r in direct_counter_ids), 0)
            s.tables[t.preamble.id] = TableInfo(
                id=t.preamble.id, name=t.preamble.name, fields=fields,
                action_scopes={ref.id: ref.scope for ref in t.action_refs},
                const_default_action_id=t.const_default_action_id, is_const=t.is_const_table, size=t.size,
                supports_idle_timeout=t.idle_timeout_behavior == p4info_pb2.Table.NOTIFY_CONTROL,
                direct_counter_id=dc,
                needs_priority=any(f.match_type in (MatchType.TERNARY, MatchType.RANGE, MatchType.OPTIONAL)
                                   for f in fields.values()))
        for c in p4info.counters:
            s.counters[c.preamble.id] = CounterInfo(c.preamble.id, c.preamble.name, c.size, c.spec.unit)
        for dc in p4info.direct_counters:
            s.direct_counters[dc.preamble.id] = dc.direct_table_id
        for h in p4info.controller_packet_metadata:
            hdr = ControllerHeader(h.preamble.id, h.preamble.name,
                                   [ParamInfo(m.id, m.name, m.bitwidth) for m in h.metadata])
            if h.preamble.name == "packet_in":
                s.packet_in = hdr
            elif h.preamble.name == "packet_out":
                s.packet_out = hdr
        return s

    def table(self, table_id: int) -> TableInfo:
        t = self.tables.get(table_id)
        if t is None:
            known = ", ".join(f"{x.name} ({x.id})" for x in self.tables.values())
            raise invalid(f"unknown table id {table_id}; the pipeline's tables are: {known}")
        return t

    def action(self, action_id: int) -> ActionInfo:
        a = self.actions.get(action_id)
        if a is None:
            raise invalid(f"unknown action id {action_id}; see the P4Info's actions")
        return a

    def counter(self, counter_id: int) -> CounterInfo:
        c = self.counters.get(counter_id)
        if c is None:
            if counter_id in self.direct_counters:
                raise invalid(f"counter {counter_id} is a direct counter; use DirectCounterEntry, not CounterEntry")
            raise invalid(f"unknown counter id {counter_id}; see the P4Info's counters")
        return c


SHOWN_BYTES = 32  # of a byte string quoted in an error message; the rest is elided
MAX_MESSAGE = 400  # characters of one error message


def show_bytes(data: bytes) -> str:
    """A byte string for an error message, at most SHOWN_BYTES of it in hex.

    Per-update errors travel in one trailer (grpc-status-details-bin) for the whole batch, and clients refuse
    trailers beyond their metadata limit (16 KB by default in gRPC): quoting an 8 KB value whole turned the
    answer into RESOURCE_EXHAUSTED and lost every per-update status of the batch.
    """
    if len(data) <= SHOWN_BYTES:
        return f"0x{data.hex()}"
    return f"0x{data[:SHOWN_BYTES].hex()}... ({len(data)} bytes)"


def bounded(message: str) -> str:
    """`message` cut to MAX_MESSAGE characters (see show_bytes for why every per-update message is bounded)."""
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 3] + "..."


def decode_uint(data: bytes, bitwidth: int, what: str, strict: bool = False) -> int:
    """The unsigned value of a P4Runtime byte string that must fit in `bitwidth` bits.

    As the specification says (P4Runtime 1.4, "Bytestrings"): an empty string is refused, zero-padded strings
    are accepted, and a value wider than the field is OUT_OF_RANGE. strict (`-- --strict-bytestrings`)
    additionally refuses non-canonical strings (leading zero bytes), so that a client developer learns at once
    that its entries would read back differently from how it wrote them, not at reconciliation time.
    """
    if not data:
        raise P4RuntimeError(code_pb2.OUT_OF_RANGE,
                             f"{what}: empty byte string; send at least one byte (b'\\x00' for zero)")
    value = int.from_bytes(data, "big")
    if value >> bitwidth:
        raise P4RuntimeError(code_pb2.OUT_OF_RANGE, f"{what}: value {show_bytes(data)} does not fit in {bitwidth} bits")
    if strict and len(data) > 1 and data[0] == 0:
        raise invalid(f"{what}: non-canonical byte string {show_bytes(data)} (leading zero bytes); send the shortest "
                      f"big-endian encoding, {show_bytes(encode_uint(value))} (softswitch runs with "
                      "--strict-bytestrings)")
    return value


def encode_uint(value: int) -> bytes:
    """The canonical (shortest) P4Runtime byte string of a non-negative integer."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def pack_header(header: ControllerHeader, values: dict[int, int]) -> bytes:
    """A controller header's bytes: fields in P4Info order, each its bitwidth, MSB first; absent fields are 0."""
    acc = 0
    nbits = 0
    for f in header.fields:
        acc = (acc << f.bitwidth) | (values.get(f.id, 0) & ((1 << f.bitwidth) - 1))
        nbits += f.bitwidth
    pad = (-nbits) % 8
    return (acc << pad).to_bytes((nbits + pad) // 8, "big")


def unpack_header(header: ControllerHeader, data: bytes) -> dict[int, int]:
    """The inverse of pack_header, reading the first header.nbytes bytes of `data`."""
    n = header.nbytes
    total = sum(f.bitwidth for f in header.fields)
    acc = int.from_bytes(data[:n], "big") >> (n * 8 - total)
    out: dict[int, int] = {}
    shift = total
    for f in header.fields:
        shift -= f.bitwidth
        out[f.id] = (acc >> shift) & ((1 << f.bitwidth) - 1)
    return out


def essential_differences(a: p4info_pb2.P4Info, b: p4info_pb2.P4Info) -> list[str]:
    """Where two P4Infos disagree on what the server validates against (ids, names, widths, kinds).

    Used by SetForwardingPipelineConfig to check that the P4Info a client sends describes the program it sends;
    annotations, documentation and source locations are ignored.
    """
    def tables(p: p4info_pb2.P4Info) -> dict[int, tuple[object, ...]]:
        return {t.preamble.id: (t.preamble.name,
                                tuple((m.id, m.name, m.bitwidth, m.match_type) for m in t.match_fields),
                                tuple(sorted((r.id, r.scope) for r in t.action_refs)),
                                t.const_default_action_id, t.idle_timeout_behavior, t.is_const_table)
                for t in p.tables}

    def actions(p: p4info_pb2.P4Info) -> dict[int, tuple[object, ...]]:
        return {x.preamble.id: (x.preamble.name, tuple((q.id, q.name, q.bitwidth) for q in x.params))
                for x in p.actions}

    def counters(p: p4info_pb2.P4Info) -> dict[int, tuple[object, ...]]:
        out: dict[int, tuple[object, ...]] = {c.preamble.id: (c.preamble.name, c.size, c.spec.unit) for c in p.counters}
        out.update({c.preamble.id: (c.preamble.name, c.direct_table_id, c.spec.unit) for c in p.direct_counters})
        return out

    def headers(p: p4info_pb2.P4Info) -> dict[int, tuple[object, ...]]:
        return {h.preamble.id: (h.preamble.name, tuple((m.id, m.name, m.bitwidth) for m in h.metadata))
                for h in p.controller_packet_metadata}

    diffs: list[str] = []
    for kind, fn in (("table", tables), ("action", actions), ("counter", counters), ("controller header", headers)):
        da, db = fn(a), fn(b)
        for obj_id in sorted(da.keys() | db.keys()):
            if da.get(obj_id) != db.get(obj_id):
                diffs.append(f"{kind} {obj_id}: sent {da.get(obj_id)!r}, program has {db.get(obj_id)!r}")
    return diffs
