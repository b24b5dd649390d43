"""Hardware flow offload end to end: hosts in namespaces, a real switch, the controller as users run it.

LAN host A (10.0.1.10) on port 1 behind masquerade, LAN host C (10.0.2.10) on port 2, WAN host B
(192.0.2.20) on port 4. The controller is `offloadgen run` in its own process (so it can be SIGKILLed and
restarted), observed only through what users have: `offloadgen flows/stats/entries` over the status socket.
Everything runs on softswitch and, when installed, on BMv2 simple_switch_grpc.

The test config is configs/router.toml with a shortened [flowtable] (timeouts of a few seconds), lan2
left out of the flowtable, and rules that keep TCP port 5001 and IPv6 UDP to B on the slow path.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hostapps import TCP_CLIENT, TCP_SERVER, UDP_CLIENT, UDP_SERVER, assert_delivered, start_server, stop, wait_for

from offloadgen.build import build
from offloadgen.netlab import Host, Netlab
from offloadgen.pki import shell_python
from offloadgen.profile import load_profile, shipped_profile
from offloadgen.switchproc import SwitchProcess, SwitchSpec, free_grpc_addr, free_port

pytestmark = [pytest.mark.root, pytest.mark.slow]

SLOWPATHS = ["offloadgen", "kernel"]
#: Every switch with every slow path: offloadgen's model of the forward path, and the Linux kernel in a
#: router namespace (`--slowpath kernel`); the same behaviour is expected of both.
LABS = [pytest.param((kind, sp), id=f"{kind}-{sp}", marks=[pytest.mark.bmv2] if kind == "bmv2" else [])
        for kind in ("softswitch", "bmv2") for sp in SLOWPATHS]
WAN_ADDR = "192.0.2.1"
B_ADDR = "192.0.2.20"
UDP_TIMEOUT = 3
CLOSE_TIMEOUT = 4

FLOWTABLE = f"""
[flowtable]
ports = ["lan1", "lan3", "wan"]
tcp_timeout = 30
udp_timeout = {UDP_TIMEOUT}
close_timeout = {CLOSE_TIMEOUT}

[[flowtable.rules]]
action = "skip"
proto = "tcp"
dport = 5001

[[flowtable.rules]]
action = "skip"
proto = "udp"
dst = "2001:db8:2::/64"
"""


def make_config(router_config_path: Path, tmp: Path, *, hw_offload: bool = True) -> Path:
    """configs/router.toml with the test's [flowtable] in place of its own."""
    text = router_config_path.read_text()
    cut = text.index("\n[flowtable]")
    path = tmp / "router.toml"
    flowtable = FLOWTABLE if hw_offload else FLOWTABLE.replace("[flowtable]\n", "[flowtable]\nhw_offload = false\n", 1)
    path.write_text(text[:cut] + "\n" + flowtable)
    return path


def offloadgen(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "offloadgen.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@dataclass
class Controller:
    """`offloadgen run` as a process: start, SIGKILL, restart; query its status socket."""

    argv: list[str]
    sock: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Controller:
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen(self.argv, stdout=f, stderr=subprocess.STDOUT)
        wait_for(lambda: self.alive() and self.query_ok(), 30, "the controller's status socket")
        return self

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"controller exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
        return True

    def query_ok(self) -> bool:
        from runtime.status import StatusError, query

        try:
            query("stats", self.sock, timeout=2)
            return True
        except (StatusError, OSError):
            return False

    def q(self, cmd: str) -> Any:
        from runtime.status import query

        return query(cmd, self.sock)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    # ---------------------------------------------------------------- views
    def flows(self) -> list[dict[str, Any]]:
        return list(self.q("flows"))

    def flow(self, proto: str, dport: int, *, sport: int | None = None) -> dict[str, Any] | None:
        for f in self.flows():
            if f["proto"] == proto and f["orig"]["dport"] == dport and (sport is None or f["orig"]["sport"] == sport):
                return f
        return None

    def wait_flow(self, proto: str, dport: int, *, sport: int | None = None, state: str = "hw_offloaded",
                  timeout: float = 10, what: str = "") -> dict[str, Any]:
        """Wait until the flow is listed in ``state``; return its record."""
        return wait_for(lambda: (f := self.flow(proto, dport, sport=sport)) and f["state"] == state and f, timeout,
                        what or f"{proto} :{dport} to be {state}")

    def entries(self) -> list[dict[str, Any]]:
        return list(self.q("entries"))

    def stats(self) -> dict[str, Any]:
        return dict(self.q("stats"))

    def packet_in(self) -> int:
        return int(self.stats()["controller"]["packet_in"])


@dataclass
class Lab:
    kind: str
    slowpath: str
    a: Host
    b: Host
    c: Host
    switch: SwitchProcess
    ctl: Controller
    tmp: Path

    def restart_switch(self) -> None:
        spec = self.switch.spec
        self.switch.kill()
        self.switch = SwitchProcess(spec).start()


@contextlib.contextmanager
def run_lab(kind: str, build_dir: Path, config: Path, tmp: Path, slowpath: str = "offloadgen") -> Iterator[Lab]:
    """Hosts A (lan1), C (lan2) and B (wan), a switch, and `offloadgen run` against it."""
    with Netlab() as net:
        a = net.add_host("a", mac="02:00:00:00:00:10", ipv4="10.0.1.10/24", gw4="10.0.1.1",
                         ipv6="2001:db8:1::10/64", gw6="2001:db8:1::1")
        c = net.add_host("c", mac="02:00:00:00:00:30", ipv4="10.0.2.10/24", gw4="10.0.2.1")
        b = net.add_host("b", mac="02:00:00:00:00:20", ipv4=f"{B_ADDR}/24", gw4=WAN_ADDR,
                         ipv6="2001:db8:2::20/64", gw6="2001:db8:2::1")
        spec = SwitchSpec(kind=kind, ports={1: a.switch_iface, 2: c.switch_iface, 4: b.switch_iface},
                          grpc_addr=free_grpc_addr(), cpu_port=255, log_file=tmp / "switch.log",
                          thrift_port=free_port())
        sw = SwitchProcess(spec).start()
        sock = tmp / "ctl.sock"
        ctl = Controller([sys.executable, "-m", "offloadgen.cli", "-v", "run", "--config", str(config),
                          "--switch", spec.grpc_addr, "--build", str(build_dir), "--target", kind,
                          "--status-socket", str(sock), "--slowpath", slowpath], sock, tmp / "controller.log")
        lab = Lab(kind, slowpath, a, b, c, sw, ctl, tmp)
        try:
            ctl.start()
            yield lab
        finally:
            ctl.stop()
            lab.switch.stop()
            print((tmp / "controller.log").read_text()[-4000:])


@pytest.fixture(scope="module", params=LABS)
def lab(request: pytest.FixtureRequest, build_dir: Path, router_config_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    kind, slowpath = request.param
    tmp = tmp_path_factory.mktemp(f"ft-{kind}-{slowpath}")
    with run_lab(kind, build_dir, make_config(router_config_path, tmp), tmp, slowpath) as lab:
        yield lab


def start_transfer(lab: Lab, dst: str, size: int, pause: float, port: int = 5002) -> tuple[subprocess.Popen[str], int]:
    """A TCP transfer from A, paced by ``pause`` per 64 KiB; returns the client and its source port."""
    proc = lab.a.popen(sys.executable, "-c", TCP_CLIENT, dst, str(port), str(size), str(pause),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline().split()[1])


def entries_of(lab: Lab, flow_id: int) -> list[dict[str, Any]]:
    return [e for e in lab.ctl.entries() if e["flow"] == flow_id]


def settled(cond: Any) -> Any:
    """For wait_for while the switch restarts: a read that fails (switch not back yet) is a 'not yet'."""
    from runtime.status import StatusError

    def check() -> Any:
        try:
            return cond()
        except StatusError:
            return False
    return check


def assert_switch_matches_flowtable(lab: Lab) -> None:
    """The invariant: every entry belongs to a flow, every [HW_OFFLOAD] flow has both its entries."""
    entries = lab.ctl.entries()
    assert all(e["flow"] is not None for e in entries), f"entries no flow owns: {entries}"
    flows = {f["id"]: f for f in lab.ctl.flows()}
    owned = {(e["flow"], e["dir"]) for e in entries}
    for f in flows.values():
        if f["state"] == "hw_offloaded":
            assert {(f["id"], "original"), (f["id"], "reply")} <= owned, f"{f} lacks entries: {entries}"
    assert all(flows.get(fid, {}).get("state") == "hw_offloaded" for fid, _ in owned), (flows, entries)


def test_tcp_bulk_transfer_is_offloaded(lab: Lab) -> None:
    srv = start_server(lab.b, TCP_SERVER, "0.0.0.0", "5002")
    size = 8 * 1024 * 1024
    before = lab.ctl.packet_in()
    proc, sport = start_transfer(lab, B_ADDR, size, 0.01)
    try:
        flow = lab.ctl.wait_flow("tcp", 5002, sport=sport, timeout=10, what="the transfer's flow to reach [HW_OFFLOAD]")
        assert flow["tag"] == "[HW_OFFLOAD]"
        assert {e["dir"] for e in entries_of(lab, flow["id"])} == {"original", "reply"}
        # masquerade on the switch: the original direction's entry rewrites A to the WAN address
        [orig_entry] = [e for e in entries_of(lab, flow["id"]) if e["dir"] == "original"]
        assert orig_entry["action"] == "offload_nat" and orig_entry["params"]["saddr"] == WAN_ADDR
        # while it is offloaded, `offloadgen flows` shows it the way conntrack -L would
        out = offloadgen("flows", "--status-socket", str(lab.ctl.sock))
        assert out.returncode == 0, out.stderr
        assert f"sport={sport} dport=5002" in out.stdout and "[HW_OFFLOAD]" in out.stdout
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop(srv)
    assert proc.returncode == 0, stderr
    peer, n, digest, sent = stdout.splitlines()[-1].split()
    assert peer == WAN_ADDR, "B must see only the router's WAN address"
    assert (int(n), digest) == (size, sent)
    punted = lab.ctl.packet_in() - before
    # ~8 MiB is >5000 data segments plus ACKs; the controller saw the handshake, the first segments
    # before the entries were in, and the FINs (the switch punts those)
    assert punted < 100, f"{punted} packet-ins for an offloaded transfer"

    # FIN: closing, entries gone from the switch, the flow kept in software until the close timeout
    fin_flow = lab.ctl.wait_flow("tcp", 5002, sport=sport, state="closing", timeout=2, what="the flow to be closing after FIN")
    wait_for(lambda: not entries_of(lab, fin_flow["id"]), 1.0, "its entries to leave the switch within a second")
    # the accounting includes what the switch forwarded (read before the entries were deleted)
    assert fin_flow["orig"]["bytes"] + fin_flow["reply"]["bytes"] >= size, fin_flow
    st = lab.ctl.stats()
    assert st["controller"]["hw_packets"] > 1000
    text = offloadgen("stats", "--status-socket", str(lab.ctl.sock))
    assert "wq_add" in text.stdout and "hw_add_ok" in text.stdout, text.stdout + text.stderr
    wait_for(lambda: lab.ctl.flow("tcp", 5002, sport=sport) is None, CLOSE_TIMEOUT + 3,
             "the closing flow to leave the flowtable after the close timeout")
    assert_switch_matches_flowtable(lab)


def test_last_packets_after_fin_take_the_software_path(lab: Lab) -> None:
    """A half-close: A sends its FIN, then B keeps sending; B's data after the FIN reaches A although the
    entries are gone (the software fast path / slow path carries the closing flow)."""
    script = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 5003)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
c.recv(100)
while c.recv(65536): pass          # A's FIN
time.sleep(1.5)                    # the flow is closing now and its entries are gone
for i in range(50): c.sendall(b"x" * 1000)
c.close()
"""
    srv = start_server(lab.b, script)
    client = r"""
import socket, time
c = socket.create_connection(("192.0.2.20", 5003), timeout=30)
for i in range(200): c.sendall(b"y" * 1000); time.sleep(0.002)
time.sleep(1); c.sendall(b"z"); c.shutdown(socket.SHUT_WR)
n = 0
while True:
    b = c.recv(65536)
    if not b: break
    n += len(b)
print(n)
"""
    try:
        out = lab.a.run(sys.executable, "-c", client, timeout=60)
    finally:
        stop(srv)
    assert out.stdout.strip() == "50000"
    st = lab.ctl.stats()["flowtable"]["counters"]
    assert st["closed"] >= 1


def conntrack_of(lab: Lab, sport: int, dport: int) -> list[dict[str, Any]]:
    """The connections `offloadgen flows --all` lists for A's source port ``sport`` to ``dport``."""
    out = offloadgen("flows", "--all", "--json", "--status-socket", str(lab.ctl.sock))
    assert out.returncode == 0, out.stderr
    return [c for c in json.loads(out.stdout)["conntrack"]
            if c["original"]["sport"] == sport and c["original"]["dport"] == dport]


@contextlib.contextmanager
def no_tail_loss_probes(*hosts: Host) -> Iterator[None]:
    """A clean close on hosts whose peer is ~10 ms away through the slow path: a tail loss probe (after
    2 x RTT, at least 10 ms) would retransmit the passive closer's FIN before the last ACK reaches it; the
    duplicate ACK that answers it then meets a closed socket and draws a RST, which rightly ends conntrack in
    CLOSE, as Linux's would. Retransmission by timeout (200 ms and more) stays on."""
    before = [h.run("sysctl", "-n", "net.ipv4.tcp_early_retrans").stdout.strip() for h in hosts]
    for h in hosts:
        h.run("sysctl", "-qw", "net.ipv4.tcp_early_retrans=0")
    try:
        yield
    finally:
        for h, value in zip(hosts, before, strict=True):
            h.run("sysctl", "-qw", f"net.ipv4.tcp_early_retrans={value}")


def test_closed_offloaded_connection_reaches_time_wait_for_120_s(lab: Lab) -> None:
    """Every packet of the close passes conntrack, as on Linux's classic path: the entry goes FIN_WAIT,
    CLOSE_WAIT, LAST_ACK, TIME_WAIT and is kept 120 s, after the flow itself has left the flowtable."""
    with no_tail_loss_probes(lab.a, lab.b):
        _closed_offloaded_connection_reaches_time_wait(lab)


def _closed_offloaded_connection_reaches_time_wait(lab: Lab) -> None:
    srv = start_server(lab.b, TCP_SERVER, "0.0.0.0", "5002")
    size = 4 * 1024 * 1024
    proc, sport = start_transfer(lab, B_ADDR, size, 0.03)
    try:
        flow = lab.ctl.wait_flow("tcp", 5002, sport=sport, timeout=10, what="the transfer's flow to reach [HW_OFFLOAD]")
        [live] = conntrack_of(lab, sport, 5002)
        assert live["state"] == "ESTABLISHED" and "HW_OFFLOAD" in live["status"], live
        if lab.slowpath == "kernel":
            # the kernel's entry is kept ahead of the flow's own deadline (punted packets can set it back to
            # a state's timeout at any time, so a day once would not hold)
            assert live["timeout"] >= 30, "offloaded: the kernel's timeout kept ahead of the flow's"
        else:
            assert 86000 < live["timeout"] <= 86400, "offloaded: the day-long timeout the flowtable sets"
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop(srv)
    assert proc.returncode == 0, stderr
    assert_delivered(stdout, WAN_ADDR, size)
    # A closed first (FIN_WAIT), B acknowledged and closed (CLOSE_WAIT, LAST_ACK), A's last ACK: TIME_WAIT
    done = wait_for(lambda: [c for c in conntrack_of(lab, sport, 5002) if c["state"] == "TIME_WAIT"], 5,
                    "conntrack to see the last ACK (TIME_WAIT)")
    [ct] = done
    assert ct["id"] == live["id"] and 100 < ct["timeout"] <= 120, ct
    assert not {"OFFLOAD", "HW_OFFLOAD"} & set(ct["status"]), "conntrack owns the closed connection again"
    text = offloadgen("flows", "--all", "--status-socket", str(lab.ctl.sock))
    [line] = [x for x in text.stdout.splitlines() if f"sport={sport} dport=5002" in x and x.startswith("ipv4")]
    assert " TIME_WAIT " in line and int(line.split()[3]) > 100, line
    # the flow leaves the flowtable after the close timeout; conntrack keeps TIME_WAIT for its 120 s
    wait_for(lambda: lab.ctl.flow("tcp", 5002, sport=sport) is None, CLOSE_TIMEOUT + 3,
             "the closing flow to leave the flowtable")
    [ct] = conntrack_of(lab, sport, 5002)
    assert ct["state"] == "TIME_WAIT" and 100 < ct["timeout"] < 120 - CLOSE_TIMEOUT + 1, ct
    assert not entries_of(lab, flow["id"])
    assert_switch_matches_flowtable(lab)


#: A server for two connections that closes each one first (it keeps the TIME_WAIT, so the client may bind
#: the same port again at once). The client sends length-prefixed chunks, an empty one last; the server
#: answers with the peer, the byte count and their SHA-256.
REUSE_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
print("ready", flush=True)
def recv_exact(c, k):
    b = b""
    while len(b) < k:
        more = c.recv(k - len(b))
        if not more: raise SystemExit("connection closed early")
        b += more
    return b
for _ in range(2):
    c, peer = s.accept()
    n, h = 0, hashlib.sha256()
    while (k := int.from_bytes(recv_exact(c, 4), "big")):
        h.update(recv_exact(c, k)); n += k
    c.sendall(f"{peer[0]} {n} {h.hexdigest()}".encode()); c.close()
"""

#: Two connections from the same source port, one after the other. Each sends paced 64 KiB chunks until
#: the test lets it finish, then prints the server's answer and the digest of what it sent. The test steers
#: it with files: <base>.1 ends the first connection's data, <base>.2 starts the second, <base>.3 ends it.
REUSE_CLIENT = r"""
import hashlib, os, socket, sys, time
host, port, sport, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def wait(step):
    while not os.path.exists(f"{base}.{step}"):
        time.sleep(0.05)
for rnd in range(2):
    if rnd:
        wait(2)
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); c.settimeout(60)
    c.bind(("0.0.0.0", sport)); c.connect((host, port))
    print("connected", c.getsockname()[1], flush=True)
    h, n = hashlib.sha256(), 0
    while n < 1 << 20 or not os.path.exists(f"{base}.{2 * rnd + 1}"):
        chunk = os.urandom(65536)
        c.sendall(len(chunk).to_bytes(4, "big") + chunk); h.update(chunk); n += len(chunk)
        time.sleep(0.02)
    c.sendall(bytes(4))
    reply = b""
    while True:
        b = c.recv(4096)
        if not b: break
        reply += b
    c.close()
    print("reply", reply.decode(), n, h.hexdigest(), flush=True)
"""


def test_client_port_reuse_after_close_is_a_new_offloaded_connection(lab: Lab) -> None:
    """A second connection on the same 5-tuple after a close: conntrack destroys the TIME_WAIT entry and
    tracks the SYN as new (SYN_SENT ... ESTABLISHED), and the new connection is offloaded again."""
    with no_tail_loss_probes(lab.a, lab.b):
        _port_reuse(lab)


def _port_reuse(lab: Lab) -> None:
    sport = 47123
    base = lab.tmp / "reuse"
    srv = start_server(lab.b, REUSE_SERVER, "5004")
    proc = lab.a.popen(sys.executable, "-c", REUSE_CLIENT, B_ADDR, "5004", str(sport), str(base),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout

    def answer() -> None:
        _, peer, n, digest, sent, sent_digest = out.readline().split()
        assert (peer, n, digest) == (WAN_ADDR, sent, sent_digest), "the server got exactly what was sent"

    try:
        assert out.readline().split() == ["connected", str(sport)]
        first = lab.ctl.wait_flow("tcp", 5004, sport=sport, timeout=10, what="the first connection offloaded")
        [ct1] = conntrack_of(lab, sport, 5004)
        Path(f"{base}.1").touch()
        answer()
        # B closed first: B's FIN, A's ACK and FIN, B's last ACK all passed conntrack
        wait_for(lambda: [c["state"] for c in conntrack_of(lab, sport, 5004)] == ["TIME_WAIT"], 5,
                 "the first connection in TIME_WAIT")
        Path(f"{base}.2").touch()
        assert out.readline().split() == ["connected", str(sport)]
        second = lab.ctl.wait_flow("tcp", 5004, sport=sport, timeout=10,
                                   what="the second connection on the same tuple to reach [HW_OFFLOAD]")
        assert second["id"] != first["id"] and second["tag"] == "[HW_OFFLOAD]"
        [ct2] = conntrack_of(lab, sport, 5004)
        if lab.slowpath == "offloadgen":
            # (the kernel's conntrack ids hash the entry's address and tuple: a new entry for the same tuple
            # in the same slab slot has the old one's id, so there only the log below tells them apart)
            assert ct2["id"] != ct1["id"], "the old entry is destroyed and a new one tracks the SYN"
        assert ct2["state"] == "ESTABLISHED" and "HW_OFFLOAD" in ct2["status"], ct2
        assert {e["dir"] for e in entries_of(lab, second["id"])} == {"original", "reply"}
        Path(f"{base}.3").touch()
        answer()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        stop(srv)
    # The controller writes its INFO lines in blocks, at least once a second.
    wait_for(lambda: f"new connection {ct2['id']}: tcp" in (lab.tmp / "controller.log").read_text(), 3,
             "the second connection's new-connection log line")
    log = (lab.tmp / "controller.log").read_text()
    news = [line for line in log.splitlines() if "new connection" in line and f"sport={sport} dport=5004" in line]
    assert len(news) == 2, f"the old entry is destroyed and a new one tracks the SYN: {news}"
    assert_switch_matches_flowtable(lab)


def test_udp_idle_flow_expires_active_flow_is_kept_alive(lab: Lab) -> None:
    srv = start_server(lab.b, UDP_SERVER, "0.0.0.0", "5353")
    try:
        # The active flow: one datagram every 0.3 s for longer than three timeouts; the idle one: a few
        # datagrams, then silence.
        active = lab.a.popen(sys.executable, "-c", UDP_CLIENT, B_ADDR, "5353", str(int(4 * UDP_TIMEOUT / 0.3)), "0.3",
                             "41000", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lab.a.run(sys.executable, "-c", UDP_CLIENT, B_ADDR, "5353", "3", "0.2", "42000", timeout=30)
        idle = lab.ctl.wait_flow("udp", 5353, sport=42000, timeout=5, what="the short UDP flow to be offloaded")
        live = lab.ctl.wait_flow("udp", 5353, sport=41000, timeout=5, what="the long UDP flow to be offloaded")
        pin = lab.ctl.packet_in()
        wait_for(lambda: lab.ctl.flow("udp", 5353, sport=42000) is None, UDP_TIMEOUT + 4,
                 "the idle UDP flow to expire")
        assert not entries_of(lab, idle["id"]), "the expired flow's entries are still on the switch"
        # the active flow outlived its timeout several times over on the switch alone
        time.sleep(UDP_TIMEOUT)
        still = lab.ctl.flow("udp", 5353, sport=41000)
        assert still is not None and still["id"] == live["id"] and still["state"] == "hw_offloaded", still
        assert len(entries_of(lab, live["id"])) == 2
        assert lab.ctl.packet_in() - pin < 10, "the active flow's datagrams should not reach the controller"
        stdout, _ = active.communicate(timeout=60)
        assert "timeout" not in stdout and stdout.count(B_ADDR[:-3]) > 0
        # The GC pass that expired the idle flow is timed, and shown with the controller's stats.
        ctl = lab.ctl.stats()["controller"]
        assert ctl["flowtable_gc_us_max"] > 0 and ctl["flowtable_gc_us_last"] <= ctl["flowtable_gc_us_max"]
        assert ctl["slowpath_tick_us_max"] > 0
    finally:
        stop(srv)


def test_policy_keeps_excluded_flows_on_the_slow_path(lab: Lab) -> None:
    # a port rule: TCP 5001 is skipped
    srv = start_server(lab.b, TCP_SERVER, "0.0.0.0", "5001")
    try:
        before = lab.ctl.packet_in()
        out = lab.a.run(sys.executable, "-c", TCP_CLIENT, B_ADDR, "5001", "300000", timeout=60)
    finally:
        stop(srv)
    assert out.stdout.splitlines()[-1].split()[0] == WAN_ADDR
    assert lab.ctl.flow("tcp", 5001) is None
    assert lab.ctl.packet_in() - before > 200, "a skipped flow's packets all go through the controller"
    # an excluded port: C sits on lan2, which the flowtable does not cover
    srv = start_server(lab.b, UDP_SERVER, "0.0.0.0", "5354")
    try:
        out = lab.c.run(sys.executable, "-c", UDP_CLIENT, B_ADDR, "5354", "5", "0.1", "43000", timeout=30)
        assert "timeout" not in out.stdout
        assert lab.ctl.flow("udp", 5354) is None
        # a prefix rule: UDP to 2001:db8:2::/64 is skipped
        srv6 = start_server(lab.b, UDP_SERVER, "::", "5355")
        try:
            out = lab.a.run(sys.executable, "-c", UDP_CLIENT, "2001:db8:2::20", "5355", "5", "0.1", "43001", timeout=30)
            assert "timeout" not in out.stdout
        finally:
            stop(srv6)
        assert lab.ctl.flow("udp", 5355) is None
    finally:
        stop(srv)
    conns = lab.ctl.q("conntrack")
    assert any(c["original"]["dport"] == 5354 and c["state"] in ("REPLIED", "ASSURED") for c in conns)
    assert_switch_matches_flowtable(lab)


def test_ipv6_tcp_is_offloaded_without_nat(lab: Lab) -> None:
    srv = start_server(lab.b, TCP_SERVER, "::", "5002")
    try:
        proc, sport = start_transfer(lab, "2001:db8:2::20", 2 * 1024 * 1024, 0.02)
        flow = lab.ctl.wait_flow("tcp", 5002, sport=sport, timeout=10, what="the IPv6 flow to reach [HW_OFFLOAD]")
        assert {e["table"] for e in entries_of(lab, flow["id"])} == {"flow_v6"}
        assert {e["action"] for e in entries_of(lab, flow["id"])} == {"offload"}
        stdout, _ = proc.communicate(timeout=60)
    finally:
        stop(srv)
    assert stdout.splitlines()[-1].split()[0] == "2001:db8:1::10"


def test_controller_sigkill_mid_transfer_and_restart(lab: Lab) -> None:
    srv = start_server(lab.b, TCP_SERVER, "0.0.0.0", "5002")
    size = 6 * 1024 * 1024
    proc, sport = start_transfer(lab, B_ADDR, size, 0.05)
    try:
        before = lab.ctl.wait_flow("tcp", 5002, sport=sport, timeout=10, what="the transfer to be offloaded")
        lab.ctl.kill()
        time.sleep(1)  # the switch forwards on its own meanwhile
        assert proc.poll() is None, "the transfer should still be running"
        lab.ctl.start()
        # the restarted controller read the entries back and rebuilt the connection from them
        after = lab.ctl.wait_flow("tcp", 5002, sport=sport, timeout=5, what="the restarted controller to adopt the live flow")
        assert after["orig"]["src"] == before["orig"]["src"] and after["reply"]["dst"] == WAN_ADDR
        assert lab.ctl.stats()["flowtable"]["rebuilt"] >= 1
        assert_switch_matches_flowtable(lab)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop(srv)
    assert proc.returncode == 0, stderr
    assert_delivered(stdout, WAN_ADDR, size)
    # settled: the switch holds exactly the entries of live flows
    wait_for(lambda: not entries_of(lab, after["id"]), 3, "the finished transfer's entries to go")
    assert_switch_matches_flowtable(lab)


def test_switch_restart_reinstalls_flows(lab: Lab) -> None:
    srv = start_server(lab.b, UDP_SERVER, "0.0.0.0", "5356")
    try:
        sender = lab.a.popen(sys.executable, "-c", UDP_CLIENT, B_ADDR, "5356", "60", "0.2", "44000",
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        flow = lab.ctl.wait_flow("udp", 5356, timeout=5, what="the UDP flow to be offloaded")
        lab.restart_switch()
        # the controller reconnects, pushes the pipeline again and re-installs the flow
        wait_for(settled(lambda: len(entries_of(lab, flow["id"])) == 2), 20,
                 "the flow to be re-installed on the new switch")
        wait_for(settled(lambda: (f := lab.ctl.flow("udp", 5356)) and f["state"] == "hw_offloaded"), 5,
                 "[HW_OFFLOAD] again")
        assert lab.ctl.stats()["flowtable"]["reconciles"] >= 2
        stdout, _ = sender.communicate(timeout=60)
        answers = stdout.split("\n")
        assert answers[-1] != "timeout" and answers[-5:].count("timeout") == 0, answers[-10:]
        assert_switch_matches_flowtable(lab)
    finally:
        stop(srv)


def test_entries_command(lab: Lab) -> None:
    out = offloadgen("entries", "--status-socket", str(lab.ctl.sock), "--json")
    assert out.returncode == 0, out.stderr
    assert isinstance(json.loads(out.stdout), list)
    missing = offloadgen("flows", "--status-socket", str(lab.tmp / "nothing.sock"))
    assert missing.returncode == 2 and "no controller is running" in missing.stderr


# ------------------------------------------------------------------------------------------ table full

@pytest.fixture(scope="module", params=LABS)
def small_lab(request: pytest.FixtureRequest, router_config_path: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A profile whose IPv4 flow table holds 8 entries: four connections (two directions each)."""
    kind, slowpath = request.param
    tmp = tmp_path_factory.mktemp(f"small-{kind}-{slowpath}")
    text = shipped_profile("default").read_text().replace("ipv4 = 65536", "ipv4 = 8")
    assert "ipv4 = 8" in text
    (tmp / "small.toml").write_text(text.replace('name = "default"', 'name = "small"'))
    build(load_profile(tmp / "small.toml"), tmp / "build", use_p4c=shutil.which("p4c-bm2-ss") is not None)
    with run_lab(kind, tmp / "build", make_config(router_config_path, tmp), tmp, slowpath) as lab:
        yield lab


def test_fifth_connection_stays_on_the_software_path_when_the_table_is_full(small_lab: Lab) -> None:
    lab = small_lab
    srv = start_server(lab.b, UDP_SERVER, "0.0.0.0", "6000")
    senders = []
    try:
        for i in range(4):
            senders.append(lab.a.popen(sys.executable, "-c", UDP_CLIENT, B_ADDR, "6000", "40", "0.1", str(45000 + i),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        wait_for(lambda: sum(f["state"] == "hw_offloaded" for f in lab.ctl.flows()) == 4, 10,
                 "four flows on the switch")
        fifth = lab.a.popen(sys.executable, "-c", UDP_CLIENT, B_ADDR, "6000", "20", "0.1", "45004",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        f5 = wait_for(lambda: lab.ctl.flow("udp", 6000, sport=45004), 5, "the fifth flow in the flowtable")
        wait_for(lambda: lab.ctl.stats()["flowtable"]["counters"]["hw_add_table_full"] >= 1, 5,
                 "a table-full rejection")
        f5 = lab.ctl.flow("udp", 6000, sport=45004)
        assert f5 is not None and f5["tag"] == "[OFFLOAD]" and f5["state"] == "offloaded", f5
        stdout, _ = fifth.communicate(timeout=30)
        assert "timeout" not in stdout, "the fifth connection must keep working on the software path"
        st = lab.ctl.stats()
        if lab.slowpath == "kernel":  # no nf_flow_table in this kernel: the kernel forwards it itself
            assert st["controller"]["to_kernel"] >= 10, "its packets go through the kernel"
        else:
            assert st["controller"]["fastpath_packets"] >= 10, "its packets go through the software fast path"
        assert st["flowtable"]["occupancy"]["flow_v4"][0] == 8
        assert len(lab.ctl.entries()) == 8
    finally:
        for p in senders:
            with contextlib.suppress(Exception):
                p.communicate(timeout=30)
        stop(srv)


# ------------------------------------------------------------------------------------ p4runtime-shell

#: What the README tells users to type at the p4runtime-shell prompt (the shell fetches the pipeline from the
#: switch; with election id 1 it is a backup beside the controller's 10, and may read).
SHELL_INPUT = 'te = table_entry["flow_v4"]\nte.counter_data\nte.read(lambda e: print(e))\n'


#: p4runtime-shell pins protobuf<3.21, so it has its own environment beside .venv.
SHELL_PYTHON = Path(shell_python())


def shell_bytes(value: int) -> str:
    """How p4runtime-shell prints a canonical bytestring: "\\\\xd6\\\\xfa"."""
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return '"' + "".join(f"\\\\x{b:02x}" for b in raw) + '"'


def test_p4runtime_shell_as_backup_reads_live_offloaded_flows(lab: Lab) -> None:
    srv = start_server(lab.b, TCP_SERVER, "0.0.0.0", "5002")
    # paced to last well beyond the shell's start-up, so the flow is still on the switch when it reads
    proc, sport = start_transfer(lab, B_ADDR, 4 * 1024 * 1024, 0.1)
    try:
        flow = lab.ctl.wait_flow("tcp", 5002, sport=sport, what="the transfer to be offloaded")
        wait_for(lambda: sum(e["packets"] or 0 for e in entries_of(lab, flow["id"])) > 0, 5,
                 "the switch to count packets on the flow's entries")
        # the unmodified p4runtime-shell CLI from its own .venv-shell (scripts/setup.sh), fed the README's lines
        assert SHELL_PYTHON.exists(), f"{SHELL_PYTHON} is missing: run scripts/setup.sh"
        out = subprocess.run([str(SHELL_PYTHON), "-m", "p4runtime_sh", "--grpc-addr", lab.switch.grpc_addr,
                              "--device-id", "1", "--election-id", "0,1"], input=SHELL_INPUT, capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "You are not the primary client" in out.stdout
        blocks = out.stdout.split("table_id: ")[1:]
        assert blocks and all(b.startswith(f"{b.split()[0]} (\"ingress.flow_v4\")") for b in blocks), out.stdout
        mine = [b for b in blocks if shell_bytes(sport) in b]
        assert len(mine) == 2, out.stdout  # both directions of the live flow, by the templates' names
        assert all('("ingress.offload_nat")' in b for b in mine)
        counts = [int(b.split("packet_count: ")[1].split()[0]) for b in mine if "packet_count: " in b]
        assert len(counts) == 2 and sum(counts) > 0, "the switch's counters of a live flow"
        # the controller is still primary and still working
        assert lab.ctl.flow("tcp", 5002, sport=sport) is not None
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop(srv)
    assert proc.returncode == 0


# ------------------------------------------------------------------------------------ software only

@pytest.fixture(scope="module", params=LABS)
def sw_lab(request: pytest.FixtureRequest, build_dir: Path, router_config_path: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """`hw_offload = false`: a flowtable without `flags offload`."""
    kind, slowpath = request.param
    tmp = tmp_path_factory.mktemp(f"swonly-{kind}-{slowpath}")
    with run_lab(kind, build_dir, make_config(router_config_path, tmp, hw_offload=False), tmp, slowpath) as lab:
        yield lab


def test_software_flowtable_forwards_without_hardware_entries(sw_lab: Lab) -> None:
    lab = sw_lab
    srv = start_server(lab.b, TCP_SERVER, "0.0.0.0", "5002")
    size = 2 * 1024 * 1024
    try:
        proc, sport = start_transfer(lab, B_ADDR, size, 0.01)
        flow = wait_for(lambda: lab.ctl.flow("tcp", 5002, sport=sport), 10, "the flow in the software flowtable")
        assert flow["tag"] == "[OFFLOAD]" and flow["state"] == "offloaded"
        stdout, _ = proc.communicate(timeout=120)
    finally:
        stop(srv)
    assert_delivered(stdout, WAN_ADDR, size)
    assert lab.ctl.entries() == [], "software-only mode must not write the switch"
    st = lab.ctl.stats()
    assert st["flowtable"]["hw_enabled"] is False
    if lab.slowpath == "kernel":
        # this kernel has no nf_flow_table: every packet of the flow went through it
        assert st["controller"]["to_kernel"] > 1000, st["controller"]
        return
    # the data went through the software fast path, not the full slow path
    assert st["controller"]["fastpath_packets"] > 1000, st["controller"]
    assert st["controller"]["fastpath_packets"] > 10 * st["controller"]["slowpath_packets"], st["controller"]


# ------------------------------------------------------------------------------------ conntrack -L

def test_flows_all_lists_connections_like_conntrack(lab: Lab) -> None:
    """`offloadgen flows --all` lists conntrack's connections with [HW_OFFLOAD] on the offloaded one; with
    the kernel slow path they are the kernel's, and `conntrack -L` in the router namespace agrees."""
    srv = start_server(lab.b, TCP_SERVER, "0.0.0.0", "5002")
    proc, sport = start_transfer(lab, B_ADDR, 4 * 1024 * 1024, 0.1)
    try:
        lab.ctl.wait_flow("tcp", 5002, sport=sport, what="the transfer to be offloaded")
        out = offloadgen("flows", "--all", "--status-socket", str(lab.ctl.sock))
        assert out.returncode == 0, out.stderr
        [line] = [x for x in out.stdout.splitlines() if f"sport={sport} dport=5002" in x and x.startswith("ipv4")]
        assert "ESTABLISHED" in line and "[ASSURED]" in line and "[HW_OFFLOAD]" in line, out.stdout
        assert f"dst={WAN_ADDR} sport=5002 dport={sport}" in line, line  # the reply tuple carries the masquerade
        if lab.slowpath == "kernel":
            from runtime.kernel.slowpath import default_netns

            # the switch's counts beside the kernel's, which saw only what was punted
            hw = wait_for(lambda: (r := [c for c in lab.ctl.q("conntrack") if c["original"]["sport"] == sport])
                          and r[0]["hw_packets"][0] > 100 and r[0], 10, "the switch's counts in conntrack's listing")
            assert hw["packets"][0] < hw["hw_packets"][0], hw
            line = next(x for x in offloadgen("flows", "--all", "--status-socket", str(lab.ctl.sock)).stdout.splitlines()
                        if f"sport={sport} dport=5002" in x and x.startswith("ipv4"))
            assert "hw_packets=" in line, line

            ns = default_netns(lab.switch.grpc_addr, 1)
            ct = subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-L", "-p", "tcp", "--sport", str(sport)],
                                capture_output=True, text=True, check=True).stdout
            [kline] = [x for x in ct.splitlines() if f"sport={sport} dport=5002" in x]
            assert "ESTABLISHED" in kline and f"dst={WAN_ADDR} sport=5002 dport={sport}" in kline, kline
            conns = lab.ctl.q("conntrack")
            ids = {c["id"] for c in conns if c["original"]["sport"] == sport}
            assert f"id={ids.pop()}" in line  # the same kernel connection (conntrack's own id)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop(srv)
    assert proc.returncode == 0


def test_kernel_holds_offloaded_connections_liberally(lab: Lab) -> None:
    """With the kernel slow path, an offloaded TCP connection is tracked liberally in both directions
    (flow_offload_fixup_tcp) and its conntrack timeout is kept ahead of the flow's, over ctnetlink."""
    if lab.slowpath != "kernel":
        pytest.skip("the kernel's conntrack is only there with --slowpath kernel")
    from runtime.conntrack import CtTuple
    from runtime.kernel.ctnetlink import CtNetlink
    from runtime.kernel.slowpath import default_netns

    srv = start_server(lab.b, TCP_SERVER, "0.0.0.0", "5002")
    proc, sport = start_transfer(lab, B_ADDR, 4 * 1024 * 1024, 0.1)
    ct = CtNetlink(default_netns(lab.switch.grpc_addr, 1))
    try:
        lab.ctl.wait_flow("tcp", 5002, sport=sport, what="the transfer to be offloaded")
        k = ct.get(CtTuple.make("10.0.1.10", B_ADDR, "tcp", sport, 5002))
        assert k is not None and k.liberal, k
        # the controller set it (the kernel's own 5-day ESTABLISHED timeout is gone; packets that still pass
        # the kernel may raise it to a state's timeout), and never below the flow's own 30 s
        assert lab.ctl.stats()["controller"]["kernel_ct_timeout_extended"] >= 1
        assert 30 <= k.timeout_s < 5 * 86400 - 60, k
        proc.communicate(timeout=120)
    finally:
        ct.close()
        if proc.poll() is None:
            proc.kill()
        stop(srv)
    assert proc.returncode == 0
