"""IP fragment reassembly for the slow path, as ``nf_defrag_ipv4``/``nf_defrag_ipv6`` do before conntrack:
conntrack and NAT need the transport header, which only the first fragment carries. The reassembled packet
remembers its largest fragment so the output path can fragment it the same way again (``frag_max_size``)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from . import packet as P

NS = 1_000_000_000


@dataclass
class _Pending:
    started_ns: int
    eth: bytes = b""
    header: bytes = b""  # the first fragment's IP header (IPv4) / unfragmentable part (IPv6)
    next_hdr: int = 0  # IPv6: the fragment header's next header
    pieces: dict[int, bytes] = field(default_factory=dict)
    total: int | None = None
    max_len: int = 0
    size: int = 0


class Reassembler:
    def __init__(self, clock: Callable[[], int], *, timeout_s: float = 30.0, max_pending: int = 1024,
                 max_size: int = 65535) -> None:
        self.clock = clock
        self.timeout_ns = int(timeout_s * NS)
        self.max_pending = max_pending
        self.max_size = max_size
        self._pending: dict[tuple[int, bytes, bytes, int, int], _Pending] = {}
        self.stats = {"fragments": 0, "reassembled": 0, "expired": 0, "dropped": 0}

    def add(self, pkt: P.Packet) -> P.Packet | None:
        """Take a fragment; returns the whole packet once every piece is there."""
        self.stats["fragments"] += 1
        d = pkt.data
        end = pkt.l3 + pkt.ip_len
        if pkt.version == 4:
            key = (4, pkt.src, pkt.dst, pkt.proto, pkt.frag_id)
            start = pkt.l3 + pkt.ihl
        else:
            key = (6, pkt.src, pkt.dst, 0, pkt.frag_id)
            start = pkt.frag_hdr + 8
        payload = bytes(d[start:end])
        if pkt.more_frags and len(payload) % 8:
            self.stats["dropped"] += 1
            raise P.PacketError("a fragment other than the last is not a multiple of 8 bytes")
        st = self._pending.get(key)
        if st is None:
            if len(self._pending) >= self.max_pending:
                self.expire(force_oldest=True)
            st = _Pending(self.clock())
            self._pending[key] = st
        if pkt.frag_off == 0:
            st.eth = bytes(d[:pkt.l3])
            if pkt.version == 4:
                st.header = bytes(d[pkt.l3:pkt.l3 + pkt.ihl])
            else:
                st.header = bytes(d[pkt.l3:pkt.frag_hdr])
                st.next_hdr = d[pkt.frag_hdr]
        if pkt.frag_off not in st.pieces:
            st.pieces[pkt.frag_off] = payload
            st.size += len(payload)
        st.max_len = max(st.max_len, pkt.ip_len)
        if not pkt.more_frags:
            st.total = pkt.frag_off + len(payload)
        if st.size > self.max_size or (st.total is not None and st.total > self.max_size):
            del self._pending[key]
            self.stats["dropped"] += 1
            raise P.PacketError("reassembled packet would exceed 65535 bytes")
        if st.total is None or not st.header or st.size < st.total:
            return None
        body = bytearray()
        for off in sorted(st.pieces):
            piece = st.pieces[off]
            if off > len(body):
                return None  # a hole (overlaps made size look complete)
            body[off:off + len(piece)] = piece
        if len(body) != st.total:
            return None
        del self._pending[key]
        self.stats["reassembled"] += 1
        hdr = bytearray(st.header)
        if key[0] == 4:
            struct.pack_into("!H", hdr, 2, len(hdr) + len(body))
            flags = struct.unpack_from("!H", hdr, 6)[0] & 0x4000  # keep DF
            struct.pack_into("!H", hdr, 6, flags)
            struct.pack_into("!H", hdr, 10, 0)
            struct.pack_into("!H", hdr, 10, P.checksum(hdr))
        else:
            struct.pack_into("!H", hdr, 4, len(hdr) - 40 + len(body))
            # the header that named the fragment header now names what followed it
            nh_off, off = 6, 40
            while off < len(hdr):
                nh_off = off
                off += (hdr[off + 1] + 1) * 8
            hdr[nh_off] = st.next_hdr
        whole = P.parse(bytearray(st.eth + bytes(hdr) + bytes(body)))
        whole.frag_max = st.max_len
        whole.frag_id = key[4]
        if key[0] == 6:
            whole.unfrag_len = len(st.header)
        return whole

    def expire(self, *, force_oldest: bool = False) -> int:
        now = self.clock()
        gone = [k for k, st in self._pending.items() if now - st.started_ns > self.timeout_ns]
        if force_oldest and not gone and self._pending:
            gone = [min(self._pending, key=lambda k: self._pending[k].started_ns)]
        for k in gone:
            del self._pending[k]
        self.stats["expired"] += len(gone)
        return len(gone)
