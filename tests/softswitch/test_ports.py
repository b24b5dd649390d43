"""Raw AF_PACKET ports: frames in and out unchanged, own transmissions not re-read, VLAN tags and offloaded
checksums restored, bad port specs refused in one line."""

from __future__ import annotations

import queue
import socket
import struct
from collections.abc import Iterator

import pytest

from offloadgen.netlab import Netlab
from softswitch.ports import ETH_P_ALL, PortError, RawPort, fix_partial_checksum, parse_port_spec


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
