"""Differential: offloadgen with the kernel slow path answers like a plain Linux router.

The same two hosts -- A (10.0.1.10, 2001:db8:1::10) on the LAN, B (192.0.2.20, 2001:db8:2::20) on the WAN --
and the same probes, once through a plain Linux router (a namespace with the hosts' veths as `lan1` and
`wan`, the config's addresses and the nftables ruleset made from its [nat] and [flowtable] statements), once through a switch driven by
`offloadgen run --slowpath kernel` (the hosts on switch ports, the kernel behind TAPs, flows offloaded to the
switch). Every answer must be the same: pings both families, what B sees of A (the masquerade address),
TTL on arrival at B (also for datagrams the switch forwards alone), ICMP time exceeded, fragmentation needed
(the WAN port's MTU is 1400 here), a 4 MiB TCP transfer intact, a port forward from B to A, and the conntrack state sequence of one TCP
connection as ctnetlink reports it.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostapps import TCP_CLIENT, TCP_SERVER, start_server, stop, wait_for

from offloadgen.netlab import Host, Netlab, sh
from offloadgen.switchproc import SwitchProcess, SwitchSpec, free_grpc_addr
from runtime.config import RouterConfig, parse_config
from runtime.controller import Controller
from runtime.kernel.ctnetlink import CtNetlink, KEvent
from runtime.kernel.netns import NetNs
from runtime.kernel.nft import load_ruleset
from runtime.kernel.slowpath import KernelOptions
from runtime.offloader import load_policy
from runtime.pipeline import load_build

pytestmark = [pytest.mark.root, pytest.mark.slow]

KINDS = ["softswitch", pytest.param("bmv2", marks=pytest.mark.bmv2)]
B_ADDR = "192.0.2.20"
WAN_MTU = 1400
PORT_FORWARD = """
[[nat.dnat]]
in = "wan"
proto = "tcp"
dport = 8080
to = "10.0.1.10"
to_port = 80
"""

#: B: a UDP echo that reports the sender and the TTL each datagram arrived with (IP_RECVTTL).
TTL_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
s.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL (not in Python 3.11's socket module)
print("ready", flush=True)
while True:
    data, anc, _, peer = s.recvmsg(2048, 64)
    if data == b"quit": break
    ttl = [int.from_bytes(d[:4], "little") for lvl, typ, d in anc if lvl == socket.IPPROTO_IP and typ == socket.IP_TTL]
    print(peer[0], ttl[0] if ttl else -1, flush=True)
    s.sendto(data, peer)
"""

UDP_SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 46000)); s.settimeout(3)
for i in range(int(sys.argv[3])):
    s.sendto(b"x%d" % i, (sys.argv[1], int(sys.argv[2])))
    s.recvfrom(2048)
    time.sleep(0.2)
s.sendto(b"quit", (sys.argv[1], int(sys.argv[2])))
"""

#: A TCP exchange with pauses between its steps, so every step of the close is its own conntrack state.
CLOSE_SERVER = r"""
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 5005)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
while c.recv(65536): pass
time.sleep(0.5)
c.sendall(b"done"); c.close()
"""
CLOSE_CLIENT = r"""
import socket, time
c = socket.create_connection(("192.0.2.20", 5005), timeout=10)
for i in range(300): c.sendall(b"y" * 1000); time.sleep(0.005)
time.sleep(0.5)
c.shutdown(socket.SHUT_WR)
while c.recv(100): pass
time.sleep(0.3)
c.close()
"""


def diff_config(router_config_path: Path) -> RouterConfig:
    """configs/router.toml with a port forward (WAN TCP 8080 to A's port 80) and a WAN MTU of 1400 (so A's
    full-size DF packets need fragmenting)."""
    text = router_config_path.read_text().replace("\n[flowtable]", PORT_FORWARD + "\n[flowtable]", 1)
    cfg = parse_config(text, str(router_config_path))
    wan = cfg.port_names["wan"]
    ports = dict(cfg.ports)
    ports[wan] = dataclasses.replace(ports[wan], mtu=WAN_MTU)
    return dataclasses.replace(cfg, ports=ports)


def hosts(net: Netlab) -> tuple[Host, Host]:
    a = net.add_host("a", mac="02:00:00:00:00:10", ipv4="10.0.1.10/24", gw4="10.0.1.1",
                     ipv6="2001:db8:1::10/64", gw6="2001:db8:1::1")
    b = net.add_host("b", mac="02:00:00:00:00:20", ipv4=f"{B_ADDR}/24", gw4="192.0.2.1",
                     ipv6="2001:db8:2::20/64", gw6="2001:db8:2::1")
    return a, b


def tcp_states(ct: CtNetlink, dport: int, until: str, timeout: float) -> list[str]:
    """The TCP states ctnetlink reports for the connection to ``dport``, repeats folded, until ``until``."""
    states: list[str] = []

    def more() -> bool:
        for ev, k in ct.read_events() or []:
            if k.proto == 6 and k.orig.dport == dport and ev is not KEvent.DESTROY:
                name = k.state_name()
                if not states or states[-1] != name:
                    states.append(name)
        return until in states
    wait_for(more, timeout, f"conntrack to report {until} (seen {states})")
    return states


def probe(a: Host, b: Host, netns: str) -> dict[str, Any]:
    """Everything the hosts and conntrack can tell about the router."""
    out: dict[str, Any] = {}
    for fam, dst in (("4", B_ADDR), ("6", "2001:db8:2::20")):
        r = a.run("ping", f"-{fam}", "-c", "3", "-i", "0.2", "-W", "3", dst, check=False)
        out[f"ping{fam}"] = (r.returncode, sorted(set(re.findall(r"ttl=(\d+)", r.stdout))))
    srv = start_server(b, TTL_SERVER, "5400")
    try:
        a.run(sys.executable, "-c", UDP_SENDER, B_ADDR, "5400", "15", timeout=30)
        seen = srv.communicate(timeout=10)[0]
    finally:
        stop(srv)
    out["udp_seen_by_b"] = sorted(set(seen.split("\n")[1:]) - {""})
    r = a.run("ping", "-c", "1", "-t", "1", "-W", "3", B_ADDR, check=False)
    out["ttl_exceeded"] = re.findall(r"From (\S+) icmp_seq=\d+ (Time to live exceeded)", r.stdout)
    r = a.run("ping", "-c", "1", "-M", "do", "-s", "1450", "-W", "3", B_ADDR, check=False)
    out["frag_needed"] = re.findall(r"From (\S+) icmp_seq=\d+ Frag needed and DF set \(mtu = (\d+)\)", r.stdout)
    srv = start_server(b, TCP_SERVER, "0.0.0.0", "5002")
    try:
        size = 4 * 1024 * 1024
        r = a.run(sys.executable, "-c", TCP_CLIENT, B_ADDR, "5002", str(size), timeout=120)
    finally:
        stop(srv)
    peer, n, digest, sent = r.stdout.splitlines()[-1].split()
    out["tcp_4mib"] = (peer, int(n), digest == sent)
    srv = start_server(a, TCP_SERVER, "0.0.0.0", "80")
    try:
        r = b.run(sys.executable, "-c", TCP_CLIENT, "192.0.2.1", "8080", str(1024 * 1024), "0.02", timeout=120)
    finally:
        stop(srv)
    peer, n, digest, sent = r.stdout.splitlines()[-1].split()
    out["port_forward"] = (peer, int(n), digest == sent)
    ct = CtNetlink(netns)
    try:
        ct.read_events()
        srv = start_server(b, CLOSE_SERVER)
        try:
            a.run(sys.executable, "-c", CLOSE_CLIENT, timeout=30)
            out["tcp_states"] = tcp_states(ct, 5005, "TIME_WAIT", 5)
        finally:
            stop(srv)
    finally:
        ct.close()
    return out


def plain_router(net: Netlab, a: Host, b: Host, config: RouterConfig) -> NetNs:
    """A Linux router namespace with A's and B's veths as its `lan1` and `wan`, configured like offloadgen's
    router namespace: the config's MACs, MTUs and addresses, forwarding on, the same nftables ruleset."""
    ns = NetNs(f"ogr{secrets.token_hex(3)}").ensure()
    try:
        _configure_router(ns, a, b, config)
    except BaseException:
        ns.delete()
        raise
    return ns


def _configure_router(ns: NetNs, a: Host, b: Host, config: RouterConfig) -> None:
    for host, name in ((a, "lan1"), (b, "wan")):
        port = config.ports[config.port_names[name]]
        sh("ip", "link", "set", host.switch_iface, "netns", ns.name)
        ns.ip("link", "set", host.switch_iface, "name", name)
        ns.sysctl(f"net.ipv6.conf.{name}.disable_ipv6", 0)
        ns.sysctl(f"net.ipv6.conf.{name}.accept_dad", 0)
        ns.ip("link", "set", name, "address", ":".join(f"{x:02x}" for x in port.mac), "mtu", str(port.mtu), "up")
        for addr in port.all_addresses():
            ns.ip("addr", "replace", str(addr), "dev", name, *(["nodad"] if addr.version == 6 else []))
    for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
        ns.sysctl(key, 1)
    ns.ip("link", "set", "lo", "up")
    load_ruleset(ns, config, policy=load_policy(config))  # the same ruleset, statements included


@pytest.fixture(scope="module")
def plain_answers(router_config_path: Path) -> dict[str, Any]:
    config = diff_config(router_config_path)
    with Netlab() as net:
        a, b = hosts(net)
        ns = plain_router(net, a, b, config)
        try:
            return probe(a, b, ns.name)
        finally:
            ns.delete()


@pytest.fixture(scope="module", params=KINDS)
def kernel_lab(request: pytest.FixtureRequest, build_dir: Path,
               router_config_path: Path) -> Iterator[tuple[Host, Host, Controller]]:
    kind = request.param
    config = diff_config(router_config_path)
    pipeline = load_build(build_dir, kind)
    with Netlab() as net:
        a, b = hosts(net)
        spec = SwitchSpec(kind=kind, ports={1: a.switch_iface, 4: b.switch_iface}, grpc_addr=free_grpc_addr(),
                          cpu_port=pipeline.cpu_port)
        with SwitchProcess(spec) as sw, Controller(config, pipeline, sw.grpc_addr, kernel=KernelOptions()) as ctl:
            yield a, b, ctl


def test_kernel_slow_path_answers_like_a_linux_router(plain_answers: dict[str, Any],
                                                      kernel_lab: tuple[Host, Host, Controller]) -> None:
    a, b, ctl = kernel_lab
    assert ctl.kernel is not None
    answers = probe(a, b, ctl.kernel.ns.name)
    # the probes mean something: they succeeded on the plain router
    assert plain_answers["ping4"] == (0, ["63"]) and plain_answers["ping6"] == (0, ["63"]), plain_answers
    assert plain_answers["udp_seen_by_b"] == ["192.0.2.1 63"], plain_answers
    assert plain_answers["ttl_exceeded"] == [("10.0.1.1", "Time to live exceeded")], plain_answers
    assert plain_answers["frag_needed"] == [("10.0.1.1", str(WAN_MTU))], plain_answers
    assert plain_answers["tcp_4mib"] == ("192.0.2.1", 4 * 1024 * 1024, True), plain_answers
    assert plain_answers["port_forward"] == (B_ADDR, 1024 * 1024, True), plain_answers
    assert plain_answers["tcp_states"][:3] == ["SYN_SENT", "SYN_RECV", "ESTABLISHED"], plain_answers
    for key, want in plain_answers.items():
        assert answers[key] == want, f"{key}: offloadgen (kernel slow path) {answers[key]!r}, Linux {want!r}"
    # and the switch did forward on its own: the TCP and UDP connections were offloaded
    counters = ctl.offloader.ft.counters
    assert counters.hw_add_ok >= 3 and ctl.offloader.hw_packets > 1000, ctl.offloader.stats()
