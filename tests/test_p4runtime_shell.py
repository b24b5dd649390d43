"""The unmodified p4runtime-shell from PyPI drives a switch over veth pairs, exactly as a user would: on
softswitch (device config: the P4 source) and on BMv2's simple_switch_grpc (device config: p4c's JSON).

One switch per kind for the module; the tests share it in order (pipeline push, entry, packets, packet-in,
a backup that cannot write, idle timeout).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from p4.v1 import p4runtime_pb2

from offloadgen.build import build
from offloadgen.netlab import Netlab
from offloadgen.profile import load_profile
from offloadgen.switchproc import SwitchProcess, SwitchSpec, free_grpc_addr

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.root

SMAC, DMAC = "02:00:00:00:01:02", "02:00:00:00:00:bb"


@dataclass
class Setup:
    kind: str
    sh: Any
    addr: str
    h1: str  # host side of switch port 1
    h2: str  # host side of switch port 2
    p4info: Path
    packet_in: Any


@pytest.fixture(scope="module", params=["softswitch", pytest.param("bmv2", marks=pytest.mark.bmv2)])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    import p4runtime_sh.shell as sh

    kind = request.param
    out = tmp_path_factory.mktemp(f"build-{kind}")
    res = build(load_profile(REPO / "profiles" / "default.toml"), out)
    assert res.p4info is not None
    if kind == "bmv2":
        assert res.bmv2_json is not None, "p4c-bm2-ss produced no JSON"
        device_config = res.bmv2_json
    else:
        device_config = res.p4
    with Netlab() as lab:
        h1, s1 = lab.veth(f"ps{lab.tag}h1", f"ps{lab.tag}s1")
        h2, s2 = lab.veth(f"ps{lab.tag}h2", f"ps{lab.tag}s2")
        spec = SwitchSpec(kind=kind, ports={1: s1, 2: s2}, grpc_addr=free_grpc_addr(), device_id=1, cpu_port=255)
        with SwitchProcess(spec) as proc:
            sh.setup(device_id=1, grpc_addr=proc.grpc_addr, election_id=(0, 1),
                     config=sh.FwdPipeConfig(str(res.p4info), str(device_config)))
            packet_in = sh.PacketIn()
            try:
                yield Setup(kind, sh, proc.grpc_addr, h1, h2, res.p4info, packet_in)
            finally:
                sh.teardown()


def tcp(sport: int, ttl: int = 64) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    return bytes(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:01:01") /
                 IP(src="10.0.1.10", dst="10.0.2.20", ttl=ttl) / TCP(sport=sport, dport=80, flags="A") / b"payload")


def flow_entry(sh: Any, sport: int, ttl_ns: int = 0) -> Any:
    te = sh.TableEntry("ingress.flow_v4")(action="ingress.offload")
    te.match["in_port"] = "1"
    te.match["src_addr"] = "10.0.1.10"
    te.match["dst_addr"] = "10.0.2.20"
    te.match["proto"] = "6"
    te.match["src_port"] = str(sport)
    te.match["dst_port"] = "80"
    te.action["port"] = "2"
    te.action["smac"] = SMAC
    te.action["dmac"] = DMAC
    te.idle_timeout_ns = ttl_ns
    return te


class Capture:
    """A raw socket on a host-side veth, open before anything is sent."""

    def __init__(self, iface: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.bind((iface, 0))

    def expect(self, marker_sport: int, timeout: float = 5.0) -> bytes:
        from scapy.layers.inet import TCP
        from scapy.layers.l2 import Ether
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                break
            if addr[2] == 4:
                continue
            pkt = Ether(data)
            if pkt.haslayer(TCP) and pkt[TCP].sport == marker_sport:
                return data
        raise AssertionError(f"no TCP packet from port {marker_sport} within {timeout} s")

    def close(self) -> None:
        self.sock.close()


def send(iface: str, frame: bytes) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        s.send(frame)


def test_insert_and_read_back_with_counters(setup: Setup) -> None:
    sh = setup.sh
    flow_entry(sh, 1111).insert()
    got = list(sh.TableEntry("ingress.flow_v4").read())
    assert len(got) == 1 and got[0].match["src_port"].exact.value == (1111).to_bytes(2, "big")
    reader = sh.TableEntry("ingress.flow_v4")
    reader.counter_data  # noqa: B018 - asking for counters is done by touching the attribute
    (e,) = list(reader.read())
    assert e.counter_data.packet_count == 0


def test_tcp_packet_is_forwarded_rewritten(setup: Setup) -> None:
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    sh = setup.sh
    cap = Capture(setup.h2)
    try:
        send(setup.h1, tcp(1111))
        out = Ether(cap.expect(1111))
    finally:
        cap.close()
    assert out.src == SMAC and out.dst == DMAC and out[IP].ttl == 63
    chk = out[IP].chksum
    del out[IP].chksum
    assert IP(bytes(out[IP])).chksum == chk  # header checksum recomputed after TTL-1
    reader = sh.TableEntry("ingress.flow_v4")
    reader.counter_data  # noqa: B018
    deadline = time.monotonic() + 3
    while True:  # BMv2 counts asynchronously; poll briefly
        (e,) = list(reader.read())
        if e.counter_data.packet_count == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert e.counter_data.packet_count == 1 and e.counter_data.byte_count > 0


def test_miss_arrives_as_packet_in_with_reason(setup: Setup) -> None:
    sh = setup.sh
    frame = tcp(2222)
    send(setup.h1, frame)
    names = {m.id: m.name for m in sh.P4Objects(sh.P4Type.controller_packet_metadata)["packet_in"].metadata}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for msg in setup.packet_in.sniff(timeout=0.5):
            if msg.packet.payload == frame:
                md = {names[m.metadata_id]: int.from_bytes(m.value, "big") for m in msg.packet.metadata}
                assert md["ingress_port"] == 1 and md["reason"] == 1  # punt_reason_t.MISS
                return
    raise AssertionError("no packet-in for the missed packet")


def test_drop_counter_readable_by_reason(setup: Setup) -> None:
    """A frame to another host's MAC is dropped (as ip_rcv drops PACKET_OTHERHOST), and the shell reads it in
    drop_counter at its reason's index, packets and bytes."""
    from offloadgen.profile import DROP_REASONS

    sh = setup.sh
    index = [name for name, _ in DROP_REASONS].index("other_host") + 1
    cap = Capture(setup.h2)
    try:
        frame = bytes.fromhex("02bbbbbbbbbb") + tcp(3333)[6:]  # not port 1's MAC
        send(setup.h1, frame)
        ce = sh.CounterEntry("drop_counter")
        ce.index = index
        deadline = time.monotonic() + 3
        while True:  # BMv2 counts asynchronously; poll briefly
            (got,) = list(ce.read())
            if got.packet_count == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert (got.packet_count, got.byte_count) == (1, len(frame))
        with pytest.raises(AssertionError):
            cap.expect(3333, timeout=0.5)
    finally:
        cap.close()
    assert all(m.packet.payload != frame for m in setup.packet_in.sniff(timeout=0.3)), "dropped, not punted"


def test_backup_client_cannot_write(setup: Setup) -> None:
    from p4runtime_sh.p4runtime import P4RuntimeClient

    backup = P4RuntimeClient(1, setup.addr, (0, 0))
    try:
        update = p4runtime_pb2.Update(type=p4runtime_pb2.Update.INSERT)
        update.entity.table_entry.CopyFrom(_entry_msg(setup.sh, 3333))
        with pytest.raises(grpc.RpcError) as info:
            backup.write_update(update)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        backup.tear_down()


def _entry_msg(sh: Any, sport: int) -> Any:
    te = flow_entry(sh, sport)
    te._update_msg()  # p4runtime-shell builds its message lazily; no public accessor
    return te._entry


def test_idle_timeout_notification(setup: Setup) -> None:
    sh = setup.sh
    flow_entry(sh, 4444, ttl_ns=300_000_000).insert()
    deadline = time.monotonic() + 6  # BMv2 sweeps once a second
    while time.monotonic() < deadline:
        msg = sh.client.get_stream_packet("idle_timeout_notification", timeout=deadline - time.monotonic())
        if msg is None:
            break
        for te in msg.idle_timeout_notification.table_entry:
            if any(m.exact.value == (4444).to_bytes(2, "big") for m in te.match):
                assert te.idle_timeout_ns == 300_000_000
                return
    raise AssertionError("no idle-timeout notification")
