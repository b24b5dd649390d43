"""What the front end knows about a program once checked: the control-plane objects (for P4Info and the
dataplane) and the compiled code. Names are the fully qualified control-plane names p4c uses."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ActionDef:
    name: str  # control-plane name, e.g. "ingress.offload" or "NoAction"
    func: str  # name of the generated Python function
    params: list[tuple[str, int]]  # directionless parameters (the control-plane ones): name, width
    annotations: list[str] = field(default_factory=list)
    id: int = 0


@dataclass(slots=True)
class KeyDef:
    name: str
    match_kind: str  # exact / ternary / lpm / optional / range
    width: int


@dataclass(slots=True)
class ActionRefDef:
    action: ActionDef
    annotations: list[str]
    scope: str  # TABLE_AND_DEFAULT / TABLE_ONLY / DEFAULT_ONLY


@dataclass(slots=True)
class ConstEntry:
    match: list[tuple[int, int | None, int | None]]  # per key: value, mask (ternary), prefix length (lpm)
    action: ActionDef
    args: list[int]
    priority: int = 0


@dataclass(slots=True)
class TableDef:
    name: str
    func: str  # generated apply function
    keys: list[KeyDef]
    actions: list[ActionRefDef]
    default_action: ActionDef
    default_args: list[int]
    const_default: bool
    size: int
    support_timeout: bool
    direct_counter: DirectCounterDef | None
    const_entries: list[ConstEntry]
    entries_const: bool  # "const entries": the table is read-only for the control plane
    annotations: list[str] = field(default_factory=list)
    id: int = 0


@dataclass(slots=True)
class CounterDef:
    name: str
    size: int
    unit: str  # PACKETS / BYTES / BOTH
    annotations: list[str] = field(default_factory=list)
    id: int = 0


@dataclass(slots=True)
class DirectCounterDef:
    name: str
    unit: str
    table: str = ""
    annotations: list[str] = field(default_factory=list)
    id: int = 0


@dataclass(slots=True)
class ControllerHeaderDef:
    name: str  # from @controller_header("..."): the P4Info name
    type_name: str  # the header type's name: what p4c hashes for the id
    annotations: list[str]
    fields: list[tuple[str, int]]
    id: int = 0


@dataclass(slots=True)
class SerEnumDef:
    name: str
    width: int
    members: list[tuple[str, int]]


@dataclass(slots=True)
class ProgramModel:
    tables: list[TableDef]
    actions: list[ActionDef]
    counters: list[CounterDef]
    direct_counters: list[DirectCounterDef]
    controller_headers: list[ControllerHeaderDef]
    ser_enums: list[SerEnumDef]
    code: str  # the generated Python module
    init: list[int]  # the per-packet state list's initial values
    special: dict[str, int]  # slots the pipeline driver reads and writes (ingress_port, egress_spec, ...)
