"""The slow path, driven with frames built by scapy: no switch needed (emit collects the packet-outs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from runtime.actions import DecTtl, Output, SetEthDst, SetEthSrc, SetIpSrc, flatten
from runtime.config import load_config
from runtime.conntrack import NS, CtTuple, Dir
from runtime.slowpath import SlowPath

A, R1, B, R4 = "02:00:00:00:00:10", "02:00:00:00:01:01", "02:00:00:00:00:20", "02:00:00:00:01:04"


class Harness:
    def __init__(self, config_path: Path) -> None:
        self.now = 1000 * NS
        self.out: list[tuple[int, Ether]] = []
        self.sp = SlowPath(load_config(config_path), clock=lambda: self.now,
                           emit=lambda port, frame: self.out.append((port, Ether(frame))))

    def send(self, port: int, pkt: Packet) -> list[tuple[int, Ether]]:
        self.out.clear()
        self.sp.handle(port, bytes(pkt))
        return list(self.out)

    def learn(self) -> None:
        """A and B known on both families (as after their first ARP / ND exchange)."""
        self.send(1, Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=A, psrc="10.0.1.10", pdst="10.0.1.1"))
        self.send(4, Ether(src=B, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=B, psrc="192.0.2.20", pdst="192.0.2.1"))
        for port, mac, ip, gw in ((1, A, "2001:db8:1::10", "2001:db8:1::1"), (4, B, "2001:db8:2::20", "2001:db8:2::1")):
            self.send(port, Ether(src=mac, dst="33:33:ff:00:00:01") / IPv6(src=ip, dst="ff02::1:ff00:1", hlim=255)
                      / ICMPv6ND_NS(tgt=gw) / ICMPv6NDOptSrcLLAddr(lladdr=mac))
        self.out.clear()


@pytest.fixture
def h(router_config_path: Path) -> Harness:
    return Harness(router_config_path)


def valid_checksums(pkt: Ether) -> bool:
    """Recompute every checksum scapy knows and compare."""
    raw = bytes(pkt)
    clone = Ether(raw)
    for layer in (IP, TCP, UDP, ICMP):
        if layer in clone:
            del clone[layer].chksum
    if IPv6 in clone:
        for layer in (TCP, UDP):
            if layer in clone:
                del clone[layer].chksum
    return bytes(Ether(bytes(clone))) == raw


def ip_checksum_ok(pkt: Ether) -> bool:
    clone = IP(bytes(pkt[IP]))
    want = clone.chksum
    del clone.chksum
    return bool(IP(bytes(clone)).chksum == want)


def test_arp_reply_and_learning(h: Harness) -> None:
    [(port, reply)] = h.send(1, Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=A, psrc="10.0.1.10", pdst="10.0.1.1"))
    assert port == 1 and reply[ARP].op == 2 and reply[ARP].hwsrc == R1 and reply[ARP].psrc == "10.0.1.1"
    assert reply.dst == A
    assert h.send(1, Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=A, psrc="10.0.1.10", pdst="10.0.1.99")) == []


def test_neighbour_solicitation_answered(h: Harness) -> None:
    ns = (Ether(src=A, dst="33:33:ff:00:00:01") / IPv6(src="2001:db8:1::10", dst="ff02::1:ff00:1", hlim=255)
          / ICMPv6ND_NS(tgt="2001:db8:1::1") / ICMPv6NDOptSrcLLAddr(lladdr=A))
    [(port, na)] = h.send(1, ns)
    assert port == 1 and na.dst == A and na[IPv6].src == "2001:db8:1::1" and na[IPv6].hlim == 255
    assert na[ICMPv6ND_NA].tgt == "2001:db8:1::1" and na[ICMPv6ND_NA].S == 1 and na[ICMPv6ND_NA].R == 1
    assert na[ICMPv6NDOptDstLLAddr].lladdr == R1
    del na[ICMPv6ND_NA].cksum
    assert valid_checksums(na)


def test_ping_the_router(h: Harness) -> None:
    h.learn()
    [(port, rep)] = h.send(1, Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.1") / ICMP(id=5, seq=1) / (b"x" * 40))
    assert port == 1 and rep[IP].src == "192.0.2.1" and rep[ICMP].type == 0 and rep[ICMP].id == 5
    assert bytes(rep[ICMP].payload) == b"x" * 40 and valid_checksums(rep)
    [(port, rep6)] = h.send(1, Ether(src=A, dst=R1) / IPv6(src="2001:db8:1::10", dst="2001:db8:1::1")
                            / ICMPv6EchoRequest(id=5, seq=1, data=b"y" * 10))
    assert ICMPv6EchoReply in rep6 and rep6[ICMPv6EchoReply].data == b"y" * 10
    assert len(h.sp.conntrack) == 0  # the router's own traffic is not tracked
    [(port, unreach)] = h.send(1, Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="10.0.1.1") / UDP(sport=9, dport=9))
    assert unreach[ICMP].type == 3 and unreach[ICMP].code == 3


def test_masquerade_both_directions_with_action_lists(h: Harness) -> None:
    h.learn()
    syn = Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20", ttl=64) / TCP(sport=40000, dport=80, flags="S")
    [(port, out)] = h.send(1, syn)
    assert port == 4 and out.src == R4 and out.dst == B
    assert out[IP].src == "192.0.2.1" and out[IP].ttl == 63 and out[TCP].sport == 40000 and valid_checksums(out)
    synack = (Ether(src=B, dst=R4) / IP(src="192.0.2.20", dst="192.0.2.1") / TCP(sport=80, dport=40000, flags="SA"))
    [(port, back)] = h.send(4, synack)
    assert port == 1 and back[IP].dst == "10.0.1.10" and back.dst == A and valid_checksums(back)
    h.send(1, Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20") / TCP(sport=40000, dport=80, flags="A"))
    found = h.sp.conntrack.lookup(CtTuple.make("10.0.1.10", "192.0.2.20", "tcp", 40000, 80))
    assert found is not None
    conn, d = found
    assert d is Dir.ORIGINAL and conn.state_name() == "ESTABLISHED" and conn.offloadable()
    orig = conn.actions[0]
    assert orig is not None and orig[:3] == (SetEthSrc(bytes.fromhex("020000000104")),
                                             SetEthDst(bytes.fromhex("020000000020")),
                                             SetIpSrc(bytes([192, 0, 2, 1])))
    assert orig[-2:] == (DecTtl(), Output(4))
    rw = flatten(conn.actions[1])  # type: ignore[arg-type]
    assert rw.out_port == 1 and rw.daddr == bytes([10, 0, 1, 10]) and rw.saddr is None


def test_statements_apply_on_the_slow_path_both_directions(h: Harness) -> None:
    """The connection's statements are in its list and the slow path executes them: every packet it forwards
    leaves with the DSCP (ECN kept, IPv4 checksum right) and is counted under the name."""
    from runtime.actions import Count, SetDscp

    asked: list[tuple[Dir, int, int]] = []

    def statements(conn: object, direction: Dir, in_port: int, out_port: int) -> tuple[SetDscp | Count, ...]:
        asked.append((direction, in_port, out_port))
        return (SetDscp(24), Count("web"))

    h.sp.statements = statements  # type: ignore[assignment]
    h.learn()
    syn = Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20", tos=0x01) / TCP(sport=40000, dport=80, flags="S")
    [(_, out)] = h.send(1, syn)
    assert out[IP].tos == (24 << 2) | 1 and valid_checksums(out)
    synack = Ether(src=B, dst=R4) / IP(src="192.0.2.20", dst="192.0.2.1") / TCP(sport=80, dport=40000, flags="SA")
    [(_, back)] = h.send(4, synack)
    assert back[IP].tos == 24 << 2 and valid_checksums(back)
    assert asked == [(Dir.ORIGINAL, 1, 4), (Dir.REPLY, 4, 1)]
    found = h.sp.conntrack.lookup(CtTuple.make("10.0.1.10", "192.0.2.20", "tcp", 40000, 80))
    assert found is not None
    assert found[0].actions[0] is not None and SetDscp(24) in found[0].actions[0]
    assert h.sp.counters.snapshot()["web"]["packets"] == 2


def test_vlan_retag_on_the_slow_path(h: Harness) -> None:
    """Port 4 tagged 100 by the pipeline; a retagged connection's packets leave the slow path already tagged
    200 (the pipeline keeps a tag the controller put on), fragmented the same if need be."""
    from scapy.layers.l2 import Dot1Q

    from runtime.actions import SetVlan

    h.sp.port_vlans = {4: 100}
    h.sp.statements = lambda *_: (SetVlan(200),)  # type: ignore[assignment]
    h.learn()
    syn = Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20") / TCP(sport=40000, dport=80, flags="S")
    [(port, out)] = h.send(1, syn)
    assert port == 4 and out[Dot1Q].vlan == 200 and out[IP].src == "192.0.2.1" and valid_checksums(out)
    big = Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20", flags=0) / UDP(sport=5, dport=6) / Raw(b"x" * 1600)
    frags = h.send(1, big)
    assert len(frags) == 2 and all(f[Dot1Q].vlan == 200 and ip_checksum_ok(f) for _, f in frags)


def test_udp_checksum_zero_stays_zero(h: Harness) -> None:
    h.learn()
    pkt = Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20") / UDP(sport=5000, dport=53, chksum=0) / b"q"
    [(_, out)] = h.send(1, pkt)
    assert out[UDP].chksum == 0 and out[IP].src == "192.0.2.1"


def test_ttl_expired(h: Harness) -> None:
    h.learn()
    [(port, err)] = h.send(1, Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20", ttl=1) / UDP(dport=33434))
    assert port == 1 and err[IP].src == "10.0.1.1" and err[ICMP].type == 11 and err[ICMP].code == 0
    assert err[IPerror].dst == "192.0.2.20" and valid_checksums(err)
    assert len(h.sp.conntrack) == 0  # dropped before confirmation
    [(port, err6)] = h.send(1, Ether(src=A, dst=R1) / IPv6(src="2001:db8:1::10", dst="2001:db8:2::20", hlim=1)
                            / UDP(dport=33434))
    assert ICMPv6TimeExceeded in err6 and err6[IPv6].src == "2001:db8:1::1"


def test_mtu_df_and_fragmentation(h: Harness) -> None:
    h.learn()
    big = Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20", flags="DF") / UDP(sport=1, dport=2) / (b"z" * 2000)
    [(port, err)] = h.send(1, big)
    assert port == 1 and err[ICMP].type == 3 and err[ICMP].code == 4 and err[ICMP].nexthopmtu == 1500
    nodf = Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20", id=77) / UDP(sport=1, dport=2) / (b"z" * 2000)
    frags = h.send(1, nodf)
    assert [p for p, _ in frags] == [4, 4] and all(len(f[IP]) <= 1500 and ip_checksum_ok(f) for _, f in frags)
    assert frags[0][1][IP].flags.MF and frags[1][1][IP].frag * 8 == 1480
    big6 = Ether(src=A, dst=R1) / IPv6(src="2001:db8:1::10", dst="2001:db8:2::20") / UDP(sport=1, dport=2) / (b"z" * 2000)
    [(port, ptb)] = h.send(1, big6)
    assert ICMPv6PacketTooBig in ptb and ptb[ICMPv6PacketTooBig].mtu == 1500


def test_fragments_reassembled_natted_and_refragmented(h: Harness) -> None:
    h.learn()
    whole = IP(src="10.0.1.10", dst="192.0.2.20", id=99) / UDP(sport=7000, dport=9) / (b"f" * 2500)
    out: list[tuple[int, Ether]] = []
    for frag in fragment(whole, fragsize=1000):
        out += h.send(1, Ether(src=A, dst=R1) / frag)
    assert len(out) == 3 and {p for p, _ in out} == {4}  # fragmented again like it came (<= 1000 + header)
    assert all(f[IP].src == "192.0.2.1" and len(f[IP]) <= 1020 and ip_checksum_ok(f) for _, f in out)
    data = b"".join(bytes(f[IP].payload) for _, f in sorted(out, key=lambda pf: pf[1][IP].frag))
    reassembled = IP(bytes(out[0][1][IP])[:20]) / Raw(data)
    rebuilt = IP(bytes(reassembled))
    rebuilt.len = 20 + len(data)
    rebuilt.flags = 0
    udp = UDP(data)
    assert udp.sport == 7000 and bytes(udp.payload) == b"f" * 2500
    ref = UDP(bytes(IP(src="192.0.2.1", dst="192.0.2.20") / UDP(sport=7000, dport=9) / (b"f" * 2500))[20:])
    assert udp.chksum == ref.chksum  # the NAT fixed the checksum over the reassembled datagram


def test_icmp_error_for_natted_connection_is_translated(h: Harness) -> None:
    h.learn()
    [(_, out)] = h.send(1, Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20") / UDP(sport=5555, dport=53))
    quoted = bytes(out[IP])[:28]
    err = Ether(src=B, dst=R4) / IP(src="192.0.2.20", dst="192.0.2.1") / ICMP(type=3, code=3) / Raw(quoted)
    [(port, back)] = h.send(4, err)
    assert port == 1 and back[IP].dst == "10.0.1.10"
    inner = IP(bytes(back[ICMP].payload))
    assert inner.src == "10.0.1.10" and inner.dst == "192.0.2.20"
    del back[ICMP].chksum
    assert valid_checksums(back)


def test_unresolved_next_hop_queues_then_fails(h: Harness) -> None:
    h.learn()
    sent = h.send(1, Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.77") / UDP(sport=1, dport=2))
    assert len(sent) == 1 and sent[0][1][ARP].pdst == "192.0.2.77"  # only the ARP request
    h.out.clear()
    for _ in range(4):
        h.now += 2 * NS
        h.sp.tick()
    arps = [f for p, f in h.out if ARP in f]
    unreach = [f for p, f in h.out if ICMP in f]
    assert len(arps) == 2 and len(unreach) == 1 and unreach[0][ICMP].code == 1  # host unreachable
    assert unreach[0][IP].dst == "10.0.1.10" and unreach[0][IPerror].src == "10.0.1.10"  # NAT undone in the quote
    # and a late answer releases queued packets
    h.send(1, Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.78") / UDP(sport=1, dport=2))
    released = h.send(4, Ether(src="02:00:00:00:00:78", dst=R4) / ARP(op=2, hwsrc="02:00:00:00:00:78",
                                                                     psrc="192.0.2.78", pdst="192.0.2.1"))
    assert len(released) == 1 and released[0][1].dst == "02:00:00:00:00:78" and UDP in released[0][1]


def test_ipv6_forwarded_without_nat_and_neighbour_discovery(h: Harness) -> None:
    h.send(1, Ether(src=A, dst="33:33:ff:00:00:01") / IPv6(src="2001:db8:1::10", dst="ff02::1:ff00:1", hlim=255)
           / ICMPv6ND_NS(tgt="2001:db8:1::1") / ICMPv6NDOptSrcLLAddr(lladdr=A))
    [(port, ns)] = h.send(1, Ether(src=A, dst=R1) / IPv6(src="2001:db8:1::10", dst="2001:db8:2::20")
                          / TCP(sport=1234, dport=22, flags="S"))
    assert port == 4 and ns[IPv6].dst == "ff02::1:ff00:20" and ns[ICMPv6ND_NS].tgt == "2001:db8:2::20"
    assert ns.dst == "33:33:ff:00:00:20"
    [(port, fwd)] = h.send(4, Ether(src=B, dst=R4) / IPv6(src="2001:db8:2::20", dst="2001:db8:2::1", hlim=255)
                           / ICMPv6ND_NA(tgt="2001:db8:2::20", S=1) / ICMPv6NDOptDstLLAddr(lladdr=B))
    assert port == 4 and fwd.dst == B and fwd[IPv6].src == "2001:db8:1::10" and fwd[IPv6].hlim == 63
    assert valid_checksums(fwd)


def test_bad_frames_are_counted_not_raised(h: Harness) -> None:
    h.send(1, Ether(src=A, dst=R1, type=0x0800) / b"\x45\x00")
    h.send(1, b"\x00" * 5)  # type: ignore[arg-type]
    h.send(9, Ether(src=A, dst=R1) / IP(dst="10.0.1.1") / ICMP())
    assert h.sp.stats["drop_malformed"] == 2 and h.sp.stats["drop_unknown_port"] == 1
    assert h.send(1, Ether(src=A, dst="02:99:99:99:99:99") / IP(dst="10.0.1.1") / ICMP()) == []
    assert ICMPv6DestUnreach is not None


def _tcp_a(flags: str, seq: int, ack: int = 0, data: bytes = b"") -> Packet:
    return (Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20")
            / TCP(sport=40000, dport=80, flags=flags, seq=seq, ack=ack) / Raw(data))


def _tcp_b(flags: str, seq: int, ack: int = 0, data: bytes = b"") -> Packet:
    return (Ether(src=B, dst=R4) / IP(src="192.0.2.20", dst="192.0.2.1")
            / TCP(sport=80, dport=40000, flags=flags, seq=seq, ack=ack) / Raw(data))


def test_client_port_reuse_after_close_is_a_new_connection(h: Harness) -> None:
    """The whole close seen by conntrack, then a SYN from the same client port: the old entry is destroyed
    and the SYN starts a new connection, which gets to ESTABLISHED (masqueraded as before)."""
    h.learn()
    ct = h.sp.conntrack
    events: list[tuple[str, int, str]] = []
    ct.subscribe(lambda ev, c: events.append((ev.value, c.id, c.state_name())))
    for port, pkt in ((1, _tcp_a("S", 100)), (4, _tcp_b("SA", 500, 101)), (1, _tcp_a("PA", 101, 501, b"x" * 10)),
                      (1, _tcp_a("FA", 111, 501)), (4, _tcp_b("FA", 501, 112)), (1, _tcp_a("A", 112, 502))):
        assert len(h.send(port, pkt)) == 1
    t = CtTuple.make("10.0.1.10", "192.0.2.20", "tcp", 40000, 80)
    found = ct.lookup(t)
    assert found is not None and found[0].state_name() == "TIME_WAIT"
    old = found[0]
    [(port, out)] = h.send(1, _tcp_a("S", 90000))
    assert port == 4 and out[IP].src == "192.0.2.1" and out[TCP].flags == "S"
    found = ct.lookup(t)
    assert found is not None and found[0] is not old and found[0].state_name() == "SYN_SENT"
    new = found[0]
    assert [e for e in events if e[0] in ("DESTROY", "NEW")][-2:] == [("DESTROY", old.id, "TIME_WAIT"),
                                                                      ("NEW", new.id, "SYN_SENT")]
    assert len(h.send(4, _tcp_b("SA", 7000, 90001))) == 1
    assert len(h.send(1, _tcp_a("A", 90001, 7001))) == 1
    assert new.state_name() == "ESTABLISHED" and new.offloadable()


def test_syn_ignored_in_last_ack_is_resynced_by_the_servers_syn_ack(h: Harness) -> None:
    """The client's last ACK was lost, so conntrack sits in LAST_ACK when the client reuses its port: the SYN
    is ignored but let through, and the server's SYN/ACK for exactly that SYN (its sequence number read from
    the packet) brings conntrack back in sync on the same entry."""
    h.learn()
    ct = h.sp.conntrack
    for port, pkt in ((1, _tcp_a("S", 100)), (4, _tcp_b("SA", 500, 101)), (1, _tcp_a("A", 101, 501)),
                      (1, _tcp_a("FA", 101, 501)), (4, _tcp_b("FA", 501, 102))):
        h.send(port, pkt)
    t = CtTuple.make("10.0.1.10", "192.0.2.20", "tcp", 40000, 80)
    found = ct.lookup(t)
    assert found is not None and found[0].state_name() == "LAST_ACK"
    conn = found[0]
    assert len(h.send(1, _tcp_a("S", 90000, data=b""))) == 1, "an ignored SYN is still forwarded"
    assert conn.state_name() == "LAST_ACK"
    assert len(h.send(4, _tcp_b("SA", 7000, 12345))) == 1 and conn.state_name() == "LAST_ACK"  # not for that SYN
    h.send(1, _tcp_a("S", 90000))  # the client retransmits its SYN
    assert len(h.send(4, _tcp_b("SA", 7000, 90001))) == 1
    assert conn.state_name() == "SYN_RECV"
    h.send(1, _tcp_a("A", 90001, 7001))
    assert conn.state_name() == "ESTABLISHED" and ct.lookup(t) == (conn, Dir.ORIGINAL)


def test_broadcast_or_multicast_mac_is_not_forwarded(h: Harness) -> None:
    """ip_forward drops what did not arrive as PACKET_HOST (the switch punts such frames as MCAST_MAC); local
    delivery still answers them."""
    h.learn()
    for dmac in ("ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01"):
        pkt = Ether(src=A, dst=dmac) / IP(src="10.0.1.10", dst="192.0.2.20") / UDP(sport=5000, dport=53) / b"q"
        assert h.send(1, pkt) == []
    assert h.sp.stats["drop_not_host"] == 2 and len(h.sp.conntrack) == 0
    first = Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20") / UDP(sport=5001, dport=53) / b"q"
    assert [p for p, _ in h.send(1, first)] == [4]
    again = Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / IP(src="10.0.1.10", dst="192.0.2.20") / UDP(sport=5001, dport=53)
    assert h.send(1, again) == [] and h.sp.stats["drop_not_host"] == 3
    ping = Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / IP(src="10.0.1.10", dst="10.0.1.1") / ICMP(id=7, seq=1)
    [(port, rep)] = h.send(1, ping)
    assert port == 1 and rep[ICMP].type == 0


def test_trailing_bytes_are_trimmed_before_nat(h: Harness) -> None:
    """What the switch punts as TRAILING: Linux trims the frame to the IP length, so the NAT checksum and the
    frame sent on do not include the padding."""
    h.learn()
    pkt = Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20") / TCP(sport=40000, dport=80, flags="S")
    [(port, out)] = h.send(1, bytes(pkt) + b"\0" * 6 + b"junk")  # type: ignore[arg-type]
    assert port == 4 and out[IP].src == "192.0.2.1" and len(out) == len(pkt) and valid_checksums(out)
