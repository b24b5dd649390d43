"""Route and neighbour lookups in the router namespace over rtnetlink: what ``nft_flow_offload`` takes
from the dst cache (the output device and the next hop) and from the neighbour table (the MAC)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass

from pyroute2.netlink import NETLINK_ROUTE, NLM_F_CREATE
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from .nl import NetlinkError, NlRequester

RTM_NEWNEIGH = 28
RTM_GETNEIGH = 30
RTM_GETROUTE = 26
RTN_UNICAST = 1
NUD_VALID = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT
NTF_USE = 0x01


@dataclass(frozen=True, slots=True)
class RouteHop:
    oif: int
    next_hop: bytes  # the gateway, or the destination itself when on-link


def _fam(addr: bytes) -> int:
    return socket.AF_INET if len(addr) == 4 else socket.AF_INET6


class Rtnl:
    def __init__(self, netns: str) -> None:
        self.req = NlRequester(netns, NETLINK_ROUTE)

    def close(self) -> None:
        self.req.close()

    def route(self, dst: bytes) -> RouteHop | None:
        """``ip route get DST``: None when it is not a forwarded unicast route (local, unreachable)."""
        m = rtmsg()
        m["family"] = _fam(dst)
        m["dst_len"] = len(dst) * 8
        m["attrs"] = [["RTA_DST", str(ipaddress.ip_address(dst))]]
        try:
            ans = self.req.request(m, RTM_GETROUTE, f"route to {ipaddress.ip_address(dst)}")
        except NetlinkError:
            return None
        if not ans or ans[0]["type"] != RTN_UNICAST:
            return None
        oif = ans[0].get_attr("RTA_OIF")
        gw = ans[0].get_attr("RTA_GATEWAY")
        if oif is None:
            return None
        return RouteHop(int(oif), ipaddress.ip_address(gw).packed if gw else dst)

    def neighbour(self, ifindex: int, addr: bytes) -> bytes | None:
        """The MAC of ``addr`` on ``ifindex`` when the kernel has a usable entry."""
        m = ndmsg()
        m["family"] = _fam(addr)
        for n in self.req.request(m, RTM_GETNEIGH, "neighbour dump", dump=True):
            if n["ifindex"] != ifindex or not n["state"] & NUD_VALID:
                continue
            dst = n.get_attr("NDA_DST")
            if dst is None or ipaddress.ip_address(dst).packed != addr:
                continue
            ll = n.get_attr("NDA_LLADDR")
            if ll:
                return bytes(int(x, 16) for x in ll.split(":"))
        return None

    def resolve(self, ifindex: int, addr: bytes) -> None:
        """Ask the kernel to resolve ``addr`` (``NTF_USE``: ``neigh_event_send``), as a packet to it would."""
        m = ndmsg()
        m["family"] = _fam(addr)
        m["ifindex"] = ifindex
        m["flags"] = NTF_USE
        m["state"] = 0
        m["attrs"] = [["NDA_DST", str(ipaddress.ip_address(addr))]]
        with contextlib.suppress(NetlinkError):
            self.req.request(m, RTM_NEWNEIGH, f"resolving {ipaddress.ip_address(addr)}", flags=NLM_F_CREATE)
