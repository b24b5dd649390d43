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
    MatchType,
    P4RuntimeError,
    Schema,
    TableInfo,
    decode_uint,
    encode_uint,
    invalid,
)

Scope = p4info_pb2.ActionRef.Scope

# The identity of an entry: table id, (field id, value, mask, prefix length) sorted by field id, priority.
MatchTuple = tuple[tuple[int, int, int | None, int | None], ...]
EntryKey = tuple[int, MatchTuple, int]


def match_tuple(match: dict[int, FieldMatch]) -> MatchTuple:
    return tuple(sorted((fid, fm.value, fm.mask, fm.prefix_len) for fid, fm in match.items()))


def entry_key(table_id: int, match: dict[int, FieldMatch], priority: int) -> EntryKey:
    return (table_id, match_tuple(match), priority)


@dataclass(slots=True)
class Codec:
    """Translation for one pipeline's P4Info. strict: refuse non-canonical byte strings (see decode_uint)."""

    schema: Schema
    strict: bool = True

    # ---- match keys -------------------------------------------------------------------------------------
    def match(self, te: p4runtime_pb2.TableEntry, table: TableInfo) -> tuple[dict[int, FieldMatch], int]:
        """The dataplane match and the priority of a non-default entry (construct_match_key in PI)."""
        if te.is_default_action:
            raise invalid("internal: match() called for a default entry")
        out: dict[int, FieldMatch] = {}
        for mf in te.match:
            info = table.fields.get(mf.field_id)
            if info is None:
                names = ", ".join(f"{f.name} ({f.id})" for f in table.fields.values())
                raise invalid(f"{table.name}: unknown match field id {mf.field_id}; its fields are {names}")
            if mf.field_id in out:
                raise invalid(f"{table.name}: match field {info.name} given twice")
            where = f"{table.name}: match field {info.name}"
            kind = mf.WhichOneof("field_match_type")
            mt = info.match_type
            if mt == MatchType.EXACT:
                if kind != "exact":
                    raise invalid(f"{where} is an exact match, got {kind}")
                out[mf.field_id] = FieldMatch(decode_uint(mf.exact.value, info.bitwidth, where, self.strict))
            elif mt == MatchType.LPM:
                if kind != "lpm":
                    raise invalid(f"{where} is an lpm match, got {kind}")
                value = decode_uint(mf.lpm.value, info.bitwidth, where, self.strict)
                plen = mf.lpm.prefix_len
                if plen <= 0 or plen > info.bitwidth:
                    raise invalid(f"{where}: prefix length {plen} not in 1..{info.bitwidth} (omit the field for a "
                                  "don't-care match)")
                if value & ((1 << (info.bitwidth - plen)) - 1):
                    raise invalid(f"{where}: value has bits set beyond the /{plen} prefix")
                out[mf.field_id] = FieldMatch(value, prefix_len=plen)
            elif mt == MatchType.TERNARY:
                if kind != "ternary":
                    raise invalid(f"{where} is a ternary match, got {kind}")
                value = decode_uint(mf.ternary.value, info.bitwidth, where, self.strict)
                mask = decode_uint(mf.ternary.mask, info.bitwidth, where + " mask", self.strict)
                if mask == 0:
                    raise invalid(f"{where}: zero mask; omit the field for a don't-care match")
                if value & ~mask:
                    raise invalid(f"{where}: value & mask != value")
                out[mf.field_id] = FieldMatch(value, mask=mask)
            elif mt == MatchType.OPTIONAL:
                if kind != "optional":
                    raise invalid(f"{where} is an optional match, got {kind}")
                value = decode_uint(mf.optional.value, info.bitwidth, where, self.strict)
                out[mf.field_id] = FieldMatch(value, mask=(1 << info.bitwidth) - 1)
            else:
                raise P4RuntimeError(code_pb2.UNIMPLEMENTED, f"{where}: match kind {kind} is not supported by softswitch")
        for info in table.fields.values():
            if info.id not in out and info.match_type == MatchType.EXACT:
                raise invalid(f"{table.name}: missing exact match field {info.name} ({info.id})")
        if table.needs_priority and te.priority <= 0:
            raise invalid(f"{table.name}: entries need a priority > 0 (the table has ternary/lpm-free wildcards)")
        if not table.needs_priority and te.priority != 0:
            raise invalid(f"{table.name}: non-zero priority {te.priority} for a table without ternary, range or "
                          "optional fields; leave priority 0")
        return out, te.priority

    def match_to_proto(self, table: TableInfo, match: dict[int, FieldMatch]) -> list[p4runtime_pb2.FieldMatch]:
        out = []
        for fid in sorted(match):
            fm = match[fid]
            info = table.fields[fid]
            pm = p4runtime_pb2.FieldMatch(field_id=fid)
            if info.match_type == MatchType.EXACT:
                pm.exact.value = encode_uint(fm.value)
            elif info.match_type == MatchType.LPM:
                pm.lpm.value = encode_uint(fm.value)
                pm.lpm.prefix_len = fm.prefix_len or 0
            elif info.match_type == MatchType.OPTIONAL:
                pm.optional.value = encode_uint(fm.value)
            else:
                pm.ternary.value = encode_uint(fm.value)
                pm.ternary.mask = encode_uint(fm.mask if fm.mask is not None else (1 << info.bitwidth) - 1)
            out.append(pm)
        return out

    # ---- actions ----------------------------------------------------------------------------------------
    def action(self, te: p4runtime_pb2.TableEntry, table: TableInfo) -> tuple[int, dict[int, int]]:
        """The action id and parameter values of an entry (validate_action + construct_action_data in PI)."""
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
        if te.is_default_action and scope == Scope.TABLE_ONLY:
            raise P4RuntimeError(code_pb2.PERMISSION_DENIED,
                                 f"{table.name}: action {info.name} is @tableonly and cannot be the default action")
        if not te.is_default_action and scope == Scope.DEFAULT_ONLY:
            raise P4RuntimeError(code_pb2.PERMISSION_DENIED,
                                 f"{table.name}: action {info.name} is @defaultonly and cannot be used in an entry")
        params: dict[int, int] = {}
        for p in a.params:
            pinfo = info.params.get(p.param_id)
            if pinfo is None:
                raise invalid(f"action {info.name}: unknown parameter id {p.param_id}")
            if p.param_id in params:
                raise invalid(f"action {info.name}: parameter {pinfo.name} given twice")
            params[p.param_id] = decode_uint(p.value, pinfo.bitwidth, f"action {info.name} parameter {pinfo.name}",
                                             self.strict)
        missing = [pi.name for pid, pi in info.params.items() if pid not in params]
        if missing:
            raise invalid(f"action {info.name}: missing parameter(s) {', '.join(missing)}")
        return a.action_id, params

    def action_to_proto(self, action_id: int, params: dict[int, int]) -> p4runtime_pb2.TableAction:
        ta = p4runtime_pb2.TableAction()
        ta.action.action_id = action_id
        for pid in sorted(params):
            ta.action.params.add(param_id=pid, value=encode_uint(params[pid]))
        return ta

    # ---- whole entries ----------------------------------------------------------------------------------
    def entry(self, te: p4runtime_pb2.TableEntry, table: TableInfo) -> TableEntry:
        """A full dataplane entry for INSERT / MODIFY of a non-default entry."""
        if te.HasField("meter_config") or te.HasField("meter_counter_data"):
            raise invalid(f"{table.name}: the table has no direct meter")
        if te.idle_timeout_ns < 0:
            raise invalid(f"{table.name}: idle_timeout_ns must not be negative")
        if te.idle_timeout_ns and not table.supports_idle_timeout:
            raise invalid(f"{table.name}: the table does not support idle timeout (support_timeout = true in P4); "
                          "set idle_timeout_ns to 0")
        if te.HasField("counter_data") and not table.direct_counter_id:
            raise invalid(f"{table.name}: the table has no direct counter; leave counter_data unset")
        match, priority = self.match(te, table)
        if not te.HasField("action"):
            raise invalid(f"{table.name}: 'action' must be set for a non-default entry")
        action_id, params = self.action(te, table)
        return TableEntry(table.id, match, action_id, params, priority=priority, idle_timeout_ns=te.idle_timeout_ns,
                          packets=te.counter_data.packet_count, bytes=te.counter_data.byte_count)

    def entry_to_proto(self, table: TableInfo, e: TableEntry) -> p4runtime_pb2.TableEntry:
        te = p4runtime_pb2.TableEntry(table_id=table.id, priority=e.priority)
        te.match.extend(self.match_to_proto(table, e.match))
        te.action.CopyFrom(self.action_to_proto(e.action_id, e.params))
        return te
