"""The software fast path: forward a punted packet straight from its flow entry.

``nf_flow_offload_ip_hook`` / ``nf_flow_offload_ipv6_hook`` (net/netfilter/nf_flow_table_ip.c): parse the
tuple (``nf_flow_tuple_ip``: no fragments, no IP options, TCP or UDP only, TTL above 1), look the flow up,
refuse packets over the route MTU (``nf_flow_exceeds_mtu``), TCP FIN/RST and every later packet of a
closing flow (``nf_flow_state_check`` tears the flow down, so the kernel's conntrack sees the rest),
refresh the flow, then apply the direction's action list: NAT with incremental checksum updates
(``nf_flow_snat_ip``/``nf_flow_dnat_port`` and ``inet_proto_csum_replace*``: a UDP checksum of zero stays
zero, a computed zero becomes 0xffff), TTL/hop limit minus one (``ip_decrease_ttl``), new MACs, out port.
Anything it will not take returns ``None`` and goes to the full slow path, as the hook's ``NF_ACCEPT``.

Plain ``struct``/``bytearray`` work, no scapy: this runs per packet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def csum_replace(check: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3, ``HC' = ~(~HC + ~m + m')`` over 16-bit words (``inet_proto_csum_replace4/16/2``)."""
    s = ~check & 0xFFFF
    for i in range(0, len(old), 2):
        s += (~((old[i] << 8) | old[i + 1]) & 0xFFFF) + ((new[i] << 8) | new[i + 1])
    return ~_fold(s) & 0xFFFF


def csum_replace16(check: int, old: int, new: int) -> int:
    return ~_fold((~check & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


class FastPath:
    """Per-packet forwarding from the flowtable; see the module docstring.

    ``pipeline_vlans`` lists ports whose VLAN tag the switch pipeline itself pops on ingress and pushes on
    egress (packet-outs included): for those the action list's VLAN actions are already done, so they are
    skipped here rather than tagging twice.
    """

    def __init__(self, flowtable: FlowTable, pipeline_vlans: Mapping[int, int] | None = None) -> None:
        self.ft = flowtable
        self.pipeline_vlans = dict(pipeline_vlans or {})

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
            ft.refresh(flow)
            ft.account(flow, d, l3_len)
        rw = fd.rewrite
        buf = bytearray(frame[:l3 + l3_len])  # without bytes after the IP packet, as ip_rcv trims them
        if proto == IPPROTO_TCP:
            cso = th + 16
            l4_check: int | None = (buf[cso] << 8) | buf[cso + 1]
        else:
            cso = th + 6
            l4_check = (buf[cso] << 8) | buf[cso + 1]
            if l4_check == 0:
                l4_check = None  # no UDP checksum: stays zero
        alen = 4 if family == 4 else 16
        s_off, d_off = (l3 + 12, l3 + 16) if family == 4 else (l3 + 8, l3 + 24)
        ip_check = (buf[l3 + 10] << 8) | buf[l3 + 11] if family == 4 else 0
        for off, new in ((s_off, rw.saddr), (d_off, rw.daddr)):
            if new is not None and len(new) == alen:
                old = bytes(buf[off:off + alen])
                if old != new:
                    if family == 4:
                        ip_check = csum_replace(ip_check, old, new)
                    if l4_check is not None:
                        l4_check = csum_replace(l4_check, old, new)
                    buf[off:off + alen] = new
        for off, port in ((th, rw.sport), (th + 2, rw.dport)):
            if port is not None:
                old_port = (buf[off] << 8) | buf[off + 1]
                if old_port != port:
                    if l4_check is not None:
                        l4_check = csum_replace16(l4_check, old_port, port)
                    buf[off] = port >> 8
                    buf[off + 1] = port & 0xFF
        if rw.dec_ttl:
            if family == 4:
                ttl = buf[l3 + 8]
                ip_check = csum_replace16(ip_check, (ttl << 8) | buf[l3 + 9], ((ttl - 1) << 8) | buf[l3 + 9])
                buf[l3 + 8] = ttl - 1
            else:
                buf[l3 + 7] -= 1
        if family == 4:
            buf[l3 + 10] = ip_check >> 8
            buf[l3 + 11] = ip_check & 0xFF
        if l4_check is not None:
            if proto == IPPROTO_UDP and l4_check == 0:
                l4_check = 0xFFFF  # CSUM_MANGLED_0
            buf[cso] = l4_check >> 8
            buf[cso + 1] = l4_check & 0xFF
        if rw.dmac is not None:
            buf[0:6] = rw.dmac
        if rw.smac is not None:
            buf[6:12] = rw.smac
        # VLAN: the pipeline already popped/pushes the tag on its VLAN ports; elsewhere do it here.
        if l3 == 18 and rw.vlan_pop:
            del buf[12:16]
        push = rw.vlan_push
        if push is not None and self.pipeline_vlans.get(rw.out_port) != push:
            if l3 == 18 and not rw.vlan_pop:
                buf[14] = (buf[14] & 0xF0) | (push >> 8)
                buf[15] = push & 0xFF
            else:
                buf[12:12] = bytes((0x81, 0x00, push >> 8, push & 0xFF))
        return Forwarded(rw.out_port, bytes(buf), flow, d)
