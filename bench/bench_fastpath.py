"""The software fast path's per-packet cost: frames forwarded per second by ``FastPath.forward`` for a NATed
TCP flow, without statements and with DSCP + named counter. Prints the figures and writes
bench/results/fastpath.json. Not a pass/fail test.

    .venv/bin/python bench/bench_fastpath.py [--packets N]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from runtime.actions import route_actions
from runtime.flowtable.core import FlowDirection, FlowTable
from runtime.flowtable.fastpath import FastPath
from runtime.flowtable.model import FlowTuple
from runtime.flowtable.policy import FlowtableConfig

MAC = bytes.fromhex("020000000104")


class _Conn:
    def is_dying(self) -> bool:
        return False

    def acct_add(self, direction: object, packets: int, nbytes: int) -> None:
        pass

    def on_teardown(self) -> None:
        pass


def measure(packets: int, statements: tuple[object, ...]) -> float:
    ft = FlowTable(FlowtableConfig(), clock=time.monotonic_ns)
    o = FlowTuple.make(1, "10.0.0.1", "8.8.8.8", "tcp", 40000, 80)
    r = FlowTuple.make(4, "8.8.8.8", "192.0.2.1", "tcp", 80, 60000)
    od = FlowDirection(o, route_actions(o, r, out_port=4, smac=MAC, dmac=MAC, statements=statements))  # type: ignore[arg-type]
    rd = FlowDirection(r, route_actions(r, o, out_port=1, smac=MAC, dmac=MAC, statements=statements))  # type: ignore[arg-type]
    ft.offer(_Conn(), od, rd, seen_reply=True, tcp_established=True)
    counts: dict[str, int] = {}
    fp = FastPath(ft, count=lambda name, p, b: counts.__setitem__(name, counts.get(name, 0) + p))
    frame = bytes(Ether(src="02:00:00:00:aa:01", dst="02:00:00:00:bb:01") / IP(src="10.0.0.1", dst="8.8.8.8") /
                  TCP(sport=40000, dport=80, flags="A") / Raw(b"x" * 1400))
    t0 = time.perf_counter()
    for _ in range(packets):
        if fp.forward(frame, 1) is None:
            raise SystemExit("the fast path declined the benchmark's frame")
    return packets / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=50_000)
    args = ap.parse_args()
    from runtime.actions import Count, SetDscp

    results = {"plain_pps": round(measure(args.packets, ())),
               "dscp_counter_pps": round(measure(args.packets, (SetDscp(24), Count("web"))))}
    print(f"software fast path, NATed TCP, 1454-byte frames, {args.packets} packets each:")
    print(f"  no statements       {results['plain_pps']:>9} packets/s")
    print(f"  dscp + counter      {results['dscp_counter_pps']:>9} packets/s")
    out = Path(__file__).resolve().parent / "results" / "fastpath.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"python": platform.python_version(), "packets": args.packets, **results}, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
