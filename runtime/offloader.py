"""The controller's flowtable: where conntrack, the slow path and the switch meet the flowtable.

This is the kernel's ``nft_flow_offload`` expression plus the glue around ``nf_flow_table``:

- the slow path's forward hook offers every forwarded packet's connection (``flow add @ft``); a connection
  enters once conntrack has seen both directions, TCP is established and the policy agrees;
- punted packets try the software fast path first (:meth:`Offloader.fast_forward`), the full slow path only
  when it declines;
- conntrack events move flows: a TCP state past ESTABLISHED (FIN/RST) makes the flow closing, a destroyed
  connection tears it down;
- from its first FIN/RST on, every packet of a connection goes through conntrack; while the switch may still
  hold the closing flow's entries, its punted packets (the FIN first) wait until the delete is done, so that
  nothing the FIN provokes (the peer's ACK and FIN, the last ACK) can be forwarded by the switch unseen;
- the switch's idle-timeout notices are checked against the flow before anything is removed;
- reconciliation on start (adopt what the switch still forwards, rebuilding the connection; delete the rest)
  and on reconnection (re-install what a restarted switch lost).

Threads: offers, fast path, events and reconciliation run on the controller's worker thread; the offload
engine has its own; the status endpoint reads snapshots. The flowtable's lock covers its state.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .actions import Statement, format_actions, route_actions, statements_of
from .client import SwitchClient
from .config import RouterConfig
from .conntrack import Conn, Conntrack, CtEvent, CtTuple, Dir, Status, TcpState
from .entities import IdleTimeout, mac_str
from .errors import ConfigError, P4RuntimeError
from .flowtable.core import Flow, FlowDirection, FlowTable, IdleVerdict, OfferResult
from .flowtable.fastpath import CountHook, FastPath
from .flowtable.model import FlowFlag, FlowTuple
from .flowtable.offload import OffloadEngine
from .flowtable.p4map import STMT_COUNTER, PipelineCaps, SwitchEntry, caps_from_p4info, delete_for
from .flowtable.p4rt import (
    P4RuntimeReader,
    P4RuntimeWriter,
    entry_tuple,
    read_flow_entries,
    read_indexed_counter,
    read_port_vlans,
    to_switch_entry,
)
from .flowtable.policy import FlowKey, FlowtableConfig, PolicyError, parse_flowtable
from .flowtable.reconcile import EntryPair, plan_reconcile
from .flowtable.status import snapshot_flows, snapshot_stats
from .lograte import LineBudget
from .packet import PacketError, parse
from .pipeline import Pipeline
from .slowpath import SlowPath

log = logging.getLogger(__name__)

#: Offer results that will not change for the life of a connection: it is not offered again.
_FINAL = {OfferResult.POLICY, OfferResult.PROTO, OfferResult.INCONSISTENT}


class _CtHandle:
    """:class:`~runtime.flowtable.core.ConnRef` for one conntrack entry.

    The flowtable calls :meth:`is_dying` under its lock (a read without conntrack's lock), and queues
    :meth:`acct_add` and :meth:`on_teardown` until it released its lock, since both take conntrack's.
    """

    __slots__ = ("conn", "ct", "owner")

    def __init__(self, owner: Offloader, conn: Conn) -> None:
        self.owner = owner
        self.ct = owner.conntrack
        self.conn = conn

    def is_dying(self) -> bool:
        return bool(self.conn.status & Status.DYING) or self.ct.get(self.conn.id) is not self.conn

    def acct_add(self, direction: Dir, packets: int, nbytes: int) -> None:
        self.ct.acct_add(self.conn, direction, packets, nbytes)
        self.owner.hw_packets += packets
        self.owner.hw_bytes += nbytes

    def on_teardown(self) -> None:
        self.ct.fixup(self.conn)


def load_policy(config: RouterConfig) -> FlowtableConfig:
    """The ``[flowtable]`` section of the router config, validated; errors name the file and the key."""
    try:
        return parse_flowtable(config.flowtable_raw, port_names=config.port_names, switch_ports=sorted(config.ports))
    except PolicyError as exc:
        raise ConfigError(f"{config.source}: {exc}") from None


@dataclass(slots=True)
class _Held:
    """Punted packets of a closing flow kept back until the switch no longer holds its entries."""

    flow: Flow
    since_ns: int
    frames: list[tuple[int, bytes]] = field(default_factory=list)


class Offloader:
    #: How long a closing flow's packets wait for its hardware delete at most, and how many of them. Less
    #: than TCP's shortest retransmission timer (200 ms): a FIN's answer held longer makes the sender send
    #: the FIN again, and under a storm of closes (deletes queued behind thousands of others) every held
    #: connection did so several times, multiplying the slow path's work. Released early, a last ACK may
    #: pass the switch on the entry not yet deleted, as it may in the kernel's own hardware offload; its
    #: conntrack entry then ends on its LAST_ACK timeout instead of TIME_WAIT's.
    HOLD_MAX_NS = 150_000_000
    HOLD_MAX_FRAMES = 64

    def __init__(self, config: RouterConfig, pipeline: Pipeline, conntrack: Conntrack, slowpath: SlowPath,
                 client: SwitchClient, emit: Callable[[int, bytes], None], clock: Callable[[], int], *,
                 post: Callable[[Callable[[], None]], None] | None = None) -> None:
        """``post`` runs a function on the thread that owns the slow path (the controller's worker): held
        packets are released from there as soon as the offload engine reports the delete done."""
        self._init_flowtable(config, pipeline, client, emit, clock, count=slowpath.counters.add, post=post)
        self.conntrack = conntrack
        self.slowpath = slowpath
        self.ft.listeners.append(self._hold_event)
        conntrack.subscribe(self._ct_event)
        slowpath.on_forward.append(self._offer)
        slowpath.statements = self._statements
        slowpath.counters.declare(self.policy.counter_names)

    def _init_flowtable(self, config: RouterConfig, pipeline: Pipeline, client: SwitchClient,
                        emit: Callable[[int, bytes], None], clock: Callable[[], int],
                        count: CountHook | None = None,
                        post: Callable[[Callable[[], None]], None] | None = None) -> None:
        """What every slow path's offloader has: the policy, the flowtable with its fast path, the switch's
        capabilities and the counters shown by ``offloadgen stats``. Subclasses wire their own conntrack."""
        self.config = config
        self.policy = load_policy(config)
        self.client = client
        self.emit = emit
        self.clock = clock
        self.ft = FlowTable(self.policy, clock)
        #: One budget for the per-connection and per-flow log lines of every path (new connection, [OFFLOAD],
        #: [HW_OFFLOAD], closing, removed...): all of them below a few hundred a second, a summary beyond.
        self.lines = LineBudget(logging.getLogger("runtime.flows"), "connection and flow")
        self.caps: PipelineCaps = caps_from_p4info(pipeline.p4info.message).with_counter_names(self.policy.counter_names)
        self.fast = FastPath(self.ft, count=count)
        self.engine: OffloadEngine | None = None
        self.hw_packets = 0
        self.hw_bytes = 0
        self.rebuilt = 0
        self.reconciles = 0
        self.post = post
        self._held: dict[int, _Held] = {}
        #: Closing flows whose packets were held, the longest a hold lasted, and holds cut short by
        #: HOLD_MAX_NS (a delete slower than that: the held packets went to the slow path anyway).
        self.holds = {"held_flows": 0, "hold_us_max": 0, "hold_expired": 0}
        self._release_due = False  # a held flow changed since the last look (set under the flowtable's lock)
        self.ft.listeners.append(self._flow_event)

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """After the pipeline is on the switch: learn its VLAN ports, start the offload worker, and
        reconcile the switch's flow tables with the (empty) flowtable, adopting live flows."""
        try:
            vlans = read_port_vlans(self.client)
        except P4RuntimeError as exc:
            log.warning("reading the pipeline's VLAN ports failed (%s); assuming none", exc)
            vlans = {}
        self.caps = dataclasses.replace(self.caps, port_vlans=vlans)
        self._learned_vlans(vlans)
        self.engine = OffloadEngine(self.ft, P4RuntimeWriter(self.client), self.caps,
                                    P4RuntimeReader(self.client, self.caps))
        self.reconcile(startup=True)
        self.engine.start()
        log.info("flowtable: hardware offload %s, tcp/udp timeout %g/%g s, %d policy rules",
                 "on" if self.ft.hw_enabled else "off", self.policy.tcp_timeout_s, self.policy.udp_timeout_s,
                 len(self.policy.rules))

    def _learned_vlans(self, vlans: dict[int, int]) -> None:
        """The paths that tag and untag frames themselves learn which ports the pipeline tags."""
        self.fast.pipeline_vlans = dict(vlans)
        self.slowpath.port_vlans = dict(vlans)

    def stop(self, *, flush: bool = True) -> None:
        """Stop the worker; with ``flush`` delete every entry we put on the switch (a clean shutdown)."""
        if self.engine is None:
            return
        self.engine.stop()
        if flush:
            answer = self.engine.flush()
            if isinstance(answer, str):
                log.warning("flushing the flow tables at shutdown failed: %s", answer)
        self.engine = None

    # ------------------------------------------------------------------------------ offering

    @staticmethod
    def _tuple(conn: Conn, d: Dir) -> FlowTuple | None:
        """How direction ``d``'s packets arrive at the switch: conntrack's tuple plus the ingress port."""
        iif = conn.iif[d]
        if iif is None:
            return None
        t = conn.tuples[d]
        return FlowTuple(iif, t.src, t.dst, t.proto, t.sport, t.dport)

    def _direction(self, conn: Conn, d: Dir) -> FlowDirection | None:
        t, actions = self._tuple(conn, d), conn.actions[d]
        if t is None or actions is None:
            return None
        fd = FlowDirection(t, actions)
        port = self.config.ports.get(fd.out_port)
        if port is not None:
            fd.mtu = port.mtu
        return fd

    def _statements(self, conn: Conn, direction: Dir, in_port: int, out_port: int) -> tuple[Statement, ...]:
        """The policy's statements for a connection, asked by the slow path for each direction's list. The
        rules look at the original direction: a reply comes in where the original leaves."""
        iif, oif = (in_port, out_port) if direction is Dir.ORIGINAL else (out_port, in_port)
        return self.statements_for(conn.tuples[Dir.ORIGINAL], iif, oif)

    def statements_for(self, orig: CtTuple, iif: int, oif: int) -> tuple[Statement, ...]:
        """The policy's statements for a connection by its original tuple and the original direction's
        ingress and egress ports (what every rule looks at, for both directions' lists)."""
        key = FlowKey(proto=orig.proto, src=ipaddress.ip_address(orig.src), dst=ipaddress.ip_address(orig.dst),
                      sport=orig.sport, dport=orig.dport, iif=iif, oif=oif)
        return self.policy.statements(key)

    def _offer(self, conn: Conn, direction: Dir) -> None:
        """The forward hook: offer the connection of a packet the slow path just forwarded."""
        if conn.offload_refused or not conn.offloadable() or conn.status & Status.OFFLOAD:
            return
        orig, reply = self._direction(conn, Dir.ORIGINAL), self._direction(conn, Dir.REPLY)
        if orig is None or reply is None:
            return
        result, flow = self.ft.offer(_CtHandle(self, conn), orig, reply, seen_reply=bool(conn.status & Status.SEEN_REPLY),
                                     tcp_established=conn.tcp_state == TcpState.ESTABLISHED,
                                     fin_rst_seen=conn.closing)
        if result in _FINAL:
            conn.offload_refused = result.value
            log.info("connection %d stays on the slow path: %s", conn.id, result.value)
        if flow is not None:
            self.conntrack.set_offload(conn)

    def _flow_of(self, conn: Conn) -> Flow | None:
        t = self._tuple(conn, Dir.ORIGINAL)
        hit = self.ft.find(t) if t is not None else None
        if hit is None or not isinstance(hit[0].conn, _CtHandle) or hit[0].conn.conn is not conn:
            return None
        return hit[0]

    def _ct_event(self, event: CtEvent, conn: Conn) -> None:
        """Conntrack's events move flows: FIN/RST makes the flow closing, a destroyed connection tears it
        down. Conntrack delivers them after releasing its lock, so taking the flowtable's here never
        nests inside conntrack's (the offload worker takes them the other way round when it accounts)."""
        if event is CtEvent.DESTROY:
            # also after the first FIN handed the connection back (IPS_OFFLOAD cleared): its closing flow
            # goes now, as the kernel's GC removes a flow whose conntrack entry is dying
            flow = self._flow_of(conn)
            if flow is not None:
                self.ft.teardown(flow)
            return
        if not conn.status & Status.OFFLOAD:
            return
        if event is CtEvent.STATE and conn.closing:
            flow = self._flow_of(conn)
            if flow is not None:
                self.ft.mark_closing(flow)

    def _flow_event(self, event: str, flow: Flow) -> None:
        """Log a flow's way through the states and mirror them in conntrack's status bits. Runs after the
        flowtable released its lock (on the thread that made the change), so taking conntrack's is safe."""
        handle = flow.conn
        if isinstance(handle, _CtHandle):
            if event == "hw_offload":
                self.conntrack.set_hw_offload(handle.conn, True)
            elif event in ("hw_removed", "hw_lost", "hw_failed", "closing"):
                self.conntrack.set_hw_offload(handle.conn, False)
        self._log_flow(log, event, flow)

    def _log_flow(self, logger: logging.Logger, event: str, flow: Flow) -> None:
        """The log line of a flow's transition, the same for both slow paths, within the line budget."""
        if not self.lines.allow(event):
            return
        o = flow.dirs[0].tuple
        what = {"offload": "[OFFLOAD]", "hw_offload": "[HW_OFFLOAD]", "closing": "closing (FIN/RST)",
                "teardown": "teardown", "removed": "removed", "hw_removed": "entries deleted from the switch",
                "hw_failed": f"hardware add failed: {flow.last_error}", "hw_lost": "entries missing on the switch"}
        logger.info("flow %d %s %s:%d -> %s:%d %s", flow.id, "tcp" if o.proto == 6 else "udp", o.src_ip, o.sport,
                    o.dst_ip, o.dport, what.get(event, event))

    # ------------------------------------------------------------------------------ packets and ticks

    def fast_forward(self, in_port: int, frame: bytes) -> bool:
        """The software fast path for a punted frame; False when the slow path must take it. True also
        when the frame is held back for a closing flow (see :meth:`_hold_event`)."""
        if self._held and (self._release_due or self._oldest_hold_expired()):
            self._release_ready()
        res = self.fast.forward(frame, in_port)
        if res is None:
            return bool(self._held) and self._hold(in_port, frame)
        handle = res.flow.conn
        if isinstance(handle, _CtHandle):
            self.conntrack.acct_add(handle.conn, res.direction, 1, len(res.frame) - 14)
        self.emit(res.port, res.frame)
        return True

    def tick(self) -> None:
        self.ft.gc()
        self.lines.flush()
        if self._held:
            self._release_ready()

    # ------------------------------------------------------------------------------ closing flows

    def _hold_event(self, event: str, flow: Flow) -> None:
        """Start holding a closing flow's punted packets while its entries may be on the switch; have them
        released once they are gone. The switch forwards whatever its entries match until the delete is
        done: without the hold, the peer's answer to the FIN (and the last ACK) could pass it unseen and
        conntrack would stop short of TIME_WAIT. Runs under the flowtable's lock, on any thread: only
        bookkeeping on the worker, otherwise a post to it."""
        if event == "closing":
            if flow.id not in self._held and (flow.hw_installed or flow.flags & FlowFlag.HW_PENDING):
                self._held[flow.id] = _Held(flow, self.clock())
        elif flow.id in self._held:
            # any change to a held flow (entries deleted, add failed, entries found lost, torn down) may
            # make it ready: the next packet or a posted call looks
            self._release_due = True
            if event in ("hw_removed", "hw_failed", "hw_lost", "teardown", "removed") and self.post is not None:
                self.post(self._release_ready)

    def _oldest_hold_expired(self) -> bool:
        """Whether the flow held longest has waited :attr:`HOLD_MAX_NS` (holds are kept in the order they
        began, so only the first needs a look: the per-packet check costs O(1) however many are held)."""
        first = next(iter(self._held.values()), None)
        return first is not None and self.clock() - first.since_ns >= self.HOLD_MAX_NS

    def _hold(self, in_port: int, frame: bytes) -> bool:
        """Keep ``frame`` back if it belongs to a flow whose packets are held (order kept)."""
        try:
            pkt = parse(frame)
        except PacketError:
            return False
        if pkt.l4 < 0 or pkt.frag:
            return False
        hit = self.ft.find(FlowTuple(in_port, pkt.src, pkt.dst, pkt.proto, pkt.sport, pkt.dport))
        if hit is None:
            return False
        held = self._held.get(hit[0].id)
        if held is None or held.flow is not hit[0]:
            return False
        held.frames.append((in_port, frame))
        self.ft.count_exception("held_for_delete")  # shown with the fast path's exceptions
        if len(held.frames) >= self.HOLD_MAX_FRAMES:
            self._release(held)
        return True

    def _release_ready(self) -> None:
        """Pass the held packets of every flow whose entries are off the switch (or that waited too long)
        to the slow path, in the order they came."""
        now = self.clock()
        with self.ft.lock:
            self._release_due = False  # set again (under this lock) by whatever completes after this scan
            ready = [h for h in self._held.values()
                     if not (h.flow.hw_installed or h.flow.flags & FlowFlag.HW_PENDING)
                     or h.flow.flags & FlowFlag.TEARDOWN or now - h.since_ns >= self.HOLD_MAX_NS]
        for held in ready:
            self._release(held)

    def _release(self, held: _Held) -> None:
        self._held.pop(held.flow.id, None)
        if held.frames:
            waited = self.clock() - held.since_ns
            holds = self.holds
            holds["held_flows"] += 1
            holds["hold_us_max"] = max(holds["hold_us_max"], waited // 1000)
            if waited >= self.HOLD_MAX_NS:
                holds["hold_expired"] += 1
        for in_port, frame in held.frames:
            self.slowpath.handle(in_port, frame)

    def on_idle_timeout(self, note: IdleTimeout) -> None:
        for entry in note.entries:
            t = entry_tuple(entry, self.caps)
            if t is None:
                continue
            verdict = self.ft.idle_notification(t)
            if (verdict is IdleVerdict.UNKNOWN_ENTRY and self.engine is not None
                    and self.engine.queue_delete(delete_for(t, self.caps)) and self.lines.allow("idle entry")):
                log.info("idle entry %s belongs to no flow: deleting it", t)

    # ------------------------------------------------------------------------------ reconciliation

    def reconcile(self, *, startup: bool = False) -> None:
        """Make the switch's flow tables and the flowtable agree (see :mod:`.flowtable.reconcile`)."""
        assert self.engine is not None
        try:
            entries = [to_switch_entry(e) for e in read_flow_entries(self.client, self.caps)]
        except P4RuntimeError as exc:
            log.error("reconciliation: reading the flow tables failed: %s", exc)
            return
        plan = plan_reconcile(entries, self.ft.flows(), self.caps, can_rebuild=self._can_rebuild if startup else None)
        for pair in plan.rebuild:
            flow = self._rebuild(pair)
            if flow is not None:
                plan.adopt.append(flow)
            else:
                plan.delete += [delete_for(x.tuple, self.caps) for x in (pair.a_decoded, pair.b_decoded)]
        answer = self.engine.apply_reconcile(plan)
        self.reconciles += 1
        log.info("reconciliation (%s): %d entries on the switch; adopted %d (%d rebuilt), re-installing %d, "
                 "deleted %d%s", "start" if startup else "reconnect", len(entries), len(plan.adopt), len(plan.rebuild),
                 len(plan.reinstall), len(plan.delete), f" (delete failed: {answer})" if isinstance(answer, str) else "")

    def _orientation(self, pair: EntryPair) -> tuple[Any, Any]:
        """Which entry is the original direction: the one NAT rewrites as the connection's first packet
        was (a DNAT rule matching it, or its source translated); without NAT, the first (it only names
        the directions)."""
        a, b = pair.a_decoded, pair.b_decoded
        for x, y in ((a, b), (b, a)):
            ct = CtTuple(x.tuple.src, x.tuple.dst, x.tuple.proto, x.tuple.sport, x.tuple.dport)
            if self.slowpath.nat.dnat_target(ct, x.tuple.in_port) is not None:
                return x, y
        for x, y in ((a, b), (b, a)):
            if x.leaves_as[0] != x.tuple.src:
                return x, y
        return a, b

    def _can_rebuild(self, pair: EntryPair) -> bool:
        o, r = self._orientation(pair)
        for x in (o, r):
            port = self.config.ports.get(x.out_port)
            if port is None or x.tuple.in_port not in self.config.ports or port.mac != x.smac:
                return False
            route = self.slowpath.routes.lookup(x.leaves_as[1])
            if route is None or route.port != x.out_port:
                return False
        return True

    def _rebuild(self, pair: EntryPair) -> Flow | None:
        """Conntrack's mid-stream pick-up from the two entries, then a flow for it that is already on the
        switch (the engine marks it ``[HW_OFFLOAD]`` when the plan is applied)."""
        o, r = self._orientation(pair)
        ot = CtTuple(o.tuple.src, o.tuple.dst, o.tuple.proto, o.tuple.sport, o.tuple.dport)
        rt = CtTuple(r.tuple.src, r.tuple.dst, r.tuple.proto, r.tuple.sport, r.tuple.dport)
        acts = []
        stmts = self.statements_for(ot, o.tuple.in_port, o.out_port)
        for x, this, other in ((o, ot, rt), (r, rt, ot)):
            acts.append(route_actions(this, other, out_port=x.out_port, smac=x.smac, dmac=x.dmac,
                                      in_port=x.tuple.in_port, port_vlans=self.caps.port_vlans, statements=stmts))
            route = self.slowpath.routes.lookup(x.leaves_as[1])
            if route is not None:  # the entry's MAC is what the neighbour had: seed the cache with it
                nh = route.next_hop(ipaddress.ip_address(x.leaves_as[1])).packed
                self.slowpath.neigh.learn(x.out_port, nh, x.dmac, create=True)
        conn = self.conntrack.pick_up(ot, rt, iif=(o.tuple.in_port, r.tuple.in_port), actions=(acts[0], acts[1]))
        if conn is None:
            return None
        od, rd = self._direction(conn, Dir.ORIGINAL), self._direction(conn, Dir.REPLY)
        if od is None or rd is None:
            self.conntrack.destroy(conn)
            return None
        result, flow = self.ft.offer(_CtHandle(self, conn), od, rd, seen_reply=True,
                                     tcp_established=conn.proto != 6 or conn.tcp_state == TcpState.ESTABLISHED,
                                     hw_present=True)
        if flow is None:
            log.info("reconciliation: entries for %s not adopted (%s)", ot, result.value)
            self.conntrack.destroy(conn)
            return None
        self.conntrack.set_offload(conn)
        self.rebuilt += 1
        return flow

    # ------------------------------------------------------------------------------ status

    def flows(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in snapshot_flows(self.ft)]

    def stats(self) -> dict[str, Any]:
        eng = self.engine
        depths = eng.depths() if eng is not None else None
        rec = snapshot_stats(self.ft, queue_depths=(depths.wq_add, depths.wq_del, depths.wq_stats) if depths else (0, 0, 0),
                             installed=eng.installed_entries() if eng is not None else {},
                             sizes=self.caps.sizes, orphans=len(eng.orphans) if eng is not None else 0)
        d = rec.to_dict()
        d["hw_packets"] = self.hw_packets
        d["hw_bytes"] = self.hw_bytes
        d["rebuilt"] = self.rebuilt
        d["counters"].update(self.holds)
        d["reconciles"] = self.reconciles
        d["named_counters"] = self.named_counters()
        d["switch_statements"] = list(self.caps.statements())
        d["policy"] = {"hw_offload": self.policy.hw_offload, "tcp_timeout_s": self.policy.tcp_timeout_s,
                       "udp_timeout_s": self.policy.udp_timeout_s, "close_timeout_s": self.policy.close_timeout_s,
                       "rules": len(self.policy.rules)}
        return d

    def named_counters(self) -> dict[str, dict[str, int]]:
        """Each named counter: what the software paths counted plus what the switch counted at its index
        (``stmt_counter``, read now; it counts every hit, whether or not the entry is still there)."""
        return self.add_switch_counters(self.slowpath.counters.snapshot())

    def add_switch_counters(self, out: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        """``out`` (the other paths' counts per name) plus the switch's ``stmt_counter`` at each name's index."""
        index = self.caps.counter_index
        if index and self.engine is not None:  # not before the pipeline is on the switch
            try:
                hw = read_indexed_counter(self.client, STMT_COUNTER, sorted(index.values()))
            except (P4RuntimeError, LookupError) as exc:
                log.warning("reading the named counters from the switch failed: %s", exc)
                hw = {}
            for name, i in index.items():
                packets, nbytes = hw.get(i, (0, 0))
                v = out.setdefault(name, {"packets": 0, "bytes": 0})
                v["packets"] += packets
                v["bytes"] += nbytes
        return out

    def entries(self) -> list[dict[str, Any]]:
        """What the switch holds in its flow tables, each entry joined to the flow that owns it."""
        out = []
        for e in read_flow_entries(self.client, self.caps, counters=True):
            se: SwitchEntry = to_switch_entry(e)
            t = entry_tuple(e, self.caps)
            if t is None:
                continue
            hit = self.ft.find(t)
            width = 4 if t.family == 4 else 16
            params: dict[str, Any] = {}
            for k, v in se.params.items():
                if k in ("smac", "dmac"):
                    params[k] = mac_str(v.to_bytes(6, "big"))
                elif k in ("saddr", "daddr"):
                    params[k] = str(ipaddress.ip_address(v.to_bytes(width, "big")))
                else:
                    params[k] = v
            out.append({
                "table": se.table,
                "match": {"in_port": t.in_port, "src_addr": str(t.src_ip), "dst_addr": str(t.dst_ip),
                          "proto": t.proto, "src_port": t.sport, "dst_port": t.dport},
                "action": se.action, "params": params, "idle_timeout_ns": se.idle_timeout_ns,
                "packets": e.counter.packets if e.counter else None, "bytes": e.counter.bytes if e.counter else None,
                "since_last_hit_ms": (e.time_since_last_hit_ns // 1_000_000
                                      if e.time_since_last_hit_ns is not None else None),
                "flow": hit[0].id if hit else None, "dir": hit[1].name.lower() if hit else None,
                # the policy statements this entry carries out (as its action's parameters: dscp, the named
                # counter's index in stmt_counter, the retag VLAN id)
                "statements": format_actions(statements_of(hit[0].dirs[hit[1]].actions)) if hit else "",
            })
        return out

