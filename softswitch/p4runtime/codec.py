"""P4Runtime messages <-> dataplane entries, validating as a P4Runtime server must.

Validation follows p4lang/PI (`proto/frontend/src/device_mgr.cpp`: construct_match_key, validate_action,
construct_action_data, validate_entry_ttl) so that answers match BMv2's, and the specification where softswitch
is stricter (canonical byte strings, const tables, empty byte strings).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.rpc import code_pb2
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2

from softswitch.dataplane import FieldMatch, TableEntry
from softswitch.p4runtime.schema import (
    MatchFieldInfo,
    P4RuntimeError,
    Schema,
    TableInfo,
    decode_uint,
    encode_uint,
    invalid,
)

Scope = p4info_pb2.ActionRef.Scope
# Plain ints: attribute access on the enum wrapper (_EXACT) costs a Python call per use.
_EXACT = int(p4info_pb2.MatchField.EXACT)
_LPM = int(p4info_pb2.MatchField.LPM)
_TERNARY = int(p4info_pb2.MatchField.TERNARY)
_OPTIONAL = int(p4info_pb2.MatchField.OPTIONAL)
_TABLE_ONLY = int(p4info_pb2.ActionRef.TABLE_ONLY)
_DEFAULT_ONLY = int(p4info_pb2.ActionRef.DEFAULT_ONLY)

# The identity of an entry: table id, (field id, value, mask, prefix length) sorted by field id, priority.
MatchTuple = tuple[tuple[int, int, int | None, int | None], ...]
EntryKey = tuple[int, MatchTuple, int]


def match_tuple(match: dict[int, FieldMatch]) -> MatchTuple:
    return tuple(sorted((fid, fm.value, fm.mask, fm.prefix_len) for fid, fm in match.items()))


def entry_key(table_id: int, match: dict[int, FieldMatch], priority: int) -> EntryKey:
    return (table_id, match_tuple(match), priority)


def varint(n: int) -> bytes:
    """A protobuf base-128 varint of a non-negative integer."""
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 0x80 else varint(n)) + payload


def _u(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


# Tags (field number << 3 | wire type) of the P4Runtime messages that encode_entry writes by hand.
_T1_VARINT, _T2_VARINT = b"\x08", b"\x10"
_T1_BYTES, _T2_BYTES, _T3_BYTES, _T4_BYTES, _T7_BYTES = b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x3a"
_TE_PRIORITY, _TE_CM, _TE_IDLE, _TE_METADATA, _TE_CONST = b"\x20", b"\x28", b"\x48", b"\x5a", b"\x68\x01"
_TE_COUNTER_DATA, _TE_SINCE_HIT = b"\x3a", b"\x52"
ENTITY_TABLE_ENTRY = b"\x12"  # Entity.table_entry
READ_RESPONSE_ENTITY = b"\x0a"  # ReadResponse.entities


def counter_data_field(packets: int, bytes_: int) -> bytes:
    """TableEntry.counter_data, to append to an encoded TableEntry (a field may come after higher-numbered
    ones on the wire; parsers accept any order)."""
    body = (b"\x08" + varint(bytes_) if bytes_ else b"") + (b"\x10" + varint(packets) if packets else b"")
    return _TE_COUNTER_DATA + _SMALL[len(body)] + body


def since_last_hit_field(elapsed_ns: int) -> bytes:
    """TableEntry.time_since_last_hit, to append to an encoded TableEntry."""
    body = b"\x08" + varint(elapsed_ns) if elapsed_ns else b""
    return _TE_SINCE_HIT + _SMALL[len(body)] + body


@dataclass(slots=True)
class Codec:
    """Translation for one pipeline's P4Info. strict: refuse non-canonical byte strings (see decode_uint)."""

    schema: Schema
    strict: bool = True

    # ---- match keys -------------------------------------------------------------------------------------
    def match(self, te: p4runtime_pb2.TableEntry, table: TableInfo) -> tuple[dict[int, FieldMatch], int]:
        """The dataplane match and the priority of a non-default entry (construct_match_key in PI)."""
        out, priority, _ = self._match(te, table)
        return out, priority

    def _match(self, te: p4runtime_pb2.TableEntry, table: TableInfo) -> tuple[dict[int, FieldMatch], int, bool]:
        """match(), and whether the fields came in canonical form (ascending ids, shortest byte strings, exact)."""
        if te.is_default_action:
            raise invalid("internal: match() called for a default entry")
        out: dict[int, FieldMatch] = {}
        fields = table.fields
        strict = self.strict
        canonical = True
        last = 0
        for mf in te.match:
            fid = mf.field_id
            info = fields.get(fid)
            if info is None:
                names = ", ".join(f"{f.name} ({f.id})" for f in fields.values())
                raise invalid(f"{table.name}: unknown match field id {fid}; its fields are {names}")
            if fid in out:
                raise invalid(f"{table.name}: match field {info.name} given twice")
            mt = info.match_type
            if mt == _EXACT:
                # The common case decoded inline; anything unusual takes the full path below for its error.
                data = mf.exact.value
                value = int.from_bytes(data, "big")
                if data and not value >> info.bitwidth and not (strict and len(data) > 1 and data[0] == 0):
                    out[fid] = FieldMatch(value)
                    if fid < last or (len(data) > 1 and data[0] == 0):
                        canonical = False
                    last = fid
                    continue
            canonical = False
            out[fid] = self._field(table, info, mf)
        if len(out) != len(fields):  # only then can an exact field be missing
            for info in fields.values():
                if info.id not in out and info.match_type == _EXACT:
                    raise invalid(f"{table.name}: missing exact match field {info.name} ({info.id})")
        if table.needs_priority and te.priority <= 0:
            raise invalid(f"{table.name}: entries need a priority > 0 (the table has ternary/lpm-free wildcards)")
        if not table.needs_priority and te.priority != 0:
            raise invalid(f"{table.name}: non-zero priority {te.priority} for a table without ternary, range or "
                          "optional fields; leave priority 0")
        return out, te.priority, canonical

    def _field(self, table: TableInfo, info: MatchFieldInfo, mf: p4runtime_pb2.FieldMatch) -> FieldMatch:
        """One match field, validated with a message that names it (construct_match_key in PI)."""
        where = f"{table.name}: match field {info.name}"
        kind = mf.WhichOneof("field_match_type")
        mt = info.match_type
        if mt == _EXACT:
            if kind != "exact":
                raise invalid(f"{where} is an exact match, got {kind}")
            return FieldMatch(decode_uint(mf.exact.value, info.bitwidth, where, self.strict))
        if mt == _LPM:
            if kind != "lpm":
                raise invalid(f"{where} is an lpm match, got {kind}")
            value = decode_uint(mf.lpm.value, info.bitwidth, where, self.strict)
            plen = mf.lpm.prefix_len
            if plen <= 0 or plen > info.bitwidth:
                raise invalid(f"{where}: prefix length {plen} not in 1..{info.bitwidth} (omit the field for a "
                              "don't-care match)")
            if value & ((1 << (info.bitwidth - plen)) - 1):
                raise invalid(f"{where}: value has bits set beyond the /{plen} prefix")
            return FieldMatch(value, prefix_len=plen)
        if mt == _TERNARY:
            if kind != "ternary":
                raise invalid(f"{where} is a ternary match, got {kind}")
            value = decode_uint(mf.ternary.value, info.bitwidth, where, self.strict)
            mask = decode_uint(mf.ternary.mask, info.bitwidth, where + " mask", self.strict)
            if mask == 0:
                raise invalid(f"{where}: zero mask; omit the field for a don't-care match")
            if value & ~mask:
                raise invalid(f"{where}: value & mask != value")
            return FieldMatch(value, mask=mask)
        if mt == _OPTIONAL:
            if kind != "optional":
                raise invalid(f"{where} is an optional match, got {kind}")
            value = decode_uint(mf.optional.value, info.bitwidth, where, self.strict)
            return FieldMatch(value, mask=(1 << info.bitwidth) - 1)
        raise P4RuntimeError(code_pb2.UNIMPLEMENTED, f"{where}: match kind {kind} is not supported by softswitch")

    def match_to_proto(self, table: TableInfo, match: dict[int, FieldMatch]) -> list[p4runtime_pb2.FieldMatch]:
        out = []
        for fid in sorted(match):
            fm = match[fid]
            info = table.fields[fid]
            pm = p4runtime_pb2.FieldMatch(field_id=fid)
            if info.match_type == _EXACT:
                pm.exact.value = encode_uint(fm.value)
            elif info.match_type == _LPM:
                pm.lpm.value = encode_uint(fm.value)
                pm.lpm.prefix_len = fm.prefix_len or 0
            elif info.match_type == _OPTIONAL:
                pm.optional.value = encode_uint(fm.value)
            else:
                pm.ternary.value = encode_uint(fm.value)
                pm.ternary.mask = encode_uint(fm.mask if fm.mask is not None else (1 << info.bitwidth) - 1)
            out.append(pm)
        return out

    # ---- actions ----------------------------------------------------------------------------------------
    def action(self, te: p4runtime_pb2.TableEntry, table: TableInfo) -> tuple[int, dict[int, int]]:
        """The action id and parameter values of an entry (validate_action + construct_action_data in PI)."""
        action_id, params, _ = self._action(te, table)
        return action_id, params

    def _action(self, te: p4runtime_pb2.TableEntry, table: TableInfo) -> tuple[int, dict[int, int], bool]:
        """action(), and whether the parameters came in canonical form (ascending ids, shortest byte strings)."""
        kind = te.action.WhichOneof("type")
        if kind != "action":
            raise invalid(f"{table.name}: only direct actions are supported (got {kind}); the table has no "
                          "action profile")
        a = te.action.action
        info = self.schema.action(a.action_id)
        scope = table.action_scopes.get(a.action_id)
        if scope is None:
            allowed = ", ".join(self.schema.actions[x].name for x in table.action_scopes if x in self.schema.actions)
            raise invalid(f"{table.name}: action {info.name} is not one of the table's actions ({allowed})")
        if te.is_default_action and scope == _TABLE_ONLY:
            raise P4RuntimeError(code_pb2.PERMISSION_DENIED,
                                 f"{table.name}: action {info.name} is @tableonly and cannot be the default action")
        if not te.is_default_action and scope == _DEFAULT_ONLY:
            raise P4RuntimeError(code_pb2.PERMISSION_DENIED,
                                 f"{table.name}: action {info.name} is @defaultonly and cannot be used in an entry")
        params: dict[int, int] = {}
        pinfos = info.params
        strict = self.strict
        canonical = True
        last = 0
        for p in a.params:
            pid = p.param_id
            pinfo = pinfos.get(pid)
            if pinfo is None:
                raise invalid(f"action {info.name}: unknown parameter id {pid}")
            if pid in params:
                raise invalid(f"action {info.name}: parameter {pinfo.name} given twice")
            data = p.value
            value = int.from_bytes(data, "big")
            if not data or value >> pinfo.bitwidth or (strict and len(data) > 1 and data[0] == 0):
                value = decode_uint(data, pinfo.bitwidth, f"action {info.name} parameter {pinfo.name}", strict)
            if pid < last or (len(data) > 1 and data[0] == 0):
                canonical = False
            last = pid
            params[pid] = value
        missing = [pi.name for pid, pi in pinfos.items() if pid not in params] if len(params) != len(pinfos) else None
        if missing:
            raise invalid(f"action {info.name}: missing parameter(s) {', '.join(missing)}")
        return a.action_id, params, canonical

    def action_to_proto(self, action_id: int, params: dict[int, int]) -> p4runtime_pb2.TableAction:
        ta = p4runtime_pb2.TableAction()
        ta.action.action_id = action_id
        for pid in sorted(params):
            ta.action.params.add(param_id=pid, value=encode_uint(params[pid]))
        return ta

    # ---- whole entries ----------------------------------------------------------------------------------
    def entry(self, te: p4runtime_pb2.TableEntry, table: TableInfo) -> TableEntry:
        """A full dataplane entry for INSERT / MODIFY of a non-default entry."""
        return self.entry_encoded(te, table)[0]

    def entry_encoded(self, te: p4runtime_pb2.TableEntry, table: TableInfo) -> tuple[TableEntry, bytes]:
        """entry(), and the entry as a read returns it (what encode_entry would make) when that is the request's
        own TableEntry re-serialized, else b"" (encode it when first read).

        A request in canonical form - fields and parameters by ascending id, shortest byte strings, no counter
        data - serializes (in C) to exactly the bytes a read returns, so the first whole-table read after a bulk
        insert need not encode 65k entries in Python. `te` loses its unknown fields.
        """
        if te.HasField("meter_config") or te.HasField("meter_counter_data"):
            raise invalid(f"{table.name}: the table has no direct meter")
        if te.idle_timeout_ns < 0:
            raise invalid(f"{table.name}: idle_timeout_ns must not be negative")
        if te.idle_timeout_ns and not table.supports_idle_timeout:
            raise invalid(f"{table.name}: the table does not support idle timeout (support_timeout = true in P4); "
                          "set idle_timeout_ns to 0")
        if te.HasField("counter_data") and not table.direct_counter_id:
            raise invalid(f"{table.name}: the table has no direct counter; leave counter_data unset")
        match, priority, canonical = self._match(te, table)
        if not te.HasField("action"):
            raise invalid(f"{table.name}: 'action' must be set for a non-default entry")
        action_id, params, canonical_action = self._action(te, table)
        has_counters = te.HasField("counter_data")
        e = TableEntry(table.id, match, action_id, params, priority=priority, idle_timeout_ns=te.idle_timeout_ns,
                       packets=te.counter_data.packet_count, bytes=te.counter_data.byte_count)
        if not (canonical and canonical_action) or has_counters or te.is_const:
            return e, b""
        te.DiscardUnknownFields()
        return e, te.SerializeToString()

    def encode_entry(self, table: TableInfo, e: TableEntry, controller_metadata: int = 0, metadata: bytes = b"",
                     idle_timeout_ns: int = 0, is_const: bool = False) -> bytes:
        """The serialized TableEntry that a read returns (without counter_data and time_since_last_hit), exactly
        the bytes entry_to_proto(...).SerializeToString() gives, built without a protobuf object per field: a
        whole-table read of 65k entries spent most of its time creating and dropping those objects."""
        parts = [_T1_VARINT + varint(table.id)]
        fields = table.fields
        match = e.match
        for fid in sorted(match):
            fm = match[fid]
            mt = fields[fid].match_type
            if mt == _EXACT:
                body = ld(_T2_BYTES, ld(_T1_BYTES, _u(fm.value)))
            elif mt == _LPM:
                inner = ld(_T1_BYTES, _u(fm.value)) + (_T2_VARINT + varint(fm.prefix_len) if fm.prefix_len else b"")
                body = ld(_T4_BYTES, inner)
            elif mt == _OPTIONAL:
                body = ld(_T7_BYTES, ld(_T1_BYTES, _u(fm.value)))
            else:
                mask = fm.mask if fm.mask is not None else (1 << fields[fid].bitwidth) - 1
                body = ld(_T3_BYTES, ld(_T1_BYTES, _u(fm.value)) + ld(_T2_BYTES, _u(mask)))
            parts.append(ld(_T2_BYTES, _T1_VARINT + varint(fid) + body))
        action = [_T1_VARINT + varint(e.action_id)] if e.action_id else []
        params = e.params
        for pid in sorted(params):
            action.append(ld(_T4_BYTES, _T2_VARINT + varint(pid) + ld(_T3_BYTES, _u(params[pid]))))
        parts.append(ld(_T3_BYTES, ld(_T1_BYTES, b"".join(action))))
        if e.priority:
            parts.append(_TE_PRIORITY + varint(e.priority))
        if controller_metadata:
            parts.append(_TE_CM + varint(controller_metadata))
        if idle_timeout_ns:
            parts.append(_TE_IDLE + varint(idle_timeout_ns))
        if metadata:
            parts.append(ld(_TE_METADATA, metadata))
        if is_const:
            parts.append(_TE_CONST)
        return b"".join(parts)

    def entry_to_proto(self, table: TableInfo, e: TableEntry) -> p4runtime_pb2.TableEntry:
        te = p4runtime_pb2.TableEntry(table_id=table.id, priority=e.priority)
        te.match.extend(self.match_to_proto(table, e.match))
        te.action.CopyFrom(self.action_to_proto(e.action_id, e.params))
        return te
