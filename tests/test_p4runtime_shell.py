"""The unmodified p4runtime-shell from PyPI drives a switch over veth pairs, exactly as a user would: on
softswitch (device config: the P4 source) and on BMv2's simple_switch_grpc (device config: p4c's JSON).

The shell pins protobuf<3.21, so it lives in its own environment, .venv-shell (scripts/setup.sh), and runs
there as an outside client: one session per switch kind, held by tests/p4runtime_shell_driver.py, which
runs the Python each test sends it (the README's lines) and answers with the result. The tests share the
session in order (pipeline push, entry, packets, packet-in, a backup that cannot write, idle timeout).
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from offloadgen.build import build
from offloadgen.netlab import Netlab
from offloadgen.profile import load_profile
from offloadgen.switchproc import SwitchProcess, SwitchSpec, free_grpc_addr

REPO = Path(__file__).resolve().parent.parent
SHELL_PYTHON = REPO / ".venv-shell" / "bin" / "python"
pytestmark = pytest.mark.root

SMAC, DMAC = "02:00:00:00:01:02", "02:00:00:00:00:bb"

#: The README's snippet, as a function of the source port so each test adds its own flow.
FLOW_ENTRY = f"""
def flow_entry(sport, ttl_ns=0):
    te = sh.TableEntry("ingress.flow_v4")(action="ingress.offload")
    te.match["in_port"] = "1"
    te.match["src_addr"] = "10.0.1.10"
    te.match["dst_addr"] = "10.0.2.20"
    te.match["proto"] = "6"
    te.match["src_port"] = str(sport)
    te.match["dst_port"] = "80"
    te.action["port"] = "2"
    te.action["smac"] = "{SMAC}"
    te.action["dmac"] = "{DMAC}"
    te.idle_timeout_ns = ttl_ns
    return te
"""

READ_COUNTERS = """
reader = sh.TableEntry("ingress.flow_v4")
reader.counter_data
result = [[e.match["src_port"].exact.value.hex(), e.counter_data.packet_count, e.counter_data.byte_count]
          for e in reader.read()]
"""


class ShellSession:
    """p4runtime-shell in .venv-shell's interpreter; :meth:`run` executes code there and returns ``result``."""

    def __init__(self, log: Path) -> None:
        if not SHELL_PYTHON.exists():
            raise AssertionError(f"{SHELL_PYTHON} is missing: run scripts/setup.sh (it installs p4runtime-shell "
                                 "in .venv-shell)")
        self.log = log
        self._err = log.open("wb")
        # -I: neither tests/ nor the caller's PYTHON* variables may reach the shell's interpreter
        self.proc = subprocess.Popen([str(SHELL_PYTHON), "-I", str(REPO / "tests" / "p4runtime_shell_driver.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err)

    def run(self, code: str, timeout: float = 60.0) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"code": code}).encode() + b"\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            raise AssertionError(f"p4runtime-shell gave no answer within {timeout} s to:\n{code}\n"
                                 f"its output:\n{self.log.read_text(errors='replace')[-4000:]}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise AssertionError(f"in p4runtime-shell: {reply['error']}\n{reply['traceback']}")
        return reply["result"]

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            self._err.close()


@dataclass
class Setup:
    kind: str
    shell: ShellSession
    addr: str
    h1: str  # host side of switch port 1
    h2: str  # host side of switch port 2


@pytest.fixture(scope="module", params=["softswitch", pytest.param("bmv2", marks=pytest.mark.bmv2)])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
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
            shell = ShellSession(out / "p4runtime-shell.log")
            try:
                shell.run(f"sh.setup(device_id=1, grpc_addr={proc.grpc_addr!r}, election_id=(0, 1), "
                          f"config=sh.FwdPipeConfig({str(res.p4info)!r}, {str(device_config)!r}))\n"
                          "packet_in = sh.PacketIn()\n" + FLOW_ENTRY)
                yield Setup(kind, shell, proc.grpc_addr, h1, h2)
                shell.run("sh.teardown()")
            finally:
                shell.close()


def tcp(sport: int, ttl: int = 64) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    return bytes(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:01:01") /
                 IP(src="10.0.1.10", dst="10.0.2.20", ttl=ttl) / TCP(sport=sport, dport=80, flags="A") / b"payload")


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
    got = setup.shell.run('flow_entry(1111).insert()\n'
                          'result = [e.match["src_port"].exact.value.hex() '
                          'for e in sh.TableEntry("ingress.flow_v4").read()]')
    assert got == [(1111).to_bytes(2, "big").hex()]
    assert setup.shell.run(READ_COUNTERS) == [[(1111).to_bytes(2, "big").hex(), 0, 0]]


def test_tcp_packet_is_forwarded_rewritten(setup: Setup) -> None:
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
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
    deadline = time.monotonic() + 3
    while True:  # BMv2 counts asynchronously; poll briefly
        ((_, packets, octets),) = setup.shell.run(READ_COUNTERS)
        if packets == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert packets == 1 and octets > 0


def test_miss_arrives_as_packet_in_with_reason(setup: Setup) -> None:
    frame = tcp(2222)
    send(setup.h1, frame)
    got = setup.shell.run(f"""
import time
names = {{m.id: m.name for m in sh.P4Objects(sh.P4Type.controller_packet_metadata)["packet_in"].metadata}}
result = None
deadline = time.monotonic() + 5
while result is None and time.monotonic() < deadline:
    for msg in packet_in.sniff(timeout=0.5):
        if msg.packet.payload == bytes.fromhex("{frame.hex()}"):
            result = {{names[m.metadata_id]: int.from_bytes(m.value, "big") for m in msg.packet.metadata}}
""")
    assert got is not None, "no packet-in for the missed packet"
    assert got["ingress_port"] == 1 and got["reason"] == 1  # punt_reason_t.MISS


def test_drop_counter_readable_by_reason(setup: Setup) -> None:
    """A frame to another host's MAC is dropped (as ip_rcv drops PACKET_OTHERHOST), and the shell reads it in
    drop_counter at its reason's index, packets and bytes."""
    from offloadgen.profile import DROP_REASONS

    index = [name for name, _ in DROP_REASONS].index("other_host") + 1
    cap = Capture(setup.h2)
    try:
        frame = bytes.fromhex("02bbbbbbbbbb") + tcp(3333)[6:]  # not port 1's MAC
        send(setup.h1, frame)
        got = setup.shell.run(f"""
import time
ce = sh.CounterEntry("drop_counter")
ce.index = {index}
deadline = time.monotonic() + 3
while True:  # BMv2 counts asynchronously; poll briefly
    (c,) = list(ce.read())
    if c.packet_count == 1 or time.monotonic() > deadline:
        break
    time.sleep(0.05)
result = [c.packet_count, c.byte_count]
""")
        assert got == [1, len(frame)]
        with pytest.raises(AssertionError):
            cap.expect(3333, timeout=0.5)
    finally:
        cap.close()
    punted = setup.shell.run("""
result = [m.packet.payload.hex() for m in packet_in.sniff(timeout=0.3)]
""")
    assert frame.hex() not in punted, "dropped, not punted"


def test_backup_client_cannot_write(setup: Setup) -> None:
    got = setup.shell.run(f"""
import grpc
from p4.v1 import p4runtime_pb2
from p4runtime_sh.p4runtime import P4RuntimeClient
backup = P4RuntimeClient(1, {setup.addr!r}, (0, 0))
try:
    te = flow_entry(3333)
    te._update_msg()  # p4runtime-shell builds its message lazily; no public accessor
    update = p4runtime_pb2.Update(type=p4runtime_pb2.Update.INSERT)
    update.entity.table_entry.CopyFrom(te._entry)
    try:
        backup.write_update(update)
        result = "accepted"
    except grpc.RpcError as exc:
        result = exc.code().name
finally:
    backup.tear_down()
""")
    assert got == "PERMISSION_DENIED"
    assert [sport for sport, _, _ in setup.shell.run(READ_COUNTERS)] == [(1111).to_bytes(2, "big").hex()]


def test_idle_timeout_notification(setup: Setup) -> None:
    got = setup.shell.run("""
import time
flow_entry(4444, ttl_ns=300_000_000).insert()
result = None
deadline = time.monotonic() + 6  # BMv2 sweeps once a second
while result is None and time.monotonic() < deadline:
    msg = sh.client.get_stream_packet("idle_timeout_notification", timeout=deadline - time.monotonic())
    if msg is None:
        break
    for te in msg.idle_timeout_notification.table_entry:
        if any(m.exact.value == (4444).to_bytes(2, "big") for m in te.match):
            result = te.idle_timeout_ns
""")
    assert got == 300_000_000, "no idle-timeout notification for the entry"
