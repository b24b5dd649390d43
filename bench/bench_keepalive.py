"""The controller's own cost of keeping N hardware flows alive: what the flowtable's GC and the offload
engine spend per second when every flow carries traffic every 5 s (the scale bench's load) and a 10 s
timeout makes the 90 % rule ask for every flow's counters once a second, as the kernel's
``nf_flow_offload_stats`` does.

In process, against the tests' in-memory switch (``tests/flowtable/ftutil.FakeSwitch``), so the figures are
the controller's Python work alone: the switch's whole-table read is timed apart and left out (what it costs
on softswitch and BMv2 is ``bench_flow_stats.py``'s). A simulated clock moves one second per period: no
sleeping, no threads, CPU time only.

    .venv/bin/python bench/bench_keepalive.py [--flows 1000,10000,30000,64000] [--seconds 30]

Prints a line per N and writes bench/results/keepalive.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "flowtable"))

from ftutil import FakeClock, FakeConn, directions, make_table, nat_tuples  # noqa: E402

from runtime.flowtable.core import HwStats  # noqa: E402
from runtime.flowtable.model import EntryKey  # noqa: E402
from runtime.flowtable.policy import FlowtableConfig  # noqa: E402

RESULTS = REPO / "bench" / "results"
SEND_EVERY_S = 5


def measure(n: int, seconds: int) -> dict[str, Any]:
    clock = FakeClock()
    ft, eng, sw = make_table(clock, FlowtableConfig(tcp_timeout_s=10, close_timeout_s=5))
    for i in range(n):  # distinct LAN ports, each NATed to its own port: n up to 64,000
        o, r = directions(*nat_tuples(sport=1024 + i, nat_port=1024 + i))
        ft.offer(FakeConn(), o, r, seen_reply=True, tcp_established=True)
    while eng.run_once():
        pass
    offloaded = sum(1 for f in ft.flows() if f.hw_offloaded)
    entries = list(sw.entries.values())
    read_cpu = 0.0
    fake_read = sw.read_tables

    def timed_read(tables: Any) -> dict[EntryKey, HwStats]:
        nonlocal read_cpu
        t = time.process_time()
        out = fake_read(tables)
        read_cpu += time.process_time() - t
        return out

    sw.read_tables = timed_read
    gc_cpu = engine_cpu = 0.0
    reads0, expired0 = ft.counters.hw_stats_reads, ft.counters.expired
    for s in range(seconds):
        clock.advance(1)
        now = clock()
        for j in range(s % SEND_EVERY_S, len(entries), SEND_EVERY_S):  # a fifth of the flows had traffic
            e = entries[j]
            e.packets += 2
            e.bytes += 200
            e.last_hit = now
        t = time.process_time()
        ft.gc()
        gc_cpu += time.process_time() - t
        t = time.process_time()
        while eng.run_once():
            pass
        engine_cpu += time.process_time() - t
    engine_cpu -= read_cpu
    reads = ft.counters.hw_stats_reads - reads0
    return {"flows": n, "offloaded": offloaded, "seconds": seconds,
            "gc_ms_per_s": round(1000 * gc_cpu / seconds, 1),
            "engine_ms_per_s": round(1000 * engine_cpu / seconds, 1),
            "switch_read_ms_per_s": round(1000 * read_cpu / seconds, 1),
            "flows_read_per_s": round(reads / seconds),
            "us_per_flow_read": round(1e6 * (gc_cpu + engine_cpu) / max(reads, 1), 2),
            "expired": ft.counters.expired - expired0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", default="1000,10000,30000,64000", help="numbers of flows, comma separated")
    ap.add_argument("--seconds", type=int, default=30, help="simulated seconds per N")
    ap.add_argument("--out", type=Path, default=RESULTS / "keepalive.json")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    rows = []
    for n in (int(x) for x in args.flows.split(",") if x):
        r = measure(n, args.seconds)
        rows.append(r)
        print(f"{n:>7,} flows: GC {r['gc_ms_per_s']:>6} ms/s, engine {r['engine_ms_per_s']:>6} ms/s of CPU "
              f"({r['flows_read_per_s']:,} flows' counters taken a second, {r['us_per_flow_read']} us each; "
              f"the in-memory switch's read {r['switch_read_ms_per_s']} ms/s, not counted); "
              f"{r['expired']} expired")
    res = {"rows": rows, "loadavg": {"before": load_before, "after": os.getloadavg()},
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
