"""P4Info for a compiled program, as p4c's `control-plane/` derives it.

Ids follow p4c's P4RuntimeSymbolTable: per resource type, names sorted, id = type prefix << 24 | the low 24
bits of Jenkins' one-at-a-time hash of the fully qualified name, linear probing on the hash value when an id
is taken. Aliases are the shortest unique dot-suffix among all symbols. Comparing with p4c's output field by
field is tests/softswitch/test_p4info.py.
"""

from __future__ import annotations

from p4.config.v1 import p4info_pb2

from softswitch.frontend.model import ProgramModel

# p4c control-plane/p4RuntimeArchHandler.h: P4RuntimeSymbolType.
ACTION = 0x01
TABLE = 0x02
CONTROLLER_HEADER = 0x04
COUNTER = 0x12
DIRECT_COUNTER = 0x13


def jenkins_one_at_a_time(name: str) -> int:
    h = 0
    for b in name.encode():
        h = (h + b) & 0xFFFFFFFF
        h = (h + (h << 10)) & 0xFFFFFFFF
        h ^= h >> 6
    h = (h + (h << 3)) & 0xFFFFFFFF
    h ^= h >> 11
    h = (h + (h << 15)) & 0xFFFFFFFF
    return h


def assign_ids(symbols: dict[int, list[str]]) -> dict[tuple[int, str], int]:
    """Ids of all symbols, by (type, name); types in increasing order as p4c's std::map iterates them."""
    assigned: set[int] = set()
    out: dict[tuple[int, str], int] = {}
    for rtype in sorted(symbols):
        for name in sorted(set(symbols[rtype]), key=lambda n: n.encode()):
            value = jenkins_one_at_a_time(name)
            while True:
                pid = (rtype << 24) | (value & 0xFFFFFF)
                if pid not in assigned:
                    break
                value = (value + 1) & 0xFFFFFFFF
            assigned.add(pid)
            out[(rtype, name)] = pid
    return out


def aliases(names: list[str]) -> dict[str, str]:
    """Shortest unique suffix of dot-separated components (p4c's P4SymbolSuffixSet)."""
    counts: dict[tuple[str, ...], int] = {}
    uniq = list(dict.fromkeys(names))
    for n in uniq:
        parts = tuple(n.split("."))
        for i in range(1, len(parts) + 1):
            counts[parts[-i:]] = counts.get(parts[-i:], 0) + 1
    out: dict[str, str] = {}
    for n in uniq:
        parts = tuple(n.split("."))
        for i in range(1, len(parts) + 1):
            if counts[parts[-i:]] < 2 or i == len(parts):
                out[n] = ".".join(parts[-i:])
                break
    return out


_MATCH = {"exact": p4info_pb2.MatchField.EXACT, "ternary": p4info_pb2.MatchField.TERNARY,
          "lpm": p4info_pb2.MatchField.LPM}
_UNIT = {"PACKETS": p4info_pb2.CounterSpec.PACKETS, "BYTES": p4info_pb2.CounterSpec.BYTES,
         "BOTH": p4info_pb2.CounterSpec.BOTH}
_SCOPE = {"TABLE_AND_DEFAULT": p4info_pb2.ActionRef.TABLE_AND_DEFAULT, "TABLE_ONLY": p4info_pb2.ActionRef.TABLE_ONLY,
          "DEFAULT_ONLY": p4info_pb2.ActionRef.DEFAULT_ONLY}


def build_p4info(m: ProgramModel) -> p4info_pb2.P4Info:
    """Build the P4Info and write the ids back into the model (the dataplane keys everything by them)."""
    symbols: dict[int, list[str]] = {
        ACTION: [a.name for a in m.actions], TABLE: [t.name for t in m.tables],
        CONTROLLER_HEADER: [h.type_name for h in m.controller_headers], COUNTER: [c.name for c in m.counters],
        DIRECT_COUNTER: [c.name for c in m.direct_counters],
    }
    ids = assign_ids(symbols)
    alias = aliases([n for names in symbols.values() for n in names])
    for a in m.actions:
        a.id = ids[(ACTION, a.name)]
    for t in m.tables:
        t.id = ids[(TABLE, t.name)]
    for c in m.counters:
        c.id = ids[(COUNTER, c.name)]
    for dc in m.direct_counters:
        dc.id = ids[(DIRECT_COUNTER, dc.name)]
    for h in m.controller_headers:
        h.id = ids[(CONTROLLER_HEADER, h.type_name)]

    info = p4info_pb2.P4Info()
    info.pkg_info.arch = "v1model"

    def preamble(p: p4info_pb2.Preamble, pid: int, name: str, annotations: list[str]) -> None:
        p.id = pid
        p.name = name
        p.alias = alias.get(name, name)  # controller headers: p4c uses the annotation's name as alias
        p.annotations.extend(annotations)

    for t in m.tables:
        pt = info.tables.add()
        preamble(pt.preamble, t.id, t.name, t.annotations)
        for i, k in enumerate(t.keys, start=1):
            pt.match_fields.add(id=i, name=k.name, bitwidth=k.width, match_type=_MATCH[k.match_kind])
        for ar in t.actions:
            r = pt.action_refs.add(id=ar.action.id)
            r.annotations.extend(ar.annotations)
            r.scope = _SCOPE[ar.scope]
        if t.const_default:
            pt.const_default_action_id = t.default_action.id
        if t.direct_counter is not None:
            pt.direct_resource_ids.append(t.direct_counter.id)
        pt.size = t.size
        if t.support_timeout:
            pt.idle_timeout_behavior = p4info_pb2.Table.NOTIFY_CONTROL
        if t.entries_const:
            pt.is_const_table = True
        if t.const_entries:
            pt.has_initial_entries = True
    for a in m.actions:
        pa = info.actions.add()
        preamble(pa.preamble, a.id, a.name, a.annotations)
        for i, (n, w) in enumerate(a.params, start=1):
            pa.params.add(id=i, name=n, bitwidth=w)
    for c in m.counters:
        pc = info.counters.add()
        preamble(pc.preamble, c.id, c.name, c.annotations)
        pc.spec.unit = _UNIT[c.unit]
        pc.size = c.size
    for dc in m.direct_counters:
        pd = info.direct_counters.add()
        preamble(pd.preamble, dc.id, dc.name, dc.annotations)
        pd.spec.unit = _UNIT[dc.unit]
        pd.direct_table_id = next(t.id for t in m.tables if t.name == dc.table)
    for h in m.controller_headers:
        ph = info.controller_packet_metadata.add()
        preamble(ph.preamble, h.id, h.name, h.annotations)
        for i, (n, w) in enumerate(h.fields, start=1):
            ph.metadata.add(id=i, name=n, bitwidth=w)
    for e in m.ser_enums:
        se = info.type_info.serializable_enums[e.name]
        se.underlying_type.bitwidth = e.width
        for n, v in e.members:
            se.members.add(name=n, value=v.to_bytes((e.width + 7) // 8, "big"))
    return info
