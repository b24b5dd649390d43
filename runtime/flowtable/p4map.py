"""A flow direction as a P4 table entry, by P4Info names; and back, for reconciliation.

The kernel turns each direction into a ``flow_rule`` (``nf_flow_rule_match`` for the key,
``nf_flow_rule_route_ipv4`` for the ``flow_action`` list) and hands it to the driver. Here the "driver" is
the generated P4 program: table ``flow_v4``/``flow_v6`` keyed on ``in_port, src_addr, dst_addr, proto,
src_port, dst_port``, action ``offload(port, smac, dmac)`` or ``offload_nat(port, smac, dmac, saddr, daddr,
sport, dport)``; a direction whose list holds policy statements uses ``offload_stmt`` / ``offload_nat_stmt``,
the same plus ``set_dscp, dscp`` (``[features] dscp``), ``counter_idx`` (``[features] named_counters``: the
index of the named counter in the indexed counter ``stmt_counter``, 0 for none) and ``set_vid, vid``
(``[features] vlan_retag``: the VLAN id a tagged egress port's tag gets). The pipeline always
rewrites both MACs and decrements the TTL; VLAN tags are popped and pushed per port by the pipeline itself. An action list the program cannot express raises
:class:`Unsupported` naming the statement, and the flow stays on the software path (as a kernel driver
returning -EOPNOTSUPP) -- never offloaded without it.

:class:`FlowUpdate` is neutral: names, not ids, and plain integers; the adapter to the P4Runtime client
encodes them with the P4Info (canonical bytes, ids).
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..actions import Rewrite, dscp_name
from .model import FlowTuple

TABLE_V4 = "flow_v4"
TABLE_V6 = "flow_v6"
ACTION_OFFLOAD = "offload"
ACTION_OFFLOAD_NAT = "offload_nat"
ACTION_OFFLOAD_STMT = "offload_stmt"
ACTION_OFFLOAD_NAT_STMT = "offload_nat_stmt"
OFFLOAD_ACTIONS = (ACTION_OFFLOAD, ACTION_OFFLOAD_NAT, ACTION_OFFLOAD_STMT, ACTION_OFFLOAD_NAT_STMT)
STMT_COUNTER = "stmt_counter"
KEY_FIELDS = ("in_port", "src_addr", "dst_addr", "proto", "src_port", "dst_port")


class Op(enum.Enum):
    INSERT = "INSERT"
    MODIFY = "MODIFY"
    DELETE = "DELETE"


class Code(enum.IntEnum):
    """Per-update status codes (google.rpc / gRPC numbering)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


@dataclass(frozen=True, slots=True)
class UpdateResult:
    code: Code
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code is Code.OK


OK = UpdateResult(Code.OK)


#: An entry's identity as the control plane names it: table and match fields sorted by name (values as
#: written). :meth:`FlowUpdate.key` and :meth:`SwitchEntry.key` give it, so an update and an entry read back
#: compare. (:data:`~.model.EntryKey` is another: the bulk stats read's, values only.)
UpdateKey = tuple[str, tuple[tuple[str, int | bytes], ...]]


@dataclass(frozen=True, slots=True)
class FlowUpdate:
    """One P4Runtime update of a flow-table entry, by P4Info names. ``action``/``params`` are empty for a
    DELETE; ``idle_timeout_ns`` is 0 where the table has no idle timeout."""

    op: Op
    table: str
    match: dict[str, int | bytes]
    action: str = ""
    params: dict[str, int] = field(default_factory=dict)
    idle_timeout_ns: int = 0

    def key(self) -> UpdateKey:
        """Hashable identity of the entry (table and match)."""
        return self.table, tuple(sorted(self.match.items()))

    def with_op(self, op: Op) -> FlowUpdate:
        if op is Op.DELETE:
            return FlowUpdate(op, self.table, self.match)
        return FlowUpdate(op, self.table, self.match, self.action, self.params, self.idle_timeout_ns)


@dataclass(frozen=True, slots=True)
class SwitchEntry:
    """A flow-table entry as read from the switch (names, integers)."""

    table: str
    match: dict[str, int | bytes]
    action: str
    params: dict[str, int]
    idle_timeout_ns: int = 0

    def key(self) -> UpdateKey:
        return self.table, tuple(sorted(self.match.items()))


class Unsupported(ValueError):
    """The action list cannot be expressed by the P4 program; the flow stays in software."""


@dataclass(frozen=True, slots=True)
class PipelineCaps:
    """What the generated program offers, read from its P4Info (:func:`caps_from_p4info`).

    ``tables`` maps the address family (4, 6) to its flow table; ``nat_tables`` are those with
    ``offload_nat``; ``idle_timeout`` those with ``support_timeout``; ``port_vlans`` maps VLAN ports to their
    VLAN id (from the profile: the pipeline pops the tag on ingress and pushes it on egress there).
    ``stmt_tables`` have ``offload_stmt`` (and ``offload_nat_stmt`` where NAT is there too); ``dscp`` says
    whether those carry a DSCP, ``counter_slots`` how many named counters ``stmt_counter`` holds, and
    ``counter_index`` which index the control plane gave each counter name (from the policy, in order).
    """

    tables: Mapping[int, str] = field(default_factory=lambda: {4: TABLE_V4, 6: TABLE_V6})
    nat_tables: frozenset[str] = frozenset({TABLE_V4})
    idle_timeout: frozenset[str] = frozenset({TABLE_V4, TABLE_V6})
    sizes: Mapping[str, int] = field(default_factory=dict)
    port_vlans: Mapping[int, int] = field(default_factory=dict)
    stmt_tables: frozenset[str] = frozenset({TABLE_V4, TABLE_V6})
    dscp: bool = True
    counter_slots: int = 16
    counter_index: Mapping[str, int] = field(default_factory=dict)
    vlan_retag: bool = False

    def statements(self) -> tuple[str, ...]:
        """The statements the switch can apply (for ``offloadgen stats``)."""
        if not self.stmt_tables:
            return ()
        return tuple(n for n, ok in (("dscp", self.dscp), ("counter", self.counter_slots > 0),
                                     ("vlan", self.vlan_retag)) if ok)

    def with_counter_names(self, names: Sequence[str]) -> PipelineCaps:
        """Indexes 1.. for the policy's counter names, as many as the switch holds (the rest stay in software)."""
        return dataclasses.replace(self, counter_index={n: i for i, n in enumerate(names[:self.counter_slots], 1)})


def caps_from_p4info(p4info: Any, port_vlans: Mapping[int, int] | None = None) -> PipelineCaps:
    """Read the flow tables' capabilities from a ``p4.config.v1.P4Info`` message."""
    actions = {a.preamble.id: a.preamble.name.rsplit(".", 1)[-1] for a in p4info.actions}
    tables: dict[int, str] = {}
    nat: set[str] = set()
    idle: set[str] = set()
    sizes: dict[str, int] = {}
    stmt: set[str] = set()
    params = {a.preamble.name.rsplit(".", 1)[-1]: {x.name for x in a.params} for a in p4info.actions}
    stmt_params = params.get(ACTION_OFFLOAD_STMT, set())
    slots = next((c.size - 1 for c in p4info.counters if c.preamble.name.rsplit(".", 1)[-1] == STMT_COUNTER), 0)
    for t in p4info.tables:
        name = t.preamble.name.rsplit(".", 1)[-1]
        if name not in (TABLE_V4, TABLE_V6):
            continue
        tables[4 if name == TABLE_V4 else 6] = name
        refs = {actions.get(ref.id) for ref in t.action_refs}
        if ACTION_OFFLOAD_NAT in refs:
            nat.add(name)
        if ACTION_OFFLOAD_STMT in refs and (name not in nat or ACTION_OFFLOAD_NAT_STMT in refs):
            stmt.add(name)
        if t.idle_timeout_behavior != 0:  # NO_TIMEOUT == 0
            idle.add(name)
        sizes[name] = t.size
    return PipelineCaps(tables=tables, nat_tables=frozenset(nat), idle_timeout=frozenset(idle), sizes=sizes,
                        port_vlans=dict(port_vlans or {}), stmt_tables=frozenset(stmt), dscp="dscp" in stmt_params,
                        counter_slots=slots if "counter_idx" in stmt_params else 0, vlan_retag="vid" in stmt_params)


def _addr(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _mac_int(b: bytes) -> int:
    return int.from_bytes(b, "big")


def flow_table(t: FlowTuple, caps: PipelineCaps) -> str:
    """The flow table that holds ``t``'s family."""
    table = caps.tables.get(t.family)
    if table is None:
        raise Unsupported(f"the program has no IPv{t.family} flow table")
    return table


def match_items(t: FlowTuple) -> tuple[tuple[str, int], ...]:
    """A flow table's exact match for ``t``, sorted by field name: the one place the key's fields are named,
    in the order :func:`~.offload.entry_key` sorts them, so the stats pass can key a flow without a dict."""
    return (("dst_addr", _addr(t.dst)), ("dst_port", t.dport), ("in_port", t.in_port), ("proto", t.proto),
            ("src_addr", _addr(t.src)), ("src_port", t.sport))


def match_of(t: FlowTuple, caps: PipelineCaps) -> tuple[str, dict[str, int | bytes]]:
    return flow_table(t, caps), dict(match_items(t))


def entry_for(t: FlowTuple, rw: Rewrite, caps: PipelineCaps, timeout_ns: int = 0, op: Op = Op.INSERT) -> FlowUpdate:
    """The table entry for one direction: ``t`` is how its packets arrive, ``rw`` its flattened action list.

    Raises :class:`Unsupported` when the pipeline cannot do what the list says (no MACs, no TTL decrement,
    NAT on a table without ``offload_nat``, a VLAN tag other than the port's).
    """
    table, match = match_of(t, caps)
    if rw.smac is None or rw.dmac is None:
        raise Unsupported("the pipeline always rewrites both MACs; the action list leaves one unset")
    if not rw.dec_ttl:
        raise Unsupported("the pipeline always decrements the TTL; the action list does not")
    in_vlan = caps.port_vlans.get(t.in_port)
    if rw.vlan_pop != (in_vlan is not None):
        raise Unsupported(f"VLAN pop on ingress port {t.in_port} is per port in the pipeline "
                          f"({'tagged' if in_vlan is not None else 'untagged'}); the action list disagrees")
    out_vlan = caps.port_vlans.get(rw.out_port)
    if rw.vlan_push != out_vlan:
        raise Unsupported(f"VLAN push on egress port {rw.out_port} is per port in the pipeline "
                          f"(vid {out_vlan}); the action list says {rw.vlan_push}")
    # a retag matters only where the egress port is tagged (its tag gets the statement's VLAN id)
    retag = rw.vlan_retag if rw.vlan_retag is not None and out_vlan is not None else None
    stmt = rw.dscp is not None or bool(rw.counters) or retag is not None
    if retag is not None and not (caps.vlan_retag and table in caps.stmt_tables):
        raise Unsupported(f"vlan={retag}: the switch cannot retag on egress port {rw.out_port} "
                          f"(build with [features] vlan_retag = true)")
    if rw.dscp is not None and not (caps.dscp and table in caps.stmt_tables):
        raise Unsupported(f"dscp={dscp_name(rw.dscp)}: the switch cannot set DSCP in {table} "
                          f"(build with [features] dscp = true)")
    if len(rw.counters) > 1:
        raise Unsupported(f"counter={','.join(rw.counters)}: the switch counts one named counter per entry")
    if rw.counters and not (caps.counter_slots and table in caps.stmt_tables):
        raise Unsupported(f"counter={rw.counters[0]}: the switch has no named counters "
                          f"(build with [features] named_counters = N)")
    if rw.counters and rw.counters[0] not in caps.counter_index:
        raise Unsupported(f"counter={rw.counters[0]}: the switch holds {caps.counter_slots} named counters and the "
                          f"policy names more; raise [features] named_counters")
    params = {"port": rw.out_port, "smac": _mac_int(rw.smac), "dmac": _mac_int(rw.dmac)}
    action = ACTION_OFFLOAD
    if rw.nat:
        if table not in caps.nat_tables:
            raise Unsupported(f"NAT is not available in {table} (no offload_nat action)")
        action = ACTION_OFFLOAD_NAT
        params.update(
            saddr=_addr(rw.saddr if rw.saddr is not None else t.src),
            daddr=_addr(rw.daddr if rw.daddr is not None else t.dst),
            sport=rw.sport if rw.sport is not None else t.sport,
            dport=rw.dport if rw.dport is not None else t.dport)
    if stmt:
        action = ACTION_OFFLOAD_NAT_STMT if action == ACTION_OFFLOAD_NAT else ACTION_OFFLOAD_STMT
        if caps.dscp:
            params.update(set_dscp=int(rw.dscp is not None), dscp=rw.dscp or 0)
        if caps.counter_slots:
            params["counter_idx"] = caps.counter_index[rw.counters[0]] if rw.counters else 0
        if caps.vlan_retag:
            params.update(set_vid=int(retag is not None), vid=retag or 0)
    idle = timeout_ns if table in caps.idle_timeout else 0
    return FlowUpdate(op, table, match, action, params, idle)


def delete_for(t: FlowTuple, caps: PipelineCaps) -> FlowUpdate:
    table, match = match_of(t, caps)
    return FlowUpdate(Op.DELETE, table, match)


@dataclass(frozen=True, slots=True)
class DecodedEntry:
    """A switch entry read back as a flow direction: arriving tuple, egress, MACs, and what it leaves as."""

    tuple: FlowTuple
    out_port: int
    smac: bytes
    dmac: bytes
    leaves_as: builtins.tuple[bytes, bytes, int, int]  # (src, dst, sport, dport) after NAT
    dscp: int | None = None
    counter_idx: int = 0
    vlan_retag: int | None = None


def tuple_of(table: str, match: Mapping[str, Any], caps: PipelineCaps) -> FlowTuple | None:
    """The inverse of :func:`match_of`: the flow tuple a flow-table key stands for (``None`` for another
    table or a key we never write). Also for idle notices, which carry the key but maybe no action."""
    fam = next((f for f, name in caps.tables.items() if name == table), None)
    if fam is None:
        return None
    width = 4 if fam == 4 else 16
    try:
        m = {k: int.from_bytes(v, "big") if isinstance(v, bytes) else int(v) for k, v in match.items()}
        return FlowTuple(m["in_port"], m["src_addr"].to_bytes(width, "big"), m["dst_addr"].to_bytes(width, "big"),
                         m["proto"], m["src_port"], m["dst_port"])
    except (KeyError, OverflowError, ValueError, TypeError):
        return None


def decode_entry(entry: SwitchEntry, caps: PipelineCaps) -> DecodedEntry | None:
    """The inverse of :func:`entry_for`; ``None`` for an entry of another table or a shape we never write."""
    t = tuple_of(entry.table, entry.match, caps)
    if t is None or entry.action not in OFFLOAD_ACTIONS:
        return None
    width = 4 if t.family == 4 else 16
    try:
        p = entry.params
        smac, dmac = p["smac"].to_bytes(6, "big"), p["dmac"].to_bytes(6, "big")
        if entry.action in (ACTION_OFFLOAD_NAT, ACTION_OFFLOAD_NAT_STMT):
            leaves = (p["saddr"].to_bytes(width, "big"), p["daddr"].to_bytes(width, "big"), p["sport"], p["dport"])
        else:
            leaves = (t.src, t.dst, t.sport, t.dport)
        dscp = p["dscp"] if p.get("set_dscp") else None
        return DecodedEntry(t, p["port"], smac, dmac, leaves, dscp, p.get("counter_idx", 0),
                            p["vid"] if p.get("set_vid") else None)
    except (KeyError, OverflowError, ValueError, TypeError):
        return None
