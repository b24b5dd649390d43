"""The software fast path: rewrites checked against scapy (which recomputes every checksum), and exceptions."""

from __future__ import annotations

import random

import pytest
from ftutil import GW_MAC, HOST_MAC, LAN_MAC, WAN_MAC, FakeClock, FakeConn, directions, nat_tuples
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

from runtime.actions import route_actions
from runtime.flowtable.core import Flow, FlowDirection, FlowTable
from runtime.flowtable.fastpath import FastPath
from runtime.flowtable.model import Dir, FlowFlag, FlowTuple
from runtime.flowtable.policy import FlowtableConfig
from runtime.packet import csum_replace

F = FlowFlag
MAC_A, MAC_B = "02:00:00:00:aa:01", "02:00:00:00:bb:01"


def setup(proto: str = "tcp", mtu: int = 1500) -> tuple[FlowTable, FastPath, Flow, FakeClock]:
    clock = FakeClock()
    ft = FlowTable(FlowtableConfig(), clock=clock)
    o, r = directions(*nat_tuples(proto=proto), mtu=mtu)
    _, flow = ft.offer(FakeConn(), o, r, seen_reply=True, tcp_established=True)
    assert flow is not None
    return ft, FastPath(ft), flow, clock


def checksums_valid(frame: bytes) -> None:
    """scapy recomputes the IPv4, TCP and UDP checksums from scratch; ours must equal them."""
    pkt = Ether(frame)
    again = pkt.copy()
    for layer in (IP, TCP, UDP):
        if layer in again:
            if layer is UDP and pkt[UDP].chksum == 0:
                continue
            del again[layer].chksum
    rebuilt = Ether(bytes(again))
    for layer in (IP, TCP, UDP):
        if layer in pkt:
            if layer is UDP and pkt[UDP].chksum == 0:
                continue
            assert pkt[layer].chksum == rebuilt[layer].chksum, f"{layer.__name__} checksum"


def tcp4(src: str, dst: str, sport: int, dport: int, flags: str = "A", ttl: int = 64, payload: bytes = b"hello",
         **ip: object) -> bytes:
    return bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=src, dst=dst, ttl=ttl, **ip) /
                 TCP(sport=sport, dport=dport, flags=flags, seq=1234, ack=99) / Raw(payload))


def test_tcp_snat_original_direction() -> None:
    ft, fp, flow, _ = setup()
    out = fp.forward(tcp4("10.0.0.1", "8.8.8.8", 40000, 80, payload=b"x" * 301), 1)
    assert out is not None and out.port == 4 and out.flow is flow and out.direction is Dir.ORIGINAL
    p = Ether(out.frame)
    assert (p.src, p.dst) == (":".join(f"{b:02x}" for b in WAN_MAC), ":".join(f"{b:02x}" for b in GW_MAC))
    assert (p[IP].src, p[IP].dst, p[IP].ttl) == ("192.0.2.1", "8.8.8.8", 63)
    assert (p[TCP].sport, p[TCP].dport) == (60000, 80) and bytes(p[TCP].payload) == b"x" * 301
    checksums_valid(out.frame)
    assert flow.sw_packets == [1, 0] and flow.sw_bytes[0] == 20 + 20 + 301
    assert ft.counters.fastpath_packets == 1


def test_tcp_dnat_reply_direction() -> None:
    _, fp, _, _ = setup()
    out = fp.forward(tcp4("8.8.8.8", "192.0.2.1", 80, 60000, payload=b"reply"), 4)
    assert out is not None and out.port == 1 and out.direction is Dir.REPLY
    p = Ether(out.frame)
    assert (p.src, p.dst) == (":".join(f"{b:02x}" for b in LAN_MAC), ":".join(f"{b:02x}" for b in HOST_MAC))
    assert (p[IP].src, p[IP].dst, p[TCP].sport, p[TCP].dport) == ("8.8.8.8", "10.0.0.1", 80, 40000)
    checksums_valid(out.frame)


def test_udp_nat_checksum_and_zero_checksum_stays_zero() -> None:
    _, fp, _, _ = setup("udp")
    frame = bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="8.8.8.8") / UDP(sport=40000, dport=80) /
                  Raw(b"q" * 33))
    out = fp.forward(frame, 1)
    assert out is not None
    p = Ether(out.frame)
    assert p[UDP].sport == 60000 and p[UDP].chksum != 0
    checksums_valid(out.frame)
    no_sum = Ether(frame)
    no_sum[UDP].chksum = 0
    out = fp.forward(bytes(no_sum), 1)
    assert out is not None and Ether(out.frame)[UDP].chksum == 0
    checksums_valid(out.frame)


def test_dnat_port_forward_both_address_and_port() -> None:
    """A port forward (DNAT 192.0.2.1:8080 -> 10.0.1.10:80), checked both ways."""
    clock = FakeClock()
    ft = FlowTable(FlowtableConfig(), clock=clock)
    o = FlowTuple.make(4, "198.51.100.7", "192.0.2.1", "tcp", 5555, 8080)
    r = FlowTuple.make(2, "10.0.1.10", "198.51.100.7", "tcp", 80, 5555)
    od = FlowDirection(o, route_actions(o, r, out_port=2, smac=LAN_MAC, dmac=HOST_MAC))
    rd = FlowDirection(r, route_actions(r, o, out_port=4, smac=WAN_MAC, dmac=GW_MAC))
    _, flow = ft.offer(FakeConn(), od, rd, seen_reply=True, tcp_established=True)
    assert flow is not None and flow.flags & F.DNAT and not flow.flags & F.SNAT
    fp = FastPath(ft)
    out = fp.forward(tcp4("198.51.100.7", "192.0.2.1", 5555, 8080), 4)
    assert out is not None and out.port == 2
    p = Ether(out.frame)
    assert (p[IP].dst, p[TCP].dport) == ("10.0.1.10", 80)
    checksums_valid(out.frame)
    out = fp.forward(tcp4("10.0.1.10", "198.51.100.7", 80, 5555), 2)
    assert out is not None and out.port == 4
    p = Ether(out.frame)
    assert (p[IP].src, p[TCP].sport) == ("192.0.2.1", 8080)
    checksums_valid(out.frame)


def test_ipv6_without_nat() -> None:
    clock = FakeClock()
    ft = FlowTable(FlowtableConfig(), clock=clock)
    o = FlowTuple.make(1, "2001:db8:1::10", "2001:db8:ffff::1", "tcp", 40000, 443)
    r = FlowTuple.make(4, "2001:db8:ffff::1", "2001:db8:1::10", "tcp", 443, 40000)
    od, rd = directions(o, r)
    _, flow = ft.offer(FakeConn(), od, rd, seen_reply=True, tcp_established=True)
    assert flow is not None and not flow.flags & (F.SNAT | F.DNAT)
    fp = FastPath(ft)
    frame = bytes(Ether(src=MAC_A, dst=MAC_B) / IPv6(src="2001:db8:1::10", dst="2001:db8:ffff::1", hlim=5) /
                  TCP(sport=40000, dport=443, flags="PA") / Raw(b"tls"))
    out = fp.forward(frame, 1)
    assert out is not None and out.port == 4
    p = Ether(out.frame)
    assert p[IPv6].hlim == 4 and p[IPv6].src == "2001:db8:1::10"
    again = p.copy()
    del again[TCP].chksum
    assert Ether(bytes(again))[TCP].chksum == p[TCP].chksum
    assert out.frame[14:] != frame[14:] and out.frame[14 + 8:] == frame[14 + 8:], "only the hop limit changed"
    # hop-by-hop extension header: not for the fast path
    ext = bytes(Ether(src=MAC_A, dst=MAC_B) / IPv6(src="2001:db8:1::10", dst="2001:db8:ffff::1") / IPv6ExtHdrHopByHop() /
                TCP(sport=40000, dport=443))
    assert fp.forward(ext, 1) is None and ft.counters.fastpath_exceptions["ipv6_ext"] == 1


@pytest.mark.parametrize(("name", "frame", "reason"), [
    ("more fragments", bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="8.8.8.8", flags="MF") / TCP(sport=40000, dport=80)),
     "fragment"),
    ("fragment offset", bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="8.8.8.8", frag=10) / TCP(sport=40000, dport=80)),
     "fragment"),
    ("ip options", bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="8.8.8.8", options=[b"\x01\x01\x01\x00"]) /
                         TCP(sport=40000, dport=80)), "ip_options"),
    ("ttl 1", tcp4("10.0.0.1", "8.8.8.8", 40000, 80, ttl=1), "ttl"),
    ("over mtu", tcp4("10.0.0.1", "8.8.8.8", 40000, 80, payload=b"z" * 1461), "mtu"),
    ("fin", tcp4("10.0.0.1", "8.8.8.8", 40000, 80, flags="FA"), "fin_rst"),
    ("rst", tcp4("8.8.8.8", "192.0.2.1", 80, 60000, flags="R"), "fin_rst"),
])
def test_exceptions_go_to_the_slow_path(name: str, frame: bytes, reason: str) -> None:
    ft, fp, flow, _ = setup()
    in_port = 4 if Ether(frame)[IP].src == "8.8.8.8" else 1
    assert fp.forward(frame, in_port) is None, name
    assert ft.counters.fastpath_exceptions == {reason: 1}
    assert flow.sw_packets == [0, 0]
    if reason == "fin_rst":
        assert flow.state == "closing"


def test_exactly_mtu_is_forwarded() -> None:
    _, fp, _, _ = setup()
    assert fp.forward(tcp4("10.0.0.1", "8.8.8.8", 40000, 80, payload=b"z" * 1460), 1) is not None


def test_not_for_me() -> None:
    ft, fp, _, _ = setup()
    assert fp.forward(bytes(Ether() / ARP()), 1) is None
    assert fp.forward(tcp4("10.0.0.1", "8.8.8.8", 40001, 80), 1) is None, "unknown flow"
    assert fp.forward(tcp4("10.0.0.1", "8.8.8.8", 40000, 80), 2) is None, "wrong ingress port"
    assert fp.forward(b"\x00" * 10, 1) is None
    assert fp.forward(tcp4("10.0.0.1", "8.8.8.8", 40000, 80)[:40], 1) is None, "truncated"
    assert ft.counters.fastpath_packets == 0


def test_broadcast_mac_is_not_forwarded_and_trailing_bytes_are_trimmed() -> None:
    """Frames the switch punts instead of forwarding (to a broadcast/multicast MAC) are not forwarded here
    either; bytes after the IP packet are trimmed, as Linux's ip_rcv does, and the checksums stay right."""
    _, fp, _, _ = setup()
    frame = tcp4("10.0.0.1", "8.8.8.8", 40000, 80)
    for dmac in (b"\xff" * 6, bytes.fromhex("01005e000001")):
        assert fp.forward(dmac + frame[6:], 1) is None
    plain = fp.forward(frame, 1)
    padded = fp.forward(frame + b"\0" * 6 + b"junk", 1)
    assert plain is not None and padded is not None and padded.frame == plain.frame
    checksums_valid(padded.frame)


def test_fin_hands_the_connection_back_and_every_later_packet_to_the_slow_path() -> None:
    """After a FIN conntrack must see each packet of the close (FIN_WAIT ... TIME_WAIT), as when the kernel
    tears the flow down in nf_flow_state_check; a SYN reusing the tuple tears the closing flow down."""
    ft, fp, flow, clock = setup()
    assert fp.forward(tcp4("10.0.0.1", "8.8.8.8", 40000, 80, flags="FA"), 1) is None
    assert flow.state == "closing"
    assert isinstance(flow.conn, FakeConn) and flow.conn.torn_down == 1, "conntrack takes the connection back"
    clock.advance(2)
    for frame, port in ((tcp4("8.8.8.8", "192.0.2.1", 80, 60000, flags="A"), 4),
                        (tcp4("8.8.8.8", "192.0.2.1", 80, 60000, flags="FA"), 4),
                        (tcp4("10.0.0.1", "8.8.8.8", 40000, 80, flags="A"), 1)):
        assert fp.forward(frame, port) is None, "the last ACKs and FIN go through conntrack"
    assert ft.counters.fastpath_exceptions["closing"] == 3 and ft.counters.fastpath_packets == 0
    assert flow.state == "closing"
    assert fp.forward(tcp4("10.0.0.1", "8.8.8.8", 40000, 80, flags="S"), 1) is None
    assert flow.flags & F.TEARDOWN and ft.lookup(flow.dirs[0].tuple) is None


def test_vlan_tagged_input_popped_and_pushed_when_pipeline_does_not() -> None:
    clock = FakeClock()
    ft = FlowTable(FlowtableConfig(), clock=clock)
    o, r = nat_tuples()
    vlans = {4: 100}
    od, rd = directions(o, r, port_vlans=vlans)
    _, flow = ft.offer(FakeConn(), od, rd, seen_reply=True, tcp_established=True)
    assert flow is not None
    fp = FastPath(ft)
    out = fp.forward(tcp4("10.0.0.1", "8.8.8.8", 40000, 80), 1)
    assert out is not None
    p = Ether(out.frame)
    assert Dot1Q in p and p[Dot1Q].vlan == 100 and p[IP].src == "192.0.2.1"
    checksums_valid(out.frame)
    tagged = bytes(Ether(src=MAC_B, dst=MAC_A) / Dot1Q(vlan=100) / IP(src="8.8.8.8", dst="192.0.2.1") /
                   TCP(sport=80, dport=60000, flags="A"))
    out = fp.forward(tagged, 4)
    assert out is not None and Dot1Q not in Ether(out.frame) and Ether(out.frame)[IP].dst == "10.0.0.1"
    # where the pipeline tags the egress port itself, the fast path leaves it to the pipeline
    out = FastPath(ft, pipeline_vlans=vlans).forward(tcp4("10.0.0.1", "8.8.8.8", 40000, 80), 1)
    assert out is not None and Dot1Q not in Ether(out.frame)


def _random_case(rng: random.Random) -> tuple[FlowDirection, FlowDirection, Packet]:
    def a4() -> str:
        return ".".join(str(rng.randrange(1, 255)) for _ in range(4))
    proto = rng.choice(["tcp", "udp"])
    csrc, sdst, nat_addr = a4(), a4(), a4()
    cport, sport, nport = rng.randrange(1, 65536), rng.randrange(1, 65536), rng.randrange(1, 65536)
    kind = rng.choice(["snat", "dnat", "none", "both"])
    o = FlowTuple.make(1, csrc, sdst, proto, cport, sport)
    if kind == "snat":
        r = FlowTuple.make(2, sdst, nat_addr, proto, sport, nport)
    elif kind == "dnat":
        r = FlowTuple.make(2, nat_addr, csrc, proto, nport, cport)
    elif kind == "both":
        r = FlowTuple.make(2, a4(), nat_addr, proto, rng.randrange(1, 65536), nport)
    else:
        r = FlowTuple.make(2, sdst, csrc, proto, sport, cport)
    od = FlowDirection(o, route_actions(o, r, out_port=2, smac=WAN_MAC, dmac=GW_MAC))
    rd = FlowDirection(r, route_actions(r, o, out_port=1, smac=LAN_MAC, dmac=HOST_MAC))
    payload = Raw(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200))))
    l4 = TCP(sport=cport, dport=sport, flags="PA", seq=rng.randrange(2**32)) if proto == "tcp" else UDP(sport=cport, dport=sport)
    pkt = Ether(src=MAC_A, dst=MAC_B) / IP(src=csrc, dst=sdst, ttl=rng.randrange(2, 256), id=rng.randrange(65536),
                                          tos=rng.randrange(256)) / l4 / payload
    return od, rd, pkt


def test_random_flows_checksums_and_tuples_match_scapy() -> None:
    """Generated tuples and NAT kinds: the rewritten packet equals what scapy builds for the expected result."""
    rng = random.Random(8)
    for _ in range(300):
        od, rd, pkt = _random_case(rng)
        ft = FlowTable(FlowtableConfig(), clock=FakeClock())
        _, flow = ft.offer(FakeConn(), od, rd, seen_reply=True, tcp_established=True)
        assert flow is not None
        out = FastPath(ft).forward(bytes(pkt), 1)
        assert out is not None
        src, dst, sport, dport = od.leaves_as()
        expect = pkt.copy()
        expect.src, expect.dst = ":".join(f"{b:02x}" for b in WAN_MAC), ":".join(f"{b:02x}" for b in GW_MAC)
        expect[IP].src, expect[IP].dst = str(FlowTuple(0, src, dst, 6, 0, 0).src_ip), str(FlowTuple(0, src, dst, 6, 0, 0).dst_ip)
        expect[IP].ttl -= 1
        l4 = expect[TCP] if TCP in expect else expect[UDP]
        l4.sport, l4.dport = sport, dport
        del expect[IP].chksum
        del l4.chksum
        assert out.frame == bytes(expect), f"{od.actions} {pkt.summary()}"


def test_csum_replace_matches_full_recompute() -> None:
    rng = random.Random(1)
    for _ in range(1000):
        data = bytearray(rng.randbytes(20))
        def full(b: bytes) -> int:
            s = sum((b[i] << 8) | b[i + 1] for i in range(0, len(b), 2))
            while s >> 16:
                s = (s & 0xFFFF) + (s >> 16)
            return ~s & 0xFFFF
        c = full(bytes(data))
        off = rng.randrange(0, 16, 2)
        new = rng.randbytes(4)
        c2 = csum_replace(c, bytes(data[off:off + 4]), new)
        data[off:off + 4] = new
        assert c2 == full(bytes(data)) or {c2, full(bytes(data))} == {0, 0xFFFF}


def test_statements_dscp_and_counter_on_the_fast_path() -> None:
    """The fast path runs the connection's statements: DSCP set with the ECN bits kept, the IPv4 header
    checksum right and the transport checksum as NAT alone makes it; the named counter counts each packet."""
    from runtime.actions import Count, NamedCounters, SetDscp

    clock = FakeClock()
    ft = FlowTable(FlowtableConfig(), clock=clock)
    o, r = directions(*nat_tuples(), statements=(SetDscp(24), Count("web")))
    _, flow = ft.offer(FakeConn(), o, r, seen_reply=True, tcp_established=True)
    assert flow is not None
    counters = NamedCounters()
    fp = FastPath(ft, count=counters.add)
    for tos in (0x00, 0x03, 0xB9):
        out = fp.forward(tcp4("10.0.0.1", "8.8.8.8", 40000, 80, tos=tos), 1)
        assert out is not None
        p = Ether(out.frame)
        assert p[IP].tos == (24 << 2) | (tos & 3) and p[IP].src == "192.0.2.1"
        checksums_valid(out.frame)
    six = IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0x02, hlim=9)
    t6 = FlowTuple.make(1, "2001:db8::1", "2001:db8::2", "udp", 5, 6)
    b6 = FlowTuple.make(2, "2001:db8::2", "2001:db8::1", "udp", 6, 5)
    d6, rd6 = directions(t6, b6, statements=(SetDscp(46),))
    _, f6 = ft.offer(FakeConn(), d6, rd6, seen_reply=True, tcp_established=True)
    assert f6 is not None
    out6 = fp.forward(bytes(Ether(src=MAC_A, dst=MAC_B) / six / UDP(sport=5, dport=6) / Raw(b"x" * 10)), 1)
    assert out6 is not None
    q = Ether(out6.frame)
    assert q[IPv6].tc == (46 << 2) | 2 and q[IPv6].fl == 0 and q[IPv6].hlim == 8
    assert q[UDP].chksum == Ether(bytes(Ether(src=MAC_A, dst=MAC_B) / six / UDP(sport=5, dport=6) / Raw(b"x" * 10)))[UDP].chksum
    assert counters.snapshot() == {"web": {"packets": 3, "bytes": 3 * 59}}, "three 59-byte frames"


def test_vlan_retag_pushed_by_the_fast_path_where_the_pipeline_would_push_the_port_vid() -> None:
    """The pipeline tags port 4 with VLAN 100 itself; a retagged connection's packets leave the fast path
    already tagged 200 (the pipeline keeps a tag the controller put on)."""
    from runtime.actions import SetVlan

    ft = FlowTable(FlowtableConfig(), clock=FakeClock())
    vlans = {4: 100}
    od, rd = directions(*nat_tuples(), port_vlans=vlans, statements=(SetVlan(200),))
    _, flow = ft.offer(FakeConn(), od, rd, seen_reply=True, tcp_established=True)
    assert flow is not None
    out = FastPath(ft, pipeline_vlans=vlans).forward(tcp4("10.0.0.1", "8.8.8.8", 40000, 80), 1)
    assert out is not None
    p = Ether(out.frame)
    assert p[Dot1Q].vlan == 200 and p[IP].src == "192.0.2.1"
    checksums_valid(out.frame)
    back = FastPath(ft, pipeline_vlans=vlans).forward(tcp4("8.8.8.8", "192.0.2.1", 80, 60000), 4)
    assert back is not None and Dot1Q not in Ether(back.frame), "leaving untagged: nothing to retag"
