"""The offload policy: which connections enter the flowtable, and the flowtable's own settings.

Modelled on nftables: a flowtable declares the devices it covers and whether it has ``flags offload``
(hardware offload), and ``flow add @ft`` statements in the forward chain, evaluated in order, decide which
connections are handed to it (``nft_flow_offload_eval``). Here the rules are an ordered list, each matching
L4 protocol, source/destination prefixes, ports and ingress/egress switch port and saying ``offload`` or
``skip``; the first rule that matches decides, and ``default`` decides when none does.

The TOML section (parsed by :func:`parse_flowtable`, called by the router config loader)::

    [flowtable]
    ports = [1, 2, 3, 4]      # switch ports (numbers, or names the loader resolves); default: all ports
    tcp_timeout = 30          # seconds a flow may idle (nf_flowtable_tcp_timeout), default 30
    udp_timeout = 30          # (nf_flowtable_udp_timeout), default 30
    close_timeout = 10        # seconds a closing TCP flow stays listed (its packets take the slow path), default 10
    hw_offload = true         # like `flags offload`; false = software flowtable only
    default = "offload"       # when no rule matches: "offload" or "skip"

    [[flowtable.rules]]
    action = "skip"           # "offload" or "skip"
    proto = "udp"             # "tcp", "udp", or a list of them
    src = "10.0.0.0/8"        # prefix or list of prefixes (IPv4 or IPv6)
    dst = ["192.0.2.0/24"]
    sport = "1024-65535"      # port, "lo-hi" range, or a list of them
    dport = 53
    iif = 1                   # ingress switch port(s) of the original direction
    oif = "wan"               # egress switch port(s) of the original direction
    set = { dscp = "cs3" }    # statements for every packet of the matching connections, both directions,
    counter = "web"           # on every path (slow path, software fast path, switch): DSCP (a name like
                              # "cs3", "af41", "ef" or 0-63; ECN bits kept), a named counter, and
                              # set = { vlan = 200 }: VLAN retag on a tagged egress port

Statements are the ``fast_fwd`` idea from the 2023 netfilter thread: in Linux a forward-chain statement such
as ``ip dscp set cs3`` runs only while a connection takes the classic path and is lost once it is offloaded;
here they become entries of the connection's action list, which every path executes. The first matching
rule decides both whether the connection is offloaded and its statements.

Every error names the key path (``flowtable.rules[2].dport``) and, for unknown keys, suggests the closest
known one.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.actions import DSCP_NAMES, Count, SetDscp, SetVlan, Statement
from runtime.config import PortRange

IPPROTO_TCP = 6
IPPROTO_UDP = 17
_PROTOS = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}
_PROTO_NAMES = {v: k for k, v in _PROTOS.items()}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_CLOSE_TIMEOUT_S = 10.0


class PolicyError(ValueError):
    """A bad ``[flowtable]`` section; the message starts with the key path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True, slots=True)
class FlowKey:
    """What the policy looks at: the original direction of a connection, as conntrack saw it, and the
    switch ports the route chose (``iif`` where the first packet came in, ``oif`` where it leaves)."""

    proto: int
    src: IPAddress
    dst: IPAddress
    sport: int
    dport: int
    iif: int
    oif: int


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One ``[[flowtable.rules]]`` entry. ``None`` in a field matches anything."""

    offload: bool
    protos: frozenset[int] | None = None
    src: tuple[IPNetwork, ...] | None = None
    dst: tuple[IPNetwork, ...] | None = None
    sport: tuple[PortRange, ...] | None = None
    dport: tuple[PortRange, ...] | None = None
    iif: frozenset[int] | None = None
    oif: frozenset[int] | None = None
    statements: tuple[Statement, ...] = ()

    def matches(self, key: FlowKey) -> bool:
        if self.protos is not None and key.proto not in self.protos:
            return False
        if self.src is not None and not any(key.src in net for net in self.src):
            return False
        if self.dst is not None and not any(key.dst in net for net in self.dst):
            return False
        if self.sport is not None and not any(key.sport in r for r in self.sport):
            return False
        if self.dport is not None and not any(key.dport in r for r in self.dport):
            return False
        if self.iif is not None and key.iif not in self.iif:
            return False
        return not (self.oif is not None and key.oif not in self.oif)

    def describe(self) -> str:
        parts = []
        if self.protos is not None:
            parts.append("proto " + ",".join(_PROTO_NAMES.get(p, str(p)) for p in sorted(self.protos)))
        for name in ("src", "dst"):
            nets = getattr(self, name)
            if nets is not None:
                parts.append(f"{name} " + ",".join(str(n) for n in nets))
        for name in ("sport", "dport"):
            ranges = getattr(self, name)
            if ranges is not None:
                parts.append(f"{name} " + ",".join(str(r) for r in ranges))
        for name in ("iif", "oif"):
            ports = getattr(self, name)
            if ports is not None:
                parts.append(f"{name} " + ",".join(str(p) for p in sorted(ports)))
        return " ".join([*parts, *(str(st) for st in self.statements), "offload" if self.offload else "skip"])


@dataclass(frozen=True, slots=True)
class FlowtableConfig:
    """Per-flowtable settings plus the ordered policy.

    ``ports`` is ``None`` for "every switch port". A connection is offloaded only when both its ingress
    ports (the original direction's and the reply direction's, i.e. the original's egress) are covered:
    the kernel's flowtable only sees packets on the devices it hooks, so a flow half outside it could not
    be fast-pathed in one of its directions.
    """

    ports: frozenset[int] | None = None
    tcp_timeout_s: float = DEFAULT_TIMEOUT_S
    udp_timeout_s: float = DEFAULT_TIMEOUT_S
    close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S
    hw_offload: bool = True
    default_offload: bool = True
    rules: tuple[PolicyRule, ...] = field(default_factory=tuple)

    def timeout_ns(self, proto: int) -> int:
        """``flow_offload_get_timeout``: the per-protocol flow timeout."""
        secs = self.tcp_timeout_s if proto == IPPROTO_TCP else self.udp_timeout_s
        return int(secs * 1_000_000_000)

    @property
    def close_timeout_ns(self) -> int:
        return int(self.close_timeout_s * 1_000_000_000)

    def covers(self, port: int) -> bool:
        return self.ports is None or port in self.ports

    def decide(self, key: FlowKey) -> bool:
        """Should this connection be offloaded? Only TCP and UDP ever are (``nf_flow_rule_match`` and the
        fast path handle nothing else); the ports must be covered; then the first matching rule wins."""
        if key.proto not in (IPPROTO_TCP, IPPROTO_UDP):
            return False
        if not (self.covers(key.iif) and self.covers(key.oif)):
            return False
        rule = self.rule_for(key)
        return rule.offload if rule is not None else self.default_offload

    def rule_for(self, key: FlowKey) -> PolicyRule | None:
        for rule in self.rules:
            if rule.matches(key):
                return rule
        return None

    def statements(self, key: FlowKey) -> tuple[Statement, ...]:
        """The statements of the first matching rule, for any connection the router forwards (also one the
        flowtable never takes): the slow path applies them too."""
        rule = self.rule_for(key)
        return rule.statements if rule is not None else ()

    @property
    def counter_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(st.name for r in self.rules for st in r.statements if isinstance(st, Count)))


# ---------------------------------------------------------------------------------------------- parsing

_TOP_KEYS = ("ports", "tcp_timeout", "udp_timeout", "close_timeout", "hw_offload", "default", "rules")
_RULE_KEYS = ("action", "proto", "src", "dst", "sport", "dport", "iif", "oif", "set", "counter")
_SET_KEYS = ("dscp", "vlan")


def _unknown(path: str, key: str, known: Sequence[str]) -> PolicyError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return PolicyError(f"{path}.{key}", f"unknown key{hint}")


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _timeout(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(path, f"expected a number of seconds, got {value!r}")
    if not 1 <= value <= 86400 * 7:
        raise PolicyError(path, f"must be between 1 and 604800 seconds, got {value!r}")
    return float(value)


def _bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(path, f"expected true or false, got {value!r}")
    return value


def _action(path: str, value: Any) -> bool:
    if value in ("offload", "skip"):
        return bool(value == "offload")
    raise PolicyError(path, f'expected "offload" or "skip", got {value!r}')


def _port(path: str, value: Any, port_names: Mapping[str, int]) -> int:
    if isinstance(value, str):
        if value in port_names:
            return port_names[value]
        close = difflib.get_close_matches(value, list(port_names), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else (
            f"; known ports: {', '.join(sorted(port_names))}" if port_names else "; use a port number")
        raise PolicyError(path, f"unknown port name {value!r}{hint}")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 512:
        raise PolicyError(path, f"expected a switch port number (0-511) or name, got {value!r}")
    return value


def _ports(path: str, value: Any, port_names: Mapping[str, int], known: frozenset[int] | None) -> frozenset[int]:
    items = _as_list(value)
    if not items:
        raise PolicyError(path, "must name at least one port")
    out = set()
    for i, item in enumerate(items):
        sub = f"{path}[{i}]" if isinstance(value, list | tuple) else path
        port = _port(sub, item, port_names)
        if known is not None and port not in known:
            raise PolicyError(sub, f"port {port} is not a switch port (known: {', '.join(map(str, sorted(known)))})")
        out.add(port)
    return frozenset(out)


def _protos(path: str, value: Any) -> frozenset[int]:
    out = set()
    for i, item in enumerate(_as_list(value)):
        sub = f"{path}[{i}]" if isinstance(value, list | tuple) else path
        if not isinstance(item, str) or item.lower() not in _PROTOS:
            raise PolicyError(sub, f'expected "tcp" or "udp" (only those are ever offloaded), got {item!r}')
        out.add(_PROTOS[item.lower()])
    if not out:
        raise PolicyError(path, "must name at least one protocol")
    return frozenset(out)


def _prefixes(path: str, value: Any) -> tuple[IPNetwork, ...]:
    out = []
    items = _as_list(value)
    if not items:
        raise PolicyError(path, "must name at least one prefix")
    for i, item in enumerate(items):
        sub = f"{path}[{i}]" if isinstance(value, list | tuple) else path
        if not isinstance(item, str):
            raise PolicyError(sub, f'expected a prefix like "10.0.0.0/8" or "2001:db8::/32", got {item!r}')
        try:
            out.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise PolicyError(sub, f"bad prefix {item!r}: {exc}") from None
    return tuple(out)


def _port_ranges(path: str, value: Any) -> tuple[PortRange, ...]:
    out = []
    items = _as_list(value)
    if not items:
        raise PolicyError(path, "must name at least one port or range")
    for i, item in enumerate(items):
        sub = f"{path}[{i}]" if isinstance(value, list | tuple) else path
        lo: Any
        hi: Any
        if isinstance(item, int) and not isinstance(item, bool):
            lo = hi = item
        elif isinstance(item, str):
            text = item.strip()
            lo_s, sep, hi_s = text.partition("-")
            try:
                lo = int(lo_s)
                hi = int(hi_s) if sep else lo
            except ValueError:
                raise PolicyError(sub, f'expected a port or a range like "1024-65535", got {item!r}') from None
        else:
            raise PolicyError(sub, f'expected a port or a range like "1024-65535", got {item!r}')
        if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
            raise PolicyError(sub, f"ports are 0-65535, got {item!r}")
        if lo > hi:
            raise PolicyError(sub, f"range {item!r} is empty (low end above high end)")
        out.append(PortRange(lo, hi))
    return tuple(out)


def _dscp(path: str, value: Any) -> int:
    if isinstance(value, str):
        name = value.strip().lower()
        if name in DSCP_NAMES:
            return DSCP_NAMES[name]
        close = difflib.get_close_matches(name, list(DSCP_NAMES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else '; use a name like "cs3", "af41", "ef" or a number 0-63'
        raise PolicyError(path, f"unknown DSCP {value!r}{hint}")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 63:
        raise PolicyError(path, f'expected a DSCP name like "cs3" or a number 0-63, got {value!r}')
    return value


_COUNTER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


def _statements(path: str, raw: Mapping[str, Any]) -> tuple[Statement, ...]:
    out: list[Statement] = []
    if "set" in raw:
        sets = raw["set"]
        if not isinstance(sets, Mapping) or not sets:
            raise PolicyError(f"{path}.set", 'expected a table of fields to set, like set = { dscp = "cs3" } '
                              'or set = { vlan = 200 }')
        for key in sets:
            if key not in _SET_KEYS:
                raise _unknown(f"{path}.set", str(key), _SET_KEYS)
        if "dscp" in sets:
            out.append(SetDscp(_dscp(f"{path}.set.dscp", sets["dscp"])))
        if "vlan" in sets:
            vid = sets["vlan"]
            if isinstance(vid, bool) or not isinstance(vid, int) or not 1 <= vid <= 4094:
                raise PolicyError(f"{path}.set.vlan", f"expected a VLAN id 1-4094, got {vid!r}")
            out.append(SetVlan(vid))
    if "counter" in raw:
        name = raw["counter"]
        if not isinstance(name, str) or not _COUNTER_NAME.match(name):
            raise PolicyError(f"{path}.counter", f"expected a counter name (a letter, then up to 31 letters, digits, "
                              f"'_' or '-'), got {name!r}")
        out.append(Count(name))
    return tuple(out)


def parse_rule(path: str, raw: Any, port_names: Mapping[str, int] | None = None,
               known_ports: frozenset[int] | None = None) -> PolicyRule:
    """One ``[[flowtable.rules]]`` table; ``path`` is its key path for messages."""
    names = port_names or {}
    if not isinstance(raw, Mapping):
        raise PolicyError(path, f"expected a table, got {type(raw).__name__}")
    for key in raw:
        if key not in _RULE_KEYS:
            raise _unknown(path, str(key), _RULE_KEYS)
    if "action" not in raw:
        raise PolicyError(f"{path}.action", 'missing; every rule says "offload" or "skip"')
    offload = _action(f"{path}.action", raw["action"])
    protos = _protos(f"{path}.proto", raw["proto"]) if "proto" in raw else None
    src = _prefixes(f"{path}.src", raw["src"]) if "src" in raw else None
    dst = _prefixes(f"{path}.dst", raw["dst"]) if "dst" in raw else None
    sport = _port_ranges(f"{path}.sport", raw["sport"]) if "sport" in raw else None
    dport = _port_ranges(f"{path}.dport", raw["dport"]) if "dport" in raw else None
    iif = _ports(f"{path}.iif", raw["iif"], names, known_ports) if "iif" in raw else None
    oif = _ports(f"{path}.oif", raw["oif"], names, known_ports) if "oif" in raw else None
    if src and dst and not ({n.version for n in src} & {n.version for n in dst}):
        raise PolicyError(path, "src and dst prefixes are of different address families; the rule can never match")
    statements = _statements(path, raw)
    return PolicyRule(offload=offload, protos=protos, src=src, dst=dst, sport=sport, dport=dport, iif=iif, oif=oif,
                      statements=statements)


def parse_flowtable(raw: Any, *, path: str = "flowtable", port_names: Mapping[str, int] | None = None,
                    switch_ports: Sequence[int] | None = None) -> FlowtableConfig:
    """Validate the ``[flowtable]`` section (a dict from ``tomllib``) into a :class:`FlowtableConfig`.

    ``port_names`` maps port names to numbers so rules can say ``iif = "wan"``; ``switch_ports``, when
    given, is the set of front-panel ports a port number must belong to. An absent section (``None``) is
    the default flowtable: every port, 30 s timeouts, hardware offload on, everything offloaded.
    """
    if raw is None:
        return FlowtableConfig()
    if not isinstance(raw, Mapping):
        raise PolicyError(path, f"expected a table, got {type(raw).__name__}")
    for key in raw:
        if key not in _TOP_KEYS:
            raise _unknown(path, str(key), _TOP_KEYS)
    names = dict(port_names or {})
    known = frozenset(switch_ports) if switch_ports is not None else None
    ports = _ports(f"{path}.ports", raw["ports"], names, known) if "ports" in raw else None
    tcp = _timeout(f"{path}.tcp_timeout", raw["tcp_timeout"]) if "tcp_timeout" in raw else DEFAULT_TIMEOUT_S
    udp = _timeout(f"{path}.udp_timeout", raw["udp_timeout"]) if "udp_timeout" in raw else DEFAULT_TIMEOUT_S
    close = (_timeout(f"{path}.close_timeout", raw["close_timeout"]) if "close_timeout" in raw
             else DEFAULT_CLOSE_TIMEOUT_S)
    hw = _bool(f"{path}.hw_offload", raw["hw_offload"]) if "hw_offload" in raw else True
    default = _action(f"{path}.default", raw["default"]) if "default" in raw else True
    rules_raw = raw.get("rules", [])
    if not isinstance(rules_raw, list):
        raise PolicyError(f"{path}.rules", "expected an array of tables ([[flowtable.rules]])")
    rules = tuple(parse_rule(f"{path}.rules[{i}]", r, names, known) for i, r in enumerate(rules_raw))
    return FlowtableConfig(ports=ports, tcp_timeout_s=tcp, udp_timeout_s=udp, close_timeout_s=close,
                           hw_offload=hw, default_offload=default, rules=rules)
