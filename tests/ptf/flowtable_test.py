"""PTF packet tests of the generated flowtable program, run by the real `ptf` runner.

    offloadgen ptf [--switch softswitch|bmv2] [--profile default|minimal|vlan]

Each test installs flow entries over P4Runtime, sends packets with ptf's testutils and checks what comes out
of which port, or what reaches the controller as a packet-in with which reason. Entries are removed after
every test, so the tests do not depend on each other.
"""

from __future__ import annotations

import ptf.testutils as tu
from base_test import FlowtableTest, needs, requires_nat, with_vlan
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

HOST_MAC = "02:aa:00:00:00:01"
PEER_MAC = "02:bb:00:00:00:02"


class ForwardV4(FlowtableTest):
    """A hit is forwarded out of the entry's port with the entry's MACs and TTL - 1; nothing else comes out."""

    def runTest(self) -> None:
        lan, wan = self.lan_port, self.wan_port
        self.add_flow4(lan, "10.0.1.10", "198.51.100.7", 6, 40000, 443, out=wan, smac=self.mac(wan), dmac=PEER_MAC)
        pkt = tu.simple_tcp_packet(eth_src=HOST_MAC, eth_dst=self.mac(lan), ip_src="10.0.1.10",
                                   ip_dst="198.51.100.7", tcp_sport=40000, tcp_dport=443, ip_ttl=64)
        exp = tu.simple_tcp_packet(eth_src=self.mac(wan), eth_dst=PEER_MAC, ip_src="10.0.1.10",
                                   ip_dst="198.51.100.7", tcp_sport=40000, tcp_dport=443, ip_ttl=63)
        tu.send_packet(self, lan, pkt)
        tu.verify_packet(self, exp, wan)
        tu.verify_no_other_packets(self)
        self.assert_no_packet_in()


class ForwardV6(FlowtableTest):
    """IPv6: forwarded with MAC rewrite and hop limit - 1; the transport checksum stays valid (no NAT)."""

    @needs("ipv6")
    def runTest(self) -> None:
        lan, wan = self.lan_port, self.wan_port
        self.add_flow6(lan, "2001:db8:1::10", "2001:db8:ff::7", 17, 5353, 53, out=wan, smac=self.mac(wan),
                       dmac=PEER_MAC)
        pkt = tu.simple_udpv6_packet(eth_src=HOST_MAC, eth_dst=self.mac(lan), ipv6_src="2001:db8:1::10",
                                     ipv6_dst="2001:db8:ff::7", udp_sport=5353, udp_dport=53, ipv6_hlim=64)
        exp = tu.simple_udpv6_packet(eth_src=self.mac(wan), eth_dst=PEER_MAC, ipv6_src="2001:db8:1::10",
                                     ipv6_dst="2001:db8:ff::7", udp_sport=5353, udp_dport=53, ipv6_hlim=63)
        tu.send_packet(self, lan, pkt)
        tu.verify_packet(self, exp, wan)
        tu.verify_no_other_packets(self)


class NatBothDirections(FlowtableTest):
    """Masquerade as the flowtable installs it: the original direction leaves with the router's address and
    port, the reply comes back to the host's; TCP and UDP checksums are recomputed (the expected packets are
    built by scapy with correct checksums, so a wrong one fails the comparison)."""

    @requires_nat
    def runTest(self) -> None:
        lan, wan = self.lan_port, self.wan_port
        host, peer, router = "10.0.1.10", "198.51.100.7", "192.0.2.1"
        for l4, proto, sport, dport, nport in ((TCP, 6, 40000, 80, 61000), (UDP, 17, 5000, 53, 61001)):
            self.add_flow4(lan, host, peer, proto, sport, dport, out=wan, smac=self.mac(wan), dmac=PEER_MAC,
                           nat=(router, peer, nport, dport))
            self.add_flow4(wan, peer, router, proto, dport, nport, out=lan, smac=self.mac(lan), dmac=HOST_MAC,
                           nat=(peer, host, dport, sport))
            payload = Raw(b"offloadgen" * 20)
            out = Ether(src=HOST_MAC, dst=self.mac(lan)) / IP(src=host, dst=peer, ttl=64) / \
                l4(sport=sport, dport=dport) / payload
            exp = Ether(src=self.mac(wan), dst=PEER_MAC) / IP(src=router, dst=peer, ttl=63) / \
                l4(sport=nport, dport=dport) / payload
            tu.send_packet(self, lan, out)
            tu.verify_packet(self, exp, wan)
            back = Ether(src=PEER_MAC, dst=self.mac(wan)) / IP(src=peer, dst=router, ttl=60) / \
                l4(sport=dport, dport=nport) / payload
            exp_back = Ether(src=self.mac(lan), dst=HOST_MAC) / IP(src=peer, dst=host, ttl=59) / \
                l4(sport=dport, dport=sport) / payload
            tu.send_packet(self, wan, back)
            tu.verify_packet(self, exp_back, lan)
        tu.verify_no_other_packets(self)


class UdpZeroChecksumStaysZero(FlowtableTest):
    """RFC 768: a UDP checksum of zero means none; NAT must not invent one."""

    @requires_nat
    def runTest(self) -> None:
        lan, wan = self.lan_port, self.wan_port
        self.add_flow4(lan, "10.0.1.10", "198.51.100.7", 17, 5000, 53, out=wan, smac=self.mac(wan), dmac=PEER_MAC,
                       nat=("192.0.2.1", "198.51.100.7", 61002, 53))
        pkt = Ether(src=HOST_MAC, dst=self.mac(lan)) / IP(src="10.0.1.10", dst="198.51.100.7", ttl=9) / \
            UDP(sport=5000, dport=53, chksum=0) / Raw(b"q" * 30)
        exp = Ether(src=self.mac(wan), dst=PEER_MAC) / IP(src="192.0.2.1", dst="198.51.100.7", ttl=8) / \
            UDP(sport=61002, dport=53, chksum=0) / Raw(b"q" * 30)
        tu.send_packet(self, lan, pkt)
        tu.verify_packet(self, exp, wan)


class UdpChecksumResultZeroIsSentAsFfff(FlowtableTest):
    """RFC 768: a computed UDP checksum of zero is transmitted as 0xffff, since zero means none; the kernel's
    UDP NAT writes CSUM_MANGLED_0. The payload's last two bytes are chosen so that the NATed datagram sums
    to exactly zero."""

    @requires_nat
    def runTest(self) -> None:
        lan, wan = self.lan_port, self.wan_port
        self.add_flow4(lan, "10.0.1.10", "198.51.100.7", 17, 5003, 53, out=wan, smac=self.mac(wan), dmac=PEER_MAC,
                       nat=("192.0.2.1", "198.51.100.7", 61003, 53))

        def nated(tail: bytes) -> Ether:
            return Ether(src=self.mac(wan), dst=PEER_MAC) / IP(src="192.0.2.1", dst="198.51.100.7", ttl=8) / \
                UDP(sport=61003, dport=53) / Raw(b"q" * 30 + tail)

        # With a zero tail the checksum is ~S; a tail of ~S makes the sum 0xffff, so the checksum computes to 0.
        tail = Ether(bytes(nated(b"\0\0")))[UDP].chksum.to_bytes(2, "big")
        exp = Ether(bytes(nated(tail)))
        self.assertEqual(exp[UDP].chksum, 0xFFFF, "scapy sends a zero result as 0xffff too")
        pkt = Ether(src=HOST_MAC, dst=self.mac(lan)) / IP(src="10.0.1.10", dst="198.51.100.7", ttl=9) / \
            UDP(sport=5003, dport=53) / Raw(b"q" * 30 + tail)
        tu.send_packet(self, lan, pkt)
        tu.verify_packet(self, exp, wan)
        tu.verify_no_other_packets(self)


class Exceptions(FlowtableTest):
    """Every exception reaches the CPU as a packet-in with its reason and the ingress port, unchanged, even
    when the flow is offloaded; nothing leaves a front-panel port."""

    def runTest(self) -> None:
        lan, wan = self.lan_port, self.wan_port
        self.add_flow4(lan, "10.0.1.10", "198.51.100.7", 6, 40000, 80, out=wan, smac=self.mac(wan), dmac=PEER_MAC)
        base = dict(eth_src=HOST_MAC, eth_dst=self.mac(lan), ip_src="10.0.1.10", ip_dst="198.51.100.7",
                    tcp_sport=40000, tcp_dport=80)
        cases: list[tuple[str, object]] = [
            ("MISS", tu.simple_tcp_packet(**{**base, "tcp_sport": 40001})),
            ("NON_IP", Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.1.10", pdst="10.0.1.1")),
        ]
        if self.punts("ttl"):
            cases.append(("TTL", tu.simple_tcp_packet(**base, ip_ttl=1)))
        if self.punts("tcp_fin_rst"):
            cases.append(("TCP_FIN_RST", tu.simple_tcp_packet(**base, tcp_flags="FA")))
            cases.append(("TCP_FIN_RST", tu.simple_tcp_packet(**base, tcp_flags="R")))
        if self.punts("ip_options"):
            cases.append(("IP_OPTIONS", Ether(src=HOST_MAC, dst=self.mac(lan)) /
                          IP(src="10.0.1.10", dst="198.51.100.7", options=[IPOption_NOP()] * 4) /
                          TCP(sport=40000, dport=80)))
        if self.punts("fragment"):
            cases.append(("FRAGMENT", Ether(src=HOST_MAC, dst=self.mac(lan)) /
                          IP(src="10.0.1.10", dst="198.51.100.7", flags="MF") / TCP(sport=40000, dport=80)))
            cases.append(("FRAGMENT", Ether(src=HOST_MAC, dst=self.mac(lan)) /
                          IP(src="10.0.1.10", dst="198.51.100.7", frag=100, proto=6) / Raw(b"x" * 16)))
        if self.punts("other_proto"):
            cases.append(("OTHER_PROTO", Ether(src=HOST_MAC, dst=self.mac(lan)) /
                          IP(src="10.0.1.10", dst="198.51.100.7") / ICMP()))
        if self.punts("mtu"):
            big = tu.simple_tcp_packet(**base, pktlen=14 + self.port_mtu(wan) + 1)
            cases.append(("MTU", big))
        if self.profile_has("ipv6") and self.punts("ipv6_ext"):
            cases.append(("IPV6_EXT", Ether(src=HOST_MAC, dst=self.mac(lan)) /
                          IPv6(src="2001:db8:1::10", dst="2001:db8:ff::7") / IPv6ExtHdrHopByHop() / UDP()))
        for reason, pkt in cases:
            with self.subTest(reason=reason):
                tu.send_packet(self, lan, pkt)
                got = self.expect_packet_in(lan, reason)
                self.assertEqual(got, bytes(pkt), f"{reason}: the packet-in must carry the packet unchanged")
        tu.verify_no_other_packets(self)


class PacketOut(FlowtableTest):
    """A packet-out leaves exactly the port named in its metadata, byte for byte."""

    def runTest(self) -> None:
        for port in self.ports:
            pkt = tu.simple_udp_packet(eth_src=self.mac(port), eth_dst=PEER_MAC, ip_ttl=1)
            self.packet_out(port, bytes(pkt))
            tu.verify_packet(self, self.tagged(pkt, port), port)
        tu.verify_no_other_packets(self)


class Counters(FlowtableTest):
    """The direct counter of a flow entry counts its packets and bytes (what keeps offloaded flows alive)."""

    @needs("counters")
    def runTest(self) -> None:
        lan, wan = self.lan_port, self.wan_port
        self.add_flow4(lan, "10.0.1.10", "198.51.100.7", 17, 7000, 7001, out=wan, smac=self.mac(wan), dmac=PEER_MAC)
        pkt = tu.simple_udp_packet(eth_src=HOST_MAC, eth_dst=self.mac(lan), ip_src="10.0.1.10",
                                   ip_dst="198.51.100.7", udp_sport=7000, udp_dport=7001, pktlen=200)
        for _ in range(5):
            tu.send_packet(self, lan, pkt)
            tu.verify_packet(self, self.forwarded(pkt, wan), wan)
        packets, octets = self.read_flow_counter4(lan, "10.0.1.10", "198.51.100.7", 17, 7000, 7001)
        self.assertEqual(packets, 5)
        self.assertEqual(octets, 5 * 200)


class MissAfterDelete(FlowtableTest):
    """Once the entry is deleted the flow's packets go back to the slow path as misses."""

    def runTest(self) -> None:
        lan, wan = self.lan_port, self.wan_port
        key = (lan, "10.0.1.10", "198.51.100.7", 6, 41000, 22)
        self.add_flow4(*key, out=wan, smac=self.mac(wan), dmac=PEER_MAC)
        pkt = tu.simple_tcp_packet(eth_src=HOST_MAC, eth_dst=self.mac(lan), ip_src="10.0.1.10",
                                   ip_dst="198.51.100.7", tcp_sport=41000, tcp_dport=22)
        tu.send_packet(self, lan, pkt)
        tu.verify_packet(self, self.forwarded(pkt, wan), wan)
        self.delete_flow4(*key)
        tu.send_packet(self, lan, pkt)
        self.expect_packet_in(lan, "MISS")
        tu.verify_no_other_packets(self)


class Vlan(FlowtableTest):
    """A VLAN port: frames leave it tagged with its VLAN id, tagged frames arriving on it are popped before the
    lookup (and punted untagged), and a frame with another VLAN id is dropped."""

    @with_vlan
    def runTest(self) -> None:
        vport = self.vlan_ports[0]
        other = next(p for p in self.ports if p != vport)
        vid = self.vlan_of(vport)
        self.add_flow4(other, "10.0.1.10", "198.51.100.7", 17, 1000, 2000, out=vport, smac=self.mac(vport),
                       dmac=PEER_MAC)
        pkt = tu.simple_udp_packet(eth_src=HOST_MAC, eth_dst=self.mac(other), ip_src="10.0.1.10",
                                   ip_dst="198.51.100.7", udp_sport=1000, udp_dport=2000)
        exp = tu.simple_udp_packet(eth_src=self.mac(vport), eth_dst=PEER_MAC, ip_src="10.0.1.10",
                                   ip_dst="198.51.100.7", udp_sport=1000, udp_dport=2000, ip_ttl=63,
                                   dl_vlan_enable=True, vlan_vid=vid, pktlen=104)
        tu.send_packet(self, other, pkt)
        tu.verify_packet(self, exp, vport)
        tagged = Ether(src=PEER_MAC, dst=self.mac(vport)) / Dot1Q(vlan=vid) / ARP(psrc="192.0.2.20")
        tu.send_packet(self, vport, tagged)
        got = self.expect_packet_in(vport, "NON_IP")
        self.assertEqual(got, bytes(Ether(src=PEER_MAC, dst=self.mac(vport), type=0x0806) / ARP(psrc="192.0.2.20")))
        tu.send_packet(self, vport, Ether(src=PEER_MAC, dst=self.mac(vport)) / Dot1Q(vlan=vid + 1) / ARP())
        self.assert_no_packet_in()
        tu.verify_no_other_packets(self)



class NatMtuPuntIsUnchanged(FlowtableTest):
    """A packet of a NAT flow too big for the egress MTU reaches the controller exactly as it arrived (the
    controller fragments it, or answers with ICMP): the NAT checksum pass must not touch a punted packet."""

    @requires_nat
    def runTest(self) -> None:
        if not self.punts("mtu"):
            self.skipTest(f"profile {self.profile.name!r} does not punt on MTU")
        lan, wan = self.lan_port, self.wan_port
        host, peer, router = "10.0.1.10", "198.51.100.7", "192.0.2.1"
        for l4, proto, sport in ((UDP, 17, 5100), (TCP, 6, 5101)):
            self.add_flow4(lan, host, peer, proto, sport, 9000, out=wan, smac=self.mac(wan), dmac=PEER_MAC,
                           nat=(router, peer, 62000, 9000))
            pkt = Ether(src=HOST_MAC, dst=self.mac(lan)) / IP(src=host, dst=peer, ttl=64) / \
                l4(sport=sport, dport=9000)
            pkt = pkt / Raw(b"b" * (self.port_mtu(wan) + 1 - len(pkt[IP])))
            tu.send_packet(self, lan, pkt)
            got = self.expect_packet_in(lan, "MTU")
            self.assertEqual(got, bytes(pkt), f"{l4.__name__}: the MTU punt of a NAT flow must be unchanged")
        tu.verify_no_other_packets(self)


class TrailingBytesAreTrimmed(FlowtableTest):
    """Bytes after the IP packet (Ethernet padding of a short frame, or junk) are not part of the datagram:
    Linux trims them (pskb_trim in ip_rcv) before NAT touches the checksum. The fast path forwards such frames
    without them, with or without NAT, and the NAT checksum is right (scapy builds the expected packets)."""

    def runTest(self) -> None:
        lan, wan = self.lan_port, self.wan_port
        host, peer, router = "10.0.1.10", "198.51.100.7", "192.0.2.1"
        nat = self.profile_has("nat")
        for l4, proto in ((TCP, 6), (UDP, 17)):
            if nat:
                self.add_flow4(lan, host, peer, proto, 40100, 80, out=wan, smac=self.mac(wan), dmac=PEER_MAC,
                               nat=(router, peer, 62100, 80))
            self.add_flow4(lan, host, peer, proto, 40101, 80, out=wan, smac=self.mac(wan), dmac=PEER_MAC)
            cases = [(40101, b"\xff" * 3), (40101, b"junk-after-the-datagram")]
            if nat:
                cases += [(40100, b"\0" * 6), (40100, b"junk-after-the-datagram")]
            for sport, extra in cases:
                pkt = Ether(src=HOST_MAC, dst=self.mac(lan)) / IP(src=host, dst=peer, ttl=64) / \
                    l4(sport=sport, dport=80) / Raw(b"ab")
                src, nsport = (router, 62100) if sport == 40100 else (host, sport)
                exp = Ether(src=self.mac(wan), dst=PEER_MAC) / IP(src=src, dst=peer, ttl=63) / \
                    l4(sport=nsport, dport=80) / Raw(b"ab")
                tu.send_packet(self, lan, bytes(pkt) + extra)
                tu.verify_packet(self, exp, wan)
        tu.verify_no_other_packets(self)
        self.assert_no_packet_in()


class NatKeepsAWrongChecksumWrong(FlowtableTest):
    """NAT updates the transport checksum incrementally, as Linux does: a segment that arrived with a wrong
    checksum leaves with a wrong one (the receiver drops it), instead of a freshly computed valid one."""

    @requires_nat
    def runTest(self) -> None:
        lan, wan = self.lan_port, self.wan_port
        host, peer, router = "10.0.1.10", "198.51.100.7", "192.0.2.1"
        self.add_flow4(lan, host, peer, 6, 40400, 80, out=wan, smac=self.mac(wan), dmac=PEER_MAC,
                       nat=(router, peer, 62400, 80))
        good = Ether(src=HOST_MAC, dst=self.mac(lan)) / IP(src=host, dst=peer, ttl=64) / \
            TCP(sport=40400, dport=80, flags="A") / Raw(b"data")
        exp = Ether(src=self.mac(wan), dst=PEER_MAC) / IP(src=router, dst=peer, ttl=63) / \
            TCP(sport=62400, dport=80, flags="A") / Raw(b"data")

        def plus_one(pkt: Ether) -> Ether:
            """`pkt` with its TCP checksum one more in ones' complement: an update ~(~HC + ~m + m') carries
            the error through, so the expected output is the correct one plus one too."""
            out = Ether(bytes(pkt))
            total = out[TCP].chksum + 1
            out[TCP].chksum = (total & 0xFFFF) + (total >> 16)
            return out

        bad, exp_bad = plus_one(good), plus_one(exp)
        tu.send_packet(self, lan, good)
        tu.verify_packet(self, exp, wan)
        tu.send_packet(self, lan, bad)
        tu.verify_packet(self, exp_bad, wan)
        tu.verify_no_other_packets(self)


class KernelDrops(FlowtableTest):
    """What Linux's ip_rcv / ipv6_rcv drop is dropped, even on a hit, and counted by reason in drop_counter:
    a frame to another host's MAC, IP version wrong, IPv4 header length < 20, total length < header or beyond
    the frame, a bad header checksum, an IPv6 payload length beyond the frame. A frame to a broadcast or
    multicast MAC is not forwarded (ip_forward forwards only PACKET_HOST) but goes to the slow path."""

    def runTest(self) -> None:
        lan, wan = self.lan_port, self.wan_port
        host, peer = "10.0.1.10", "198.51.100.7"
        self.add_flow4(lan, host, peer, 17, 40200, 53, out=wan, smac=self.mac(wan), dmac=PEER_MAC)
        eth = Ether(src=HOST_MAC, dst=self.mac(lan))
        udp = UDP(sport=40200, dport=53) / Raw(b"query")
        cases: list[tuple[str, bytes]] = [
            ("other_host", bytes(Ether(src=HOST_MAC, dst=PEER_MAC) / IP(src=host, dst=peer) / udp)),
            ("ip_version", bytes(eth / IP(src=host, dst=peer, version=5) / udp)),
            ("ip_header", bytes(eth / IP(src=host, dst=peer, ihl=4) / udp)),
            ("ip_length", bytes(eth / IP(src=host, dst=peer, len=19) / udp)),
            ("ip_length", bytes(eth / IP(src=host, dst=peer, len=600) / udp)),
            ("checksum", bytes(eth / IP(src=host, dst=peer, chksum=0xBEEF) / udp)),
        ]
        if self.profile_has("ipv6"):
            src6, dst6 = "2001:db8:1::10", "2001:db8:ff::7"
            self.add_flow6(lan, src6, dst6, 17, 40200, 53, out=wan, smac=self.mac(wan), dmac=PEER_MAC)
            cases += [
                ("other_host", bytes(Ether(src=HOST_MAC, dst=PEER_MAC) / IPv6(src=src6, dst=dst6) / udp)),
                ("ip_version", bytes(eth / IPv6(src=src6, dst=dst6, version=4) / udp)),
                ("ip_length", bytes(eth / IPv6(src=src6, dst=dst6, plen=500) / udp)),
            ]
        counters = self.profile_has("counters")
        for reason, frame in cases:
            with self.subTest(reason=reason):
                code = self.drop_reasons[reason]
                before = self.read_counter("ingress.drop_counter", code) if counters else (0, 0)
                tu.send_packet(self, lan, frame)
                tu.verify_no_other_packets(self)
                self.assert_no_packet_in()
                if counters:
                    after = self.read_counter("ingress.drop_counter", code)
                    self.assertEqual((after[0] - before[0], after[1] - before[1]), (1, len(frame)),
                                     f"drop_counter[{code}] ({reason})")
        bcast = Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src=host, dst=peer) / udp
        tu.send_packet(self, lan, bcast)
        self.assertEqual(self.expect_packet_in(lan, "MCAST_MAC"), bytes(bcast))
        tu.verify_no_other_packets(self)


class FlowToCpuPort(FlowtableTest):
    """A flow entry whose output port is the CPU port sends a well-formed packet-in (reason TO_CPU) carrying
    the frame as it arrived, not a frame the controller would misread."""

    def runTest(self) -> None:
        lan = self.lan_port
        cpu = self.profile.cpu_port
        self.add_flow4(lan, "10.0.1.10", "198.51.100.7", 6, 40300, 443, out=cpu, smac=self.mac(lan), dmac=PEER_MAC)
        pkt = tu.simple_tcp_packet(eth_src=HOST_MAC, eth_dst=self.mac(lan), ip_src="10.0.1.10",
                                   ip_dst="198.51.100.7", tcp_sport=40300, tcp_dport=443)
        tu.send_packet(self, lan, pkt)
        self.assertEqual(self.expect_packet_in(lan, "TO_CPU"), bytes(pkt))
        tu.verify_no_other_packets(self)
