"""Cost of one stats period for N hardware flows on a real switch: the bulk read the offload engine does (one
whole-table read per GC period, all flows answered from it) against reading the same flows' entries by name
(the final-counter read before a delete, per-entry requests of up to 256 entries) and against the previous
scheme (per 128-flow batch, a whole-table read once a batch had more than 64 entries).

Starts its own switch (softswitch, or BMv2 with --target bmv2) on a free loopback port, installs N flows
through the offload engine, then times each scheme. Prints the figures and writes
bench/results/flow_stats-<target>.json.

    .venv/bin/python bench/bench_flow_stats.py [--target softswitch|bmv2] [--flows 1000] [--build build]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

from offloadgen.build import build
from offloadgen.profile import load_profile
from offloadgen.switchproc import SwitchProcess, SwitchSpec, free_grpc_addr
from runtime.actions import route_actions
from runtime.client import SwitchClient
from runtime.flowtable.core import FlowDirection, FlowTable
from runtime.flowtable.model import FlowTuple
from runtime.flowtable.offload import OffloadEngine
from runtime.flowtable.p4map import caps_from_p4info, match_of
from runtime.flowtable.p4rt import P4RuntimeReader, P4RuntimeWriter
from runtime.flowtable.policy import FlowtableConfig
from runtime.pipeline import load_build

REPO = Path(__file__).resolve().parent.parent
WAN, LAN, GW, HOST = (bytes.fromhex(m) for m in ("020000000104", "020000000101", "02000000fe01", "020000000a01"))


class _Conn:
    def is_dying(self) -> bool:
        return False

    def acct_add(self, direction: object, packets: int, nbytes: int) -> None:
        pass

    def on_teardown(self) -> None:
        pass


def timed(fn: object, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["softswitch", "bmv2"], default="softswitch")
    ap.add_argument("--flows", type=int, default=1000)
    ap.add_argument("--build", type=Path, help="an `offloadgen build` output (built into a temp dir if absent)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-flow-stats-"))
    try:
        out_dir = args.build
        if out_dir is None:
            out_dir = tmp / "build"
            build(load_profile(REPO / "profiles" / "default.toml"), out_dir, use_p4c=args.target == "bmv2")
        pipeline = load_build(out_dir, args.target)
        with SwitchProcess(SwitchSpec(kind=args.target, grpc_addr=free_grpc_addr())) as sw:
            client = SwitchClient(sw.spec.grpc_addr, p4info=pipeline.p4info).connect()
            client.set_pipeline(pipeline)
            caps = caps_from_p4info(pipeline.p4info.message)
            clock = time.monotonic_ns
            ft = FlowTable(FlowtableConfig(), clock=clock)
            reader = P4RuntimeReader(client, caps)
            eng = OffloadEngine(ft, P4RuntimeWriter(client), caps, reader, batch_size=512)
            flows = []
            for i in range(args.flows):
                o = FlowTuple.make(1, f"10.0.{i // 250}.{i % 250 + 1}", "8.8.8.8", "tcp", 40000 + i % 20000, 80)
                r = FlowTuple.make(4, "8.8.8.8", "192.0.2.1", "tcp", 80, 20000 + i)
                od = FlowDirection(o, route_actions(o, r, out_port=4, smac=WAN, dmac=GW, in_port=1))  # type: ignore[arg-type]
                rd = FlowDirection(r, route_actions(r, o, out_port=1, smac=LAN, dmac=HOST, in_port=4))  # type: ignore[arg-type]
                _, flow = ft.offer(_Conn(), od, rd, seen_reply=True, tcp_established=True)  # type: ignore[arg-type]
                flows.append(flow)
            t0 = time.perf_counter()
            while eng.run_once():
                pass
            install_s = time.perf_counter() - t0
            assert all(f is not None and f.hw_offloaded for f in flows), "not every flow was installed"
            refs = [match_of(f.dirs[d].tuple, caps) for f in flows if f is not None for d in (0, 1)]

            def period() -> None:  # what one GC period costs the worker now: queue all, drain
                ft.gc_at = clock()
                for f in flows:
                    assert f is not None and eng.queue_stats(f)
                while eng.run_once():
                    pass

            bulk_s = timed(period)
            named_s = timed(lambda: reader.read_stats(refs))
            tables = sorted(set(caps.tables.values()))

            def previous() -> None:  # one whole-table read per 128-flow batch
                for _ in range(0, len(flows), 128):
                    reader.read_tables(tables)

            previous_s = timed(previous, repeat=1)
            client.close()
        result = {
            "benchmark": "counters of N hardware flows, one stats period",
            "target": args.target,
            "flows": args.flows,
            "entries": 2 * args.flows,
            "install_s": round(install_s, 3),
            "bulk_period_s": round(bulk_s, 3),
            "named_read_s": round(named_s, 3),
            "previous_scheme_s": round(previous_s, 3),
            "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        print(f"{args.target}, {args.flows} hardware flows ({2 * args.flows} entries):")
        print(f"  install (batched writes):                       {install_s:7.3f} s")
        print(f"  one period, bulk (one whole-table read):        {bulk_s:7.3f} s")
        print(f"  the same entries read by name (256 per request): {named_s:7.3f} s")
        print(f"  previous: whole table per 128-flow batch:       {previous_s:7.3f} s")
        out = REPO / "bench" / "results" / f"flow_stats-{args.target}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"  written to {out.relative_to(REPO)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
