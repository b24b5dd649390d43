"""What happens to one direction's packets: an ordered list of actions, like the kernel's ``flow_action``.

The slow path makes the list once per direction from its decision (route, neighbour, NAT) and executes it on
the packet with :func:`execute`; the same list is stored on the connection (``Conn.actions``) for the
flowtable (issue 8): its software fast path executes it, the offload work turns it into the P4 action and
parameters (:func:`flatten`), ``offloadgen flows`` prints it (:func:`format_actions`). New statements (DSCP,
...) are added here, once, and every path sees them.

The order follows ``nf_flow_rule_route_ipv4``: VLAN pop, Ethernet source and destination, source NAT
(address, port), destination NAT (address, port), the policy's statements (DSCP, named counter: the
``fast_fwd`` idea from the 2023 netfilter thread on DSCP marks lost once a flow is offloaded), TTL decrement,
VLAN push, output (always last). NAT values
come from the *other* direction's tuple (``flow_offload_ipv4_snat``/``_dnat``): a packet of this direction
leaves looking like the other direction's tuple reversed.

For an ICMP echo, "port" means its identifier (both ports of its conntrack tuple are the id).
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import packet as P

if TYPE_CHECKING:
    from .conntrack import CtTuple


def _mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


@dataclass(frozen=True, slots=True)
class SetEthSrc:
    mac: bytes

    def __str__(self) -> str:
        return f"eth_src={_mac(self.mac)}"


@dataclass(frozen=True, slots=True)
class SetEthDst:
    mac: bytes

    def __str__(self) -> str:
        return f"eth_dst={_mac(self.mac)}"


@dataclass(frozen=True, slots=True)
class SetIpSrc:
    """Source NAT of the address (network-order bytes, 4 or 16)."""

    addr: bytes

    def __str__(self) -> str:
        return f"snat={ipaddress.ip_address(self.addr)}"


@dataclass(frozen=True, slots=True)
class SetIpDst:
    addr: bytes

    def __str__(self) -> str:
        return f"dnat={ipaddress.ip_address(self.addr)}"


@dataclass(frozen=True, slots=True)
class SetL4Src:
    port: int

    def __str__(self) -> str:
        return f"sport={self.port}"


@dataclass(frozen=True, slots=True)
class SetL4Dst:
    port: int

    def __str__(self) -> str:
        return f"dport={self.port}"


@dataclass(frozen=True, slots=True)
class DecTtl:
    """IPv4 TTL / IPv6 hop limit minus one (``ip_decrease_ttl``)."""

    def __str__(self) -> str:
        return "dec_ttl"


#: DSCP names as nft writes them (``ip dscp set cs3``); numbers print as numbers.
DSCP_NAMES: dict[str, int] = {
    **{f"cs{i}": i * 8 for i in range(8)},
    **{f"af{c}{d}": c * 8 + d * 2 for c in range(1, 5) for d in range(1, 4)},
    "ef": 46, "va": 44, "le": 1,
}
_DSCP_BY_VALUE = {v: k for k, v in DSCP_NAMES.items()}


def dscp_name(value: int) -> str:
    return _DSCP_BY_VALUE.get(value, str(value))


@dataclass(frozen=True, slots=True)
class SetDscp:
    """``ip dscp set`` / ``ip6 dscp set``: the upper six bits of the IPv4 TOS / IPv6 traffic class; the two
    ECN bits are kept. Changes the IPv4 header checksum only (DSCP is in no transport checksum)."""

    dscp: int

    def __str__(self) -> str:
        return f"dscp={dscp_name(self.dscp)}"


@dataclass(frozen=True, slots=True)
class Count:
    """A named counter (nft ``counter name``): packets and bytes of every connection whose list holds it,
    whichever path carried them."""

    name: str

    def __str__(self) -> str:
        return f"counter={self.name}"


@dataclass(frozen=True, slots=True)
class SetVlan:
    """VLAN retag (``FLOW_ACTION_VLAN_MANGLE``, what switches call VLAN translation): a packet that leaves a
    tagged port carries this VLAN id instead of the port's. No effect where the egress port is untagged."""

    vid: int

    def __str__(self) -> str:
        return f"vlan={self.vid}"


#: Statements the policy adds to a connection's list (the rest comes from routing and NAT).
Statement = SetDscp | Count | SetVlan


@dataclass(frozen=True, slots=True)
class VlanPush:
    vid: int
    pcp: int = 0

    def __str__(self) -> str:
        return f"vlan_push={self.vid}"


@dataclass(frozen=True, slots=True)
class VlanPop:
    def __str__(self) -> str:
        return "vlan_pop"


@dataclass(frozen=True, slots=True)
class Output:
    """``FLOW_ACTION_REDIRECT``: the egress switch port; always last."""

    port: int

    def __str__(self) -> str:
        return f"out={self.port}"


FlowAction = (SetEthSrc | SetEthDst | SetIpSrc | SetIpDst | SetL4Src | SetL4Dst | SetDscp | Count | SetVlan | DecTtl
              | VlanPush | VlanPop | Output)
ActionList = tuple[FlowAction, ...]


class ActionError(ValueError):
    """An action list that no path can execute (no output, output not last)."""


def format_actions(actions: ActionList) -> str:
    return ",".join(str(a) for a in actions)


def statements_of(actions: ActionList) -> tuple[Statement, ...]:
    return tuple(a for a in actions if isinstance(a, SetDscp | Count | SetVlan))


@dataclass(slots=True)
class NamedCounters:
    """The software paths' part of the named counters: packets and bytes per name, added to per packet by the
    slow path and the software fast path (the switch's part is its ``stmt_counter``, read when asked). Its
    own lock: the paths run on different threads."""

    values: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def declare(self, names: Sequence[str]) -> None:
        """Counters named by the policy exist (at zero) before any packet: ``offloadgen stats`` lists them."""
        with self.lock:
            for n in names:
                self.values.setdefault(n, [0, 0])

    def add(self, name: str, packets: int, nbytes: int) -> None:
        with self.lock:
            v = self.values.setdefault(name, [0, 0])
            v[0] += packets
            v[1] += nbytes

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {n: {"packets": v[0], "bytes": v[1]} for n, v in sorted(self.values.items())}


#: The counting hook :func:`execute` calls for a :class:`Count`: ``(name, packets, bytes)``.
CountHook = Callable[[str, int, int], None]


def nat_actions(this: CtTuple, other: CtTuple) -> list[FlowAction]:
    """The NAT part of a direction's list: only the fields that change (source first, then destination)."""
    acts: list[FlowAction] = []
    if this.src != other.dst:
        acts.append(SetIpSrc(other.dst))
    if this.sport != other.dport:
        acts.append(SetL4Src(other.dport))
    if this.dst != other.src:
        acts.append(SetIpDst(other.src))
    if this.dport != other.sport:
        acts.append(SetL4Dst(other.sport))
    return acts


def route_actions(this: CtTuple, other: CtTuple, *, out_port: int, smac: bytes, dmac: bytes,
                  in_port: int | None = None, port_vlans: Mapping[int, int] | None = None,
                  statements: Sequence[Statement] = ()) -> ActionList:
    """One direction's actions, ``nf_flow_rule_route_ipv4``-style. ``this`` is the tuple this direction's
    packets arrive with, ``other`` the opposite direction's; ``statements`` are the policy's for the
    connection."""
    vlans = port_vlans or {}
    acts: list[FlowAction] = []
    if in_port is not None and in_port in vlans:
        acts.append(VlanPop())
    acts += [SetEthSrc(smac), SetEthDst(dmac)]
    acts += nat_actions(this, other)
    acts += statements
    acts.append(DecTtl())
    if out_port in vlans:
        acts.append(VlanPush(vlans[out_port]))
    acts.append(Output(out_port))
    return tuple(acts)


def with_dmac(actions: ActionList, mac: bytes) -> ActionList:
    """The same list sending to ``mac``: a direction forwarded while its next hop was still unresolved
    gets its list completed once the neighbour answers."""
    return tuple(SetEthDst(mac) if isinstance(a, SetEthDst) else a for a in actions)


def execute(actions: ActionList, pkt: P.Packet, *, count: CountHook | None = None,
            pipeline_vlans: Mapping[int, int] | None = None) -> int:
    """Apply the list to a parsed packet in place (checksums fixed incrementally); returns the output port.

    Every path runs this one executor: the slow path on the packets it forwards, the software fast path on
    the packets of offloaded connections. ``count`` receives the named counters' increments (one packet and
    its frame length, the bytes the switch's counters count). VLAN: the switch pipeline pops the tag on ingress and pushes it on egress for its
    VLAN ports (``pipeline_vlans``, packet-outs included), so those actions are already done there; anywhere
    else the tag is popped / pushed here, after the header rewrites so that no offset moves under them.
    """
    out: int | None = None
    pop = False
    push: int | None = None
    retag: int | None = None
    for act in actions:
        if out is not None:
            raise ActionError(f"{act} follows the output action; output must be last")
        match act:
            case SetEthSrc(mac):
                pkt.data[6:12] = mac
            case SetEthDst(mac):
                pkt.data[0:6] = mac
            case SetIpSrc(addr):
                P.set_addr(pkt, "src", addr)
            case SetIpDst(addr):
                P.set_addr(pkt, "dst", addr)
            case SetL4Src(port):
                P.set_port(pkt, "src", port)
            case SetL4Dst(port):
                P.set_port(pkt, "dst", port)
            case SetDscp(dscp):
                P.set_dscp(pkt, dscp)
            case Count(name):
                if count is not None:
                    count(name, 1, len(pkt.data))  # frame bytes, as the switch's counters count them
            case SetVlan(vid):
                retag = vid
            case DecTtl():
                P.dec_ttl(pkt)
            case VlanPop():
                pop = True
            case VlanPush(vid, _pcp):
                push = vid
            case Output(port):
                out = port
    if out is None:
        raise ActionError("the action list has no output action")
    if push is not None and retag is not None:
        push = retag  # the tag the port would push, with the statement's VLAN id
    if pipeline_vlans is not None:
        tagged = pkt.l3 == 18
        if tagged and pop:
            del pkt.data[12:16]
            _shift(pkt, -4)
            tagged = False
        if push is not None and pipeline_vlans.get(out) != push:
            tag = bytes((push >> 8, push & 0xFF))
            if tagged:
                pkt.data[14:16] = bytes((pkt.data[14] & 0xF0 | tag[0], tag[1]))
            else:
                pkt.data[12:12] = b"\x81\x00" + tag
                _shift(pkt, 4)
    return out


def _shift(pkt: P.Packet, by: int) -> None:
    """The packet's header offsets after a VLAN tag went in or out (the slow path goes on using them)."""
    pkt.l3 += by
    if pkt.l4 >= 0:
        pkt.l4 += by
    if pkt.frag_hdr >= 0:
        pkt.frag_hdr += by


@dataclass(frozen=True, slots=True)
class Rewrite:
    """An action list flattened to what a packet ends up with: what the P4 action's parameters need."""

    out_port: int
    smac: bytes | None = None
    dmac: bytes | None = None
    saddr: bytes | None = None
    daddr: bytes | None = None
    sport: int | None = None
    dport: int | None = None
    dec_ttl: bool = False
    vlan_pop: bool = False
    vlan_push: int | None = None
    dscp: int | None = None
    counters: tuple[str, ...] = ()
    vlan_retag: int | None = None  # the VLAN id a tagged egress port's tag gets instead of the port's

    @property
    def nat(self) -> bool:
        return any(v is not None for v in (self.saddr, self.daddr, self.sport, self.dport))


def flatten(actions: ActionList) -> Rewrite:
    """Fold the ordered list into a :class:`Rewrite`; later set actions of the same field win."""
    out: int | None = None
    kw: dict[str, object] = {}
    for i, act in enumerate(actions):
        if out is not None:
            raise ActionError(f"action {i} ({act}) follows the output action; output must be last")
        match act:
            case SetEthSrc(mac):
                kw["smac"] = mac
            case SetEthDst(mac):
                kw["dmac"] = mac
            case SetIpSrc(addr):
                kw["saddr"] = addr
            case SetIpDst(addr):
                kw["daddr"] = addr
            case SetL4Src(port):
                kw["sport"] = port
            case SetL4Dst(port):
                kw["dport"] = port
            case SetDscp(dscp):
                kw["dscp"] = dscp
            case Count(name):
                kw["counters"] = (*kw.get("counters", ()), name)  # type: ignore[misc]
            case SetVlan(vid):
                kw["vlan_retag"] = vid
            case DecTtl():
                kw["dec_ttl"] = True
            case VlanPop():
                kw["vlan_pop"] = True
            case VlanPush(vid, _pcp):
                kw["vlan_push"] = vid
            case Output(port):
                out = port
    if out is None:
        raise ActionError("the action list has no output action")
    return Rewrite(out_port=out, **kw)  # type: ignore[arg-type]
