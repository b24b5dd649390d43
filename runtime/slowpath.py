"""The slow path: what the router does with every packet the switch punts, as the Linux forwarding path
would -- ARP and neighbour discovery for its own addresses, ping to itself, conntrack, DNAT before routing,
longest-prefix routing, SNAT/masquerade after it, TTL / hop limit, ICMP errors (time exceeded, fragmentation
needed / packet too big, unreachable), defragmentation and refragmentation, MAC rewrite -- and out with a
packet-out.

It is a plain object driven by :meth:`SlowPath.handle` (one punted frame in) with an ``emit(port, frame)``
callback (frames out) and an injected clock, so it runs the same under the controller and in unit tests.
Each forwarded direction's rewrite is an action list (:mod:`runtime.actions`), executed here and stored on
the connection for the flowtable.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections import Counter
from collections.abc import Callable

from . import packet as P
from .actions import ActionList, NamedCounters, Statement, execute, route_actions, with_dmac
from .config import PortConfig, RouterConfig
from .conntrack import Conn, Conntrack, CtTuple, Dir, Status, Verdict
from .nat import Nat, NatError
from .neigh import NeighbourTable
from .reassembly import Reassembler
from .routing import Route, RoutingTable

log = logging.getLogger(__name__)

Emit = Callable[[int, bytes], None]
ZERO_MAC = b"\0" * 6
ICMP4_QUOTE = 576 - 28
ICMP6_QUOTE = 1280 - 48


class SlowPath:
    def __init__(self, config: RouterConfig, *, clock: Callable[[], int], emit: Emit,
                 conntrack: Conntrack | None = None, nat: Nat | None = None) -> None:
        self.config = config
        self.clock = clock
        self.emit = emit
        self.routes = RoutingTable.from_config(config)
        self.conntrack = conntrack if conntrack is not None else Conntrack(clock)
        self.nat = nat if nat is not None else Nat(config, self.conntrack.taken, is_local=self.routes.is_local)
        self.neigh = NeighbourTable(self._probe, clock=clock)
        self.reasm = Reassembler(clock)
        self.stats: Counter[str] = Counter()
        self._ident = 0
        #: The pipeline's per-port VLAN tagging (port -> VLAN id), learned from the switch when the flowtable
        #: starts. The switch pops and pushes these tags itself, so executing the list here changes nothing
        #: for them; but the list stored on the connection is the one every path shares, and the switch
        #: only takes an entry whose VLAN actions match its ports.
        self.port_vlans: dict[int, int] = {}
        #: The policy's statements for a connection (DSCP, named counter), asked when a direction's list is
        #: made: ``(conn, direction, in_port, out_port)``. The flowtable's policy sets it; none without one.
        self.statements: Callable[[Conn, Dir, int, int], tuple[Statement, ...]] = lambda *_: ()
        #: The named counters every path adds to (shared with the flowtable's fast path and hardware reads).
        self.counters = NamedCounters()
        #: Called for each forwarded packet of a connection, after its action list is recorded: the forward
        #: chain's ``flow add @ft`` point, where the flowtable is offered the connection.
        self.on_forward: list[Callable[[Conn, Dir], None]] = []
        #: Connection directions forwarded towards a next hop that had not answered yet, by neighbour, with
        #: their action lists but for the destination MAC: the list is recorded once the neighbour answers
        #: and its queued packets leave, as the packet left the forward chain long before. Without it, a
        #: connection whose reply was queued behind an ARP request stays off the flowtable until another
        #: packet of that direction comes by.
        self._awaiting: dict[tuple[int, bytes], dict[tuple[int, Dir], tuple[Conn, Dir, ActionList]]] = {}

    # ------------------------------------------------------------------ entry points

    def handle(self, in_port: int, frame: bytes, reason: str = "") -> None:
        """One punted frame. Never raises for a bad packet: it is counted and dropped."""
        self.stats["rx"] += 1
        if reason:
            self.stats[f"reason_{reason.lower()}"] += 1
        try:
            self._handle(in_port, frame)
        except P.PacketError as exc:
            self.stats["drop_malformed"] += 1
            log.debug("port %d: malformed packet: %s", in_port, exc)

    def tick(self) -> None:
        """Once a second: conntrack GC, neighbour probes and failures, fragment expiry."""
        self.conntrack.gc()
        for n, dropped in self.neigh.tick():
            self.stats["drop_neigh_failed"] += len(dropped)
            self._awaiting.pop((n.port, n.addr), None)
            for frame in dropped:
                self._unreachable_for_queued(frame, n.port)
        self.reasm.expire()

    # ------------------------------------------------------------------ L2

    def _handle(self, in_port: int, frame: bytes) -> None:
        pc = self.config.ports.get(in_port)
        if pc is None:
            self.stats["drop_unknown_port"] += 1
            return
        pkt = P.parse(frame)
        dmac = pkt.data[0:6]
        if dmac != pc.mac and not dmac[0] & 1:
            self.stats["drop_other_host"] += 1
            return
        if pkt.ethertype == P.ETH_P_ARP:
            self._arp(pc, pkt)
            return
        if pkt.version == 0:
            self.stats["drop_non_ip"] += 1
            return
        if pkt.frag:
            whole = self.reasm.add(pkt)
            if whole is None:
                return
            pkt = whole
        if pkt.version == 6 and pkt.proto == P.IPPROTO_ICMPV6 and 133 <= pkt.icmp_type <= 137:
            self._nd(pc, pkt)
            return
        if self._is_multicast(pkt):
            self.stats["drop_multicast"] += 1
            return
        self._ip(pc, pkt)

    @staticmethod
    def _is_multicast(pkt: P.Packet) -> bool:
        if pkt.version == 4:
            return pkt.dst[0] >= 224 or pkt.dst == b"\xff\xff\xff\xff"
        return pkt.dst[0] == 0xFF

    # ------------------------------------------------------------------ ARP / ND

    def _arp(self, pc: PortConfig, pkt: P.Packet) -> None:
        a = P.parse_arp(pkt)
        ours = any(i.ip.packed == a.tpa for i in pc.ipv4)
        if a.spa != b"\0\0\0\0" and not a.sha[0] & 1:
            self._learn(pc.port, a.spa, a.sha, create=ours)
        if a.op == 1 and ours:
            self.stats["arp_reply"] += 1
            reply = P.arp(2, pc.mac, a.tpa, a.sha, a.spa)
            self.emit(pc.port, P.ethernet(a.sha, pc.mac, P.ETH_P_ARP, reply))

    def _nd(self, pc: PortConfig, pkt: P.Packet) -> None:
        if pkt.ttl != 255:
            self.stats["drop_nd_hoplimit"] += 1
            return
        if pkt.icmp_type == P.ND_NEIGHBOR_SOLICIT:
            target = P.nd_target(pkt)
            ours = any(i.ip.packed == target for i in pc.ipv6)
            unspecified = pkt.src == b"\0" * 16
            lladdr = P.nd_option(pkt, 1)
            if lladdr is not None and not unspecified:
                self._learn(pc.port, pkt.src, lladdr, create=ours)
            if not ours:
                return
            self.stats["nd_advert"] += 1
            dst = P.ALL_NODES if unspecified else pkt.src
            flags = (0x40000000 if not unspecified else 0) | 0xA0000000  # router, solicited, override
            body = target + bytes([2, 1]) + pc.mac
            msg = P.icmp6(target, dst, P.ND_NEIGHBOR_ADVERT, 0, struct.pack("!I", flags), body)
            dmac = P.multicast_mac(dst) if unspecified else (lladdr or pkt.src_mac)
            self.emit(pc.port, P.ethernet(dmac, pc.mac, P.ETH_P_IPV6, P.ipv6(target, dst, P.IPPROTO_ICMPV6, msg,
                                                                             hlim=255)))
        elif pkt.icmp_type == P.ND_NEIGHBOR_ADVERT:
            target = P.nd_target(pkt)
            mac = P.nd_option(pkt, 2) or pkt.src_mac
            self._learn(pc.port, target, mac, create=False)

    def _probe(self, port: int, addr: bytes) -> None:
        pc = self.config.ports[port]
        self.stats["neigh_probe"] += 1
        if len(addr) == 4:
            src = self._source_for(pc, 4, addr)
            if src is None:
                return
            req = P.arp(1, pc.mac, src, ZERO_MAC, addr)
            self.emit(port, P.ethernet(P.BROADCAST, pc.mac, P.ETH_P_ARP, req))
        else:
            src = self._source_for(pc, 6, addr)
            if src is None:
                return
            dst = P.solicited_node(addr)
            msg = P.icmp6(src, dst, P.ND_NEIGHBOR_SOLICIT, 0, b"\0\0\0\0", addr + bytes([1, 1]) + pc.mac)
            self.emit(port, P.ethernet(P.multicast_mac(dst), pc.mac, P.ETH_P_IPV6,
                                       P.ipv6(src, dst, P.IPPROTO_ICMPV6, msg, hlim=255)))

    @staticmethod
    def _source_for(pc: PortConfig, version: int, peer: bytes) -> bytes | None:
        """The router's address on ``pc`` to talk to ``peer``: one on the peer's subnet, else the primary."""
        peer_ip = ipaddress.ip_address(peer)
        for iface in pc.addresses(version):
            if peer_ip in iface.network:
                return iface.ip.packed
        primary = pc.primary(version)
        return primary.ip.packed if primary is not None else None

    # ------------------------------------------------------------------ IP

    def _tuple(self, pkt: P.Packet) -> CtTuple:
        if pkt.l4 >= 0 and (pkt.proto in (P.IPPROTO_TCP, P.IPPROTO_UDP) or P.is_echo(pkt.version, pkt.icmp_type)):
            return CtTuple(pkt.src, pkt.dst, pkt.proto, pkt.sport, pkt.dport)
        return CtTuple(pkt.src, pkt.dst, pkt.proto, 0, 0)

    def _ip(self, pc: PortConfig, pkt: P.Packet) -> None:
        if P.is_icmp_error(pkt) and pkt.l4 >= 0:
            self._icmp_error(pc, pkt)
            return
        t = self._tuple(pkt)
        length = pkt.ip_len
        conn: Conn | None = None
        found = self.conntrack.lookup(t)
        direction = Dir.ORIGINAL
        if found is not None:
            conn, direction = found
            verdict = self.conntrack.packet(conn, direction, length=length, tcp_flags=pkt.tcp_flags, in_port=pc.port,
                                            **_tcp_segment(pkt))
            if verdict is Verdict.INVALID:
                self.stats["drop_ct_invalid"] += 1
                return
            if verdict is Verdict.REOPEN:
                conn = None
        new = conn is None
        if conn is None:
            conn = self._new_conn(pc, pkt, t, length)
            if conn is None:
                return
            direction = Dir.ORIGINAL
        this, other = conn.tuples[direction], conn.tuples[direction.other]
        out_dst = other.src  # where this packet is going after NAT
        route = self.routes.lookup(out_dst)
        if route is None:
            self._dest_unreachable(pc, pkt, net=True)
            return
        if self._not_host(pkt):
            return
        if pkt.ttl <= 1:
            self._time_exceeded(pc, pkt)
            return
        if not self._fits(pc, pkt, route):
            return
        if new and not self.conntrack.confirm(conn):
            self.stats["drop_ct_confirm"] += 1
            return
        self._forward(conn, direction, this, other, pkt, route)

    def _new_conn(self, pc: PortConfig, pkt: P.Packet, t: CtTuple, length: int) -> Conn | None:
        echo_request = pkt.icmp_type in (P.ICMP_ECHO, P.ICMPV6_ECHO_REQUEST)
        dnat = self.nat.dnat_target(t, pc.port)
        if dnat is None and self.routes.is_local(t.dst):
            self._local(pc, pkt)
            return None
        if not self.conntrack.can_create(t.proto, pkt.tcp_flags, echo_request):
            self.stats["drop_ct_invalid"] += 1
            return None
        route = self.routes.lookup(dnat.addr if dnat else t.dst)
        if route is None:
            self._dest_unreachable(pc, pkt, net=True)
            return None
        if self._not_host(pkt):
            return None
        if pkt.ttl <= 1:  # before any NAT allocation: the packet dies here, no connection is confirmed
            self._time_exceeded(pc, pkt)
            return None
        snat = self.nat.snat_target(t, route.port)
        try:
            reply = self.nat.reply_tuple(t, snat, dnat)
        except NatError as exc:
            self.stats["drop_nat_exhausted"] += 1
            log.warning("NAT: %s", exc)
            return None
        conn = self.conntrack.new(t, iif=pc.port)
        self.conntrack.set_reply(conn, reply)
        verdict = self.conntrack.packet(conn, Dir.ORIGINAL, length=length, tcp_flags=pkt.tcp_flags, in_port=pc.port,
                                        **_tcp_segment(pkt))
        if verdict is not Verdict.ACCEPT:
            self.stats["drop_ct_invalid"] += 1
            return None
        return conn

    def _not_host(self, pkt: P.Packet) -> bool:
        """ip_forward forwards only frames sent to the router's MAC (PACKET_HOST): one that arrived to a
        broadcast or multicast MAC may be delivered locally but is never forwarded, and creates no connection."""
        if pkt.dst_mac[0] & 1:
            self.stats["drop_not_host"] += 1
            return True
        return False

    def _fits(self, pc: PortConfig, pkt: P.Packet, route: Route) -> bool:
        """MTU check; sends fragmentation needed / packet too big when the packet cannot go out as it is."""
        mtu = self.config.ports[route.port].mtu
        size = pkt.ip_len
        if pkt.version == 4:
            if size > mtu and pkt.df:
                self.stats["icmp_frag_needed"] += 1
                self._icmp4_error(pc, pkt, P.ICMP_DEST_UNREACH, 4, struct.pack("!HH", 0, mtu))
                return False
            return True
        limit = pkt.frag_max if pkt.frag_max else size
        if limit > mtu:
            self.stats["icmp_pkt_toobig"] += 1
            self._icmp6_error(pc, pkt, P.ICMPV6_PKT_TOOBIG, 0, struct.pack("!I", mtu))
            return False
        return True

    def _forward(self, conn: Conn, direction: Dir, this: CtTuple, other: CtTuple, pkt: P.Packet, route: Route) -> None:
        out = self.config.ports[route.port]
        nh = route.gateway.packed if route.gateway is not None else other.src  # route.next_hop without ipaddress
        mac = self.neigh.lookup(route.port, nh)
        in_port = conn.iif[direction]
        stmts = self.statements(conn, direction, in_port if in_port is not None else -1, route.port)
        actions: ActionList = route_actions(this, other, out_port=route.port, smac=out.mac, dmac=mac or ZERO_MAC,
                                            in_port=in_port, port_vlans=self.port_vlans, statements=stmts)
        # the connection's statements apply on this path too: a packet is marked and counted whichever
        # path carries it
        execute(actions, pkt, count=self.counters.add, pipeline_vlans=self.port_vlans)
        self.stats["forwarded"] += 1
        frames = self._output_frames(pkt, out.mtu)
        if mac is not None:
            self.conntrack.set_actions(conn, direction, actions)
            for f in frames:
                self.emit(route.port, f)
            for hook in self.on_forward:
                hook(conn, direction)
        else:
            self._awaiting.setdefault((route.port, nh), {})[(conn.id, direction)] = (conn, direction, actions)
            for f in frames:
                self.neigh.resolve(route.port, nh, f)

    def _output_frames(self, pkt: P.Packet, mtu: int) -> list[bytes]:
        data = bytes(pkt.data)
        size = pkt.ip_len
        if pkt.version == 4:
            limit = min(mtu, pkt.frag_max) if pkt.frag_max else mtu
            if size <= limit:
                return [data]
            self.stats["fragmented"] += 1
            eth = data[:pkt.l3]
            return [eth + f for f in P.fragment_ipv4(data[pkt.l3:], limit)]
        if pkt.frag_max and size > pkt.frag_max:
            self.stats["fragmented"] += 1
            eth = data[:pkt.l3]
            return [eth + f for f in P.fragment_ipv6(data[pkt.l3:], pkt.unfrag_len, pkt.frag_max, pkt.frag_id)]
        return [data]

    def _learn(self, port: int, addr: bytes, mac: bytes, *, create: bool) -> None:
        """A neighbour answered: its queued packets leave, and the connections they belong to get the
        action lists their packets were forwarded with (the MAC now known), each offered to the flowtable
        as at the forward hook."""
        for frame in self.neigh.learn(port, addr, mac, create=create):
            self.emit(port, mac + frame[6:])
        waiting = self._awaiting.pop((port, addr), None)
        if not waiting:
            return
        for conn, direction, actions in waiting.values():
            if conn.actions[direction] is not None or conn.status & Status.DYING:
                continue  # a later packet of this direction found the MAC already, or the connection ended
            self.conntrack.set_actions(conn, direction, with_dmac(actions, mac))
            for hook in self.on_forward:
                hook(conn, direction)

    # ------------------------------------------------------------------ the router's own traffic

    def _local(self, pc: PortConfig, pkt: P.Packet) -> None:
        """A packet for one of the router's addresses."""
        if pkt.l4 < 0:
            self.stats["drop_local"] += 1
            return
        d = pkt.data
        end = pkt.l3 + pkt.ip_len
        if pkt.version == 4 and pkt.proto == P.IPPROTO_ICMP and pkt.icmp_type == P.ICMP_ECHO:
            self.stats["echo_reply"] += 1
            msg = P.icmp4(P.ICMP_ECHO_REPLY, 0, bytes(d[pkt.l4 + 4:pkt.l4 + 8]), bytes(d[pkt.l4 + 8:end]))
            self._originate(pkt.dst, pkt.src, P.IPPROTO_ICMP, msg)
        elif pkt.version == 6 and pkt.proto == P.IPPROTO_ICMPV6 and pkt.icmp_type == P.ICMPV6_ECHO_REQUEST:
            self.stats["echo_reply"] += 1
            msg = P.icmp6(pkt.dst, pkt.src, P.ICMPV6_ECHO_REPLY, 0, bytes(d[pkt.l4 + 4:pkt.l4 + 8]),
                          bytes(d[pkt.l4 + 8:end]))
            self._originate(pkt.dst, pkt.src, P.IPPROTO_ICMPV6, msg)
        elif pkt.proto == P.IPPROTO_UDP:
            self._dest_unreachable(pc, pkt, port=True)
        else:
            self.stats["drop_local"] += 1

    def _next_ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def _originate(self, src: bytes, dst: bytes, proto: int, l4: bytes) -> None:
        """Send an IP packet from the router (echo replies, ICMP errors)."""
        route = self.routes.lookup(dst)
        if route is None:
            self.stats["drop_no_route_local"] += 1
            return
        if len(src) == 4:
            ip = P.ipv4(src, dst, proto, l4, ident=self._next_ident())
            etype = P.ETH_P_IP
        else:
            ip = P.ipv6(src, dst, proto, l4)
            etype = P.ETH_P_IPV6
        out = self.config.ports[route.port]
        nh = route.next_hop(ipaddress.ip_address(dst)).packed
        mac = self.neigh.lookup(route.port, nh)
        frame = P.ethernet(mac or ZERO_MAC, out.mac, etype, ip)
        if mac is not None:
            self.emit(route.port, frame)
        else:
            self.neigh.resolve(route.port, nh, frame)

    def _error_allowed(self, pkt: P.Packet) -> bool:
        """RFC 1122 / 4443: never about an ICMP error, a non-first fragment, or a multicast/unspecified source."""
        if P.is_icmp_error(pkt) or (pkt.frag and pkt.frag_off):
            return False
        if pkt.version == 4:
            return pkt.src[0] not in (0, 127) and pkt.src[0] < 224
        return pkt.src[0] != 0xFF and pkt.src != b"\0" * 16

    def _icmp4_error(self, pc: PortConfig, pkt: P.Packet, icmp_type: int, code: int, rest: bytes = b"\0\0\0\0") -> None:
        if not self._error_allowed(pkt):
            return
        src = self._source_for(pc, 4, pkt.src)
        if src is None:
            return
        quote = bytes(pkt.data[pkt.l3:pkt.l3 + min(pkt.ip_len, ICMP4_QUOTE)])
        self._originate(src, pkt.src, P.IPPROTO_ICMP, P.icmp4(icmp_type, code, rest, quote))

    def _icmp6_error(self, pc: PortConfig, pkt: P.Packet, icmp_type: int, code: int, rest: bytes = b"\0\0\0\0") -> None:
        if not self._error_allowed(pkt):
            return
        src = self._source_for(pc, 6, pkt.src)
        if src is None:
            return
        quote = bytes(pkt.data[pkt.l3:pkt.l3 + min(pkt.ip_len, ICMP6_QUOTE)])
        self._originate(src, pkt.src, P.IPPROTO_ICMPV6, P.icmp6(src, pkt.src, icmp_type, code, rest, quote))

    def _time_exceeded(self, pc: PortConfig, pkt: P.Packet) -> None:
        self.stats["icmp_time_exceeded"] += 1
        if pkt.version == 4:
            self._icmp4_error(pc, pkt, P.ICMP_TIME_EXCEEDED, 0)
        else:
            self._icmp6_error(pc, pkt, P.ICMPV6_TIME_EXCEED, 0)

    def _dest_unreachable(self, pc: PortConfig, pkt: P.Packet, *, net: bool = False, port: bool = False,
                          host: bool = False) -> None:
        self.stats["icmp_unreachable"] += 1
        if pkt.version == 4:
            self._icmp4_error(pc, pkt, P.ICMP_DEST_UNREACH, 0 if net else 3 if port else 1)
        else:
            self._icmp6_error(pc, pkt, P.ICMPV6_DEST_UNREACH, 0 if net else 4 if port else 3)

    def _unreachable_for_queued(self, frame: bytes, port: int) -> None:
        """A packet dropped because its next hop never answered: host unreachable to its sender."""
        try:
            pkt = P.parse(frame)
        except P.PacketError:
            return
        if pkt.version == 0:
            return
        found = self.conntrack.lookup(self._tuple(pkt).invert())
        if found is not None:  # quote the packet as its sender sent it (undo the NAT already applied)
            conn, direction = found
            buf = bytearray(pkt.data)
            _rewrite_inner(buf, pkt.l3, pkt.version, conn.tuples[direction.other])
            pkt = P.parse(buf)
        route = self.routes.lookup(pkt.src)
        if route is None or self.routes.is_local(pkt.src):
            return
        self._dest_unreachable(self.config.ports[route.port], pkt, host=True)

    # ------------------------------------------------------------------ ICMP errors about tracked connections

    def _icmp_error(self, pc: PortConfig, pkt: P.Packet) -> None:
        """An ICMP error in transit: find the connection of the packet it quotes (RELATED) and undo that
        connection's NAT on the outer and the quoted header, as ``nf_nat_icmp_reply_translation`` does."""
        d = pkt.data
        inner_off = pkt.l4 + 8
        end = pkt.l3 + pkt.ip_len
        inner = _inner_tuple(d, inner_off, end, pkt.version)
        found = self.conntrack.lookup(inner.invert()) if inner is not None else None
        if found is None:
            if self.routes.is_local(pkt.dst):
                self.stats["drop_local"] += 1
                return
            route = self.routes.lookup(pkt.dst)
            if route is None or pkt.ttl <= 1:
                self.stats["drop_icmp_error"] += 1
                return
            this = CtTuple(pkt.src, pkt.dst, pkt.proto, 0, 0)
            self._forward_untracked(pkt, this, route)
            return
        conn, direction = found
        want = conn.tuples[direction.other]  # what the quoted packet looked like when its sender sent it
        new_outer_dst = want.src if pkt.dst == conn.tuples[direction].dst else pkt.dst
        route = self.routes.lookup(new_outer_dst)
        if route is None or pkt.ttl <= 1:
            self.stats["drop_icmp_error"] += 1
            return
        _rewrite_inner(d, inner_off, pkt.version, want)
        if pkt.dst != new_outer_dst:
            P.set_addr(pkt, "dst", new_outer_dst)
        # the ICMP checksum covers the quoted packet: recompute it whole
        struct.pack_into("!H", d, pkt.l4 + 2, 0)
        if pkt.version == 4:
            csum = P.checksum(d[pkt.l4:end])
        else:
            csum = P.checksum(d[pkt.l4:end], P.pseudo_sum(pkt.src, pkt.dst, P.IPPROTO_ICMPV6, end - pkt.l4))
        struct.pack_into("!H", d, pkt.l4 + 2, csum)
        self.stats["icmp_related"] += 1
        this = CtTuple(pkt.src, pkt.dst, pkt.proto, 0, 0)
        self._forward_untracked(pkt, this, route)

    def _forward_untracked(self, pkt: P.Packet, this: CtTuple, route: Route) -> None:
        out = self.config.ports[route.port]
        nh = route.next_hop(ipaddress.ip_address(pkt.dst)).packed
        mac = self.neigh.lookup(route.port, nh)
        execute(route_actions(this, this.invert(), out_port=route.port, smac=out.mac, dmac=mac or ZERO_MAC,
                              port_vlans=self.port_vlans), pkt, pipeline_vlans=self.port_vlans)
        self.stats["forwarded"] += 1
        for f in self._output_frames(pkt, out.mtu):
            if mac is not None:
                self.emit(route.port, f)
            else:
                self.neigh.resolve(route.port, nh, f)


def _tcp_segment(pkt: P.Packet) -> dict[str, int]:
    """A TCP segment's sequence number, acknowledgement number and data length, for conntrack (it matches
    the SYN/ACK that answers a SYN it ignored against that SYN's end); empty for other packets."""
    if pkt.proto != P.IPPROTO_TCP or pkt.l4 < 0:
        return {}
    d, off = pkt.data, pkt.l4
    seq, ack_seq = struct.unpack_from("!II", d, off + 4)
    payload = max(0, pkt.l3 + pkt.ip_len - off - (d[off + 12] >> 4) * 4)
    return {"seq": seq, "ack_seq": ack_seq, "payload": payload}


def _inner_tuple(d: bytearray, off: int, end: int, version: int) -> CtTuple | None:
    """The conntrack tuple of the packet quoted in an ICMP error (its first 8 transport bytes suffice)."""
    try:
        if version == 4:
            ihl = (d[off] & 0xF) * 4
            proto = d[off + 9]
            src, dst = bytes(d[off + 12:off + 16]), bytes(d[off + 16:off + 20])
            l4 = off + ihl
            echo = proto == P.IPPROTO_ICMP and d[l4] in (P.ICMP_ECHO, P.ICMP_ECHO_REPLY)
        else:
            proto = d[off + 6]
            src, dst = bytes(d[off + 8:off + 24]), bytes(d[off + 24:off + 40])
            l4 = off + 40
            echo = proto == P.IPPROTO_ICMPV6 and d[l4] in (P.ICMPV6_ECHO_REQUEST, P.ICMPV6_ECHO_REPLY)
        if l4 + 8 > end:
            return None
        if proto in (P.IPPROTO_TCP, P.IPPROTO_UDP):
            sport, dport = struct.unpack_from("!HH", d, l4)
            return CtTuple(src, dst, proto, sport, dport)
        if echo:
            ident = struct.unpack_from("!H", d, l4 + 4)[0]
            return CtTuple(src, dst, proto, ident, ident)
        return CtTuple(src, dst, proto, 0, 0)
    except IndexError:
        return None


def _rewrite_inner(d: bytearray, off: int, version: int, want: CtTuple) -> None:
    if version == 4:
        ihl = (d[off] & 0xF) * 4
        d[off + 12:off + 16] = want.src
        d[off + 16:off + 20] = want.dst
        struct.pack_into("!H", d, off + 10, 0)
        struct.pack_into("!H", d, off + 10, P.checksum(d[off:off + ihl]))
        l4 = off + ihl
    else:
        d[off + 8:off + 24] = want.src
        d[off + 24:off + 40] = want.dst
        l4 = off + 40
    proto = want.proto
    if proto in (P.IPPROTO_TCP, P.IPPROTO_UDP):
        struct.pack_into("!HH", d, l4, want.sport, want.dport)
    elif proto in (P.IPPROTO_ICMP, P.IPPROTO_ICMPV6) and want.sport:
        struct.pack_into("!H", d, l4 + 4, want.sport)
