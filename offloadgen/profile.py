"""The target profile: what switch the generated P4 program models.

A profile is TOML, read with the standard library and validated here in one pass so that a user sees every
mistake with its key path (``ports[2].mac``) and the fix, rather than a Jinja or p4c error much later.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Why a packet goes to the CPU port instead of the fast path. The codes are the values of packet_in.reason;
# the order is the P4 program's and the control plane's contract, so entries are only ever appended.
PUNT_REASONS: tuple[tuple[str, str], ...] = (
    ("miss", "no flow-table entry: the connection is not offloaded"),
    ("non_ip", "not IPv4/IPv6 (ARP, other ethertypes)"),
    ("ttl", "TTL / hop limit <= 1"),
    ("ip_options", "IPv4 header with options"),
    ("fragment", "IPv4 fragment"),
    ("ipv6_ext", "IPv6 extension header"),
    ("tcp_fin_rst", "TCP FIN or RST: the connection is closing"),
    ("mtu", "larger than the egress port's MTU"),
    ("other_proto", "neither TCP nor UDP"),
    ("mcast_mac", "IP to a broadcast/multicast MAC: ip_forward forwards only frames addressed to the router"),
    ("to_cpu", "the flow entry's output port is the CPU port"),
)
# Reasons that a profile may switch off; the others always go to the CPU.
OPTIONAL_PUNTS: tuple[str, ...] = ("ttl", "ip_options", "fragment", "ipv6_ext", "tcp_fin_rst", "mtu", "other_proto")

# Why the program dropped a frame (the index of drop_counter): what Linux's ip_rcv / ipv6_rcv drop before any
# forwarding decision, and the VLAN filter. Codes are a contract with readers of the counter: append only.
DROP_REASONS: tuple[tuple[str, str], ...] = (
    ("checksum", "IPv4 header checksum wrong"),
    ("other_host", "unicast to another host's MAC (PACKET_OTHERHOST)"),
    ("ip_version", "IP version not 4 (IPv4 ethertype) or not 6 (IPv6 ethertype)"),
    ("ip_header", "IPv4 header length below 20 bytes"),
    ("ip_length", "IP length beyond the frame, or IPv4 total length shorter than its header"),
    ("vlan", "tagged with a VLAN id that is not the port's"),
)

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,14}$")
MAX_PORT = 511  # v1model ports are 9 bits; 511 is the drop port


class ProfileError(ValueError):
    """A profile that cannot describe a switch; the message lists every problem with its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: invalid profile:\n{lines}")


@dataclass(frozen=True, slots=True)
class Port:
    number: int
    name: str
    mac: str
    mtu: int = 1500
    vlan: int | None = None


@dataclass(frozen=True, slots=True)
class Punt:
    """Which exceptions send a packet to the CPU. A switched-off check is absent from the program: such
    packets take the flow-table lookup like any other."""

    ttl: bool = True
    ip_options: bool = True
    fragment: bool = True
    ipv6_ext: bool = True
    tcp_fin_rst: bool = True
    mtu: bool = True
    other_proto: bool = True


@dataclass(frozen=True, slots=True)
class FlowTable:
    name: str  # P4 table name: flow_v4 / flow_v6
    family: str  # ipv4 / ipv6
    size: int
    nat: bool

    @property
    def l3(self) -> str:
        return self.family

    @property
    def proto_field(self) -> str:
        return "protocol" if self.family == "ipv4" else "next_hdr"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    cpu_port: int
    ports: tuple[Port, ...]
    ipv4: bool
    ipv6: bool
    ipv4_table_size: int
    ipv6_table_size: int
    nat: bool
    counters: bool
    idle_timeout: bool
    punt: Punt
    # Which policy statements the switch applies itself (offload_stmt / offload_nat_stmt): DSCP
    # (set = { dscp = ... }) and how many named counters (counter = "name") it holds. A connection with a
    # statement the switch cannot do stays on the software fast path.
    dscp: bool = False
    named_counters: int = 0
    vlan_retag: bool = False  # a connection's VLAN id on tagged egress ports (set = { vlan = ... })

    @property
    def statements(self) -> bool:
        return self.dscp or self.named_counters > 0 or self.vlan_retag
    digest: str = field(default="")

    @property
    def vlan_ports(self) -> tuple[Port, ...]:
        return tuple(p for p in self.ports if p.vlan is not None)

    @property
    def vlan(self) -> bool:
        return bool(self.vlan_ports)

    @property
    def flow_tables(self) -> tuple[FlowTable, ...]:
        tables = []
        if self.ipv4:
            tables.append(FlowTable("flow_v4", "ipv4", self.ipv4_table_size, self.nat))
        if self.ipv6:
            tables.append(FlowTable("flow_v6", "ipv6", self.ipv6_table_size, False))
        return tuple(tables)

    def port(self, number: int) -> Port:
        for p in self.ports:
            if p.number == number:
                return p
        raise KeyError(f"profile {self.name!r} has no port {number}")


_TOP_KEYS = {"name", "description", "cpu_port", "features", "table_size", "punt", "ports"}
_FEATURE_KEYS = {"ipv4", "ipv6", "nat", "counters", "idle_timeout", "dscp", "named_counters", "vlan_retag"}
_SIZE_KEYS = {"ipv4", "ipv6"}
_PORT_KEYS = {"port", "name", "mac", "mtu", "vlan"}


class _Checker:
    """Collects problems instead of stopping at the first, so one edit fixes a profile."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def unknown(self, table: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in sorted(set(table) - allowed):
            path = f"{where}.{key}" if where else key
            hint = _closest(key, allowed)
            self.problems.append(
                f"{path}: unknown key" + (f"; did you mean {hint!r}?" if hint else f" (known: {', '.join(sorted(allowed))})")
            )

    def boolean(self, table: dict[str, Any], key: str, where: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.problems.append(f"{where}.{key}: {value!r} is not true or false")
            return default
        return value

    def integer(self, table: dict[str, Any], key: str, where: str, default: int | None, lo: int, hi: int) -> int:
        path = f"{where}.{key}" if where else key
        if key not in table:
            if default is None:
                self.problems.append(f"{path}: missing; give an integer from {lo} to {hi}")
                return lo
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.append(f"{path}: {value!r} is not an integer; give one from {lo} to {hi}")
            return lo
        if not lo <= value <= hi:
            self.problems.append(f"{path}: {value} is out of range; give an integer from {lo} to {hi}")
        return value


def _closest(word: str, choices: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, sorted(choices), n=1)
    return found[0] if found else None


def parse_profile(data: dict[str, Any], source: str = "<profile>") -> Profile:
    """Validate a decoded TOML document; raise ProfileError listing every problem."""
    c = _Checker()
    c.unknown(data, _TOP_KEYS, "")

    name = data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        c.problems.append(f"name: {name!r} must be 1-64 characters of letters, digits, '_', '-' or '.'")
        name = "invalid"
    description = data.get("description", "")
    if not isinstance(description, str):
        c.problems.append("description: must be a string")
        description = ""

    if data.get("cpu_port") in (0, 511):
        c.problems.append(f"cpu_port: {data['cpu_port']} is reserved (0 is a front-panel port, 511 drops); use 255 or 510")
        cpu_port = 255
    else:
        cpu_port = c.integer(data, "cpu_port", "", 255, 1, 510)

    features = data.get("features", {})
    if not isinstance(features, dict):
        c.problems.append("features: must be a table ([features])")
        features = {}
    c.unknown(features, _FEATURE_KEYS, "features")
    ipv4 = c.boolean(features, "ipv4", "features", True)
    ipv6 = c.boolean(features, "ipv6", "features", False)
    nat = c.boolean(features, "nat", "features", False)
    counters = c.boolean(features, "counters", "features", True)
    idle_timeout = c.boolean(features, "idle_timeout", "features", True)
    dscp = c.boolean(features, "dscp", "features", False)
    named_counters = c.integer(features, "named_counters", "features", 0, 0, 255)
    vlan_retag = c.boolean(features, "vlan_retag", "features", False)
    if not (ipv4 or ipv6):
        c.problems.append("features: at least one of ipv4 and ipv6 must be true")
    if nat and not ipv4:
        c.problems.append("features.nat: NAT is IPv4 only; enable features.ipv4 or set nat = false")

    sizes = data.get("table_size", {})
    if not isinstance(sizes, dict):
        c.problems.append("table_size: must be a table ([table_size])")
        sizes = {}
    c.unknown(sizes, _SIZE_KEYS, "table_size")
    v4_size = c.integer(sizes, "ipv4", "table_size", 1024, 1, 1 << 24)
    v6_size = c.integer(sizes, "ipv6", "table_size", 1024, 1, 1 << 24)

    punt_tbl = data.get("punt", {})
    if not isinstance(punt_tbl, dict):
        c.problems.append("punt: must be a table ([punt])")
        punt_tbl = {}
    c.unknown(punt_tbl, set(OPTIONAL_PUNTS), "punt")
    punt = Punt(**{k: c.boolean(punt_tbl, k, "punt", True) for k in OPTIONAL_PUNTS})

    ports_raw = data.get("ports")
    ports: list[Port] = []
    if not isinstance(ports_raw, list) or not ports_raw:
        c.problems.append("ports: give at least one [[ports]] table with port, name and mac")
        ports_raw = []
    seen_numbers: dict[int, int] = {}
    seen_names: dict[str, int] = {}
    for i, raw in enumerate(ports_raw):
        where = f"ports[{i}]"
        if not isinstance(raw, dict):
            c.problems.append(f"{where}: must be a table with port, name and mac")
            continue
        c.unknown(raw, _PORT_KEYS, where)
        number = c.integer(raw, "port", where, None, 0, MAX_PORT - 1)
        if number == cpu_port:
            c.problems.append(f"{where}.port: {number} is the CPU port; pick another number or change cpu_port")
        if number in seen_numbers:
            c.problems.append(f"{where}.port: {number} duplicates ports[{seen_numbers[number]}]")
        seen_numbers.setdefault(number, i)
        pname = raw.get("name")
        if not isinstance(pname, str) or not _NAME_RE.match(pname):
            c.problems.append(f"{where}.name: {pname!r} must be 1-15 characters, a letter first (an interface name)")
            pname = f"port{number}"
        elif pname in seen_names:
            c.problems.append(f"{where}.name: {pname!r} duplicates ports[{seen_names[pname]}]")
        seen_names.setdefault(pname, i)
        mac = raw.get("mac")
        if not isinstance(mac, str) or not _MAC_RE.match(mac):
            c.problems.append(f"{where}.mac: {mac!r} is not a MAC address; write it as 02:00:00:00:00:01")
            mac = "00:00:00:00:00:00"
        elif int(mac[:2], 16) & 1:
            c.problems.append(f"{where}.mac: {mac} is a multicast address; a port needs a unicast MAC")
        mtu = c.integer(raw, "mtu", where, 1500, 68, 9000)
        vlan: int | None = None
        if "vlan" in raw:
            vlan = c.integer(raw, "vlan", where, None, 1, 4094)
        ports.append(Port(number, pname, mac.lower(), mtu, vlan))

    if vlan_retag and not any(p.vlan is not None for p in ports):
        c.problems.append("features.vlan_retag: retagging needs a tagged port; give a [[ports]] table a vlan "
                          "or set vlan_retag = false")
    if c.problems:
        raise ProfileError(source, c.problems)
    return Profile(
        name=name,
        description=description,
        cpu_port=cpu_port,
        ports=tuple(ports),
        ipv4=ipv4,
        ipv6=ipv6,
        ipv4_table_size=v4_size,
        ipv6_table_size=v6_size,
        nat=nat,
        counters=counters,
        idle_timeout=idle_timeout,
        punt=punt,
        dscp=dscp,
        named_counters=named_counters,
        vlan_retag=vlan_retag,
    )


def shipped_profile(name: str) -> Path:
    """A profile shipped in profiles/ of the source checkout (the defaults of every command)."""
    return Path(__file__).resolve().parent.parent / "profiles" / f"{name}.toml"


def resolve_profile(arg: str | None) -> Path:
    """--profile as given, or a shipped profile's name (`minimal`), or the default profile when absent."""
    if arg is None:
        return shipped_profile("default")
    path = Path(arg)
    if not path.exists() and "/" not in arg and shipped_profile(arg.removesuffix(".toml")).exists():
        return shipped_profile(arg.removesuffix(".toml"))
    return path


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file; its digest (of the raw bytes) identifies the build."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(str(path), [f"cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(str(path), [f"not valid TOML: {exc}"]) from None
    prof = parse_profile(data, str(path))
    return Profile(**{**_fields(prof), "digest": hashlib.sha256(raw).hexdigest()})


def _fields(prof: Profile) -> dict[str, Any]:
    return {f: getattr(prof, f) for f in prof.__dataclass_fields__}
