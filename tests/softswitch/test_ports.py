"""Raw AF_PACKET ports: frames in and out unchanged, own transmissions not re-read, VLAN tags and offloaded
checksums restored, bad port specs refused in one line."""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offloadgen.netlab import Netlab
from softswitch.ports import (
    ETH_P_ALL,
    Port,
    PortError,
    RawPort,
    RingPort,
    RingSizes,
    TxBatching,
    fix_partial_checksum,
    open_port,
    parse_port_spec,
    port_summary,
)


def _frame(payload: bytes = b"x" * 50, vlan: int | None = None) -> bytes:
    dst, src = bytes.fromhex("020000000002"), bytes.fromhex("02000000000a")
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return dst + src + tag + b"\x88\xb5" + payload  # local experimental ethertype: no kernel stack reacts to it


@pytest.fixture
def veth() -> Iterator[tuple[str, str]]:
    with Netlab() as lab:
        yield lab.veth(f"pt{lab.tag}a", f"pt{lab.tag}b")


def _raw(iface: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    s.settimeout(2)
    return s


def _recv_matching(s: socket.socket, marker: bytes) -> bytes:
    while True:
        data, addr = s.recvfrom(65536)
        if marker in data and addr[2] != 4:  # not our own outgoing copy
            return data


@pytest.mark.root
def test_frames_in_and_out_and_no_echo(veth: tuple[str, str]) -> None:
    host, sw = veth
    got: queue.Queue[tuple[int, bytes]] = queue.Queue()
    port = RawPort(7, sw, lambda n, f: got.put((n, f)))
    port.start()
    try:
        with _raw(host) as h:
            frame = _frame(b"in-frame" + b"." * 40)
            h.send(frame)
            n, data = got.get(timeout=2)
            while b"in-frame" not in data:  # skip unrelated traffic (none expected on a fresh veth)
                n, data = got.get(timeout=2)
            assert n == 7 and data == frame
            out = _frame(b"out-frame" + b"." * 40)
            port.send(out)
            assert _recv_matching(h, b"out-frame") == out
            # the port never re-reads what it sent
            with pytest.raises(queue.Empty):
                while True:
                    _, f = got.get(timeout=0.3)
                    assert b"out-frame" not in f
            # a VLAN tag stripped by the kernel comes back
            tagged = _frame(b"vlan-frame" + b"." * 40, vlan=0x0064)
            h.send(tagged)
            while True:
                _, f = got.get(timeout=2)
                if b"vlan-frame" in f:
                    break
            assert f == tagged
    finally:
        port.close()


@pytest.mark.root
def test_missing_or_down_interface_is_one_line() -> None:
    with pytest.raises(PortError, match="does not exist"):
        RawPort(1, "og-nosuchif", lambda n, f: None).open()
    with Netlab() as lab:
        a, _ = lab.veth(f"pd{lab.tag}a", f"pd{lab.tag}b")
        import subprocess
        subprocess.run(["ip", "link", "set", a, "down"], check=True)
        with pytest.raises(PortError, match="is down") as info:
            RawPort(1, a, lambda n, f: None).open()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec", ["1", "x@eth0", "1@", "600@eth0", "1@averyveryverylongname"])
def test_bad_port_specs(spec: str) -> None:
    with pytest.raises(PortError):
        parse_port_spec(spec)
    assert parse_port_spec("3@veth1") == (3, "veth1")


def test_fix_partial_checksum() -> None:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Dot1Q, Ether

    for pkt in (Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2) / b"data",
                Ether() / Dot1Q(vlan=5) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"data!",
                Ether() / IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1, dport=2) / b"x"):
        good = bytes(pkt)
        l4 = pkt.getlayer(TCP) or pkt.getlayer(UDP)
        assert l4 is not None
        off = len(good) - len(bytes(l4)) + (16 if l4.name == "TCP" else 6)
        broken = good[:off] + b"\x12\x34" + good[off + 2:]  # what a checksum-offloading sender leaves
        assert fix_partial_checksum(broken) == good


# ------------------------------------------------------------------------------------ mmap rings (RingPort)

def _seq_frame(i: int, size: int = 100) -> bytes:
    body = b"seq" + i.to_bytes(4, "big")
    return _frame(body + b"." * max(size - 14 - len(body), 0))


def _seq_of(frame: bytes) -> int | None:
    at = frame.find(b"seq", 14)
    return int.from_bytes(frame[at + 3:at + 7], "big") if at in (14, 18) else None  # untagged or one VLAN tag


def _collect(got: queue.Queue[tuple[int, bytes]], n: int, timeout: float = 5) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < n:
        _, f = got.get(timeout=timeout)
        if _seq_of(f) is not None:
            out.append(f)
    return out


@pytest.fixture
def jumbo_veth() -> Iterator[tuple[str, str]]:
    with Netlab() as lab:
        yield lab.veth(f"pj{lab.tag}a", f"pj{lab.tag}b", mtu=9000)


@pytest.mark.root
def test_ring_frames_of_all_sizes_in_order_and_out(jumbo_veth: tuple[str, str]) -> None:
    """Receive: frames from the minimum to a 9000-byte jumbo (over four times the ring's 2048-byte frame
    size: TPACKET_V3 packs frames into a block by their real size) arrive whole and in the order sent.
    Transmit: the same sizes leave unchanged and in order."""
    host, sw = jumbo_veth
    got: queue.Queue[tuple[int, bytes]] = queue.Queue()
    port = RingPort(5, sw, lambda n, f: got.put((n, f))).open()
    assert port.io == "ring"
    port.start()
    sizes = [60, 61, 64, 128, 1514, 2048, 2049, 4000, 9014] * 4
    try:
        with _raw(host) as h:
            sent = [_seq_frame(i, size) for i, size in enumerate(sizes)]
            for f in sent:
                h.send(f)
            assert _collect(got, len(sent)) == sent
            assert port.rx_packets == len(sent) and port.dropped_oversize == 0
            out = [_seq_frame(1000 + i, size) for i, size in enumerate(sizes)]
            for f in out:
                port.send(f)
            seen: list[bytes] = []
            while len(seen) < len(out):
                data, addr = h.recvfrom(65536)
                if addr[2] != 4 and _seq_of(data) is not None:
                    seen.append(data)
            assert seen == out
            assert port.tx_packets == len(out)
    finally:
        port.close()


@pytest.mark.root
def test_ring_never_reads_its_own_frames_and_restores_vlan(veth: tuple[str, str]) -> None:
    host, sw = veth
    got: queue.Queue[tuple[int, bytes]] = queue.Queue()
    port = RingPort(2, sw, lambda n, f: got.put((n, f))).open()
    port.start()
    try:
        with _raw(host) as h:
            for i in range(50):
                port.send(_seq_frame(i))
            for i in range(50):
                assert _recv_matching(h, b"seq" + i.to_bytes(4, "big")) == _seq_frame(i)
            # a frame from the host after them: the only thing the port ever reads
            tagged = _frame(b"seq" + (77).to_bytes(4, "big") + b"." * 40, vlan=0x0064)
            h.send(tagged)
            assert _collect(got, 1) == [tagged]
            with pytest.raises(queue.Empty):
                got.get(timeout=0.3)
            assert port.rx_packets == 1
    finally:
        port.close()


@pytest.mark.root
def test_ring_drops_a_frame_larger_than_a_block_and_goes_on(jumbo_veth: tuple[str, str]) -> None:
    """A frame that does not fit in a ring block arrives truncated (tp_snaplen < tp_len): it is dropped and
    counted, never forwarded cut short, and the frames after it still arrive."""
    host, sw = jumbo_veth
    got: queue.Queue[tuple[int, bytes]] = queue.Queue()
    port = RingPort(1, sw, lambda n, f: got.put((n, f)), rings=RingSizes(block_size=4096, block_nr=8)).open()
    port.start()
    try:
        with _raw(host) as h:
            h.send(_seq_frame(1, 100))
            h.send(_seq_frame(2, 6000))
            h.send(_seq_frame(3, 3000))
            assert [_seq_of(f) for f in _collect(got, 2)] == [1, 3]
            assert port.dropped_oversize == 1
    finally:
        port.close()


@pytest.mark.root
def test_ring_forwarding_batches_through_a_small_transmit_ring() -> None:
    """The switch's path: frames read on one ring port are sent on another from the reader thread, queued
    in the transmit ring and pushed at the end of each receive batch. With a transmit ring of 8 slots a burst
    wraps it many times and fills it; every frame still comes out, in order."""
    with Netlab() as lab:
        h1, s1 = lab.veth(f"pf{lab.tag}a", f"pf{lab.tag}b")
        h2, s2 = lab.veth(f"pf{lab.tag}c", f"pf{lab.tag}d")
        batching = TxBatching()
        ports: dict[int, Port] = {}

        def forward(n: int, frame: bytes) -> None:
            ports[2].send(frame)

        ports[1] = open_port(1, s1, forward, batching=batching)
        ports[2] = open_port(2, s2, lambda n, f: None, batching=batching,
                             rings=RingSizes(tx_bytes=4096 * 4))  # 4 blocks of two 2048-byte slots
        got: queue.Queue[tuple[int, bytes]] = queue.Queue()
        sink = RingPort(9, h2, lambda n, f: got.put((n, f))).open()  # a ring: no frame lost to a socket buffer
        for p in (*ports.values(), sink):
            p.start()
        try:
            sent = [_seq_frame(i, 60 + i % 1400) for i in range(2000)]
            with _raw(h1) as h:
                for f in sent:
                    h.send(f)
            assert _collect(got, len(sent)) == sent
            assert ports[1].io == ports[2].io == "ring"
        finally:
            for p in (*ports.values(), sink):
                p.close()


@pytest.mark.root
def test_refused_ring_falls_back_to_a_plain_socket(veth: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    host, sw = veth
    got: queue.Queue[tuple[int, bytes]] = queue.Queue()
    # A block size that is not a multiple of the page size: the kernel refuses the ring (EINVAL).
    port = open_port(4, sw, lambda n, f: got.put((n, f)), rings=RingSizes(block_size=5000))
    assert port.io == "plain"
    assert "packet ring unavailable" in caplog.text and "plain socket" in caplog.text
    port.start()
    try:
        with _raw(host) as h:
            h.send(_seq_frame(5))
            assert _collect(got, 1) == [_seq_frame(5)]
    finally:
        port.close()


@pytest.mark.root
def test_ring_send_refuses_a_frame_over_the_mtu_and_goes_on(veth: tuple[str, str],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The transmit side takes what the interface takes: MTU + header, 4 bytes more with an 802.1Q tag. A
    larger frame is refused with a warning and counted; the ring keeps sending the frames after it."""
    host, sw = veth
    got: queue.Queue[tuple[int, bytes]] = queue.Queue()
    sink = RingPort(8, host, lambda n, f: got.put((n, f))).open()  # restores the tag the kernel strips
    sink.start()
    port = RingPort(3, sw, lambda n, f: None).open()
    try:
        too_big = _seq_frame(1, 1515)
        tagged = _frame(b"seq" + (2).to_bytes(4, "big") + b"." * (1518 - 18 - 7), vlan=7)
        assert len(tagged) == 1518
        for f in (too_big, tagged, _seq_frame(3)):
            port.send(f)
        assert _collect(got, 2) == [tagged, _seq_frame(3)]
        assert port.tx_dropped == 1 and port.tx_packets == 2
        assert "a 1515-byte frame cannot be sent" in caplog.text
    finally:
        port.close()
        sink.close()


@pytest.mark.root
def test_ring_port_survives_its_interface_going_down_and_up(veth: tuple[str, str],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    import subprocess

    host, sw = veth
    got: queue.Queue[tuple[int, bytes]] = queue.Queue()
    port = RingPort(6, sw, lambda n, f: got.put((n, f))).open()
    port.start()
    try:
        with _raw(host) as h:
            h.send(_seq_frame(1))
            assert _collect(got, 1) == [_seq_frame(1)]
            subprocess.run(["ip", "link", "set", sw, "down"], check=True)
            subprocess.run(["ip", "link", "set", sw, "up"], check=True)
            # the host end sees carrier again once both ends are up; frames sent before that are lost
            deadline = time.monotonic() + 5
            while Path(f"/sys/class/net/{host}/operstate").read_text().strip() != "up":
                assert time.monotonic() < deadline, f"{host} did not come back up"
                time.sleep(0.02)
            h.send(_seq_frame(2))
            assert _collect(got, 1) == [_seq_frame(2)]
            assert "Network is down" in caplog.text
    finally:
        port.close()


@pytest.mark.root
@pytest.mark.parametrize("io", ["ring", "plain"])
def test_frames_the_kernel_drops_for_a_stalled_port_are_counted(veth: tuple[str, str], io: str) -> None:
    """A port whose thread cannot keep up loses frames in the kernel (ring or socket buffer full); the switch
    says how many when it stops, so a user can tell them from drops in the P4 program. Every frame sent is
    either received or counted as dropped."""
    host, sw = veth
    release = threading.Event()
    seen = 0

    def slow(n: int, frame: bytes) -> None:
        nonlocal seen
        if b"stall" in frame:
            seen += 1
            release.wait(10)

    port = open_port(3, sw, slow, io=io, rings=RingSizes(block_size=4096, block_nr=2))  # type: ignore[arg-type]
    if io == "plain":
        assert port._sock is not None  # type: ignore[attr-defined]
        port._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # type: ignore[attr-defined]
    port.start()
    n = 3000
    try:
        with _raw(host) as h:
            for i in range(n):
                h.send(_frame(b"stall" + i.to_bytes(4, "big") + b"." * 40))
        time.sleep(0.3)
        release.set()
        time.sleep(0.5)
    finally:
        port.close()
    assert port.io == io
    assert port.kernel_dropped > 0
    assert seen + port.kernel_dropped == n, (seen, port.kernel_dropped)
    assert f"dropped by the kernel (receive {'ring' if io == 'ring' else 'buffer'} full) {port.kernel_dropped}" \
        in port_summary(port)
