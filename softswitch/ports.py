"""P4 ports on Linux interfaces: raw AF_PACKET sockets, one reader thread per interface.

What makes a raw port faithful (frames in = frames on the wire, frames out = exactly what the program emits):
- promiscuous membership, so frames for other MACs are seen, as a switch port sees them;
- frames the kernel reports as PACKET_OUTGOING (our own transmissions looped back to packet sockets) are
  skipped, or the switch would re-read everything it sends;
- VLAN tags that the kernel stripped into the packet's metadata (rx VLAN offload) are put back from
  PACKET_AUXDATA, as libpcap (and so BMv2) does;
- frames whose transport checksum was left for the hardware (TP_STATUS_CSUMNOTREADY, a sender with tx
  checksum offload on a veth) get it computed here before the program sees them;
- offloads (GRO/TSO/GSO/checksum) are switched off on the interface when ethtool is present, and frames still
  larger than the interface MTU (a GRO/GSO super-frame) are dropped with a warning instead of being forwarded
  mangled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("softswitch.ports")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_CSUMNOTREADY = 0x8
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
AUXDATA = struct.Struct("=IIIHHHH")  # tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_vlan_tci, tp_vlan_tpid
OFFLOADS = ("rx", "tx", "tso", "gso", "gro", "lro", "sg", "rxvlan", "txvlan")
RECV_BUF = 65536 + 4096

FrameHandler = Callable[[int, bytes], None]


class PortError(RuntimeError):
    """A port that cannot be attached; the message is one line naming the interface and the fix."""


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def fix_partial_checksum(frame: bytes) -> bytes:
    """Compute the TCP/UDP checksum of a frame that a sender left for checksum offload (IPv4 and IPv6)."""
    off = 12
    ethertype = int.from_bytes(frame[off:off + 2], "big")
    while ethertype in (0x8100, 0x88A8) and len(frame) >= off + 6:
        off += 4
        ethertype = int.from_bytes(frame[off:off + 2], "big")
    l3 = off + 2
    if ethertype == 0x0800 and len(frame) >= l3 + 20:
        ihl = (frame[l3] & 0x0F) * 4
        total = int.from_bytes(frame[l3 + 2:l3 + 4], "big")
        proto = frame[l3 + 9]
        l4 = l3 + ihl
        seg_len = total - ihl
        pseudo = frame[l3 + 12:l3 + 20] + struct.pack("!BBH", 0, proto, seg_len)
    elif ethertype == 0x86DD and len(frame) >= l3 + 40:
        proto = frame[l3 + 6]
        seg_len = int.from_bytes(frame[l3 + 4:l3 + 6], "big")
        l4 = l3 + 40
        pseudo = frame[l3 + 8:l3 + 40] + struct.pack("!IxxxB", seg_len, proto)
    else:
        return frame
    if proto == 6:
        csum_at = l4 + 16
    elif proto == 17:
        csum_at = l4 + 6
    else:
        return frame
    if len(frame) < l4 + seg_len or seg_len < csum_at - l4 + 2:
        return frame
    seg = bytearray(frame[l4:l4 + seg_len])
    seg[csum_at - l4:csum_at - l4 + 2] = b"\x00\x00"
    csum = _checksum(pseudo + bytes(seg))
    if proto == 17 and csum == 0:
        csum = 0xFFFF
    out = bytearray(frame)
    out[csum_at:csum_at + 2] = csum.to_bytes(2, "big")
    return bytes(out)


def disable_offloads(iface: str) -> None:
    """Best effort: a switch must see wire-sized frames with complete checksums."""
    if shutil.which("ethtool") is None:
        log.warning("ethtool not found: offloads on %s stay as they are; install ethtool if frames arrive merged", iface)
        return
    for feature in OFFLOADS:
        subprocess.run(["ethtool", "-K", iface, feature, "off"], capture_output=True, check=False, timeout=10)


class RawPort:
    """P4 port `number` on Linux interface `iface`. `on_frame(number, frame)` runs on the port's reader thread."""

    def __init__(self, number: int, iface: str, on_frame: FrameHandler, *, offloads_off: bool = True) -> None:
        self.number = number
        self.iface = iface
        self.on_frame = on_frame
        self.offloads_off = offloads_off
        self.rx_packets = 0
        self.tx_packets = 0
        self.dropped_oversize = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._max_frame = 0

    def open(self) -> RawPort:
        sysdir = Path("/sys/class/net") / self.iface
        if not sysdir.exists():
            raise PortError(f"port {self.number}: interface {self.iface!r} does not exist (create it, e.g. a veth pair, "
                            "before starting the switch)")
        flags = int((sysdir / "flags").read_text().strip(), 16)
        if not flags & 0x1:
            raise PortError(f"port {self.number}: interface {self.iface} is down; run: ip link set {self.iface} up")
        mtu = int((sysdir / "mtu").read_text().strip())
        self._max_frame = mtu + 14 + 8  # Ethernet header and up to two VLAN tags
        if self.offloads_off:
            disable_offloads(self.iface)
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise PortError(f"port {self.number}: raw sockets need root (or CAP_NET_RAW) to open {self.iface}") from None
        try:
            sock.bind((self.iface, ETH_P_ALL))
            ifindex = socket.if_nametoindex(self.iface)
            mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.settimeout(0.2)
        except OSError as exc:
            sock.close()
            raise PortError(f"port {self.number}: cannot attach to {self.iface}: {exc.strerror or exc}") from None
        self._sock = sock
        return self

    def start(self) -> None:
        if self._sock is None:
            self.open()
        self._thread = threading.Thread(target=self._run, name=f"port-{self.number}-{self.iface}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        cmsg_space = socket.CMSG_SPACE(AUXDATA.size)
        warned = 0.0
        while not self._stop.is_set():
            try:
                data, ancdata, msg_flags, addr = sock.recvmsg(RECV_BUF, cmsg_space)
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.error("port %d (%s): receive failed: %s; port stopped", self.number, self.iface, exc)
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            for level, ctype, cdata in ancdata:
                if level == SOL_PACKET and ctype == PACKET_AUXDATA and len(cdata) >= AUXDATA.size:
                    status, _len, _snap, _mac, _net, tci, tpid = AUXDATA.unpack_from(cdata)
                    if status & TP_STATUS_VLAN_VALID and (tci or status & TP_STATUS_VLAN_TPID_VALID):
                        tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                        data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
                    if status & TP_STATUS_CSUMNOTREADY:
                        data = fix_partial_checksum(data)
            if len(data) > self._max_frame or msg_flags & socket.MSG_TRUNC:
                self.dropped_oversize += 1
                now = time.monotonic()
                if now - warned > 5:
                    warned = now
                    log.warning("port %d (%s): dropped a %d-byte frame larger than the MTU (offloads on? run ethtool "
                                "-K %s gro off tso off gso off on both ends); %d so far", self.number, self.iface,
                                len(data), self.iface, self.dropped_oversize)
                continue
            self.rx_packets += 1
            try:
                self.on_frame(self.number, data)
            except Exception:  # a bad packet must never take the port down
                log.exception("port %d (%s): processing a %d-byte frame failed", self.number, self.iface, len(data))

    def send(self, frame: bytes) -> None:
        if self._sock is None:
            return
        try:
            self._sock.send(frame)
            self.tx_packets += 1
        except OSError as exc:
            log.warning("port %d (%s): send of %d bytes failed: %s", self.number, self.iface, len(frame), exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def parse_port_spec(spec: str) -> tuple[int, str]:
    """`N@IFACE` (simple_switch_grpc's -i syntax) -> (N, IFACE)."""
    number, sep, iface = spec.partition("@")
    if not sep or not iface or not number.strip().isdigit():
        raise PortError(f"-i {spec}: expected <port-number>@<interface>, e.g. -i 1@veth1")
    n = int(number)
    if not 0 <= n < 512:
        raise PortError(f"-i {spec}: port number {n} is not in 0..511")
    if len(iface) >= 16 or "/" in iface or os.sep in iface:
        raise PortError(f"-i {spec}: {iface!r} is not a valid Linux interface name")
    return n, iface
