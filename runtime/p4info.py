"""One wrapper around a P4Info: look objects up by full name, alias, unique dotted suffix or id.

``P4Info.table("flow_v4")`` finds ``ingress.flow_v4``; an unknown or ambiguous name raises
:class:`~runtime.errors.P4InfoLookupError` with the closest names ("did you mean ...?"). Built once per
pipeline and shared read-only, so it can be used from several threads.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from google.protobuf import text_format
from p4.config.v1 import p4info_pb2

from .errors import ConfigError, P4InfoLookupError

T = TypeVar("T")


class _Index(Generic[T]):
    """Name/alias/suffix/id index of one kind of P4Info object."""

    def __init__(self, kind: str, items: Iterable[tuple[int, str, str, T]]) -> None:
        self.kind = kind
        self.by_id: dict[int, T] = {}
        self.by_name: dict[str, T] = {}
        self._suffixes: dict[str, list[str]] = {}
        for obj_id, name, alias, obj in items:
            self.by_id[obj_id] = obj
            self.by_name[name] = obj
            parts = name.split(".")
            for i in range(len(parts)):
                self._suffixes.setdefault(".".join(parts[i:]), []).append(name)
            if alias and alias != name:
                self._suffixes.setdefault(alias, []).append(name)

    def __iter__(self) -> Iterator[T]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    def get(self, key: str | int) -> T:
        if isinstance(key, int):
            try:
                return self.by_id[key]
            except KeyError:
                raise P4InfoLookupError(f"no {self.kind} with id {key}") from None
        if key in self.by_name:
            return self.by_name[key]
        names = sorted(set(self._suffixes.get(key, [])))
        if len(names) == 1:
            return self.by_name[names[0]]
        if len(names) > 1:
            raise P4InfoLookupError(f"{self.kind} name {key!r} is ambiguous: {', '.join(names)}")
        candidates = list(self.by_name) + list(self._suffixes)
        close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in dict.fromkeys(close))}?" if close else ""
        known = f" (known: {', '.join(sorted(self.by_name))})" if not close and self.by_name else ""
        raise P4InfoLookupError(f"no {self.kind} named {key!r}{hint}{known}")

    def __contains__(self, key: object) -> bool:
        try:
            self.get(key)  # type: ignore[arg-type]
            return True
        except (P4InfoLookupError, TypeError):
            return False


@dataclass(frozen=True, slots=True)
class MatchField:
    id: int
    name: str
    bitwidth: int
    match_type: str  # EXACT, LPM, TERNARY, RANGE, OPTIONAL


@dataclass(frozen=True, slots=True)
class Param:
    id: int
    name: str
    bitwidth: int


@dataclass(frozen=True)
class ActionInfo:
    id: int
    name: str
    alias: str
    params: tuple[Param, ...]
    _params: _Index[Param] = field(repr=False, compare=False)

    def param(self, key: str | int) -> Param:
        return self._params.get(key)


@dataclass(frozen=True)
class TableInfo:
    id: int
    name: str
    alias: str
    match_fields: tuple[MatchField, ...]
    action_ids: tuple[int, ...]
    default_only_action_ids: frozenset[int]
    size: int
    const: bool
    idle_timeout: bool
    direct_counter_id: int | None
    _fields: _Index[MatchField] = field(repr=False, compare=False)

    def match_field(self, key: str | int) -> MatchField:
        return self._fields.get(key)

    @property
    def needs_priority(self) -> bool:
        return any(f.match_type in ("TERNARY", "RANGE", "OPTIONAL") for f in self.match_fields)


@dataclass(frozen=True, slots=True)
class MetadataField:
    id: int
    name: str
    bitwidth: int


@dataclass(frozen=True, slots=True)
class CounterInfo:
    id: int
    name: str
    size: int
    direct_table_id: int | None = None


class P4Info:
    """The P4Info of one pipeline, indexed. ``P4Info.load(path)`` reads text (.txt/.txtpb) or binary."""

    def __init__(self, message: p4info_pb2.P4Info) -> None:
        self.message = message
        mt_names = p4info_pb2.MatchField.MatchType.Name
        self.actions: _Index[ActionInfo] = _Index("action", (
            (a.preamble.id, a.preamble.name, a.preamble.alias, self._action(a)) for a in message.actions))
        self.tables: _Index[TableInfo] = _Index("table", (
            (t.preamble.id, t.preamble.name, t.preamble.alias, self._table(t, mt_names)) for t in message.tables))
        counters = [(c.preamble.id, c.preamble.name, c.preamble.alias, CounterInfo(c.preamble.id, c.preamble.name, c.size))
                    for c in message.counters]
        self.counters: _Index[CounterInfo] = _Index("counter", counters)
        self.direct_counters: _Index[CounterInfo] = _Index("direct counter", (
            (c.preamble.id, c.preamble.name, c.preamble.alias,
             CounterInfo(c.preamble.id, c.preamble.name, 0, c.direct_table_id)) for c in message.direct_counters))
        self._packet_metadata: dict[str, tuple[MetadataField, ...]] = {}
        for cpm in message.controller_packet_metadata:
            self._packet_metadata[cpm.preamble.name] = tuple(
                MetadataField(m.id, m.name, m.bitwidth) for m in cpm.metadata)

    @staticmethod
    def _action(a: p4info_pb2.Action) -> ActionInfo:
        params = tuple(Param(p.id, p.name, p.bitwidth) for p in a.params)
        return ActionInfo(a.preamble.id, a.preamble.name, a.preamble.alias, params,
                          _Index("parameter of " + a.preamble.name, ((p.id, p.name, "", p) for p in params)))

    @staticmethod
    def _table(t: p4info_pb2.Table, mt_name: object) -> TableInfo:
        fields = tuple(MatchField(m.id, m.name, m.bitwidth, p4info_pb2.MatchField.MatchType.Name(m.match_type))
                       for m in t.match_fields)
        direct = next(iter(t.direct_resource_ids), None)
        return TableInfo(
            id=t.preamble.id, name=t.preamble.name, alias=t.preamble.alias, match_fields=fields,
            action_ids=tuple(r.id for r in t.action_refs),
            default_only_action_ids=frozenset(r.id for r in t.action_refs if r.scope == p4info_pb2.ActionRef.DEFAULT_ONLY),
            size=t.size, const=t.is_const_table,
            idle_timeout=t.idle_timeout_behavior == p4info_pb2.Table.NOTIFY_CONTROL,
            direct_counter_id=direct,
            _fields=_Index("match field of " + t.preamble.name, ((m.id, m.name, "", m) for m in fields)),
        )

    @classmethod
    def load(cls, path: str | Path) -> P4Info:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read P4Info: {exc.strerror}") from None
        return cls(parse_p4info(data, str(path)))

    def table(self, key: str | int) -> TableInfo:
        return self.tables.get(key)

    def action(self, key: str | int) -> ActionInfo:
        return self.actions.get(key)

    def counter(self, key: str | int) -> CounterInfo:
        return self.counters.get(key)

    def packet_metadata(self, header: str) -> tuple[MetadataField, ...]:
        """Fields of the ``packet_in`` or ``packet_out`` controller header, in order."""
        try:
            return self._packet_metadata[header]
        except KeyError:
            close = difflib.get_close_matches(header, list(self._packet_metadata), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise P4InfoLookupError(f"no controller packet metadata {header!r}{hint}") from None

    def serializable_enum(self, name: str) -> dict[int, str]:
        """Value -> member name of a serializable enum (``type_info.serializable_enums``)."""
        enums = self.message.type_info.serializable_enums
        if name not in enums:
            close = difflib.get_close_matches(name, list(enums), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise P4InfoLookupError(f"no serializable enum {name!r}{hint}")
        return {int.from_bytes(m.value, "big"): m.name for m in enums[name].members}


def parse_p4info(data: bytes, where: str = "P4Info") -> p4info_pb2.P4Info:
    """Binary or text P4Info into the message."""
    msg = p4info_pb2.P4Info()
    try:
        text = data.decode()
    except UnicodeDecodeError:
        text = None
    try:
        if text is not None:
            text_format.Parse(text, msg)
        else:
            msg.ParseFromString(data)
    except Exception as exc:
        raise ConfigError(f"{where}: not a P4Info (binary or text): {exc}") from None
    return msg
