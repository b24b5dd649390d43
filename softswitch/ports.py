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

Two implementations share that contract. `RingPort` (the default) reads through a TPACKET_V3 receive ring and
writes through a TPACKET_V2 transmit ring, both mmap'ed, so a burst costs one poll() and one send() instead of
one system call per frame; `RawPort` is the plain one-recvmsg/one-send socket, kept as the fallback
(`--packet-io plain`, and used automatically when a ring cannot be set up). See Documentation/networking/
packet_mmap.rst in Linux for the ring layouts used below.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

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


def max_frame(number: int, iface: str) -> int:
    """The largest frame port `number` passes: the interface MTU plus the Ethernet header and two VLAN tags.
    Refuses a missing or down interface with the command that fixes it."""
    sysdir = Path("/sys/class/net") / iface
    if not sysdir.exists():
        raise PortError(f"port {number}: interface {iface!r} does not exist (create it, e.g. a veth pair, "
                        "before starting the switch)")
    flags = int((sysdir / "flags").read_text().strip(), 16)
    if not flags & 0x1:
        raise PortError(f"port {number}: interface {iface} is down; run: ip link set {iface} up")
    return int((sysdir / "mtu").read_text().strip()) + 14 + 8


def restore_frame(data: bytes, status: int, tci: int, tpid: int) -> bytes:
    """Undo what the kernel did to a received frame before a packet socket saw it: a VLAN tag moved to
    metadata by rx VLAN offload goes back in (as libpcap does), a checksum left for offload is computed."""
    if status & TP_STATUS_VLAN_VALID and (tci or status & TP_STATUS_VLAN_TPID_VALID):
        tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
        data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    if status & TP_STATUS_CSUMNOTREADY:
        data = fix_partial_checksum(data)
    return data


def kernel_drops(sock: socket.socket | None) -> int:
    """Frames the kernel dropped for this socket since the last call (its receive buffer or ring was full:
    the port's thread did not keep up). ``PACKET_STATISTICS`` resets on read, so callers add the result up."""
    if sock is None:
        return 0
    try:
        raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)  # tpacket_stats(_v3): packets, drops[, freezes]
    except OSError:
        return 0
    return int(struct.unpack_from("=II", raw)[1]) if len(raw) >= 8 else 0


def port_summary(port: Port) -> str:
    """One line for the log when the switch stops: what the port carried and what was lost where."""
    return (f"port {port.number} ({port.iface}, {port.io}): received {port.rx_packets}, sent {port.tx_packets}, "
            f"dropped by the kernel (receive {'ring' if port.io == 'ring' else 'buffer'} full) {port.kernel_dropped}, "
            f"oversize {port.dropped_oversize}, transmit dropped {getattr(port, 'tx_dropped', 0)}")


class RawPort:
    """P4 port `number` on Linux interface `iface` through one plain AF_PACKET socket (one system call per
    frame). `on_frame(number, frame)` runs on the port's reader thread."""

    def __init__(self, number: int, iface: str, on_frame: FrameHandler, *, offloads_off: bool = True) -> None:
        self.number = number
        self.iface = iface
        self.on_frame = on_frame
        self.offloads_off = offloads_off
        self.rx_packets = 0
        self.tx_packets = 0
        self.dropped_oversize = 0
        self.kernel_dropped = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._max_frame = 0

    io = "plain"

    def open(self) -> RawPort:
        self._max_frame = max_frame(self.number, self.iface)
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
                    data = restore_frame(data, status, tci, tpid)
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
            self.kernel_dropped += kernel_drops(self._sock)
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


# ---------------------------------------------------------------------------------------------- mmap rings

PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
TPACKET_V2 = 1
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_WRONG_FORMAT = 4
TPACKET_ALIGNMENT = 16
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac, tp_net,
# hv1 {tp_rxhash, tp_vlan_tci, tp_vlan_tpid}
TPACKET3_HDR = struct.Struct("=I8xIIIH")  # tp_next_offset, tp_snaplen, tp_len, tp_status, tp_mac
TPACKET3_VLAN = struct.Struct("=IH")  # hv1.tp_vlan_tci, hv1.tp_vlan_tpid, at offset 32
TPACKET3_HDRLEN = 48  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr)); the sockaddr_ll follows
SLL_PKTTYPE = 10  # offset of sll_pkttype in struct sockaddr_ll
# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status, num_pkts,
# offset_to_first_pkt
BLOCK_STATUS = 8
BLOCK_PKTS = struct.Struct("=II")  # num_pkts, offset_to_first_pkt at offset 12
TPACKET_REQ3 = struct.Struct("=IIIIIII")  # block size, block nr, frame size, frame nr, retire tov, priv, features
TPACKET_REQ = struct.Struct("=IIII")
TX_DATA = 32  # TPACKET2_HDRLEN - sizeof(struct sockaddr_ll): where the kernel reads a TX frame's bytes
TX_LEN = struct.Struct("=I")  # tp_len, at offset 4 of struct tpacket2_hdr
# Status words hold flags too (a completed TX slot may read TP_STATUS_AVAILABLE | TP_STATUS_TS_SOFTWARE), so
# tests look at the flag bits, all in the word's lowest byte; this is its offset in native byte order.
STATUS_LOW = 0 if sys.byteorder == "little" else 3
TX_BUSY = 0x7  # TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING | TP_STATUS_WRONG_FORMAT

FLUSH_EVERY_MASK = 63  # transmit at least every 64 frames received
PacketIO = Literal["ring", "plain"]


class Port(Protocol):
    """What the switch and the CLI use of a port, whichever implementation carries it."""

    number: int
    iface: str
    io: str
    rx_packets: int
    tx_packets: int
    dropped_oversize: int
    kernel_dropped: int  # counted up to the last close

    def open(self) -> Port: ...

    def start(self) -> None: ...

    def send(self, frame: bytes) -> None: ...

    def close(self) -> None: ...


class TxBatching:
    """Defers the ring transmissions made while a port reader thread handles one receive batch, so the frames
    a burst produces leave with one send() per output port at the end of the batch instead of one each.
    Ports of one switch share one instance; a send from any other thread (a packet-out) goes out at once."""

    def __init__(self) -> None:
        self._local = threading.local()

    def begin(self) -> None:
        self._local.dirty = []

    def defer(self, port: RingPort) -> bool:
        dirty: list[RingPort] | None = getattr(self._local, "dirty", None)
        if dirty is None:
            return False
        if port not in dirty:
            dirty.append(port)
        return True

    def end(self) -> None:
        dirty: list[RingPort] | None = getattr(self._local, "dirty", None)
        self._local.dirty = None
        for port in dirty or ():
            port.flush()


@dataclass(frozen=True, slots=True)
class RingSizes:
    """Ring geometry. The receive ring holds block_size * block_nr bytes; a frame may be as large as a block
    less its headers. A block reaches the switch when full or after retire_ms, the most a lone frame waits.
    tx_bytes is the transmit ring per port.

    What bounds the ring at everyday rates is the number of blocks, not the bytes: at a few thousand small
    frames a second each block retires after retire_ms with a handful of frames, so the ring holds about
    block_nr * retire_ms of traffic. 32 blocks of 128 KiB (the first geometry) held 32 ms, and the port
    thread waits longer than that for the interpreter lock while the switch answers a whole-table Read: at
    10,000 connections the kernel dropped 6,080 frames (PACKET_STATISTICS), TCP retransmitted, and 7 % of
    the connections stalled over a second. 256 blocks of 64 KiB (16 MiB per port) hold a quarter of a
    second at low rates and ~130,000 small frames at high ones; 64 KiB still takes a 9,000-byte jumbo."""

    block_size: int = 1 << 16
    block_nr: int = 256
    retire_ms: int = 1
    tx_bytes: int = 2 << 20


def _pow2_at_least(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


class RingPort:
    """P4 port `number` on Linux interface `iface` through mmap'ed packet rings: a TPACKET_V3 receive ring
    (the kernel fills variable-sized frames into blocks and hands over a block at a time, so one wake-up
    drains a burst) and a TPACKET_V2 transmit ring on a second, receive-less socket (frames are written
    into slots and one send() hands all pending ones to the kernel). The receive socket sets
    PACKET_IGNORE_OUTGOING, so the switch never reads back what it sends. A block is handed to us when it is
    full or after `retire_ms`, which bounds the extra latency a lone packet sees."""

    io = "ring"

    def __init__(self, number: int, iface: str, on_frame: FrameHandler, *, offloads_off: bool = True,
                 batching: TxBatching | None = None, rings: RingSizes | None = None) -> None:
        self.number = number
        self.iface = iface
        self.on_frame = on_frame
        self.offloads_off = offloads_off
        self.batching = batching if batching is not None else TxBatching()
        sizes = rings or RingSizes()
        self.block_size = sizes.block_size
        self.block_nr = sizes.block_nr
        self.retire_ms = sizes.retire_ms
        self.tx_bytes = sizes.tx_bytes
        self.rx_packets = 0
        self.tx_packets = 0
        self.tx_dropped = 0
        self.dropped_oversize = 0
        self.kernel_dropped = 0
        self._max_frame = 0
        self._rx: socket.socket | None = None
        self._tx: socket.socket | None = None
        self._rx_ring: mmap.mmap | None = None
        self._tx_ring: mmap.mmap | None = None
        self._filter_outgoing = False
        self._tx_frame = 0
        self._tx_nr = 0
        self._tx_head = 0
        self._tx_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def open(self) -> RingPort:
        """Set up both rings; raises PortError for what the user must fix (missing/down interface, no
        privileges) and OSError when the kernel refuses a ring (open_port then falls back to plain sockets)."""
        self._max_frame = max_frame(self.number, self.iface)
        if self.offloads_off:
            disable_offloads(self.iface)
        try:
            rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # no protocol yet: nothing queued before bind
        except PermissionError:
            raise PortError(f"port {self.number}: raw sockets need root (or CAP_NET_RAW) to open {self.iface}") from None
        tx: socket.socket | None = None
        try:
            ifindex = socket.if_nametoindex(self.iface)
            rx.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            try:
                rx.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:  # before Linux 4.20: skip PACKET_OUTGOING frames by their sockaddr_ll instead
                self._filter_outgoing = True
            # Frames may be as large as a block in TPACKET_V3; tp_frame_size only sets the ring's frame count.
            frame = 2048
            rx.setsockopt(SOL_PACKET, PACKET_RX_RING, TPACKET_REQ3.pack(
                self.block_size, self.block_nr, frame, self.block_size // frame * self.block_nr, self.retire_ms, 0, 0))
            self._rx_ring = mmap.mmap(rx.fileno(), self.block_size * self.block_nr, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)
            mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
            rx.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            rx.bind((self.iface, ETH_P_ALL))

            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: this socket receives nothing
            tx.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            tx.setsockopt(SOL_PACKET, PACKET_LOSS, 1)  # a frame the kernel refuses is skipped, not a stuck ring
            self._tx_frame = _pow2_at_least(TX_DATA + self._max_frame)
            tx_block = max(self._tx_frame, mmap.PAGESIZE)
            tx_blocks = max(self.tx_bytes // tx_block, 4)
            self._tx_nr = tx_blocks * (tx_block // self._tx_frame)
            tx.setsockopt(SOL_PACKET, PACKET_TX_RING, TPACKET_REQ.pack(tx_block, tx_blocks, self._tx_frame, self._tx_nr))
            self._tx_ring = mmap.mmap(tx.fileno(), tx_block * tx_blocks, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)
            tx.bind((self.iface, 0))
        except OSError:
            self._release(rx, tx)
            raise
        self._rx, self._tx = rx, tx
        return self

    def _release(self, rx: socket.socket | None, tx: socket.socket | None) -> None:
        for ring in (self._rx_ring, self._tx_ring):
            if ring is not None:
                with contextlib.suppress(BufferError, ValueError):
                    ring.close()
        self._rx_ring = self._tx_ring = None
        for sock in (rx, tx):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def start(self) -> None:
        if self._rx is None:
            self.open()
        self._thread = threading.Thread(target=self._run, name=f"port-{self.number}-{self.iface}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rx, ring = self._rx, self._rx_ring
        assert rx is not None and ring is not None
        poller = select.poll()
        poller.register(rx.fileno(), select.POLLIN | select.POLLERR)
        bsize, nblocks = self.block_size, self.block_nr
        unpack_hdr = TPACKET3_HDR.unpack_from
        filter_outgoing = self._filter_outgoing
        on_frame, number, maxf = self.on_frame, self.number, self._max_frame
        fixups = TP_STATUS_VLAN_VALID | TP_STATUS_CSUMNOTREADY
        batching = self.batching
        block = 0
        warned = 0.0
        while not self._stop.is_set():
            base = block * bsize
            if not ring[base + BLOCK_STATUS + STATUS_LOW] & TP_STATUS_USER:
                for _fd, events in poller.poll(200):  # EINTR is retried by Python (PEP 475)
                    if events & select.POLLERR:
                        self._socket_error(rx)
                continue
            num, first = BLOCK_PKTS.unpack_from(ring, base + 12)
            pos = base + first
            batching.begin()
            try:
                for i in range(num):
                    if i & FLUSH_EVERY_MASK == FLUSH_EVERY_MASK:
                        # A full block is ~1000 frames: push out what is queued every 64 of them, so the first
                        # frame of a block does not wait for the last one to be processed.
                        batching.end()
                        batching.begin()
                    nxt, snaplen, length, status, mac = unpack_hdr(ring, pos)
                    if filter_outgoing and ring[pos + TPACKET3_HDRLEN + SLL_PKTTYPE] == PACKET_OUTGOING:
                        pos += nxt
                        continue
                    data = ring[pos + mac:pos + mac + snaplen]
                    if status & fixups:
                        data = restore_frame(data, status, *TPACKET3_VLAN.unpack_from(ring, pos + 32))
                    pos += nxt
                    if snaplen < length or len(data) > maxf:
                        self.dropped_oversize += 1
                        now = time.monotonic()
                        if now - warned > 5:
                            warned = now
                            log.warning("port %d (%s): dropped a %d-byte frame larger than the MTU or the ring block "
                                        "(offloads on? run ethtool -K %s gro off tso off gso off on both ends); %d so "
                                        "far", number, self.iface, length, self.iface, self.dropped_oversize)
                        continue
                    self.rx_packets += 1
                    try:
                        on_frame(number, data)
                    except Exception:  # a bad packet must never take the port down
                        log.exception("port %d (%s): processing a %d-byte frame failed", number, self.iface, len(data))
            finally:
                # The frames were copied out above: give the block back before the transmissions go.
                struct.pack_into("=I", ring, base + BLOCK_STATUS, TP_STATUS_KERNEL)
                batching.end()
            block = (block + 1) % nblocks

    def _socket_error(self, rx: socket.socket) -> None:
        """Read (and so clear) a pending socket error, or poll() would report it again at once. The kernel sets
        ENETDOWN when the interface goes down and reattaches the socket when it comes back up, so the port
        waits for that rather than stopping."""
        err = rx.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            log.warning("port %d (%s): %s; frames flow again when the interface is back up", self.number,
                        self.iface, os.strerror(err))

    def send(self, frame: bytes) -> None:
        n = len(frame)
        # What the kernel's tpacket_snd accepts: the MTU plus the Ethernet header, four more bytes for an 802.1Q
        # tagged frame (packet_extra_vlan_len_allowed). Checked here so that a refused frame is logged, as the
        # plain socket's EMSGSIZE is, instead of skipped silently by PACKET_LOSS.
        limit = self._max_frame - 8 + (4 if frame[12:14] == b"\x81\x00" else 0)
        if n > limit or n < 14:
            self.tx_dropped += 1
            log.warning("port %d (%s): a %d-byte frame cannot be sent (the interface takes 14..%d bytes); dropped",
                        self.number, self.iface, n, limit)
            return
        with self._tx_lock:
            ring = self._tx_ring
            if ring is None:  # closed
                return
            off = self._tx_head * self._tx_frame
            if ring[off + STATUS_LOW] & TX_BUSY and not self._wait_slot(ring, off):
                self.tx_dropped += 1
                return
            ring[off + TX_DATA:off + TX_DATA + n] = frame
            # tp_len before tp_status: the kernel takes the slot as soon as it sees SEND_REQUEST.
            TX_LEN.pack_into(ring, off + 4, n)
            TX_LEN.pack_into(ring, off, TP_STATUS_SEND_REQUEST)
            self._tx_head = (self._tx_head + 1) % self._tx_nr
            self.tx_packets += 1
        if not self.batching.defer(self):
            self.flush()

    def _wait_slot(self, ring: mmap.mmap, off: int) -> bool:
        """The ring is full (every slot queued or in flight): push what is queued and give the kernel a moment
        to complete frames, as a NIC's full transmit queue would back-pressure; False if it stays full."""
        deadline = time.monotonic() + 0.05
        while True:
            self.flush()
            status = ring[off + STATUS_LOW]
            if not status & TX_BUSY:
                return True
            if status & TX_BUSY == TP_STATUS_WRONG_FORMAT:  # only without PACKET_LOSS; reclaim the slot
                TX_LEN.pack_into(ring, off, TP_STATUS_AVAILABLE)
                return True
            if time.monotonic() > deadline:
                log.warning("port %d (%s): transmit ring full; frame dropped", self.number, self.iface)
                return False
            time.sleep(0.0005)

    def flush(self) -> None:
        """Hand every queued frame to the kernel (does not wait for them to complete)."""
        tx = self._tx
        if tx is None:
            return
        try:
            tx.send(b"", socket.MSG_DONTWAIT)
        except BlockingIOError:  # the device queue is full; the frames stay queued for the next flush
            pass
        except OSError as exc:
            log.warning("port %d (%s): transmit failed: %s", self.number, self.iface, exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        with self._tx_lock:
            rx, tx = self._rx, self._tx
            self._rx = self._tx = None
            self.kernel_dropped += kernel_drops(rx)
            self._release(rx, tx)


def open_port(number: int, iface: str, on_frame: FrameHandler, *, io: PacketIO = "ring",
              batching: TxBatching | None = None, offloads_off: bool = True, rings: RingSizes | None = None) -> Port:
    """An opened port using `io`; a ring the kernel refuses falls back to a plain socket, with a log line
    saying why (the switch works either way, the plain socket is only slower)."""
    if io == "ring":
        port = RingPort(number, iface, on_frame, offloads_off=offloads_off, batching=batching, rings=rings)
        try:
            return port.open()
        except OSError as exc:
            log.warning("port %d (%s): packet ring unavailable (%s); using a plain socket (slower)", number, iface,
                        exc.strerror or exc)
    return RawPort(number, iface, on_frame, offloads_off=offloads_off).open()
