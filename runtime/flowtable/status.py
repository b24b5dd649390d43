"""Typed snapshots of the flowtable for ``offloadgen flows`` / ``offloadgen stats``, and their text form.

``flows`` prints connections the way ``conntrack -L`` does (protocol, number, seconds left, state, both
tuples with packets/bytes, then ``[OFFLOAD]`` or ``[HW_OFFLOAD]``), with the ports and each direction's
action list appended. ``stats`` prints ``/proc/net/stats/nf_flowtable``'s ``wq_add wq_del wq_stats`` plus
the flowtable's own counters and the flow tables' occupancy. Records are plain dataclasses with
``to_dict``/``from_dict`` so the status endpoint can carry them as JSON.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..actions import format_actions, statements_of
from .core import Flow, FlowTable
from .model import NS, PROTO_NAMES, FlowFlag, flag_names

F = FlowFlag


@dataclass(frozen=True, slots=True)
class DirectionRecord:
    in_port: int
    out_port: int
    src: str
    dst: str
    sport: int
    dport: int
    packets: int
    bytes: int
    actions: str
    # the policy's statements and where each runs now: "dscp=cs3@switch,counter=web@switch"
    statements: str = ""


@dataclass(frozen=True, slots=True)
class FlowRecord:
    id: int
    proto: str
    protonum: int
    state: str
    tag: str  # "[OFFLOAD]", "[HW_OFFLOAD]" or "" (in teardown)
    timeout_s: int
    flags: tuple[str, ...]
    orig: DirectionRecord
    reply: DirectionRecord
    last_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FlowRecord:
        kw = dict(d)
        kw["flags"] = tuple(kw["flags"])
        kw["orig"] = DirectionRecord(**kw["orig"])
        kw["reply"] = DirectionRecord(**kw["reply"])
        return cls(**kw)


@dataclass(frozen=True, slots=True)
class StatsRecord:
    flows: int
    offloaded: int  # in the flowtable, software path only
    hw_offloaded: int
    closing: int
    teardown: int
    wq_add: int
    wq_del: int
    wq_stats: int
    hw_enabled: bool
    counters: dict[str, Any] = field(default_factory=dict)
    occupancy: dict[str, tuple[int, int]] = field(default_factory=dict)  # table -> (entries, size)
    orphans: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StatsRecord:
        """The record from a ``stats`` answer; what else the answer carries (the offloader adds its own
        keys beside the record's) is left out, so a key added to the answer never breaks the reader."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["occupancy"] = {k: (int(v[0]), int(v[1])) for k, v in kw.get("occupancy", {}).items()}
        return cls(**kw)


def _direction(flow: Flow, d: int) -> DirectionRecord:
    """``where``: the switch applies the statements once it holds both entries; before that (and on the
    closing path) the software fast path or the slow path applies them."""
    fd = flow.dirs[d]
    where = "switch" if flow.flags & F.HW_OFFLOADED else "software"
    t = fd.tuple
    hw_p = max(flow.hw_packets[d], 0)
    hw_b = max(flow.hw_bytes[d], 0)
    return DirectionRecord(in_port=t.in_port, out_port=fd.out_port, src=str(ipaddress.ip_address(t.src)),
                           dst=str(ipaddress.ip_address(t.dst)), sport=t.sport, dport=t.dport,
                           packets=flow.sw_packets[d] + hw_p, bytes=flow.sw_bytes[d] + hw_b,
                           actions=format_actions(fd.actions),
                           statements=",".join(f"{st}@{where}" for st in statements_of(fd.actions)))


def flow_record(flow: Flow, now: int) -> FlowRecord:
    if flow.flags & F.TEARDOWN:
        tag = ""
    elif flow.flags & F.HW_OFFLOADED:
        tag = "[HW_OFFLOAD]"
    else:
        tag = "[OFFLOAD]"
    flags = flag_names(flow.flags)
    return FlowRecord(id=flow.id, proto=PROTO_NAMES.get(flow.proto, str(flow.proto)), protonum=flow.proto,
                      state=flow.state, tag=tag, timeout_s=max(0, (flow.timeout - now) // NS), flags=flags,
                      orig=_direction(flow, 0), reply=_direction(flow, 1), last_error=flow.last_error)


def snapshot_flows(ft: FlowTable) -> list[FlowRecord]:
    with ft.lock:
        now = ft.clock()
        return [flow_record(f, now) for f in sorted(ft.flows(), key=lambda f: f.id)]


def snapshot_stats(ft: FlowTable, *, queue_depths: tuple[int, int, int] = (0, 0, 0),
                   installed: Mapping[str, int] | None = None, sizes: Mapping[str, int] | None = None,
                   orphans: int = 0) -> StatsRecord:
    """Counters now. ``queue_depths``/``installed``/``orphans`` come from the offload engine
    (``depths()``, ``installed_entries()``, ``orphans``), ``sizes`` from the pipeline's P4Info."""
    with ft.lock:
        flows = ft.flows()
        counters = dataclasses.asdict(ft.counters)
    states = [f.state for f in flows]
    occ = {t: (int((installed or {}).get(t, 0)), int(size)) for t, size in (sizes or {}).items()}
    for t, n in (installed or {}).items():
        occ.setdefault(t, (n, 0))
    return StatsRecord(flows=len(flows), offloaded=states.count("offloaded"),
                       hw_offloaded=states.count("hw_offloaded"), closing=states.count("closing"),
                       teardown=states.count("teardown") + states.count("dying"), wq_add=queue_depths[0],
                       wq_del=queue_depths[1], wq_stats=queue_depths[2], hw_enabled=ft.hw_enabled,
                       counters=counters, occupancy=occ, orphans=orphans)


def _tuple_text(r: DirectionRecord) -> str:
    return f"src={r.src} dst={r.dst} sport={r.sport} dport={r.dport} packets={r.packets} bytes={r.bytes}"


_CT_STATE = {"offloaded": "ESTABLISHED", "hw_offloaded": "ESTABLISHED", "closing": "CLOSE", "teardown": "CLOSE",
             "dying": "CLOSE"}


def format_flow(r: FlowRecord, *, actions: bool = True) -> str:
    """One ``conntrack -L``-style line."""
    parts = [f"{r.proto:<8} {r.protonum} {r.timeout_s}"]
    if r.proto == "tcp":
        parts.append(_CT_STATE.get(r.state, r.state.upper()))
    parts += [_tuple_text(r.orig), _tuple_text(r.reply)]
    if r.tag:
        parts.append(r.tag)
    parts.append(f"state={r.state} ports={r.orig.in_port}->{r.orig.out_port}")
    if actions:
        parts.append(f"orig_actions={r.orig.actions} reply_actions={r.reply.actions}")
    if r.orig.statements or r.reply.statements:
        parts.append(f"orig_statements={r.orig.statements or '-'} reply_statements={r.reply.statements or '-'}")
    if r.last_error:
        parts.append(f'last_error="{r.last_error}"')
    return " ".join(parts)


def format_flows(records: list[FlowRecord], *, actions: bool = True) -> str:
    lines = [format_flow(r, actions=actions) for r in records]
    lines.append(f"offloadgen: {len(records)} flow entries have been shown.")
    return "\n".join(lines)


def format_stats(s: StatsRecord) -> str:
    """``/proc/net/stats/nf_flowtable`` first, then the rest, one ``name value`` per line."""
    out = ["wq_add   wq_del   wq_stats", f"{s.wq_add:8d} {s.wq_del:8d} {s.wq_stats:8d}", ""]
    out.append(f"hardware offload: {'on' if s.hw_enabled else 'off (software flowtable only)'}")
    out.append(f"flows {s.flows}  offloaded {s.offloaded}  hw_offloaded {s.hw_offloaded}  "
               f"closing {s.closing}  teardown {s.teardown}")
    for name, value in s.counters.items():
        if isinstance(value, dict):
            for sub, n in sorted(value.items()):
                out.append(f"{name}.{sub} {n}")
        else:
            out.append(f"{name} {value}")
    for table, (used, size) in sorted(s.occupancy.items()):
        pct = f" ({100 * used / size:.1f} %)" if size else ""
        out.append(f"table {table} {used}/{size or '?'}{pct}")
    if s.orphans:
        out.append(f"orphan entries awaiting delete {s.orphans}")
    return "\n".join(out)
