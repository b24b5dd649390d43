"""The flowtable under its three threads at once: packet-in (fast path and offers), GC, offload worker."""

from __future__ import annotations

import random
import threading
import time

from ftutil import FakeConn, FakeSwitch, directions, nat_tuples
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from runtime.flowtable import FastPath, FlowTable, OffloadEngine, PipelineCaps
from runtime.flowtable.model import monotonic_clock
from runtime.flowtable.policy import FlowtableConfig


class RealClock:
    def __call__(self) -> int:
        return monotonic_clock()


def test_packet_gc_and_worker_threads_together() -> None:
    clock = RealClock()
    ft = FlowTable(FlowtableConfig(tcp_timeout_s=1.0, udp_timeout_s=1.0, close_timeout_s=1.0), clock=clock,
                   gc_interval_ns=20_000_000)
    sw = FakeSwitch(clock, capacity=40)  # type: ignore[arg-type]
    eng = OffloadEngine(ft, sw, PipelineCaps(), sw)
    fp = FastPath(ft)
    errors: list[BaseException] = []
    frames = {}
    for sport in range(1000, 1060):
        frames[sport] = bytes(Ether() / IP(src="10.0.0.1", dst="8.8.8.8") / TCP(sport=sport, dport=80, flags="A"))
    fin = {s: bytes(Ether() / IP(src="10.0.0.1", dst="8.8.8.8") / TCP(sport=s, dport=80, flags="FA")) for s in frames}

    def packets() -> None:
        rng = random.Random(3)
        try:
            end = time.monotonic() + 0.8
            while time.monotonic() < end:
                sport = rng.randrange(1000, 1060)
                o, r = directions(*nat_tuples(sport=sport))
                ft.offer(FakeConn(), o, r, seen_reply=True, tcp_established=True)
                fp.forward(fin[sport] if rng.random() < 0.05 else frames[sport], 1)
        except BaseException as exc:
            errors.append(exc)

    stop = threading.Event()

    def gc() -> None:  # the controller's tick, every 20 ms here
        while not stop.wait(0.02):
            ft.gc()

    gc_thread = threading.Thread(target=gc)
    gc_thread.start()
    eng.start()
    try:
        threads = [threading.Thread(target=packets) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # everything idles out: 1 s timeouts, GC every 20 ms
        deadline = time.monotonic() + 4.5
        while (len(ft) or sw.entries) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        gc_thread.join()
        eng.stop()
    assert not errors
    assert len(ft) == 0 and sw.entries == {}, "no flow left, no entry left on the switch"
    assert ft.scheduled() == 0
    assert ft.counters.hw_add_ok > 0 and ft.counters.created > 0
