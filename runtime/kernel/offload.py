"""The flowtable driven by the kernel's conntrack: ``nft_flow_offload`` + the offload driver's glue, with
the kernel as the source of truth.

- A connection is offered when ctnetlink reports it seen both ways (TCP: ESTABLISHED), and again on a
  punted packet of a known connection that is not in the flowtable (the kernel's flowtable offers on every
  forwarded packet). Each direction's action list comes from the kernel's state, as ``nft_flow_offload``
  takes it from the dst cache: the output port from the route (``RTM_GETROUTE``), the next hop's MAC from
  the neighbour table (asked to resolve it when missing), NAT from the tuple pair, TTL-1. A direction's
  ingress port is the other direction's output port.
- While the flowtable holds a connection, the kernel must not expire it (the kernel's flowtable sets
  ``IPS_OFFLOAD`` and extends the timeout itself): the timeout is extended over ctnetlink ahead of the
  flow's own deadline, which the switch's counters keep moving; TCP is made liberal
  (``flow_offload_fixup_tcp``) so packets that come back to the kernel mid-stream are not INVALID. When
  the flow goes, the connection gets its state's normal timeout back (``flow_offload_fixup_ct``).
- UPDATE past ESTABLISHED (a FIN/RST the switch punted reached the kernel) closes the flow; DESTROY tears
  it down.
- Reconciliation at start: switch entries whose connection still exists in the kernel's conntrack are
  adopted, the rest deleted; established connections not yet offloaded are offered.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..actions import ActionList, format_actions, route_actions
from ..client import SwitchClient
from ..config import RouterConfig
from ..conntrack import IPPROTO_TCP, IPPROTO_UDP, CtRecord, CtTuple, Dir, TcpState
from ..flowtable.core import Flow, FlowDirection, OfferResult
from ..flowtable.model import NS, FlowFlag, FlowTuple
from ..flowtable.reconcile import EntryPair
from ..offloader import Offloader
from ..packet import PacketError, parse
from ..pipeline import Pipeline
from .ctnetlink import IPS_ASSURED, IPS_DST_NAT, IPS_SRC_NAT, KCt, KEvent
from .netns import KernelError
from .nft import check_statements, read_counters
from .slowpath import KernelSlowPath

log = logging.getLogger(__name__)

_PROTO_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", 1: "icmp", 58: "icmpv6"}
_FINAL = {OfferResult.POLICY, OfferResult.PROTO, OfferResult.INCONSISTENT}
#: How far ahead of the flow's own deadline the kernel's timeout is kept (s): the switch's counters are
#: read when less than 90 % of the flow timeout remains, so the kernel must outlive that by a margin.
KERNEL_GRACE_S = 30
#: How long a punted FIN/RST of an offloaded flow may wait for the flow's entries to leave the switch.
FIN_HOLD_S = 0.25
#: nft counts from the network header, the switch (and the software paths) whole frames
ETH_HLEN = 14
TCP_FIN = 0x01
TCP_RST = 0x04


@dataclass(slots=True, eq=False)
class KConn:
    """The controller's view of one kernel connection (keyed by its original tuple)."""

    ct: KCt
    dead: bool = False
    refused: str = ""
    flow: Flow | None = None
    iif: list[int | None] = field(default_factory=lambda: [None, None])
    actions: list[ActionList | None] = field(default_factory=lambda: [None, None])
    hw_packets: list[int] = field(default_factory=lambda: [0, 0])
    hw_bytes: list[int] = field(default_factory=lambda: [0, 0])
    kernel_deadline: float = 0.0  # monotonic s when the kernel's timeout runs out, as last set or seen
    liberal: bool = False
    handle: _KHandle | None = None  # the flowtable's reference of the current flow

    @property
    def closing(self) -> bool:
        s = self.ct.tcp_state
        return s is not None and s >= TcpState.FIN_WAIT and s != TcpState.SYN_SENT2

    @property
    def established(self) -> bool:
        return self.ct.tcp_state is None or self.ct.tcp_state == TcpState.ESTABLISHED


class _KHandle:
    """:class:`~runtime.flowtable.core.ConnRef` for a kernel connection."""

    __slots__ = ("conn", "owner")

    def __init__(self, owner: KernelOffloader, conn: KConn) -> None:
        self.owner = owner
        self.conn = conn

    def is_dying(self) -> bool:
        return self.conn.dead

    def acct_add(self, direction: Dir, packets: int, nbytes: int) -> None:
        self.conn.hw_packets[direction] += packets
        self.conn.hw_bytes[direction] += nbytes
        self.owner.hw_packets += packets
        self.owner.hw_bytes += nbytes

    def on_teardown(self) -> None:
        # Called under the flowtable's lock: the netlink request is made later, from the tick.
        self.owner.fixups.append(self)


class KernelOffloader(Offloader):
    """:class:`runtime.offloader.Offloader` with the kernel's conntrack in place of the Python one."""

    def __init__(self, config: RouterConfig, pipeline: Pipeline, kernel: KernelSlowPath, client: SwitchClient,
                 emit: Callable[[int, bytes], None], clock: Callable[[], int]) -> None:
        # Not Offloader.__init__: that one subscribes to the Python conntrack and slow path.
        self._init_flowtable(config, pipeline, client, emit, clock)
        # the kernel applies the statements through the ruleset offloadgen generates (nft.statement_rules)
        check_statements(config, self.policy, user_ruleset=kernel.options.nft_ruleset)
        kernel.policy = self.policy
        self.kernel = kernel
        self.conns: dict[CtTuple, KConn] = {}
        self._by_tuple: dict[CtTuple, KConn] = {}  # both directions' arriving tuples
        self._lock = threading.RLock()
        self.fixups: collections.deque[_KHandle] = collections.deque()
        self._started = False
        self.kstats: collections.Counter[str] = collections.Counter()
        kernel.listeners.append(self._kernel_event)
        kernel.on_resync.append(self._resync)

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._resync(self.kernel.dump())
        super().start()  # VLAN ports, the offload engine, reconciliation (adopting live connections)
        self._started = True
        with self._lock:
            conns = list(self.conns.values())
        for c in conns:
            self._offer_kconn(c)

    def _learned_vlans(self, vlans: dict[int, int]) -> None:
        # no Python slow path to tell: the kernel's TAP frames are untagged and the pipeline tags a VLAN
        # port's packet-outs itself
        self.fast.pipeline_vlans = dict(vlans)

    # ------------------------------------------------------------------------------ kernel state

    def _resync(self, entries: list[KCt]) -> None:
        """Make the mirror match a dump: new ones added, vanished ones destroyed."""
        seen = set()
        for k in entries:
            seen.add(k.orig)
            self._kernel_event(KEvent.UPDATE, k)
        with self._lock:
            gone = [c for t, c in self.conns.items() if t not in seen]
        for c in gone:
            self._kernel_event(KEvent.DESTROY, c.ct)

    def _kernel_event(self, ev: KEvent, k: KCt) -> None:
        now = time.monotonic()
        with self._lock:
            conn = self.conns.get(k.orig)
            if ev is KEvent.DESTROY:
                if conn is None:
                    return
                conn.dead = True
                del self.conns[k.orig]
                for t in (conn.ct.orig, conn.ct.reply):
                    if self._by_tuple.get(t) is conn:
                        del self._by_tuple[t]
                flow = conn.flow
            else:
                changed = True
                if conn is None:
                    conn = KConn(k)
                    self.conns[k.orig] = conn
                    self._by_tuple[k.orig] = conn
                    self._by_tuple[k.reply] = conn
                    # the same line as the Python slow path's, with the kernel's conntrack id
                    if self.lines.allow("new connection"):
                        log.info("new connection %d: %s %s", k.id, _PROTO_NAMES.get(k.proto, str(k.proto)), k.orig)
                else:
                    # Our own timeout updates come back as UPDATE events: only a change of state or
                    # status is news (the kernel offers on forwarded packets, not on timer changes).
                    prev = conn.ct
                    changed = (prev.status, prev.tcp_state) != (k.status, k.tcp_state)
                    conn.ct = k
                conn.kernel_deadline = now + k.timeout_s
                flow = conn.flow
        if ev is KEvent.DESTROY:
            if flow is not None:
                self.ft.teardown(flow)
            return
        if flow is not None:
            if conn.closing and changed:
                self.ft.mark_closing(flow)
            return
        if self._started and changed and k.proto in (IPPROTO_TCP, IPPROTO_UDP) and k.seen_reply and conn.established:
            self._offer_kconn(conn)

    # ------------------------------------------------------------------------------ offering

    def _port_of(self, ifindex: int) -> int | None:
        taps = self.kernel.taps
        return taps.by_ifindex.get(ifindex) if taps is not None else None

    def _leg(self, dst: bytes) -> tuple[int, bytes] | None:
        """(output port, next hop MAC) of a packet to ``dst``, from the kernel's route and neighbour table."""
        rt = self.kernel.rtnl
        if rt is None:
            return None
        hop = rt.route(dst)
        if hop is None:
            return None
        port = self._port_of(hop.oif)
        if port is None:
            return None
        mac = rt.neighbour(hop.oif, hop.next_hop)
        if mac is None:
            rt.resolve(hop.oif, hop.next_hop)
            self.kstats["neigh_missing"] += 1
            return None
        return port, mac

    def _directions(self, k: KCt) -> tuple[FlowDirection, FlowDirection] | None:
        fwd = self._leg(k.reply.src)  # the original direction goes to the (translated) destination
        back = self._leg(k.orig.src)
        if fwd is None or back is None:
            return None
        out_o, dmac_o = fwd
        out_r, dmac_r = back
        vlans = self.caps.port_vlans
        po, pr = self.config.ports[out_o], self.config.ports[out_r]
        # the same statements the ruleset's statements chain applies to what the kernel forwards
        stmts = self.statements_for(k.orig, out_r, out_o)
        acts_o = route_actions(k.orig, k.reply, out_port=out_o, smac=po.mac, dmac=dmac_o, in_port=out_r,
                               port_vlans=vlans, statements=stmts)
        acts_r = route_actions(k.reply, k.orig, out_port=out_r, smac=pr.mac, dmac=dmac_r, in_port=out_o,
                               port_vlans=vlans, statements=stmts)
        o, r = k.orig, k.reply
        return (FlowDirection(FlowTuple(out_r, o.src, o.dst, o.proto, o.sport, o.dport), acts_o, mtu=po.mtu),
                FlowDirection(FlowTuple(out_o, r.src, r.dst, r.proto, r.sport, r.dport), acts_r, mtu=pr.mtu))

    def _offer_kconn(self, conn: KConn, *, hw_present: bool = False,
                     dirs: tuple[FlowDirection, FlowDirection] | None = None) -> Flow | None:
        k = conn.ct
        if conn.refused or conn.dead or conn.flow is not None or not k.seen_reply:
            return None
        if k.proto not in (IPPROTO_TCP, IPPROTO_UDP):
            return None
        dirs = dirs or self._directions(k)
        if dirs is None:
            return None
        o, r = dirs
        handle = _KHandle(self, conn)
        result, flow = self.ft.offer(handle, o, r, seen_reply=True, tcp_established=conn.established,
                                     fin_rst_seen=conn.closing, hw_present=hw_present)
        self.kstats[f"offer_{result.value}"] += 1
        if result in _FINAL:
            conn.refused = result.value
            log.info("connection %s stays in the kernel: %s", k.orig, result.value)
        if flow is None:
            return None
        with self._lock:
            conn.flow = flow
            conn.handle = handle
            conn.iif = [o.tuple.in_port, r.tuple.in_port]
            conn.actions = [o.actions, r.actions]
        self._hold_in_kernel(conn, flow)
        return flow

    def _hold_in_kernel(self, conn: KConn, flow: Flow) -> None:
        """The kernel keeps the connection while the flowtable does (timeout ahead of the flow's) and
        tracks TCP liberally from now on (``flow_offload_fixup_tcp``)."""
        ct = self.kernel.ct
        if ct is None:
            return
        try:
            if conn.ct.proto == IPPROTO_TCP and not conn.liberal:
                conn.liberal = ct.set_liberal(conn.ct.orig)
            self._extend(conn, flow)
        except KernelError as exc:
            log.warning("holding connection %s in the kernel: %s", conn.ct.orig, exc)

    def _extend(self, conn: KConn, flow: Flow) -> None:
        ct = self.kernel.ct
        if ct is None:
            return
        seconds = int(max(flow.timeout - self.clock(), flow.timeout_ns) // NS) + KERNEL_GRACE_S
        if ct.set_timeout(conn.ct.orig, seconds):
            conn.kernel_deadline = time.monotonic() + seconds
            self.kstats["ct_timeout_extended"] += 1

    # ------------------------------------------------------------------------------ packets and ticks

    def fast_forward(self, in_port: int, frame: bytes) -> bool:
        """Never: the kernel forwards every punted packet. A punted packet of a known connection still
        counts as traffic (``flow_offload_refresh``, which re-queues a failed hardware add) and is offered
        again when the connection is not in the flowtable (``nft_flow_offload`` on each packet)."""
        try:
            pkt = parse(frame)
        except PacketError:
            return False
        if pkt.proto not in (IPPROTO_TCP, IPPROTO_UDP) or pkt.l4 < 0:
            return False
        t = CtTuple(pkt.src, pkt.dst, pkt.proto, pkt.sport, pkt.dport)
        hit = self.ft.lookup(FlowTuple(in_port, t.src, t.dst, t.proto, t.sport, t.dport))
        if hit is not None:
            flow = hit[0]
            self.kstats["punted_in_flowtable"] += 1
            if pkt.proto == IPPROTO_TCP and pkt.tcp_flags & (TCP_FIN | TCP_RST):
                self._close_before_kernel(flow)
            else:
                self.ft.refresh(flow)
            return False
        with self._lock:
            conn = self._by_tuple.get(t)
        if conn is not None and conn.flow is None and not conn.refused and conn.established:
            self._offer_kconn(conn)
        return False

    def _close_before_kernel(self, flow: Flow) -> None:
        """A FIN/RST of an offloaded flow: take its entries off the switch before the kernel sees it.

        The peer answers a FIN at once; if that ACK still met the flow's entries, the switch would forward
        it and the kernel's conntrack would miss a step of the close (CLOSE_WAIT) that a plain Linux router
        sees. So, as ``nf_flow_offload_ip_hook`` tears a flow down on FIN/RST before the packet goes on,
        the flow closes here and the FIN waits (briefly, bounded) until the switch has dropped the entries.
        """
        self.ft.mark_closing(flow)
        deadline = time.monotonic() + FIN_HOLD_S
        while flow.hw_installed and not flow.flags & FlowFlag.HW_DEAD and time.monotonic() < deadline:
            time.sleep(0.001)
        if flow.hw_installed and not flow.flags & FlowFlag.HW_DEAD:
            self.kstats["fin_hold_expired"] += 1

    def tick(self) -> None:
        super().tick()
        while self.fixups:
            self._fixup(self.fixups.popleft())
        now = time.monotonic()
        with self._lock:
            held = [c for c in self.conns.values() if c.flow is not None]
        for conn in held:
            flow = conn.flow
            if flow is None or flow.flags & FlowFlag.TEARDOWN:
                continue
            # the flow's deadline moves with the switch's counters; the kernel's stays ahead of it
            flow_left = (flow.timeout - self.clock()) / NS
            if conn.kernel_deadline - now < flow_left + KERNEL_GRACE_S / 2:
                try:
                    self._extend(conn, flow)
                except KernelError as exc:
                    log.warning("extending %s: %s", conn.ct.orig, exc)

    def _fixup(self, handle: _KHandle) -> None:
        """``flow_offload_fixup_ct``: the flow is gone; the connection's timeout comes down to its state's
        (TCP: the current state's; UDP: the replied one, ``nf_conntrack_udp_timeout_stream``), and only
        down -- a shorter timeout the kernel set meanwhile stays."""
        conn = handle.conn
        ct = self.kernel.ct
        with self._lock:
            if conn.dead or conn.handle is not handle or ct is None:
                return  # gone, or in the flowtable again by now
        k = conn.ct
        if k.proto == IPPROTO_TCP:
            state = (k.tcp_state or TcpState.ESTABLISHED).name.lower()
            key = f"net.netfilter.nf_conntrack_tcp_timeout_{state}"
        else:
            key = "net.netfilter.nf_conntrack_udp_timeout_stream"
        try:
            seconds = int(self.kernel.ns.read_sysctl(key))
            if conn.kernel_deadline - time.monotonic() > seconds and ct.set_timeout(k.orig, seconds):
                conn.kernel_deadline = time.monotonic() + seconds
                self.kstats["ct_fixup"] += 1
        except (KernelError, OSError, ValueError) as exc:
            log.debug("fixing up %s: %s", k.orig, exc)

    # ------------------------------------------------------------------------------ reconciliation

    def _pair_conn(self, pair: EntryPair) -> tuple[Any, Any, KConn] | None:
        """The kernel connection two switch entries belong to, and which entry is its original direction."""
        for x, y in ((pair.a_decoded, pair.b_decoded), (pair.b_decoded, pair.a_decoded)):
            t = CtTuple(x.tuple.src, x.tuple.dst, x.tuple.proto, x.tuple.sport, x.tuple.dport)
            with self._lock:
                conn = self.conns.get(t)
            if conn is not None and not conn.dead and conn.ct.reply == CtTuple(
                    y.tuple.src, y.tuple.dst, y.tuple.proto, y.tuple.sport, y.tuple.dport):
                return x, y, conn
        return None

    def _can_rebuild(self, pair: EntryPair) -> bool:
        return self._pair_conn(pair) is not None

    def _rebuild(self, pair: EntryPair) -> Flow | None:
        """Adopt the entries of a connection the kernel still has: a flow from the entries' own actions
        (what the switch does now), marked on the switch already."""
        found = self._pair_conn(pair)
        if found is None:
            return None
        o, r, conn = found
        acts = []
        stmts = self.statements_for(conn.ct.orig, o.tuple.in_port, o.out_port)
        for x, this, other in ((o, conn.ct.orig, conn.ct.reply), (r, conn.ct.reply, conn.ct.orig)):
            acts.append(route_actions(this, other, out_port=x.out_port, smac=x.smac, dmac=x.dmac,
                                      in_port=x.tuple.in_port, port_vlans=self.caps.port_vlans, statements=stmts))
        dirs = []
        for x, a in ((o, acts[0]), (r, acts[1])):
            port = self.config.ports.get(x.out_port)
            dirs.append(FlowDirection(x.tuple, a, mtu=port.mtu if port else 1500))
        flow = self._offer_kconn(conn, hw_present=True, dirs=(dirs[0], dirs[1]))
        if flow is not None:
            self.rebuilt += 1
        return flow

    # ------------------------------------------------------------------------------ status

    def _flow_event(self, event: str, flow: Flow) -> None:
        self._log_flow(log, event, flow)
        if event == "removed" and isinstance(flow.conn, _KHandle):
            conn = flow.conn.conn
            with self._lock:
                if conn.flow is flow:
                    conn.flow = None

    def snapshot(self) -> list[CtRecord]:
        """The kernel's conntrack table (``conntrack -L``, its counters as they are) with
        ``[OFFLOAD]``/``[HW_OFFLOAD]`` from the flowtable and the switch's packet/byte counts beside the
        kernel's (this kernel's ctnetlink cannot add them, as ``nf_ct_acct_add`` would)."""
        out = []
        for k in self.kernel.dump():
            with self._lock:
                conn = self.conns.get(k.orig)
            flow = conn.flow if conn is not None else None
            flags = []
            if not k.seen_reply:
                flags.append("UNREPLIED")
            if k.status & IPS_ASSURED:
                flags.append("ASSURED")
            # flow_offload_teardown clears IPS_OFFLOAD at the first FIN/RST: a closing flow is the kernel's again
            if flow is not None and flow.state not in ("closing", "teardown", "dying"):
                flags.append("OFFLOAD")
                if flow.hw_offloaded:
                    flags.append("HW_OFFLOAD")
            if k.status & IPS_SRC_NAT:
                flags.append("SRC_NAT")
            if k.status & IPS_DST_NAT:
                flags.append("DST_NAT")
            hp = conn.hw_packets if conn is not None else [0, 0]
            hb = conn.hw_bytes if conn is not None else [0, 0]
            iif = (conn.iif[0], conn.iif[1]) if conn is not None else (None, None)
            acts = tuple(format_actions(a) if a is not None else None
                         for a in (conn.actions if conn is not None else [None, None]))
            proto = _PROTO_NAMES.get(k.proto, str(k.proto))
            out.append(CtRecord(k.id, proto, k.proto, k.orig.family, k.state_name(), float(k.timeout_s), k.orig,
                                k.reply, tuple(flags), k.packets, k.bytes, iif, (acts[0], acts[1]),
                                (hp[0], hp[1]), (hb[0], hb[1])))
        return out

    def named_counters(self) -> dict[str, dict[str, int]]:
        """Each named counter: the kernel's nft counter (what it forwarded) plus the switch's
        ``stmt_counter`` at its index (what the switch forwarded). nft counts the IP packet, the switch the
        frame: the kernel's bytes get the Ethernet header added so both count alike."""
        out = {n: {"packets": 0, "bytes": 0} for n in self.policy.counter_names}
        if out and self.kernel.options.nft_ruleset is None:
            try:
                kc = read_counters(self.kernel.ns)
            except KernelError as exc:
                log.warning("reading the named counters from the kernel failed: %s", exc)
                kc = {}
            for name, (packets, nbytes) in kc.items():
                if name in out:
                    out[name] = {"packets": packets, "bytes": nbytes + ETH_HLEN * packets}
        return self.add_switch_counters(out)

    def conntrack_stats(self) -> dict[str, int]:
        with self._lock:
            n = len(self.conns)
        out = {f"conntrack_{k}": v for k, v in self.kernel.ct_stats.items()}
        out.update({f"kernel_{k}": v for k, v in self.kstats.items()})
        out["conntrack_entries"] = n
        if self.kernel.ct is not None:
            out["kernel_ct_updates"] = self.kernel.ct.updates
            out["kernel_ct_event_overruns"] = self.kernel.ct.overruns
        return out


__all__ = ["KernelOffloader"]
