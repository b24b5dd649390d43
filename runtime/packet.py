"""Frames as the slow path sees them: a struct-based parser for the hot fields and builders for what the
router itself sends (ARP, neighbour discovery, ICMP/ICMPv6 errors and echo replies).

The parser works on a ``bytearray`` and records offsets, so the forwarding path rewrites in place (MACs, TTL,
NAT) with incremental checksum updates (RFC 1624), as the kernel's ``csum_replace`` does; only packets the
router originates are checksummed in full.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPV6_EXT_HEADERS = frozenset({0, 43, 44, 51, 60, 135, 139, 140})
IPV6_FRAGMENT = 44

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

BROADCAST = b"\xff" * 6
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")

_H = struct.Struct("!H")
_HH = struct.Struct("!HH")


class PacketError(ValueError):
    """A frame the slow path cannot parse (truncated, bad version, bad lengths)."""


@dataclass(slots=True)
class Packet:
    """A parsed frame. Offsets index ``data``; ``l4`` is -1 when there is no transport header to look at
    (a non-first fragment, an unknown protocol)."""

    data: bytearray
    ethertype: int
    l3: int = 14
    version: int = 0  # 4, 6, or 0 (not IP)
    ihl: int = 0  # IPv4 header length in bytes / IPv6 40 + extension headers before the transport
    proto: int = 0  # transport protocol (after IPv6 extension headers)
    src: bytes = b""
    dst: bytes = b""
    ttl: int = 0
    l4: int = -1
    sport: int = 0  # TCP/UDP port, or the ICMP echo id
    dport: int = 0  # TCP/UDP port, or the ICMP echo id (an echo's id is both "ports" of its tuple)
    tcp_flags: int = 0
    icmp_type: int = -1
    icmp_code: int = 0
    frag: bool = False  # a fragment (IPv4 MF/offset, or an IPv6 fragment header)
    frag_off: int = 0  # bytes
    more_frags: bool = False
    frag_id: int = 0
    frag_hdr: int = -1  # IPv6 fragment header offset
    df: bool = False
    options: bool = False  # IPv4 options present
    frag_max: int = 0  # reassembled from fragments: the largest fragment's IP length (to refragment alike)
    unfrag_len: int = 0  # reassembled IPv6: length of the unfragmentable part

    @property
    def dst_mac(self) -> bytes:
        return bytes(self.data[0:6])

    @property
    def src_mac(self) -> bytes:
        return bytes(self.data[6:12])

    @property
    def ip_len(self) -> int:
        """Length of the IP packet (header included)."""
        if self.version == 4:
            return _H.unpack_from(self.data, self.l3 + 2)[0]
        return _H.unpack_from(self.data, self.l3 + 4)[0] + 40

    @property
    def l4_payload_len(self) -> int:
        return self.l3 + self.ip_len - self.l4 if self.l4 >= 0 else 0


def parse(frame: bytes | bytearray) -> Packet:
    data = frame if isinstance(frame, bytearray) else bytearray(frame)
    if len(data) < 14:
        raise PacketError(f"runt frame ({len(data)} bytes)")
    (etype,) = _H.unpack_from(data, 12)
    l3 = 14
    if etype == ETH_P_8021Q:  # the P4 program pops VLAN tags; tolerate one anyway
        if len(data) < 18:
            raise PacketError("truncated 802.1Q header")
        (etype,) = _H.unpack_from(data, 16)
        l3 = 18
    pkt = Packet(data, etype, l3)
    if etype == ETH_P_IP:
        _parse_ipv4(pkt)
    elif etype == ETH_P_IPV6:
        _parse_ipv6(pkt)
    return pkt


def _parse_ipv4(pkt: Packet) -> None:
    d, o = pkt.data, pkt.l3
    if len(d) < o + 20:
        raise PacketError("truncated IPv4 header")
    vihl = d[o]
    if vihl >> 4 != 4:
        raise PacketError(f"IPv4 ethertype with IP version {vihl >> 4}")
    ihl = (vihl & 0xF) * 4
    total = _H.unpack_from(d, o + 2)[0]
    if ihl < 20 or total < ihl or len(d) < o + total:
        raise PacketError(f"bad IPv4 lengths (ihl {ihl}, total {total}, frame {len(d) - o})")
    if len(d) > o + total:  # Ethernet padding
        del d[o + total:]
    flags_off = _H.unpack_from(d, o + 6)[0]
    pkt.version, pkt.ihl, pkt.ttl, pkt.proto = 4, ihl, d[o + 8], d[o + 9]
    pkt.src, pkt.dst = bytes(d[o + 12:o + 16]), bytes(d[o + 16:o + 20])
    pkt.options = ihl > 20
    pkt.df = bool(flags_off & 0x4000)
    pkt.more_frags = bool(flags_off & 0x2000)
    pkt.frag_off = (flags_off & 0x1FFF) * 8
    pkt.frag = pkt.more_frags or pkt.frag_off > 0
    pkt.frag_id = _H.unpack_from(d, o + 4)[0]
    if pkt.frag_off == 0:
        _parse_l4(pkt, o + ihl, o + total)


def _parse_ipv6(pkt: Packet) -> None:
    d, o = pkt.data, pkt.l3
    if len(d) < o + 40:
        raise PacketError("truncated IPv6 header")
    if d[o] >> 4 != 6:
        raise PacketError(f"IPv6 ethertype with IP version {d[o] >> 4}")
    plen = _H.unpack_from(d, o + 4)[0]
    end = o + 40 + plen
    if len(d) < end:
        raise PacketError(f"truncated IPv6 packet (payload length {plen}, have {len(d) - o - 40})")
    if len(d) > end:
        del d[end:]
    pkt.version, pkt.ttl = 6, d[o + 7]
    pkt.src, pkt.dst = bytes(d[o + 8:o + 24]), bytes(d[o + 24:o + 40])
    nh, off = d[o + 6], o + 40
    while nh in IPV6_EXT_HEADERS:
        if off + 8 > end:
            raise PacketError("truncated IPv6 extension header")
        if nh == IPV6_FRAGMENT:
            fo = _H.unpack_from(d, off + 2)[0]
            pkt.frag_hdr = off
            pkt.frag_off = fo & 0xFFF8
            pkt.more_frags = bool(fo & 1)
            pkt.frag = True
            pkt.frag_id = struct.unpack_from("!I", d, off + 4)[0]
            nh, off = d[off], off + 8
            if pkt.frag_off:
                pkt.proto, pkt.ihl = nh, off - o
                return
            continue
        if nh in (50, 59):  # ESP: opaque from here
            break
        hlen = (d[off + 1] + 2) * 4 if nh == 51 else (d[off + 1] + 1) * 8
        nh, off = d[off], off + hlen
    pkt.proto, pkt.ihl = nh, off - o
    _parse_l4(pkt, off, end)


def _parse_l4(pkt: Packet, off: int, end: int) -> None:
    d = pkt.data
    proto = pkt.proto
    if proto in (IPPROTO_TCP, IPPROTO_UDP):
        if end - off < (20 if proto == IPPROTO_TCP else 8):
            if pkt.frag:
                return  # a first fragment too short for the header: leave it to reassembly
            raise PacketError(f"truncated {'TCP' if proto == IPPROTO_TCP else 'UDP'} header")
        pkt.l4 = off
        pkt.sport, pkt.dport = _HH.unpack_from(d, off)
        if proto == IPPROTO_TCP:
            pkt.tcp_flags = d[off + 13]
    elif proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        if end - off < 8:
            if pkt.frag:
                return
            raise PacketError("truncated ICMP header")
        pkt.l4 = off
        pkt.icmp_type, pkt.icmp_code = d[off], d[off + 1]
        if is_echo(pkt.version, pkt.icmp_type):
            pkt.sport = pkt.dport = _H.unpack_from(d, off + 4)[0]


ICMP_ECHO_REPLY, ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_TIME_EXCEEDED = 0, 3, 8, 11
ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})
ICMPV6_DEST_UNREACH, ICMPV6_PKT_TOOBIG, ICMPV6_TIME_EXCEED, ICMPV6_PARAMPROB = 1, 2, 3, 4
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129
ND_ROUTER_SOLICIT, ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT = 133, 135, 136
ICMPV6_ERRORS = frozenset({1, 2, 3, 4})


def is_echo(version: int, icmp_type: int) -> bool:
    if version == 4:
        return icmp_type in (ICMP_ECHO, ICMP_ECHO_REPLY)
    return icmp_type in (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)


def is_icmp_error(pkt: Packet) -> bool:
    if pkt.proto == IPPROTO_ICMP:
        return pkt.icmp_type in ICMP_ERRORS
    if pkt.proto == IPPROTO_ICMPV6:
        return pkt.icmp_type in ICMPV6_ERRORS
    return False


# ---------------------------------------------------------------------------------------------- checksums

def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of ``data``, folded and complemented."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The un-folded sum of the IPv4/IPv6 pseudo-header."""
    if len(src) == 4:
        hdr = src + dst + struct.pack("!BBH", 0, proto, length)
    else:
        hdr = src + dst + struct.pack("!I3xB", length, proto)
    return sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))


_WORDS = {n: struct.Struct(f"!{n // 2}H") for n in (2, 4, 6, 16)}


def csum_replace(csum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 incremental update of a checksum field when ``old`` (even length) becomes ``new``.

    The sum is the same as adding ``~old_word + new_word`` word by word (``~w & 0xFFFF == 0xFFFF - w``), done
    with one unpack per side: it runs for every address, port and TTL a slow-path packet has rewritten."""
    words = _WORDS.get(len(old)) or struct.Struct(f"!{len(old) // 2}H")
    s = (~csum & 0xFFFF) + (len(old) // 2) * 0xFFFF - sum(words.unpack(old)) + sum(words.unpack(new))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _replace_at(d: bytearray, csum_off: int, old: bytes, new: bytes, udp: bool = False) -> None:
    cur = _H.unpack_from(d, csum_off)[0]
    if udp and cur == 0:
        return  # IPv4 UDP without checksum stays without
    val = csum_replace(cur, old, new)
    if udp and val == 0:
        val = 0xFFFF
    _H.pack_into(d, csum_off, val)


def l4_csum_offset(pkt: Packet) -> int:
    """Offset of the transport checksum field, or -1 (no transport header)."""
    if pkt.l4 < 0:
        return -1
    if pkt.proto == IPPROTO_TCP:
        return pkt.l4 + 16
    if pkt.proto == IPPROTO_UDP:
        return pkt.l4 + 6
    if pkt.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        return pkt.l4 + 2
    return -1


# ---------------------------------------------------------------------------------------------- in-place rewrites

def set_macs(pkt: Packet, src: bytes, dst: bytes) -> None:
    pkt.data[0:6] = dst
    pkt.data[6:12] = src


def dec_ttl(pkt: Packet) -> None:
    d, o = pkt.data, pkt.l3
    if pkt.version == 4:
        old = bytes(d[o + 8:o + 10])
        d[o + 8] -= 1
        _replace_at(d, o + 10, old, bytes(d[o + 8:o + 10]))
    else:
        d[o + 7] -= 1
    pkt.ttl -= 1


def set_dscp(pkt: Packet, dscp: int) -> None:
    """Set the DSCP (upper six bits of the IPv4 TOS / IPv6 traffic class), keeping the ECN bits. IPv4: the
    header checksum follows (``ipv4_change_dsfield``); no transport checksum covers the field."""
    d, o = pkt.data, pkt.l3
    if pkt.version == 4:
        old = bytes(d[o:o + 2])
        d[o + 1] = (dscp << 2) | (d[o + 1] & 0x03)
        _replace_at(d, o + 10, old, bytes(d[o:o + 2]))
    elif pkt.version == 6:
        # traffic class straddles bytes 0-1: version(4) tc(8) flow label(20); DSCP is tc's top six bits
        tc = ((d[o] & 0x0F) << 4) | (d[o + 1] >> 4)
        tc = (dscp << 2) | (tc & 0x03)
        d[o] = (d[o] & 0xF0) | (tc >> 4)
        d[o + 1] = ((tc & 0x0F) << 4) | (d[o + 1] & 0x0F)


def dscp_of(pkt: Packet) -> int:
    d, o = pkt.data, pkt.l3
    if pkt.version == 4:
        return d[o + 1] >> 2
    return ((((d[o] & 0x0F) << 4) | (d[o + 1] >> 4)) >> 2) if pkt.version == 6 else 0


def set_addr(pkt: Packet, which: str, addr: bytes) -> None:
    """Rewrite the source or destination address, fixing the IPv4 header and transport checksums."""
    d, o = pkt.data, pkt.l3
    off = o + (12 if which == "src" else 16) if pkt.version == 4 else o + (8 if which == "src" else 24)
    old = bytes(d[off:off + len(addr)])
    if old == addr:
        return
    d[off:off + len(addr)] = addr
    if pkt.version == 4:
        _replace_at(d, o + 10, old, addr)
    cso = l4_csum_offset(pkt)
    # ICMPv4's checksum has no pseudo-header; TCP, UDP and ICMPv6 have one.
    if cso >= 0 and pkt.proto != IPPROTO_ICMP:
        _replace_at(d, cso, old, addr, udp=pkt.proto == IPPROTO_UDP and pkt.version == 4)
    if which == "src":
        pkt.src = addr
    else:
        pkt.dst = addr


def set_port(pkt: Packet, which: str, port: int) -> None:
    """Rewrite the source or destination port (for an ICMP echo: its id, whichever ``which``)."""
    if pkt.l4 < 0:
        return
    d = pkt.data
    off = pkt.l4 + 4 if pkt.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6) else pkt.l4 + (0 if which == "src" else 2)
    old = bytes(d[off:off + 2])
    new = _H.pack(port)
    if old == new:
        return
    d[off:off + 2] = new
    cso = l4_csum_offset(pkt)
    if cso >= 0:
        _replace_at(d, cso, old, new, udp=pkt.proto == IPPROTO_UDP and pkt.version == 4)
    if pkt.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        pkt.sport = pkt.dport = port
    elif which == "src":
        pkt.sport = port
    else:
        pkt.dport = port


# ---------------------------------------------------------------------------------------------- builders

def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + _H.pack(ethertype) + payload


def arp(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    return struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op) + sha + spa + tha + tpa


@dataclass(frozen=True, slots=True)
class Arp:
    op: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes


def parse_arp(pkt: Packet) -> Arp:
    d, o = pkt.data, pkt.l3
    if len(d) < o + 28:
        raise PacketError("truncated ARP packet")
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", d, o)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        raise PacketError("ARP for something other than IPv4 over Ethernet")
    return Arp(op, bytes(d[o + 8:o + 14]), bytes(d[o + 14:o + 18]), bytes(d[o + 18:o + 24]), bytes(d[o + 24:o + 28]))


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, *, ttl: int = 64, ident: int = 0, tos: int = 0,
         df: bool = False) -> bytes:
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), ident, 0x4000 if df else 0,
                                ttl, proto, 0, src, dst))
    _H.pack_into(hdr, 10, checksum(hdr))
    return bytes(hdr) + payload


def ipv6(src: bytes, dst: bytes, nh: int, payload: bytes, *, hlim: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, hlim, src, dst) + payload


def icmp4(icmp_type: int, code: int, rest: bytes, body: bytes) -> bytes:
    msg = bytearray(struct.pack("!BBH", icmp_type, code, 0) + rest + body)
    _H.pack_into(msg, 2, checksum(msg))
    return bytes(msg)


def icmp6(src: bytes, dst: bytes, icmp_type: int, code: int, rest: bytes, body: bytes) -> bytes:
    msg = bytearray(struct.pack("!BBH", icmp_type, code, 0) + rest + body)
    _H.pack_into(msg, 2, checksum(msg, pseudo_sum(src, dst, IPPROTO_ICMPV6, len(msg))))
    return bytes(msg)


def solicited_node(addr: bytes) -> bytes:
    return bytes.fromhex("ff0200000000000000000001ff") + addr[13:16]


def multicast_mac(addr6: bytes) -> bytes:
    return b"\x33\x33" + addr6[12:16]


def nd_option(pkt: Packet, opt_type: int) -> bytes | None:
    """A link-layer address option (1 source, 2 target) of a neighbour discovery message."""
    d = pkt.data
    off = pkt.l4 + (24 if pkt.icmp_type in (ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT) else 8)
    end = pkt.l3 + pkt.ip_len
    while off + 2 <= end:
        t, ln = d[off], d[off + 1] * 8
        if ln == 0:
            return None
        if t == opt_type and ln >= 8:
            return bytes(d[off + 2:off + 8])
        off += ln
    return None


def nd_target(pkt: Packet) -> bytes:
    if pkt.l4 + 24 > len(pkt.data):
        raise PacketError("truncated neighbour discovery message")
    return bytes(pkt.data[pkt.l4 + 8:pkt.l4 + 24])


def fragment_ipv4(ip_packet: bytes, mtu: int) -> list[bytes]:
    """Split an IPv4 packet (header included) into fragments of at most ``mtu`` bytes (RFC 791; options
    without the copy flag go only into the first fragment)."""
    ihl = (ip_packet[0] & 0xF) * 4
    header, payload = bytearray(ip_packet[:ihl]), ip_packet[ihl:]
    flags_off = _H.unpack_from(header, 6)[0]
    base_off = (flags_off & 0x1FFF) * 8
    last_mf = flags_off & 0x2000
    later_opts = bytearray()
    i = 20
    while i < ihl:  # options copied into every fragment
        opt = header[i]
        if opt == 0:
            break
        if opt == 1:
            i += 1
            continue
        ln = header[i + 1] if i + 1 < ihl else 0
        if ln < 2:
            break
        if opt & 0x80:
            later_opts += header[i:i + ln]
        i += ln
    later_opts += b"\0" * (-len(later_opts) % 4)
    out = []
    pos = 0
    first = True
    while pos < len(payload):
        hdr = bytearray(header if first else header[:20] + later_opts)
        hdr[0] = 0x40 | (len(hdr) // 4)
        room = (mtu - len(hdr)) & ~7
        if room <= 0:
            raise PacketError(f"MTU {mtu} too small to fragment")
        chunk = payload[pos:pos + room]
        more = pos + len(chunk) < len(payload)
        _H.pack_into(hdr, 2, len(hdr) + len(chunk))
        _H.pack_into(hdr, 6, ((base_off + pos) // 8) | (0x2000 if more or last_mf else 0))
        _H.pack_into(hdr, 10, 0)
        _H.pack_into(hdr, 10, checksum(hdr))
        out.append(bytes(hdr) + chunk)
        pos += len(chunk)
        first = False
    return out


def fragment_ipv6(ip_packet: bytes, unfrag_len: int, mtu: int, ident: int) -> list[bytes]:
    """Split an IPv6 packet into fragments of at most ``mtu`` bytes. ``unfrag_len`` is the length of the
    unfragmentable part (the fixed header and the extension headers that precede the fragment header); the
    next-header field that points past it is found by walking from the fixed header."""
    unfrag = bytearray(ip_packet[:unfrag_len])
    rest = ip_packet[unfrag_len:]
    # find the next-header byte that names the first fragmentable header
    nh_off, off = 6, 40
    while off < unfrag_len:
        nh_off = off
        off += (unfrag[off + 1] + 1) * 8
    next_hdr = unfrag[nh_off]
    unfrag[nh_off] = IPV6_FRAGMENT
    room = (mtu - unfrag_len - 8) & ~7
    if room <= 0:
        raise PacketError(f"MTU {mtu} too small to fragment")
    out = []
    pos = 0
    while pos < len(rest):
        chunk = rest[pos:pos + room]
        more = pos + len(chunk) < len(rest)
        hdr = bytearray(unfrag)
        _H.pack_into(hdr, 4, len(hdr) - 40 + 8 + len(chunk))
        out.append(bytes(hdr) + struct.pack("!BBHI", next_hdr, 0, pos | int(more), ident) + chunk)
        pos += len(chunk)
    return out
