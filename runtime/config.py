"""The router config (TOML): ports with their addresses, static routes, NAT rules, and (issue 8) the
offload policy. Validated up front; every error names the file and key path and suggests the closest key.

::

    [[ports]]                     # one per switch port the router uses
    port = 1                      # P4 port number
    name = "lan1"                 # optional; rules may name ports
    mac = "02:00:00:00:01:01"     # the router's MAC on this port (the build profile's port MAC)
    mtu = 1500                    # optional, default 1500
    ipv4 = "10.0.1.1/24"          # optional; a string or a list of them
    ipv6 = "2001:db8:1::1/64"     # optional; a link-local fe80:: address from the MAC is always added

    [[routes]]                    # static routes; connected routes come from the port addresses
    dst = "0.0.0.0/0"
    via = "192.0.2.254"           # gateway; or `port = "wan"` for an on-link route (or both)

    [[nat.masquerade]]            # source NAT to the out port's address (iptables MASQUERADE)
    out = "wan"
    src = ["10.0.0.0/8"]          # optional: only these sources

    [[nat.snat]]                  # source NAT to a fixed address
    out = "wan"
    to = "192.0.2.1"
    ports = "1024-65535"          # optional port range for allocation
    src = "10.0.1.0/24"           # optional

    [[nat.dnat]]                  # port forward
    in = "wan"                    # optional: only packets arriving on this port
    proto = "tcp"
    dport = 8080
    dst = "192.0.2.1"             # optional: only to this address (default: the router's own addresses)
    to = "10.0.1.10"
    to_port = 80                  # optional: keep dport when absent

    [flowtable]                   # the offload policy (issue 8); kept raw here, validated by its own parser

Port MACs live in the router config rather than being read from the build profile, because the runtime never
imports the generator; ``configs/router.toml`` repeats ``profiles/default.toml``'s MACs.
"""

from __future__ import annotations

import difflib
import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .entities import mac_to_bytes
from .errors import ConfigError, EncodeError

IPv4Net = ipaddress.IPv4Network
IPv6Net = ipaddress.IPv6Network
IPNet = IPv4Net | IPv6Net
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
IPIface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
PROTOS = {"tcp": 6, "udp": 17}


@dataclass(frozen=True)
class PortConfig:
    port: int
    name: str
    mac: bytes
    mtu: int = 1500
    ipv4: tuple[ipaddress.IPv4Interface, ...] = ()
    ipv6: tuple[ipaddress.IPv6Interface, ...] = ()

    def all_addresses(self) -> list[IPIface]:
        return [*self.ipv4, *self.ipv6]

    def addresses(self, version: int) -> tuple[IPIface, ...]:
        return self.ipv4 if version == 4 else self.ipv6

    def primary(self, version: int) -> IPIface | None:
        """The address the router speaks from on this port (ICMP errors, NAT): the first global one."""
        addrs = self.addresses(version)
        for a in addrs:
            if not a.ip.is_link_local:
                return a
        return addrs[0] if addrs else None


@dataclass(frozen=True, slots=True)
class StaticRoute:
    dst: IPNet
    via: IPAddr | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class PortRange:
    lo: int
    hi: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port <= self.hi

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


@dataclass(frozen=True, slots=True)
class SnatRule:
    """Source NAT out of ``out_port``: to ``to`` (None = masquerade: the port's own address)."""

    out_port: int
    to: IPAddr | None = None
    src: tuple[IPNet, ...] | None = None
    ports: PortRange | None = None

    @property
    def masquerade(self) -> bool:
        return self.to is None


@dataclass(frozen=True, slots=True)
class DnatRule:
    proto: int
    dport: PortRange
    to: IPAddr
    to_port: int | None = None
    in_port: int | None = None
    dst: IPAddr | None = None


@dataclass(frozen=True)
class RouterConfig:
    ports: dict[int, PortConfig]
    routes: tuple[StaticRoute, ...] = ()
    snat: tuple[SnatRule, ...] = ()
    dnat: tuple[DnatRule, ...] = ()
    flowtable_raw: Mapping[str, Any] | None = None
    source: str = "<config>"
    port_names: dict[str, int] = field(default_factory=dict)

    def port(self, port: int) -> PortConfig | None:
        return self.ports.get(port)


_TOP = ("ports", "routes", "nat", "flowtable", "router")
_PORT = ("port", "name", "mac", "mtu", "ipv4", "ipv6")
_ROUTE = ("dst", "via", "port")
_NAT = ("masquerade", "snat", "dnat")
_MASQ = ("out", "src", "ports")
_SNAT = ("out", "to", "src", "ports")
_DNAT = ("in", "proto", "dport", "dst", "to", "to_port")


class _Ctx:
    def __init__(self, source: str) -> None:
        self.source = source

    def err(self, path: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {msg}" if path else f"{self.source}: {msg}")

    def keys(self, path: str, raw: Any, known: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.err(path, f"expected a table, got {type(raw).__name__}")
        for key in raw:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
                raise self.err(f"{path}.{key}" if path else str(key), f"unknown key{hint}")
        return raw

    def table_list(self, path: str, raw: Any) -> list[Any]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise self.err(path, f"expected an array of tables ([[{path}]])")
        return raw


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else [v]


def load_config(path: str | Path) -> RouterConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the router config: {exc.strerror}") from None
    return parse_config(text, str(p))


def parse_config(text: str, source: str = "<config>") -> RouterConfig:
    ctx = _Ctx(source)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ctx.err("", f"not valid TOML: {exc}") from None
    ctx.keys("", raw, _TOP)
    ports: dict[int, PortConfig] = {}
    names: dict[str, int] = {}
    raw_ports = ctx.table_list("ports", raw.get("ports"))
    if not raw_ports:
        raise ctx.err("ports", "the router needs at least one [[ports]] entry")
    seen_nets: dict[IPNet, str] = {}
    for i, rp in enumerate(raw_ports):
        pc = _port(ctx, f"ports[{i}]", rp)
        if pc.port in ports:
            raise ctx.err(f"ports[{i}].port", f"port {pc.port} is configured twice")
        if pc.name in names:
            raise ctx.err(f"ports[{i}].name", f"name {pc.name!r} is used by port {names[pc.name]} too")
        for a in pc.all_addresses():
            if a.ip.is_link_local:
                continue
            if a.network in seen_nets:
                raise ctx.err(f"ports[{i}]", f"subnet {a.network} is also on {seen_nets[a.network]}")
            seen_nets[a.network] = f"port {pc.port}"
        ports[pc.port] = pc
        names[pc.name] = pc.port

    def port_ref(path: str, v: Any) -> int:
        if isinstance(v, str):
            if v in names:
                return names[v]
            close = difflib.get_close_matches(v, list(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(names)}"
            raise ctx.err(path, f"unknown port {v!r}{hint}")
        if isinstance(v, int) and not isinstance(v, bool):
            if v in ports:
                return v
            raise ctx.err(path, f"port {v} is not configured under [[ports]]")
        raise ctx.err(path, f"expected a port name or number, got {v!r}")

    routes = []
    for i, rr in enumerate(ctx.table_list("routes", raw.get("routes"))):
        path = f"routes[{i}]"
        r = ctx.keys(path, rr, _ROUTE)
        if "dst" not in r:
            raise ctx.err(path, "missing 'dst' (a prefix like \"0.0.0.0/0\")")
        dst = _net(ctx, f"{path}.dst", r["dst"])
        via = _addr(ctx, f"{path}.via", r["via"]) if "via" in r else None
        port = port_ref(f"{path}.port", r["port"]) if "port" in r else None
        if via is None and port is None:
            raise ctx.err(path, "give 'via' (a gateway) or 'port' (an on-link route)")
        if via is not None and via.version != dst.version:
            raise ctx.err(f"{path}.via", f"gateway {via} is not of the same address family as {dst}")
        routes.append(StaticRoute(dst, via, port))

    nat = ctx.keys("nat", raw.get("nat", {}), _NAT)
    snat: list[SnatRule] = []
    for key in ("masquerade", "snat"):
        for i, rr in enumerate(ctx.table_list(f"nat.{key}", nat.get(key))):
            path = f"nat.{key}[{i}]"
            r = ctx.keys(path, rr, _MASQ if key == "masquerade" else _SNAT)
            if "out" not in r:
                raise ctx.err(path, "missing 'out' (the port the translated traffic leaves by)")
            out = port_ref(f"{path}.out", r["out"])
            to = None
            if key == "snat":
                if "to" not in r:
                    raise ctx.err(path, "missing 'to' (the address to translate to)")
                to = _addr(ctx, f"{path}.to", r["to"])
            elif not ports[out].ipv4 and not ports[out].ipv6:
                raise ctx.err(f"{path}.out", f"port {out} has no address to masquerade to")
            src = tuple(_net(ctx, f"{path}.src", s) for s in _as_list(r["src"])) if "src" in r else None
            prange = _range(ctx, f"{path}.ports", r["ports"]) if "ports" in r else None
            snat.append(SnatRule(out, to, src, prange))
    dnat: list[DnatRule] = []
    for i, rr in enumerate(ctx.table_list("nat.dnat", nat.get("dnat"))):
        path = f"nat.dnat[{i}]"
        r = ctx.keys(path, rr, _DNAT)
        for req in ("proto", "dport", "to"):
            if req not in r:
                raise ctx.err(path, f"missing {req!r}")
        proto = r["proto"]
        if not isinstance(proto, str) or proto.lower() not in PROTOS:
            raise ctx.err(f"{path}.proto", f'expected "tcp" or "udp", got {proto!r}')
        to_port = r.get("to_port")
        if to_port is not None and (isinstance(to_port, bool) or not isinstance(to_port, int) or not 1 <= to_port <= 65535):
            raise ctx.err(f"{path}.to_port", f"expected a port 1-65535, got {to_port!r}")
        dnat.append(DnatRule(PROTOS[proto.lower()], _range(ctx, f"{path}.dport", r["dport"]),
                             _addr(ctx, f"{path}.to", r["to"]), to_port,
                             port_ref(f"{path}.in", r["in"]) if "in" in r else None,
                             _addr(ctx, f"{path}.dst", r["dst"]) if "dst" in r else None))
    ft = raw.get("flowtable")
    if ft is not None and not isinstance(ft, Mapping):
        raise ctx.err("flowtable", "expected a table")
    return RouterConfig(ports, tuple(routes), tuple(snat), tuple(dnat), ft, source, names)


def _port(ctx: _Ctx, path: str, raw: Any) -> PortConfig:
    r = ctx.keys(path, raw, _PORT)
    if "port" not in r:
        raise ctx.err(path, "missing 'port' (the P4 port number)")
    num = r["port"]
    if isinstance(num, bool) or not isinstance(num, int) or not 0 < num < 511:
        raise ctx.err(f"{path}.port", f"expected a port number 1-510, got {num!r}")
    if "mac" not in r:
        raise ctx.err(path, "missing 'mac' (the router's MAC on this port; the build profile's port MAC)")
    try:
        mac = mac_to_bytes(str(r["mac"]))
    except EncodeError as exc:
        raise ctx.err(f"{path}.mac", str(exc)) from None
    if mac[0] & 1:
        raise ctx.err(f"{path}.mac", f"{r['mac']} is a multicast MAC")
    mtu = r.get("mtu", 1500)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 576 <= mtu <= 9216:
        raise ctx.err(f"{path}.mtu", f"expected an MTU 576-9216, got {mtu!r}")
    name = r.get("name", f"port{num}")
    if not isinstance(name, str) or not name:
        raise ctx.err(f"{path}.name", f"expected a non-empty string, got {name!r}")
    v4: list[ipaddress.IPv4Interface] = []
    v6: list[ipaddress.IPv6Interface] = []
    for key, version, out in (("ipv4", 4, v4), ("ipv6", 6, v6)):
        for j, a in enumerate(_as_list(r.get(key, []))):
            sub = f"{path}.{key}" + (f"[{j}]" if isinstance(r.get(key), list) else "")
            if not isinstance(a, str) or "/" not in a:
                raise ctx.err(sub, f'expected an address with prefix length like "10.0.1.1/24", got {a!r}')
            try:
                iface = ipaddress.ip_interface(a)
            except ValueError as exc:
                raise ctx.err(sub, f"bad address {a!r}: {exc}") from None
            if iface.version != version:
                raise ctx.err(sub, f"{a} is not an IPv{version} address")
            if iface.ip == iface.network.network_address and iface.network.prefixlen < iface.max_prefixlen - 1:
                raise ctx.err(sub, f"{a} is the network address of its subnet")
            out.append(iface)  # type: ignore[arg-type]
    if v6 or v4:
        ll = ipaddress.IPv6Interface(f"{link_local(mac)}/64")
        if ll not in v6:
            v6.append(ll)
    return PortConfig(num, name, mac, mtu, tuple(v4), tuple(v6))


def link_local(mac: bytes) -> ipaddress.IPv6Address:
    """fe80:: + modified EUI-64 of the MAC (RFC 4291 appendix A)."""
    eui = bytes([mac[0] ^ 2]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return ipaddress.IPv6Address(b"\xfe\x80" + b"\0" * 6 + eui)


def _net(ctx: _Ctx, path: str, v: Any) -> IPNet:
    if not isinstance(v, str):
        raise ctx.err(path, f'expected a prefix like "10.0.0.0/8", got {v!r}')
    try:
        return ipaddress.ip_network(v, strict=True)
    except ValueError as exc:
        raise ctx.err(path, f"bad prefix {v!r}: {exc}") from None


def _addr(ctx: _Ctx, path: str, v: Any) -> IPAddr:
    if not isinstance(v, str):
        raise ctx.err(path, f"expected an IP address, got {v!r}")
    try:
        return ipaddress.ip_address(v)
    except ValueError as exc:
        raise ctx.err(path, f"bad address {v!r}: {exc}") from None


def _range(ctx: _Ctx, path: str, v: Any) -> PortRange:
    if isinstance(v, int) and not isinstance(v, bool):
        lo = hi = v
    elif isinstance(v, str):
        a, sep, b = v.partition("-")
        try:
            lo = int(a)
            hi = int(b) if sep else lo
        except ValueError:
            raise ctx.err(path, f'expected a port or range like "1024-65535", got {v!r}') from None
    else:
        raise ctx.err(path, f'expected a port or range like "1024-65535", got {v!r}')
    if not (1 <= lo <= hi <= 65535):
        raise ctx.err(path, f"ports must be 1-65535 and low <= high, got {v!r}")
    return PortRange(lo, hi)
