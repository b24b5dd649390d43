"""The controller routes between hosts through a real switch, slow path only (a policy that offloads nothing).

Host A (10.0.1.10/24, 2001:db8:1::10/64) on LAN port 1, host B (192.0.2.20/24, 2001:db8:2::20/64) on WAN port
4, configs/router.toml (masquerade out of the WAN). Runs against softswitch and, when installed, BMv2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hostapps import TCP_CLIENT, TCP_SERVER, UDP_CLIENT, UDP_SERVER, start_server, stop, wait_for

from offloadgen.netlab import Host, Netlab, sh
from offloadgen.switchproc import SwitchProcess, SwitchSpec, free_grpc_addr
from runtime.config import load_config
from runtime.conntrack import CtRecord, format_conntrack
from runtime.controller import Controller
from runtime.pipeline import load_build

pytestmark = [pytest.mark.root, pytest.mark.slow]

KINDS = ["softswitch", pytest.param("bmv2", marks=pytest.mark.bmv2)]
A_MAC, B_MAC = "02:00:00:00:00:10", "02:00:00:00:00:20"
WAN_ADDR = "192.0.2.1"

@dataclass
class Lab:
    kind: str
    a: Host
    b: Host
    switch: SwitchProcess
    ctl: Controller

    def conns(self, proto: str, **match: Any) -> list[CtRecord]:
        out = []
        for r in self.ctl.snapshot():
            if r.proto != proto:
                continue
            if all(getattr(r.original, k) == v for k, v in match.items()):
                out.append(r)
        return out


@pytest.fixture(scope="module", params=KINDS)
def lab(request: pytest.FixtureRequest, build_dir: Path, router_config_path: Path) -> Iterator[Lab]:
    kind = request.param
    pipeline = load_build(build_dir, kind)
    # The flowtable would take these connections off the slow path; this module tests the slow path itself
    # (test_flowtable_integration.py tests offload), so its policy offloads nothing.
    config = dataclasses.replace(load_config(router_config_path), flowtable_raw={"default": "skip"})
    with Netlab() as net:
        a = net.add_host("a", mac=A_MAC, ipv4="10.0.1.10/24", gw4="10.0.1.1", ipv6="2001:db8:1::10/64",
                         gw6="2001:db8:1::1")
        b = net.add_host("b", mac=B_MAC, ipv4="192.0.2.20/24", gw4=WAN_ADDR, ipv6="2001:db8:2::20/64",
                         gw6="2001:db8:2::1")
        # A's switch side takes jumbo frames (BMv2 sizes its capture when it opens the port), so that
        # test_fragments_and_mtu can send DF packets over the WAN MTU by raising A's own MTU
        sh("ip", "link", "set", a.switch_iface, "mtu", "9000")
        spec = SwitchSpec(kind=kind, ports={1: a.switch_iface, 4: b.switch_iface}, grpc_addr=free_grpc_addr(),
                          cpu_port=pipeline.cpu_port)
        with SwitchProcess(spec) as sw, Controller(config, pipeline, sw.grpc_addr) as ctl:
            yield Lab(kind, a, b, sw, ctl)
            print(format_conntrack(ctl.snapshot()))
            print(ctl.stats())


def assert_slow_path_only(lab: Lab) -> None:
    for table in ("flow_v4", "flow_v6"):
        assert lab.ctl.client.read_table(table) == [], f"{table} has entries; the policy offloads nothing here"


def test_ping_router_and_across_with_masquerade(lab: Lab) -> None:
    for target in ("10.0.1.1", "192.0.2.1", "192.0.2.20"):
        out = lab.a.run("ping", "-c", "3", "-i", "0.2", "-W", "3", target, check=False)
        assert out.returncode == 0, f"ping {target} failed:\n{out.stdout}{out.stderr}"
    icmp = lab.conns("icmp", src=ipaddress.ip_address("10.0.1.10").packed, dst=ipaddress.ip_address("192.0.2.20").packed)
    assert len(icmp) == 1
    r = icmp[0]
    assert r.reply.dst == ipaddress.ip_address(WAN_ADDR).packed  # B answered the router, not A
    assert r.packets == (3, 3) and r.state == "REPLIED"
    assert_slow_path_only(lab)


def test_ipv6_routed_without_nat(lab: Lab) -> None:
    for target in ("2001:db8:1::1", "2001:db8:2::20"):
        out = lab.a.run("ping", "-6", "-c", "3", "-i", "0.2", "-W", "3", target, check=False)
        assert out.returncode == 0, f"ping {target} failed:\n{out.stdout}{out.stderr}"
    srv = start_server(lab.b, TCP_SERVER, "::", "5002")
    try:
        out = lab.a.run(sys.executable, "-c", TCP_CLIENT, "2001:db8:2::20", "5002", "300000", timeout=60)
    finally:
        stop(srv)
    peer, n, digest, sent = out.stdout.splitlines()[-1].split()
    assert (peer, int(n), digest) == ("2001:db8:1::10", 300000, sent)  # no NAT for IPv6
    tcp6 = [r for r in lab.conns("tcp") if r.family == 6 and r.original.dport == 5002]
    assert tcp6 and tcp6[0].reply == tcp6[0].original.invert()
    assert_slow_path_only(lab)


def test_tcp_transfer_masqueraded_and_states(lab: Lab) -> None:
    states: list[str] = []
    lab.ctl.conntrack.subscribe(lambda ev, conn: states.append(conn.state_name())
                                if conn.proto == 6 and conn.tuples[0].dport == 5001 and ev.value in ("NEW", "STATE")
                                else None)
    srv = start_server(lab.b, TCP_SERVER, "0.0.0.0", "5001")
    size = 3 * 1024 * 1024
    try:
        out = lab.a.run(sys.executable, "-c", TCP_CLIENT, "192.0.2.20", "5001", str(size), timeout=90)
    finally:
        stop(srv)
    peer, n, digest, sent = out.stdout.splitlines()[-1].split()
    assert peer == WAN_ADDR, "B must see only the router's WAN address"
    assert int(n) == size and digest == sent
    [r] = lab.conns("tcp", dport=5001)
    assert r.reply.dst == ipaddress.ip_address(WAN_ADDR).packed
    assert "ASSURED" in r.status
    # SYN, SYN/ACK, ACK, data, FIN both ways: the states Linux goes through, in order
    assert states[:3] == ["SYN_SENT", "SYN_RECV", "ESTABLISHED"], states
    wait_for(lambda: "TIME_WAIT" in states, 5, "TIME_WAIT")
    # the close: A's FIN, B's ACK (CLOSE_WAIT) unless piggybacked on B's FIN (LAST_ACK), A's last ACK; a late
    # RST from a host may follow and close it (TIME_WAIT -> CLOSE), as it would in the kernel
    closing = states[3:states.index("TIME_WAIT") + 1]
    assert closing in (["FIN_WAIT", "LAST_ACK", "TIME_WAIT"], ["FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT"]), states
    assert states[len(states) - 1] in ("TIME_WAIT", "CLOSE"), states
    assert r.actions[0] is not None and f"snat={WAN_ADDR}" in r.actions[0]
    assert_slow_path_only(lab)


def test_udp_exchange(lab: Lab) -> None:
    srv = start_server(lab.b, UDP_SERVER, "0.0.0.0", "5353")
    try:
        out = lab.a.run(sys.executable, "-c", UDP_CLIENT, "192.0.2.20", "5353", "6", "0.5", timeout=30)
    finally:
        lab.a.run(sys.executable, "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                  ".sendto(b'quit', ('192.0.2.20', 5353))")
        stop(srv)
    lines = out.stdout.split("\n")
    assert lines[0].startswith(WAN_ADDR + " hello 0") and len([x for x in lines if x]) == 6
    [r] = lab.conns("udp", dport=5353, sport=40000)
    # unreplied -> replied -> assured once it lasted past 2 s with replies (nf_conntrack_proto_udp)
    assert r.state == "ASSURED"
    assert_slow_path_only(lab)


def test_ttl_expired_gets_time_exceeded(lab: Lab) -> None:
    out = lab.a.run("ping", "-c", "1", "-t", "1", "-W", "3", "192.0.2.20", check=False)
    assert "Time to live exceeded" in out.stdout and "From 10.0.1.1" in out.stdout, out.stdout
    out6 = lab.a.run("ping", "-6", "-c", "1", "-t", "1", "-W", "3", "2001:db8:2::20", check=False)
    assert "Time exceeded" in out6.stdout and "2001:db8:1::1" in out6.stdout, out6.stdout


def test_fragments_and_mtu(lab: Lab) -> None:
    # 3000-byte pings: the host fragments; the router reassembles for conntrack/NAT and fragments again
    before = lab.ctl.slowpath.reasm.stats["reassembled"]
    out = lab.a.run("ping", "-c", "2", "-i", "0.3", "-s", "3000", "-W", "3", "192.0.2.20", check=False)
    assert out.returncode == 0, out.stdout
    assert lab.ctl.slowpath.reasm.stats["reassembled"] >= before + 2
    # A jumbo link on the LAN side: DF packets over the WAN MTU get fragmentation needed / packet too big
    lab.a.run("ip", "link", "set", "eth0", "mtu", "9000")
    try:
        out = lab.a.run("ping", "-c", "1", "-M", "do", "-s", "2000", "-W", "3", "192.0.2.20", check=False)
        assert "Frag needed" in out.stdout and "mtu = 1500" in out.stdout, out.stdout
        out6 = lab.a.run("ping", "-6", "-c", "1", "-M", "do", "-s", "2000", "-W", "3", "2001:db8:2::20", check=False)
        assert "Packet too big" in out6.stdout and "mtu=1500" in out6.stdout.replace(" ", ""), out6.stdout
    finally:
        lab.a.run("ip", "link", "set", "eth0", "mtu", "1500")
