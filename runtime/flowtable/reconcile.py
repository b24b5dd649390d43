"""Reconciliation: what to do with the entries a switch holds, given the flowtable.

On controller start (flowtable empty or rebuilt from conntrack), on a switch restart (tables empty) or a
reconnection (tables as they were, maybe with writes whose outcome was never seen), the controller reads
every flow-table entry and calls :func:`plan_reconcile`. The plan it returns, once applied, leaves the
invariant DESIGN.md asks for: no entry on the switch that the controller does not know, and no
``[HW_OFFLOAD]`` flow whose entries the switch lacks.

- A known flow meant for hardware whose two entries are there and say what we would write: **adopt**.
- A known flow meant for hardware missing an entry, or with an entry that says something else: delete the
  wrong entry and **reinstall** the flow (the add path turns ALREADY_EXISTS into MODIFY).
- Entries of a known flow not meant for hardware (closing, teardown, unsupported, software-only mode):
  **delete**.
- Unknown entries that pair up into a consistent connection (each one's NAT leads to the other's key, the
  first's egress port is the second's ingress port): a **rebuild** candidate for mid-stream pick-up if the
  controller's ``can_rebuild`` says it can recreate the connection (route and policy still agree), else
  deleted. Anything else unknown: **delete**.

The function is pure: it reads flows, changes nothing. :func:`apply_plan` carries a plan out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .core import Flow
from .model import FlowFlag
from .p4map import (
    DecodedEntry,
    FlowUpdate,
    Op,
    PipelineCaps,
    SwitchEntry,
    Unsupported,
    UpdateKey,
    decode_entry,
    entry_for,
    match_of,
)

F = FlowFlag


@dataclass(frozen=True, slots=True)
class EntryPair:
    """Two unknown entries that look like the two directions of one connection."""

    a: SwitchEntry
    b: SwitchEntry
    a_decoded: DecodedEntry
    b_decoded: DecodedEntry


@dataclass(slots=True)
class ReconcilePlan:
    adopt: list[Flow] = field(default_factory=list)
    reinstall: list[Flow] = field(default_factory=list)
    delete: list[FlowUpdate] = field(default_factory=list)
    rebuild: list[EntryPair] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.reinstall or self.delete or self.rebuild)


def _wanted_in_hw(flow: Flow) -> bool:
    return bool(flow.flags & F.HW) and not flow.flags & (F.TEARDOWN | F.CLOSING | F.HW_UNSUPPORTED)


def plan_reconcile(entries: Sequence[SwitchEntry], flows: Iterable[Flow], caps: PipelineCaps, *,
                   can_rebuild: Callable[[EntryPair], bool] | None = None) -> ReconcilePlan:
    """Decide adopt / reinstall / delete / rebuild for every switch entry and every flow (module docstring)."""
    flow_tables = set(caps.tables.values())
    by_key: dict[UpdateKey, SwitchEntry] = {}
    for e in entries:
        if e.table in flow_tables:
            by_key[e.key()] = e
    plan = ReconcilePlan()

    for flow in flows:
        keys = []
        expected: list[FlowUpdate | None] = []
        for d in flow.dirs:
            table, match = match_of(d.tuple, caps)
            upd = FlowUpdate(Op.DELETE, table, match)
            keys.append(upd.key())
            try:
                expected.append(entry_for(d.tuple, d.rewrite, caps, flow.timeout_ns))
            except Unsupported:
                expected.append(None)
        present = [by_key.pop(k, None) for k in keys]
        if _wanted_in_hw(flow) and all(x is not None for x in expected):
            correct = [p is not None and x is not None and p.action == x.action and p.params == x.params
                       for p, x in zip(present, expected, strict=True)]
            if all(correct):
                plan.adopt.append(flow)
                continue
            for p, ok in zip(present, correct, strict=True):
                if p is not None and not ok:
                    plan.delete.append(FlowUpdate(Op.DELETE, p.table, p.match))
            plan.reinstall.append(flow)
        else:
            for p in present:
                if p is not None:
                    plan.delete.append(FlowUpdate(Op.DELETE, p.table, p.match))

    # What is left is unknown to the controller: pair it up or delete it.
    decoded = {k: decode_entry(e, caps) for k, e in by_key.items()}
    done: set[UpdateKey] = set()
    for k, e in by_key.items():
        if k in done:
            continue
        da = decoded[k]
        pair: EntryPair | None = None
        if da is not None:
            src, dst, sport, dport = da.leaves_as
            rev = FlowUpdate(Op.DELETE, e.table, {"in_port": da.out_port, "src_addr": int.from_bytes(dst, "big"),
                                                   "dst_addr": int.from_bytes(src, "big"), "proto": da.tuple.proto,
                                                   "src_port": dport, "dst_port": sport}).key()
            db = decoded.get(rev)
            if rev != k and rev not in done and db is not None:
                s2, d2, sp2, dp2 = db.leaves_as
                t = da.tuple
                if (db.out_port, d2, s2, dp2, sp2) == (t.in_port, t.src, t.dst, t.sport, t.dport):
                    pair = EntryPair(e, by_key[rev], da, db)
        if pair is not None and can_rebuild is not None and can_rebuild(pair):
            plan.rebuild.append(pair)
            done.update((k, pair.b.key()))
            continue
        done.add(k)
        plan.delete.append(FlowUpdate(Op.DELETE, e.table, e.match))
    return plan
