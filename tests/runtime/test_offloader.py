"""The offloader where conntrack, the slow path, the flowtable and the offload worker meet, without a switch
process: frames go through the real slow path and conntrack, the offload engine writes to the flowtable
unit tests' in-memory switch table (answers like softswitch). The threads are real: the controller's
(slow path, conntrack events) and the offload worker's.

What is pinned here: events leave conntrack and the flowtable only after their locks are released, so the
two threads can never wait on each other's lock (the deadlock seen when many connections closed at once).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from runtime.client import SwitchClient
from runtime.config import load_config
from runtime.conntrack import NS, Conn, Conntrack, CtEvent, CtTuple, Dir, Status
from runtime.flowtable.core import Flow
from runtime.flowtable.model import FlowFlag
from runtime.flowtable.offload import OffloadEngine
from runtime.offloader import Offloader
from runtime.pipeline import load_build
from runtime.slowpath import SlowPath

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flowtable"))  # the in-memory switch table
from ftutil import FakeSwitch

A, R1, B, R4 = "02:00:00:00:00:10", "02:00:00:00:01:01", "02:00:00:00:00:20", "02:00:00:00:01:04"
#: How long a thread may take for what must never block; a join that runs out means a deadlock.
WATCHDOG_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000 * NS

    def __call__(self) -> int:
        return self.now


class Rig:
    """The controller's parts as :class:`runtime.controller.Controller` wires them, minus the P4Runtime
    stream: ``first_listener`` is subscribed to conntrack before the offloader (to observe or hold the
    moment an event is delivered)."""

    def __init__(self, build_dir: Path, config_path: Path,
                 first_listener: Callable[[CtEvent, Conn], None] | None = None) -> None:
        self.clock = Clock()
        config = load_config(config_path)
        pipeline = load_build(build_dir)
        self.ct = Conntrack(self.clock)
        if first_listener is not None:
            self.ct.subscribe(first_listener)
        self.out: list[tuple[int, Ether]] = []
        emit = self._emit
        self.sp = SlowPath(config, clock=self.clock, emit=emit, conntrack=self.ct)
        client = SwitchClient("127.0.0.1:1", p4info=pipeline.p4info)  # never connected: the engine writes below
        self.off = Offloader(config, pipeline, self.ct, self.sp, client, emit, self.clock)
        self.sw = FakeSwitch(self.clock)  # type: ignore[arg-type]
        self.engine = OffloadEngine(self.off.ft, self.sw, self.off.caps, self.sw)
        self.off.engine = self.engine
        self.send(1, Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=A, psrc="10.0.1.10", pdst="10.0.1.1"))
        self.send(4, Ether(src=B, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=B, psrc="192.0.2.20", pdst="192.0.2.1"))

    def _emit(self, port: int, frame: bytes) -> None:
        self.out.append((port, Ether(frame)))

    def send(self, port: int, pkt: Packet) -> list[tuple[int, Ether]]:
        self.out.clear()
        self.sp.handle(port, bytes(pkt))
        return list(self.out)

    def connect(self, sport: int) -> tuple[Conn, int]:
        """A TCP handshake from A:sport to B:80 through the masquerade; returns the connection and its
        translated port (what B answers to)."""
        [(_, syn)] = self.send(1, Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20") / TCP(sport=sport, dport=80, flags="S"))
        nat_port = syn[TCP].sport
        self.send(4, Ether(src=B, dst=R4) / IP(src="192.0.2.20", dst="192.0.2.1") / TCP(sport=80, dport=nat_port, flags="SA"))
        self.send(1, Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20") / TCP(sport=sport, dport=80, flags="A"))
        hit = self.ct.lookup(CtTuple.make("10.0.1.10", "192.0.2.20", "tcp", sport, 80))
        assert hit is not None
        return hit[0], nat_port

    def fin(self, sport: int) -> Ether:
        return Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20") / TCP(sport=sport, dport=80, flags="FA")

    def flow(self, conn: Conn) -> Flow:
        flow = self.off._flow_of(conn)
        assert flow is not None
        return flow


@pytest.fixture
def rig(build_dir: Path, router_config_path: Path) -> Rig:
    return Rig(build_dir, router_config_path)


def run(target: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    """``target`` on a daemon thread (a deadlocked one must not keep the test run alive)."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, errors


def test_offloaded_connection_closes_with_fin_and_keeps_the_switch_counters(rig: Rig) -> None:
    conn, _ = rig.connect(40000)
    flow = rig.flow(conn)
    assert conn.status & Status.OFFLOAD and flow.state == "offloaded"
    rig.engine.run_once()
    assert flow.state == "hw_offloaded" and len(rig.sw.entries) == 2
    assert conn.status & Status.HW_OFFLOAD, "conntrack mirrors [HW_OFFLOAD]"
    rig.sw.hit(flow.dirs[0].tuple, packets=7, nbytes=7000)
    before = conn.packets[Dir.ORIGINAL]

    rig.send(1, rig.fin(40000))
    assert flow.state == "closing", "a FIN seen by conntrack makes the flow closing"
    rig.engine.run_once()
    assert rig.sw.entries == {}, "the entries leave the switch at the FIN"
    assert not conn.status & Status.HW_OFFLOAD
    assert conn.packets[Dir.ORIGINAL] - before == 7 + 1, "what the switch forwarded (7) plus the FIN"


def test_a_reply_queued_behind_arp_still_lets_the_handshake_offload_the_connection(rig: Rig) -> None:
    """A SYN-ACK for a LAN host the router has not resolved yet waits for ARP; once the host answers, the
    queued SYN-ACK leaves with its MAC and the handshake's ACK offloads the connection, as it does for a
    host already known (at scale, one such host per source address held ~4 % of connections off the
    switch until their first data)."""
    c_mac, c_ip = "02:00:00:00:00:11", "10.0.1.11"
    [(_, syn)] = rig.send(1, Ether(src=c_mac, dst=R1) / IP(src=c_ip, dst="192.0.2.20") / TCP(sport=41000, dport=80, flags="S"))
    nat_port = syn[TCP].sport
    out = rig.send(4, Ether(src=B, dst=R4) / IP(src="192.0.2.20", dst="192.0.2.1") / TCP(sport=80, dport=nat_port, flags="SA"))
    assert [f[ARP].pdst for _, f in out] == [c_ip], "the SYN-ACK waits for ARP"
    hit = rig.ct.lookup(CtTuple.make(c_ip, "192.0.2.20", "tcp", 41000, 80))
    assert hit is not None
    conn = hit[0]
    out = rig.send(1, Ether(src=c_mac, dst=R1) / ARP(op=2, hwsrc=c_mac, psrc=c_ip, pdst="10.0.1.1", hwdst=R1))
    assert [(p, f[TCP].flags, f.dst) for p, f in out] == [(1, "SA", c_mac)], "the queued SYN-ACK leaves"
    assert conn.actions[Dir.REPLY] is not None and rig.off._flow_of(conn) is None
    rig.send(1, Ether(src=c_mac, dst=R1) / IP(src=c_ip, dst="192.0.2.20") / TCP(sport=41000, dport=80, flags="A"))
    flow = rig.flow(conn)
    rig.engine.run_once()
    assert flow.state == "hw_offloaded" and len(rig.sw.entries) == 2
    c = int(c_mac.replace(":", ""), 16)
    assert sorted(c in e.entry.params.values() for e in rig.sw.entries.values()) == [False, True], \
        "the reply direction's entry sends to the host's MAC"


def test_a_reply_whose_neighbour_never_answers_leaves_nothing_behind(rig: Rig) -> None:
    """The waiting list goes with the neighbour when it fails: a late ARP answer then records nothing."""
    c_ip = "10.0.1.12"
    [(_, syn)] = rig.send(1, Ether(src=A, dst=R1) / IP(src=c_ip, dst="192.0.2.20") / TCP(sport=41001, dport=80, flags="S"))
    rig.send(4, Ether(src=B, dst=R4) / IP(src="192.0.2.20", dst="192.0.2.1") / TCP(sport=80, dport=syn[TCP].sport, flags="SA"))
    for _ in range(4):
        rig.clock.now += 2 * NS
        rig.sp.tick()
    hit = rig.ct.lookup(CtTuple.make(c_ip, "192.0.2.20", "tcp", 41001, 80))
    assert hit is not None
    out = rig.send(1, Ether(src=A, dst=R1) / ARP(op=2, hwsrc=A, psrc=c_ip, pdst="10.0.1.1", hwdst=R1))
    assert out == [] and hit[0].actions[Dir.REPLY] is None


def test_a_storm_of_flow_transitions_writes_a_bounded_number_of_log_lines(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """Every transition is either logged or counted as suppressed; never more lines than the budget."""
    caplog.set_level(logging.INFO, "runtime.offloader")
    t0 = time.monotonic()
    for i in range(400):
        rig.connect(42000 + i)
    while rig.engine.run_once():
        pass
    seconds = time.monotonic() - t0
    lines = [r for r in caplog.records if r.name == "runtime.offloader" and r.getMessage().startswith("flow ")]
    assert len(lines) + rig.off.lines.suppressed_total == 800, "400 flows, [OFFLOAD] and [HW_OFFLOAD] each"
    assert len(lines) <= rig.off.lines.per_second * (math.ceil(seconds) + 1)
    assert rig.off.lines.suppressed_total > 0


def test_destroyed_connection_tears_the_flow_down_and_the_gc_removes_it(rig: Rig) -> None:
    conn, _ = rig.connect(40001)
    flow = rig.flow(conn)
    rig.engine.run_once()
    rig.ct.destroy(conn)
    assert flow.state == "teardown"
    rig.clock.now += 2 * NS
    rig.off.tick()  # GC: queues the delete
    rig.engine.run_once()
    rig.clock.now += 2 * NS
    rig.off.tick()  # GC: entries gone, the flow goes
    assert rig.sw.entries == {} and len(rig.off.ft) == 0


def test_listeners_run_after_the_emitter_released_its_lock(rig: Rig) -> None:
    """While a conntrack or flowtable listener runs, another thread can use both parts."""
    seen: list[str] = []

    def other_thread_can(what: str, fn: Callable[[], object]) -> None:
        t, errors = run(fn)
        t.join(WATCHDOG_S)
        assert not t.is_alive() and not errors, f"{what} blocked while a listener ran"
        seen.append(what)

    def ct_listener(event: CtEvent, conn: Conn) -> None:
        if event is CtEvent.STATE and conn.closing:
            other_thread_can("conntrack", lambda: rig.ct.acct_add(conn, Dir.ORIGINAL, 1, 1))

    def ft_listener(event: str, flow: Flow) -> None:
        if event == "closing":
            other_thread_can("flowtable", rig.off.ft.flows)

    rig.ct.subscribe(ct_listener)
    rig.off.ft.listeners.append(ft_listener)
    rig.connect(40002)
    rig.engine.run_once()
    rig.send(1, rig.fin(40002))
    assert sorted(seen) == ["conntrack", "flowtable"]


def test_an_event_emitted_under_the_lock_is_delivered_once_it_is_released(rig: Rig) -> None:
    """A listener that emits again (destroying the connection it is told about) is not nested inside the
    first delivery: the second event comes after the first listener returned, in order."""
    log: list[str] = []

    def destroyer(event: CtEvent, conn: Conn) -> None:
        log.append(f"{event.value} begin")
        if event is CtEvent.STATE and conn.closing:
            rig.ct.destroy(conn)
        log.append(f"{event.value} end")

    rig.ct.subscribe(destroyer)
    conn, _ = rig.connect(40003)
    log.clear()
    rig.send(1, rig.fin(40003))
    assert log[:4] == [f"{CtEvent.STATE.value} begin", f"{CtEvent.STATE.value} end",
                       f"{CtEvent.DESTROY.value} begin", f"{CtEvent.DESTROY.value} end"]
    assert rig.flow(conn).state == "teardown"


class _HoldingReader:
    """The switch's counter read for the offload worker, which answers only once the controller thread is
    delivering the FIN's conntrack event: the two threads then meet in the order that deadlocked."""

    def __init__(self, sw: FakeSwitch, delivering: threading.Event) -> None:
        self.sw = sw
        self.delivering = delivering

    def read_stats(self, entries: Sequence[Any]) -> list[Any]:
        assert self.delivering.wait(WATCHDOG_S)
        return self.sw.read_stats(entries)

    def read_tables(self, tables: Sequence[str]) -> dict[Any, Any]:
        return self.sw.read_tables(tables)


def test_fin_on_one_connection_while_the_worker_deletes_another_does_not_deadlock(
        build_dir: Path, router_config_path: Path) -> None:
    """The controller thread handles a FIN (conntrack event -> the flowtable marks the flow closing) while
    the offload worker deletes a closed flow's entries (final counter read -> conntrack's accounting).
    Each thread is held at the point where the other's lock matters: the controller thread inside its
    conntrack event until the worker is accounting, the worker's counter read until the controller thread
    is inside that event. With callbacks made under the locks, each waits on the other's lock for good."""
    delivering = threading.Event()
    accounting = threading.Event()

    def first_listener(event: CtEvent, conn: Conn) -> None:
        if event is CtEvent.STATE and conn.closing and conn.tuples[0].sport == 41002:
            delivering.set()
            accounting.wait(WATCHDOG_S / 2)  # the worker is accounting (or cannot get there)

    r = Rig(build_dir, router_config_path, first_listener)
    conns = [r.connect(sport)[0] for sport in (41001, 41002)]
    r.engine.run_once()
    flows = [r.flow(c) for c in conns]
    assert all(f.state == "hw_offloaded" for f in flows)
    r.sw.hit(flows[0].dirs[1].tuple, packets=3, nbytes=300)
    r.send(1, r.fin(41001))  # the first connection closes: its delete is queued
    assert flows[0].has(FlowFlag.HW_DYING)

    acct_add = r.ct.acct_add

    def accounting_acct_add(conn: Conn, direction: Dir, packets: int, nbytes: int) -> None:
        accounting.set()
        acct_add(conn, direction, packets, nbytes)

    r.ct.acct_add = accounting_acct_add  # type: ignore[method-assign]
    r.engine.reader = _HoldingReader(r.sw, delivering)  # type: ignore[assignment]

    worker, werr = run(r.engine.run_once)
    controller, cerr = run(lambda: r.send(1, r.fin(41002)))
    worker.join(WATCHDOG_S)
    controller.join(WATCHDOG_S)
    assert not worker.is_alive() and not controller.is_alive(), "the controller thread and the offload worker deadlocked"
    assert not werr and not cerr
    assert accounting.is_set() and conns[0].packets[Dir.REPLY] >= 3, "the switch's last counters reached conntrack"
    assert flows[0].has(FlowFlag.HW_DEAD) and flows[1].state == "closing"
    r.engine.run_once()
    assert r.sw.entries == {}, "both connections' entries are gone"


def test_the_stats_answer_reads_back_and_shows_the_holds(rig: Rig) -> None:
    """What `offloadgen stats` does with the offloader's answer: the record reads back whatever keys the
    answer carries beside it, and the closing-flow holds are among the counters it prints."""
    from runtime.flowtable.status import StatsRecord, format_stats

    rig.connect(43000)
    rig.engine.run_once()
    answer = rig.off.stats()
    text = format_stats(StatsRecord.from_dict({**answer, "a_key_from_a_newer_controller": 1}))
    assert "held_flows 0" in text and "hw_add_ok 1" in text and "idle_after_delete 0" in text
