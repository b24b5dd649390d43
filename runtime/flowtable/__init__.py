"""The flowtable (issue 8): offload policy, flows and their GC, the software fast path, hardware offload
work queues, reconciliation decisions and status snapshots, modelled on Linux nf_flow_table.

The controller plugs in through narrow protocols: :class:`ConnRef` (its conntrack entry),
:class:`EntryWriter` and :class:`StatsReader` (its P4Runtime client).
"""

from ..actions import ActionList, FlowAction
from .core import ConnRef, Flow, FlowDirection, FlowTable, HwStats, IdleVerdict, OfferResult
from .fastpath import FastPath, Forwarded
from .model import Clock, Dir, FlowFlag, FlowTuple
from .offload import EntryWriter, OffloadEngine, StatsReader
from .p4map import Code, FlowUpdate, Op, PipelineCaps, SwitchEntry, UpdateResult, caps_from_p4info
from .policy import FlowtableConfig, PolicyError, parse_flowtable
from .reconcile import ReconcilePlan, plan_reconcile

__all__ = [
    "ActionList", "Clock", "Code", "ConnRef", "Dir", "EntryWriter", "FastPath", "Flow", "FlowAction",
    "FlowDirection", "FlowFlag", "FlowTable", "FlowTuple", "FlowUpdate", "FlowtableConfig",
    "Forwarded", "HwStats", "IdleVerdict", "OfferResult", "OffloadEngine", "Op", "PipelineCaps", "PolicyError",
    "ReconcilePlan", "StatsReader", "SwitchEntry", "UpdateResult", "caps_from_p4info", "parse_flowtable",
    "plan_reconcile",
]
