"""What happens to one direction's packets: an ordered list of actions, like the kernel's ``flow_action``.

The slow path makes the list once per direction from its decision (route, neighbour, NAT) and executes it on
the packet with :func:`execute`; the same list is stored on the connection (``Conn.actions``) for the
flowtable (issue 8): its software fast path executes it, the offload work turns it into the P4 action and
parameters (:func:`flatten`), ``offloadgen flows`` prints it (:func:`format_actions`). New statements (DSCP,
...) are added here, once, and every path sees them.

The order follows ``nf_flow_rule_route_ipv4``: VLAN pop, Ethernet source and destination, source NAT
(address, port), destination NAT (address, port), TTL decrement, VLAN push, output (always last). NAT values
come from the *other* direction's tuple (``flow_offload_ipv4_snat``/``_dnat``): a packet of this direction
leaves looking like the other direction's tuple reversed.

For an ICMP echo, "port" means its identifier (both ports of its conntrack tuple are the id).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
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


FlowAction = SetEthSrc | SetEthDst | SetIpSrc | SetIpDst | SetL4Src | SetL4Dst | DecTtl | VlanPush | VlanPop | Output
ActionList = tuple[FlowAction, ...]


class ActionError(ValueError):
    """An action list that no path can execute (no output, output not last)."""


def format_actions(actions: ActionList) -> str:
    return ",".join(str(a) for a in actions)


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
                  in_port: int | None = None, port_vlans: Mapping[int, int] | None = None) -> ActionList:
    """One direction's actions, ``nf_flow_rule_route_ipv4``-style. ``this`` is the tuple this direction's
    packets arrive with, ``other`` the opposite direction's."""
    vlans = port_vlans or {}
    acts: list[FlowAction] = []
    if in_port is not None and in_port in vlans:
        acts.append(VlanPop())
    acts += [SetEthSrc(smac), SetEthDst(dmac)]
    acts += nat_actions(this, other)
    acts.append(DecTtl())
    if out_port in vlans:
        acts.append(VlanPush(vlans[out_port]))
    acts.append(Output(out_port))
    return tuple(acts)


def execute(actions: ActionList, pkt: P.Packet) -> int:
    """Apply the list to a parsed packet in place (checksums fixed incrementally); returns the output port.

    VLAN push/pop are the P4 program's business on packet-out (per-port tagging) and are no-ops here.
    """
    out: int | None = None
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
            case DecTtl():
                P.dec_ttl(pkt)
            case VlanPush() | VlanPop():
                pass
            case Output(port):
                out = port
    if out is None:
        raise ActionError("the action list has no output action")
    return out


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
