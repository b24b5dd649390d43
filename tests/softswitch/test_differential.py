"""Differential fidelity: the same program (compiled by p4c for BMv2), the same entries and the same packets
through BMv2 simple_switch (pcap file mode) and through softswitch's Dataplane; the packets out of every
port, packet-ins included, and the punt counters must be identical. Cases are generated: random 5-tuples
installed and hit (TCP/UDP, with and without NAT, UDP checksum 0), misses, every punt exception, packet-out,
VLAN tagged/untagged/foreign VID, checksum errors and truncated frames, and the edges of the IP receive path
(trailing bytes, other-host and broadcast MACs, bad versions and lengths, NAT flows punted on MTU, an entry
to the CPU port); the drop counters must agree too."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import Switch, ip, make_switch, source_of
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import rdpcap, wrpcap

from softswitch.dataplane import FieldMatch, TableEntry

PEER = "0a:0b:0c:0d:0e:0f"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rand_v4(rng: random.Random) -> str:
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _rand_v6(rng: random.Random) -> str:
    return f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(1, 65536):x}"


def _cases(sw: Switch, rng: random.Random) -> tuple[list[tuple[int, bytes]], list[str]]:
    """(ingress port, frame) cases, and the simple_switch_CLI commands installing the same entries."""
    p = sw.profile
    cmds: list[str] = []
    cases: list[tuple[int, bytes]] = []
    untagged = [x.number for x in p.ports if x.vlan is None]
    tagged = {x.number: x.vlan for x in p.ports if x.vlan is not None}
    families = [f for f in ("ipv4", "ipv6") if getattr(p, f)]

    macs = {x.number: x.mac for x in p.ports}

    def frame(port: int, l3: Packet, dst: str | None = None) -> bytes:
        eth = Ether(src="00:00:00:00:00:aa", dst=dst or macs[port])
        if port in tagged:
            return bytes(eth / Dot1Q(vlan=tagged[port]) / l3)
        return bytes(eth / l3)

    for i in range(24):
        fam = families[i % len(families)]
        in_port = rng.choice(untagged + list(tagged))
        out_port = rng.choice([x.number for x in p.ports])
        proto = rng.choice([6, 17])
        src, dst = (_rand_v4(rng), _rand_v4(rng)) if fam == "ipv4" else (_rand_v6(rng), _rand_v6(rng))
        sport, dport = rng.randrange(1, 65536), rng.randrange(1, 65536)
        nat = fam == "ipv4" and p.nat and rng.random() < 0.6
        smac, dmac = rng.randrange(1 << 48), rng.randrange(1 << 48)
        table = "ingress.flow_v4" if fam == "ipv4" else "ingress.flow_v6"
        key = [in_port, ip(src), ip(dst), proto, sport, dport]
        if nat:
            nsrc, ndst, nsp, ndp = _rand_v4(rng), _rand_v4(rng), rng.randrange(1, 65536), rng.randrange(1, 65536)
            args = [out_port, smac, dmac, ip(nsrc), ip(ndst), nsp, ndp]
            action = "ingress.offload_nat"
        else:
            args = [out_port, smac, dmac]
            action = "ingress.offload"
        if p.statements and rng.random() < 0.5:
            # the policy statements: DSCP (ECN bits of the packet kept), a named counter's index, a VLAN retag
            if p.dscp:
                args += [rng.randrange(2), rng.randrange(64)]
            if p.named_counters:
                args.append(rng.randrange(p.named_counters + 1))
            if p.vlan_retag:
                args += [rng.randrange(2), rng.randrange(1, 4095)]
            action += "_stmt"
        cmds.append(f"table_add {table} {action} {' '.join(map(str, key))} => {' '.join(map(str, args))}")
        params = {n: v for n, v in enumerate(args, start=1)}
        sw.dp.insert(TableEntry(sw.id("tables", table), {n: FieldMatch(v) for n, v in enumerate(key, start=1)},
                                sw.id("actions", action), params))
        l3: Packet = IP(src=src, dst=dst, ttl=rng.randrange(2, 255), tos=rng.randrange(256)) if fam == "ipv4" else IPv6(
            src=src, dst=dst, hlim=rng.randrange(2, 255), tc=rng.randrange(256))
        payload = Raw(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200))))
        if proto == 6:
            l4: Packet = TCP(sport=sport, dport=dport, flags="A", seq=rng.randrange(1 << 32))
        else:
            l4 = UDP(sport=sport, dport=dport)
        cases.append((in_port, frame(in_port, l3 / l4 / payload)))
        if proto == 17 and fam == "ipv4":
            zero = l3 / UDP(sport=sport, dport=dport, chksum=0) / payload
            cases.append((in_port, frame(in_port, zero)))
        if proto == 6:  # the same flow closing, and a miss next to it
            cases.append((in_port, frame(in_port, l3 / TCP(sport=sport, dport=dport, flags="FA") / payload)))
        cases.append((in_port, frame(in_port, l3 / l4.__class__(sport=sport ^ 1, dport=dport) / payload)))
    port = untagged[0]
    if p.ipv4:
        opt = IP(src="10.0.0.1", dst="10.0.0.2", options=[b"\x01\x01\x01\x00"]) / TCP()
        more = [IP(src="10.0.0.1", dst="10.0.0.2", ttl=1) / UDP(), IP(src="10.0.0.1", dst="10.0.0.2", ttl=0) / TCP(),
                opt, IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / UDP(), IP(src="10.0.0.1", dst="10.0.0.2",
                frag=10) / Raw(b"frag"), IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(),
                IP(src="10.0.0.1", dst="10.0.0.2", chksum=0xBEEF) / TCP(),
                IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="R"), IP(src="10.0.0.1", dst="10.0.0.2", len=3000) / UDP()]
        cases += [(port, frame(port, x)) for x in more]
        mtu = next(x.mtu for x in p.ports if x.number == untagged[-1])
        src, dst = _rand_v4(rng), _rand_v4(rng)
        key = [port, ip(src), ip(dst), 17, 5, 6]
        args = [untagged[-1], 1, 2]
        cmds.append(f"table_add ingress.flow_v4 ingress.offload {' '.join(map(str, key))} => "
                    f"{' '.join(map(str, args))}")
        sw.dp.insert(TableEntry(sw.id("tables", "ingress.flow_v4"), {n: FieldMatch(v) for n, v in enumerate(key, 1)},
                                sw.id("actions", "ingress.offload"), {n: v for n, v in enumerate(args, 1)}))
        for size in (mtu - 28, mtu - 27):
            cases.append((port, frame(port, IP(src=src, dst=dst) / UDP(sport=5, dport=6) / Raw(b"m" * size))))
        hit = IP(src=src, dst=dst) / UDP(sport=5, dport=6) / Raw(b"edge")
        cases += [(port, frame(port, hit) + b"\0" * 6), (port, frame(port, hit) + b"junk"),
                  (port, frame(port, hit, dst=PEER)), (port, frame(port, hit, dst="ff:ff:ff:ff:ff:ff")),
                  (port, frame(port, hit, dst="01:00:5e:00:00:01"))]
        for bad in (IP(src=src, dst=dst, version=5), IP(src=src, dst=dst, ihl=4), IP(src=src, dst=dst, len=19),
                    IP(src=src, dst=dst, len=21)):
            cases.append((port, frame(port, bad / UDP(sport=5, dport=6) / Raw(b"edge"))))
        if p.nat:
            key = [port, ip(src), ip(dst), 6, 7, 8]
            args = [untagged[-1], 1, 2, ip("192.0.2.1"), ip(dst), 9, 8]
            cmds.append(f"table_add ingress.flow_v4 ingress.offload_nat {' '.join(map(str, key))} => "
                        f"{' '.join(map(str, args))}")
            sw.dp.insert(TableEntry(sw.id("tables", "ingress.flow_v4"),
                                    {n: FieldMatch(v) for n, v in enumerate(key, 1)},
                                    sw.id("actions", "ingress.offload_nat"), {n: v for n, v in enumerate(args, 1)}))
            for size in (mtu - 40, mtu - 39):  # forwarded, then punted on MTU untouched
                cases.append((port, frame(port, IP(src=src, dst=dst) / TCP(sport=7, dport=8) / Raw(b"n" * size))))
            nat_hit = frame(port, IP(src=src, dst=dst) / TCP(sport=7, dport=8, flags="A") / Raw(b"ab"))
            cases += [(port, nat_hit), (port, nat_hit + b"\0" * 4)]
        key = [port, ip(src), ip(dst), 17, 11, 12]
        args = [p.cpu_port, 1, 2]
        cmds.append(f"table_add ingress.flow_v4 ingress.offload {' '.join(map(str, key))} => {' '.join(map(str, args))}")
        sw.dp.insert(TableEntry(sw.id("tables", "ingress.flow_v4"), {n: FieldMatch(v) for n, v in enumerate(key, 1)},
                                sw.id("actions", "ingress.offload"), {n: v for n, v in enumerate(args, 1)}))
        cases.append((port, frame(port, IP(src=src, dst=dst) / UDP(sport=11, dport=12) / Raw(b"to-cpu"))))
    if p.ipv6:
        more6 = [IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / UDP(),
                 IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment() / UDP(),
                 IPv6(src="2001:db8::1", dst="2001:db8::2", hlim=1) / TCP(),
                 IPv6(src="2001:db8::1", dst="2001:db8::2") / ICMP(),
                 IPv6(src="2001:db8::1", dst="2001:db8::2", version=4) / UDP(),
                 IPv6(src="2001:db8::1", dst="2001:db8::2", plen=100) / UDP()]
        cases += [(port, frame(port, x)) for x in more6]
        cases.append((port, frame(port, IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP()) + b"\0" * 6))
    cases.append((port, bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.1"))))
    whole = frame(port, IP(src="10.0.0.1", dst="10.0.0.2") / TCP() / Raw(b"x" * 20))
    cases += [(port, whole[:n]) for n in (10, 14, 20, 40)]
    for x in p.ports:  # packet-out to every port
        out = bytes(Ether(dst=PEER) / IP(dst="10.1.1.1") / UDP() / Raw(b"from-the-cpu"))
        cases.append((p.cpu_port, (x.number << 7).to_bytes(2, "big") + out))
        if tagged:  # already tagged by the controller (a retagged connection): the tag is kept as it is
            out = bytes(Ether(dst=PEER) / Dot1Q(vlan=300) / IP(dst="10.1.1.1") / UDP() / Raw(b"tagged-by-the-cpu"))
            cases.append((p.cpu_port, (x.number << 7).to_bytes(2, "big") + out))
    for vport, vid in tagged.items():  # trailing bytes trimmed into and out of a tagged port
        src, dst = _rand_v4(rng), _rand_v4(rng)
        for a, b in ((port, vport), (vport, port)):
            key = [a, ip(src), ip(dst), 17, 13, 14]
            cmds.append(f"table_add ingress.flow_v4 ingress.offload {' '.join(map(str, key))} => {b} 1 2")
            sw.dp.insert(TableEntry(sw.id("tables", "ingress.flow_v4"), {n: FieldMatch(v) for n, v in enumerate(key, 1)},
                                    sw.id("actions", "ingress.offload"), {1: b, 2: 1, 3: 2}))
            cases.append((a, frame(a, IP(src=src, dst=dst) / UDP(sport=13, dport=14) / Raw(b"v")) + b"\0" * 9))
        bad = Ether(dst="02:00:00:00:00:01") / Dot1Q(vlan=(vid % 4094) + 1) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP()
        cases.append((vport, bytes(bad)))
        cases.append((vport, bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP())))
    return cases, cmds


def _run_bmv2(tmp: Path, json_path: Path, ports: list[int], cases: list[tuple[int, bytes]], cmds: list[str],
              reads: list[str]) -> tuple[dict[int, list[bytes]], str]:
    for port in ports:
        pkts = [Raw(data) for p, data in cases if p == port]
        for pk in pkts:
            pk.time = 0
        wrpcap(str(tmp / f"p{port}_in.pcap"), pkts, linktype=1)
    thrift = _free_port()
    argv = ["simple_switch", "--use-files", "2", "--thrift-port", str(thrift), "--log-console", "-L", "debug"]
    for port in ports:
        argv += ["-i", f"{port}@p{port}"]
    argv.append(str(json_path))
    log = open(tmp / "bmv2.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:  # wait for the Thrift server, then install the entries before the files are read
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", thrift)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("simple_switch did not start: " + (tmp / "bmv2.log").read_text()[-2000:])
            time.sleep(0.05)
        cli = subprocess.run(["simple_switch_CLI", "--thrift-port", str(thrift)], input="\n".join(cmds) + "\n",
                             capture_output=True, text=True, timeout=30)
        assert "Error" not in cli.stdout, cli.stdout[-3000:]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # done when every packet was transmitted or dropped
            text = (tmp / "bmv2.log").read_text(errors="replace")
            done = text.count("Transmitting packet of size") + text.count("Dropping packet at the end of")
            if done >= len(cases):
                break
            time.sleep(0.1)
        counters = subprocess.run(["simple_switch_CLI", "--thrift-port", str(thrift)], input="\n".join(reads) + "\n",
                                  capture_output=True, text=True, timeout=30).stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    out: dict[int, list[bytes]] = {}
    for port in ports:
        f = tmp / f"p{port}_out.pcap"
        out[port] = [bytes(pk) for pk in rdpcap(str(f))] if f.exists() and f.stat().st_size > 24 else []
    return out, counters


@pytest.mark.bmv2
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["default", "minimal", "vlan", "default-no-nat"])
def test_softswitch_matches_bmv2(tmp_path: Path, variant: str) -> None:
    if shutil.which("simple_switch") is None or shutil.which("simple_switch_CLI") is None:
        pytest.skip("simple_switch / simple_switch_CLI not on PATH")
    sw = make_switch(variant)
    rng = random.Random(f"differential-{variant}")
    cases, cmds = _cases(sw, rng)
    prog = tmp_path / "flowtable.p4"
    prog.write_text(source_of(variant))
    subprocess.run(["p4c-bm2-ss", "--arch", "v1model", "-o", str(tmp_path / "flowtable.json"), str(prog)],
                   check=True, capture_output=True, timeout=120)
    ports = sorted({x.number for x in sw.profile.ports} | {sw.profile.cpu_port})
    sizes = {c.preamble.name: c.size for c in sw.program.p4info.counters}
    # the punt and drop reasons' counters and the named counters of the policy statements, every index
    indexed = [(name, i) for name in ("ingress.punt_counter", "ingress.drop_counter", "ingress.stmt_counter")
               for i in range(sizes.get(name, 0))]
    reads = [f"counter_read {name} {i}" for name, i in indexed]
    bmv2, counter_text = _run_bmv2(tmp_path, tmp_path / "flowtable.json", ports, cases, cmds, reads)
    ours: dict[int, list[bytes]] = {port: [] for port in ports}
    for port, data in cases:
        for out_port, frame in sw.dp.process(port, data):
            ours.setdefault(out_port, []).append(frame)
    for port in ports:
        assert Counter(ours[port]) == Counter(bmv2[port]), (
            f"port {port}: softswitch {len(ours[port])} packets, BMv2 {len(bmv2[port])}; only softswitch: "
            f"{[f.hex() for f in (Counter(ours[port]) - Counter(bmv2[port]))][:3]}; only BMv2: "
            f"{[f.hex() for f in (Counter(bmv2[port]) - Counter(ours[port]))][:3]}")
    assert sum(len(v) for v in ours.values()) > len(cases) // 2
    for name, i in indexed:
        packets, bytes_ = sw.dp.counter_read(sw.id("counters", name), i)
        short = name.split(".")[-1]
        assert f"{short}[{i}]= ({bytes_} bytes, {packets} packets)" in counter_text, (
            name, i, packets, bytes_, counter_text[-1500:])
    if "ingress.drop_counter" in sizes:  # the edge cases above reach every IP drop reason
        drops = [sw.dp.counter_read(sw.id("counters", "ingress.drop_counter"), i)[0] for i in range(1, 6)]
        assert all(drops), drops
