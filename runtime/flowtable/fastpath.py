"""The software fast path: forward a punted packet straight from its flow entry.

``nf_flow_offload_ip_hook`` / ``nf_flow_offload_ipv6_hook`` (net/netfilter/nf_flow_table_ip.c): parse the
tuple (``nf_flow_tuple_ip``: no fragments, no IP options, TCP or UDP only, TTL above 1), look the flow up,
refuse packets over the route MTU (``nf_flow_exceeds_mtu``), TCP FIN/RST and every later packet of a
closing flow (``nf_flow_state_check`` tears the flow down, so the kernel's conntrack sees the rest),
refresh the flow, then execute the direction's action list with :func:`runtime.actions.execute`, the
executor the slow path uses too: NAT with incremental checksum updates (``nf_flow_snat_ip``/
``nf_flow_dnat_port`` and ``inet_proto_csum_replace*``: a UDP checksum of zero stays zero, a computed zero
becomes 0xffff), the policy's statements (DSCP, named counters), TTL/hop limit minus one
(``ip_decrease_ttl``), new MACs, out port. Anything it will not take returns ``None`` and goes to the full
slow path, as the hook's ``NF_ACCEPT``.

Plain ``struct``/``bytearray`` work, no scapy: this runs per packet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .. import packet as P
from ..actions import CountHook, execute
from .core import Flow, FlowTable
from .model import IPPROTO_TCP, IPPROTO_UDP, Dir, FlowFlag, FlowTuple

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
TCP_FIN, TCP_SYN, TCP_RST = 0x01, 0x02, 0x04


@dataclass(slots=True)
class Forwarded:
    """The fast path's answer: send ``frame`` out of ``port``; it belonged to ``flow``'s ``direction``."""

    port: int
    frame: bytes
    flow: Flow
    direction: Dir


class FastPath:
    """Per-packet forwarding from the flowtable; see the module docstring.

    ``pipeline_vlans`` lists ports whose VLAN tag the switch pipeline itself pops on ingress and pushes on
    egress (packet-outs included): for those the action list's VLAN actions are already done, so they are
    skipped here rather than tagging twice. ``count`` receives the named counters' increments.
    """

    def __init__(self, flowtable: FlowTable, pipeline_vlans: Mapping[int, int] | None = None,
                 count: CountHook | None = None) -> None:
        self.ft = flowtable
        self.pipeline_vlans = dict(pipeline_vlans or {})
        self.count = count

    def _except(self, reason: str) -> None:
        self.ft.count_exception(reason)

    def forward(self, frame: bytes, in_port: int) -> Forwarded | None:
        """Forward one frame that arrived on ``in_port``, or ``None``: "not for me, use the slow path"."""
        n = len(frame)
        if n < 14:
            return None
        if frame[0] & 1:  # to a broadcast/multicast MAC: ip_forward forwards only PACKET_HOST frames
            return None
        etype = (frame[12] << 8) | frame[13]
        l3 = 14
        if etype == ETH_P_8021Q:
            if n < 18:
                return None
            etype = (frame[16] << 8) | frame[17]
            l3 = 18
        if etype == ETH_P_IP:
            return self._ipv4(frame, in_port, l3)
        if etype == ETH_P_IPV6:
            return self._ipv6(frame, in_port, l3)
        return None

    # ------------------------------------------------------------------------------------------- IPv4

    def _ipv4(self, frame: bytes, in_port: int, l3: int) -> Forwarded | None:
        n = len(frame)
        if n < l3 + 20:
            return None
        vihl = frame[l3]
        if vihl >> 4 != 4:
            return None
        if vihl != 0x45:
            self._except("ip_options")
            return None
        if ((frame[l3 + 6] << 8) | frame[l3 + 7]) & 0x3FFF:  # MF flag or a fragment offset
            self._except("fragment")
            return None
        proto = frame[l3 + 9]
        if proto != IPPROTO_TCP and proto != IPPROTO_UDP:
            return None
        if frame[l3 + 8] <= 1:
            self._except("ttl")
            return None
        th = l3 + 20
        total_len = (frame[l3 + 2] << 8) | frame[l3 + 3]
        if n < th + (20 if proto == IPPROTO_TCP else 8) or n < l3 + total_len or total_len < 20:
            self._except("truncated")
            return None
        key = FlowTuple(in_port, frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20], proto,
                        (frame[th] << 8) | frame[th + 1], (frame[th + 2] << 8) | frame[th + 3])
        return self._forward(frame, key, l3, th, total_len, proto, 4)

    # ------------------------------------------------------------------------------------------- IPv6

    def _ipv6(self, frame: bytes, in_port: int, l3: int) -> Forwarded | None:
        n = len(frame)
        if n < l3 + 40 or frame[l3] >> 4 != 6:
            return None
        proto = frame[l3 + 6]
        if proto != IPPROTO_TCP and proto != IPPROTO_UDP:
            if proto in (0, 43, 44, 50, 51, 60, 135, 139, 140):
                self._except("ipv6_ext")
            return None
        if frame[l3 + 7] <= 1:
            self._except("ttl")
            return None
        th = l3 + 40
        total_len = 40 + ((frame[l3 + 4] << 8) | frame[l3 + 5])
        if n < th + (20 if proto == IPPROTO_TCP else 8) or n < l3 + total_len:
            self._except("truncated")
            return None
        key = FlowTuple(in_port, frame[l3 + 8:l3 + 24], frame[l3 + 24:l3 + 40], proto,
                        (frame[th] << 8) | frame[th + 1], (frame[th + 2] << 8) | frame[th + 3])
        return self._forward(frame, key, l3, th, total_len, proto, 6)

    # ------------------------------------------------------------------------------ lookup + rewrite

    def _forward(self, frame: bytes, key: FlowTuple, l3: int, th: int, l3_len: int, proto: int,
                 family: int) -> Forwarded | None:
        ft = self.ft
        with ft.lock:
            hit = ft.lookup(key)
            if hit is None:
                return None
            flow, d = hit
            fd = flow.dirs[d]
            if l3_len > fd.mtu:
                self._except("mtu")
                return None
            if proto == IPPROTO_TCP:
                tcp_flags = frame[th + 13]
                if flow.flags & FlowFlag.CLOSING:
                    # From the first FIN/RST on, every packet of the connection goes through conntrack (the
                    # kernel tears the flow down there and hands packets to the classic path): otherwise the
                    # last ACKs never reach it and it stays in LAST_ACK instead of reaching TIME_WAIT.
                    if tcp_flags & TCP_SYN:
                        # A new connection reusing the tuple: this flow must go so the new one can enter.
                        ft.teardown(flow)
                        self._except("syn_closing")
                    else:
                        self._except("closing")
                    return None
                if tcp_flags & (TCP_FIN | TCP_RST):
                    # Conntrack must see the close: slow path, and the flow starts closing.
                    ft.mark_closing(flow)
                    self._except("fin_rst")
                    return None
            try:
                pkt = P.parse(frame)
            except P.PacketError:  # lengths were checked; a frame that still does not parse is the slow path's
                self._except("malformed")
                return None
            ft.refresh(flow)
            ft.account(flow, d, l3_len)
        # The direction's action list, run by the same executor as the slow path's: one rewrite, one
        # checksum helper, the policy's statements included.
        out = execute(fd.actions, pkt, count=self.count, pipeline_vlans=self.pipeline_vlans)
        return Forwarded(out, bytes(pkt.data), flow, d)
