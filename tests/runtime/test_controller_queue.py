"""The controller's worker queue: a punted packet that waited past the bound is dropped unhandled.

No switch: the controller is built but not started (its client never connects), and its worker loop runs on a
thread of the test. Packets reach it through the stream callback as they would from the switch.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from runtime.config import load_config
from runtime.controller import PACKET_MAX_WAIT_S, Controller, _Event
from runtime.entities import PacketIn
from runtime.pipeline import load_build

A, R1 = "02:00:00:00:00:10", "02:00:00:00:01:01"


def _frame(sport: int) -> bytes:
    return bytes(Ether(src=A, dst=R1) / IP(src="10.0.1.10", dst="192.0.2.20") / UDP(sport=sport, dport=53))


def test_a_packet_in_that_waited_past_the_bound_is_dropped_and_counted(build_dir: Path,
                                                                     router_config_path: Path) -> None:
    ctl = Controller(load_config(router_config_path), load_build(build_dir), "127.0.0.1:1")
    handled: list[int] = []
    ctl.slowpath.handle = lambda port, frame, reason="": handled.append(int.from_bytes(frame[34:36], "big"))  # type: ignore[method-assign]
    ctl.offloader.fast_forward = lambda port, frame: False  # type: ignore[method-assign]
    # three that waited too long (queued before a stall of the worker), then two fresh ones
    stale = time.monotonic() - 2 * PACKET_MAX_WAIT_S
    for sport in (1001, 1002, 1003):
        ctl._put(_Event("packet", PacketIn(_frame(sport), {"ingress_port": 1}), stale))
    for sport in (2001, 2002):
        ctl._on_packet_in(PacketIn(_frame(sport), {"ingress_port": 1}))
    done = threading.Event()
    ctl._put(_Event("call", done.set))  # events other than packets never go stale
    worker = threading.Thread(target=ctl._run, daemon=True)
    worker.start()
    try:
        assert done.wait(5)
    finally:
        ctl._stop.set()
        ctl._put(_Event("wake"))
        worker.join(5)
    assert handled == [2001, 2002]
    stats = ctl.stats()
    assert stats["queue_stale_dropped"] == 3 and stats["queue_dropped"] == 0
    assert 0 <= stats["queue_wait_us_max"] <= PACKET_MAX_WAIT_S * 1e6
