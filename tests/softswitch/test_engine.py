"""softswitch's engine, packet by packet: scapy-built packets in, scapy-checked packets out, for every
shipped profile and the feature/punt variants (the behaviours of issue 4's "Done when")."""

from __future__ import annotations

import pytest
from conftest import VARIANTS, Switch, make_switch
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

from softswitch.dataplane import (
    EntryExists,
    EntryNotFound,
    FieldMatch,
    InvalidEntry,
    TableEntry,
    TableFull,
    csum16,
)

LAN_MAC = "02:00:00:00:01:01"
PEER = "0a:0b:0c:0d:0e:0f"
V4 = [v for v in VARIANTS if v != "default-no-ipv4"]
V6 = [v for v in VARIANTS if v in ("default", "default-no-nat", "default-no-counters", "vlan-ipv6")
      or (v.startswith("default-no-punt"))]
NAT = [v for v in V4 if v not in ("minimal", "default-no-nat")]


def ports(sw: Switch) -> tuple[int, int]:
    """An untagged ingress port and an untagged egress port of the profile."""
    untagged = [p.number for p in sw.profile.ports if p.vlan is None]
    return untagged[0], untagged[-1]


def send(sw: Switch, port: int, pkt: Packet) -> list[tuple[int, bytes]]:
    """A frame built for the router (to LAN_MAC) is addressed to the ingress port's own MAC, changed in place
    so that the caller compares against what was sent: frames to another host's MAC are dropped."""
    if Ether in pkt and pkt[Ether].dst == LAN_MAC:
        pkt[Ether].dst = sw.profile.port(port).mac
    return sw.dp.process(port, bytes(pkt))


def packet_in(sw: Switch, out: list[tuple[int, bytes]]) -> tuple[int, int, bytes]:
    """(ingress_port, reason, frame) of the one packet sent to the CPU."""
    assert len(out) == 1 and out[0][0] == sw.profile.cpu_port, out
    data = out[0][1]
    hdr = int.from_bytes(data[:3], "big")
    return hdr >> 15, (hdr >> 7) & 0xFF, data[3:]


def checksums_ok(frame: bytes) -> None:
    pkt = Ether(frame)
    again = Ether(frame)
    if IP in again:
        del again[IP].chksum
    if TCP in again:
        del again[TCP].chksum
    if UDP in again and again[UDP].chksum != 0:
        del again[UDP].chksum
    again = Ether(bytes(again))
    if IP in pkt:
        assert pkt[IP].chksum == again[IP].chksum, "IPv4 header checksum"
    if TCP in pkt:
        assert pkt[TCP].chksum == again[TCP].chksum, "TCP checksum"
    if UDP in pkt:
        assert pkt[UDP].chksum == again[UDP].chksum, "UDP checksum"


def v4(src: str = "10.0.0.1", dst: str = "198.51.100.7", proto: str = "tcp", sport: int = 40000, dport: int = 443,
       ttl: int = 64, flags: str = "A", payload: bytes = b"payload-bytes") -> Packet:
    l4: Packet = TCP(sport=sport, dport=dport, flags=flags) if proto == "tcp" else UDP(sport=sport, dport=dport)
    return Ether(src="00:00:00:00:00:aa", dst=LAN_MAC) / IP(src=src, dst=dst, ttl=ttl) / l4 / Raw(payload)


def v6(src: str = "2001:db8::1", dst: str = "2001:db8:1::7", proto: str = "tcp", hlim: int = 64,
       flags: str = "A") -> Packet:
    l4: Packet = TCP(sport=1000, dport=80, flags=flags) if proto == "tcp" else UDP(sport=1000, dport=80)
    return Ether(src="00:00:00:00:00:aa", dst=LAN_MAC) / IPv6(src=src, dst=dst, hlim=hlim) / l4 / Raw(b"six")


@pytest.mark.parametrize("variant", V4)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_ipv4_hit_is_forwarded_with_rewrite(variant: str, proto: str) -> None:
    sw = make_switch(variant)
    inp, outp = ports(sw)
    e = sw.add_flow("ipv4", inp, "10.0.0.1", "198.51.100.7", 6 if proto == "tcp" else 17, 40000, 443, outp,
                    "02:00:00:00:01:04", PEER)
    pkt = v4(proto=proto)
    out = send(sw, inp, pkt)
    assert [p for p, _ in out] == [outp]
    got = Ether(out[0][1])
    assert got.src == "02:00:00:00:01:04" and got.dst == PEER
    assert got[IP].ttl == 63 and got[IP].src == "10.0.0.1" and got[IP].dst == "198.51.100.7"
    assert bytes(got[Raw]) == b"payload-bytes"
    checksums_ok(out[0][1])
    read = sw.dp.get(e.table_id, e.match)
    assert read is not None
    if sw.profile.counters:
        assert (read.packets, read.bytes) == (1, len(bytes(pkt)))
    assert read.last_hit_ns > 0


@pytest.mark.parametrize("variant", NAT)
@pytest.mark.parametrize("proto", ["tcp", "udp", "udp0"])
def test_ipv4_nat_hit(variant: str, proto: str) -> None:
    sw = make_switch(variant)
    inp, outp = ports(sw)
    sw.add_flow("ipv4", inp, "10.0.0.1", "198.51.100.7", 6 if proto == "tcp" else 17, 40000, 443, outp,
                "02:00:00:00:01:04", PEER, nat=("192.0.2.1", "198.51.100.7", 61000, 443))
    pkt = v4(proto="tcp" if proto == "tcp" else "udp")
    if proto == "udp0":
        pkt[UDP].chksum = 0
    out = send(sw, inp, pkt)
    assert [p for p, _ in out] == [outp]
    got = Ether(out[0][1])
    assert got[IP].src == "192.0.2.1" and got[IP].ttl == 63
    l4 = got[TCP] if proto == "tcp" else got[UDP]
    assert (l4.sport, l4.dport) == (61000, 443)
    if proto == "udp0":
        assert got[UDP].chksum == 0  # "no checksum" stays so
    checksums_ok(out[0][1])


@pytest.mark.parametrize("variant", V6)
def test_ipv6_hit_decrements_hop_limit(variant: str) -> None:
    sw = make_switch(variant)
    inp, outp = ports(sw)
    sw.add_flow("ipv6", inp, "2001:db8::1", "2001:db8:1::7", 6, 1000, 80, outp, "02:00:00:00:01:04", PEER)
    out = send(sw, inp, v6())
    assert [p for p, _ in out] == [outp]
    got = Ether(out[0][1])
    assert got[IPv6].hlim == 63 and got.dst == PEER
    checksums_ok(out[0][1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_miss_and_non_ip_go_to_cpu(variant: str) -> None:
    sw = make_switch(variant)
    inp, _ = ports(sw)
    pkt = v4() if sw.profile.ipv4 else v6()
    port, reason, frame = packet_in(sw, send(sw, inp, pkt))
    assert (port, reason, frame) == (inp, sw.reason("miss"), bytes(pkt))
    arp = Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.1")
    port, reason, frame = packet_in(sw, send(sw, inp, arp))
    assert (port, reason, frame) == (inp, sw.reason("non_ip"), bytes(arp))
    if sw.profile.counters:
        cid = sw.id("counters", "ingress.punt_counter")
        assert sw.dp.counter_read(cid, sw.reason("miss")) == (1, len(bytes(pkt)))
        assert sw.dp.counter_read(cid, sw.reason("non_ip")) == (1, len(bytes(arp)))


def _exception_cases(sw: Switch) -> list[tuple[str, Packet]]:
    p = sw.profile
    cases: list[tuple[str, Packet]] = []
    if p.ipv4:
        if p.punt.ttl:
            cases += [("ttl", v4(ttl=1)), ("ttl", v4(ttl=0))]
        if p.punt.ip_options:
            opt = v4()
            opt[IP].options = [b"\x01\x01\x01\x00"]
            cases.append(("ip_options", opt))
        if p.punt.fragment:
            f1 = v4()
            f1[IP].flags = "MF"
            f2 = v4()
            f2[IP].frag = 100
            cases += [("fragment", f1), ("fragment", f2)]
        if p.punt.tcp_fin_rst:
            cases += [("tcp_fin_rst", v4(flags="FA")), ("tcp_fin_rst", v4(flags="R"))]
        if p.punt.other_proto:
            cases.append(("other_proto", Ether(dst=LAN_MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()))
    if p.ipv6:
        if p.punt.ipv6_ext:
            cases.append(("ipv6_ext", Ether(dst=LAN_MAC) / IPv6(src="2001:db8::1", dst="2001:db8::2") /
                          IPv6ExtHdrHopByHop() / UDP(sport=1, dport=2)))
        if p.punt.ttl:
            cases.append(("ttl", v6(hlim=1)))
        if p.punt.tcp_fin_rst:
            cases.append(("tcp_fin_rst", v6(flags="F")))
    return cases


@pytest.mark.parametrize("variant", VARIANTS)
def test_exceptions_reach_cpu_with_reason(variant: str) -> None:
    sw = make_switch(variant)
    inp, _outp = ports(sw)
    for want, pkt in _exception_cases(sw):
        port, reason, frame = packet_in(sw, send(sw, inp, pkt))
        assert (port, reason) == (inp, sw.reason(want)), want
        assert frame == bytes(pkt)


@pytest.mark.parametrize("variant", [v for v in V4 if make_switch(v).profile.punt.mtu])
def test_over_mtu_goes_to_cpu(variant: str) -> None:
    sw = make_switch(variant)
    inp, outp = ports(sw)
    mtu = sw.profile.port(outp).mtu
    sw.add_flow("ipv4", inp, "10.0.0.1", "198.51.100.7", 17, 40000, 443, outp, LAN_MAC, PEER)
    big = v4(proto="udp", payload=b"x" * (mtu - 28 + 1))
    _port, reason, frame = packet_in(sw, send(sw, inp, big))
    assert reason == sw.reason("mtu") and frame == bytes(big)
    fits = v4(proto="udp", payload=b"x" * (mtu - 28))
    assert [p for p, _ in send(sw, inp, fits)] == [outp]


@pytest.mark.parametrize("variant", VARIANTS)
def test_packet_out_goes_to_its_port(variant: str) -> None:
    sw = make_switch(variant)
    _, outp = ports(sw)
    frame = bytes(Ether(dst=PEER) / IP(dst="10.9.9.9", ttl=1) / UDP() / Raw(b"from-cpu"))
    hdr = (outp << 7).to_bytes(2, "big")  # packet_out: egress_port (9 bits), _pad (7 bits)
    out = sw.dp.process(sw.profile.cpu_port, hdr + frame)
    assert out == [(outp, frame)]


def test_checksum_error_is_dropped() -> None:
    sw = make_switch("default")
    pkt = v4()
    pkt[IP].chksum = 0x1234
    assert send(sw, 1, pkt) == []


def test_truncated_packets_continue_with_parser_error() -> None:
    sw = make_switch("default")
    whole = bytes(v4())
    for n in (0, 5, 14, 20, 34, 40):
        out = sw.dp.process(1, whole[:n])
        # BMv2: the parser stops at the header that does not fit; ingress sees what was parsed (to the CPU).
        assert len(out) <= 1
        if out:
            assert out[0][0] == 255 and out[0][1][3:] == whole[:n]


def test_vlan_tag_pop_push_and_foreign_vid() -> None:
    sw = make_switch("vlan")
    tagged = next(p for p in sw.profile.ports if p.vlan is not None)
    lan = next(p for p in sw.profile.ports if p.vlan is None)
    sw.add_flow("ipv4", tagged.number, "198.51.100.7", "192.0.2.1", 6, 443, 61000, lan.number, lan.mac, PEER,
                nat=("198.51.100.7", "10.0.0.1", 443, 40000))
    sw.add_flow("ipv4", lan.number, "10.0.0.1", "198.51.100.7", 6, 40000, 443, tagged.number, tagged.mac, PEER,
                nat=("192.0.2.1", "198.51.100.7", 61000, 443))
    inbound = (Ether(dst=tagged.mac) / Dot1Q(vlan=tagged.vlan) / IP(src="198.51.100.7", dst="192.0.2.1") /
               TCP(sport=443, dport=61000, flags="A") / Raw(b"in"))
    out = send(sw, tagged.number, inbound)
    assert [p for p, _ in out] == [lan.number]
    got = Ether(out[0][1])
    assert Dot1Q not in got and got[IP].dst == "10.0.0.1" and got[TCP].dport == 40000
    checksums_ok(out[0][1])
    outbound = v4()
    out = send(sw, lan.number, outbound)
    assert [p for p, _ in out] == [tagged.number]
    got = Ether(out[0][1])
    assert got[Dot1Q].vlan == tagged.vlan and got[IP].src == "192.0.2.1"
    checksums_ok(out[0][1])
    # Padding after the IP packet is trimmed whichever side carries the tag: the frame leaves as long as its
    # headers (the tag included) and the IP packet, with the NAT checksum right.
    for port, pkt, want in ((tagged.number, inbound, len(inbound) - 4), (lan.number, outbound, len(outbound) + 4)):
        [(_, frame)] = sw.dp.process(port, bytes(pkt) + b"\0" * 7)
        assert len(frame) == want
        checksums_ok(frame)
    wrong = Ether(dst=tagged.mac) / Dot1Q(vlan=tagged.vlan + 1) / IP(src="198.51.100.7", dst="192.0.2.1") / TCP()
    assert send(sw, tagged.number, wrong) == []
    # Untagged on the tagged port: no tag to check, treated like any frame (a miss here).
    _, reason, _ = packet_in(sw, send(sw, tagged.number, v4()))
    assert reason == sw.reason("miss")


def test_table_api_errors_and_counters() -> None:
    sw = make_switch("minimal")
    inp, outp = ports(sw)
    e = sw.add_flow("ipv4", inp, "10.0.0.1", "198.51.100.7", 6, 40000, 443, outp, LAN_MAC, PEER)
    with pytest.raises(EntryExists):
        sw.dp.insert(e)
    t = e.table_id
    bad = TableEntry(t, dict(e.match), e.action_id, {1: 1 << 9, 2: 0, 3: 0})
    bad.match[6] = FieldMatch(444)
    with pytest.raises(InvalidEntry, match="does not fit"):
        sw.dp.insert(bad)
    with pytest.raises(InvalidEntry, match="missing"):
        sw.dp.insert(TableEntry(t, {1: FieldMatch(1)}, e.action_id, {1: 1, 2: 0, 3: 0}))
    with pytest.raises(InvalidEntry, match="default-only"):
        sw.dp.insert(TableEntry(t, {**e.match, 6: FieldMatch(7)}, sw.id("actions", "ingress.miss"), {}))
    with pytest.raises(InvalidEntry, match="unknown table"):
        sw.dp.insert(TableEntry(12345, e.match, e.action_id, e.params))
    send(sw, inp, v4())
    sw.dp.modify(TableEntry(t, e.match, e.action_id, {1: inp, 2: 1, 3: 2}))
    got = sw.dp.get(t, e.match)
    assert got is not None and got.packets == 1 and got.params[1] == inp
    assert [p for p, _ in send(sw, inp, v4())] == [inp]
    sw.dp.direct_counter_write(t, e.match, 0, 10, 1000)
    assert (sw.dp.entries(t)[0].packets, sw.dp.entries(t)[0].bytes) == (10, 1000)
    assert sw.dp.delete(t, e.match).packets == 10
    with pytest.raises(EntryNotFound):
        sw.dp.delete(t, e.match)
    assert sw.dp.get(t, e.match) is None
    assert sw.dp.table_occupancy(t) == 0 and sw.dp.table_size(t) == 1024
    # Default action: settable on flow tables, not on const-default tables.
    mtu = sw.id("tables", "ingress.port_mtu")
    with pytest.raises(InvalidEntry, match="const"):
        sw.dp.set_default(mtu, sw.id("actions", "NoAction"), {})
    with pytest.raises(InvalidEntry, match="const"):
        sw.dp.insert(TableEntry(mtu, {1: FieldMatch(1)}, sw.id("actions", "ingress.set_mtu"), {1: 1}))
    assert len(sw.dp.const_entries(mtu)) == len(sw.profile.ports) and sw.dp.entries(mtu) == []
    assert sw.dp.get_default(t) == (sw.id("actions", "ingress.miss"), {})


def test_table_full() -> None:
    sw = make_switch("vlan")  # 256 IPv4 flows
    for i in range(256):
        sw.add_flow("ipv4", 1, "10.0.0.1", "10.0.0.2", 6, i, 1, 2, LAN_MAC, PEER)
    with pytest.raises(TableFull):
        sw.add_flow("ipv4", 1, "10.0.0.1", "10.0.0.2", 6, 999, 1, 2, LAN_MAC, PEER)


def test_csum16_matches_reference() -> None:
    def ref(data: bytes) -> int:
        if len(data) % 2:
            data += b"\0"
        s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return ~s & 0xFFFF

    for data in (b"", b"\0\0", b"\xff\xff", b"\x01", b"\xff\xff\xff\xff", bytes(range(255)), b"\x80\x00" * 3):
        assert csum16(data) == ref(data), data
