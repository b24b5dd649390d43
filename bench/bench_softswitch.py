"""softswitch fast-path throughput: packets per second through `Dataplane.process` on one core, for a
flow-table hit (NAT rewrite, TTL-1, IPv4 and TCP checksums) and a miss (packet-in to the CPU port), with the
default profile and ~1000 installed IPv4 flows. Prints the figures and writes bench/results/softswitch.json.

    .venv/bin/python bench/bench_softswitch.py [--seconds 2] [--entries 1000]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import platform
import random
import time
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from offloadgen.profile import load_profile
from offloadgen.render import render
from softswitch.dataplane import Dataplane, FieldMatch, TableEntry
from softswitch.frontend import load_program

REPO = Path(__file__).resolve().parent.parent


def _ip(a: str) -> int:
    return int(ipaddress.ip_address(a))


def measure(dp: Dataplane, port: int, frame: bytes, seconds: float) -> float:
    n = 0
    batch = 2000
    start = time.perf_counter()
    end = start + seconds
    process = dp.process
    while True:
        for _ in range(batch):
            process(port, frame)
        n += batch
        now = time.perf_counter()
        if now >= end:
            return n / (now - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--entries", type=int, default=1000)
    args = ap.parse_args()
    profile = load_profile(REPO / "profiles" / "default.toml")
    t0 = time.perf_counter()
    program = load_program(render(profile))
    load_s = time.perf_counter() - t0
    dp = Dataplane(program, profile.cpu_port)
    ids = {o.preamble.name: o.preamble.id for o in list(program.p4info.tables) + list(program.p4info.actions)}
    rng = random.Random(1)
    flows = []
    for _ in range(args.entries):
        src, dst = f"10.0.{rng.randrange(256)}.{rng.randrange(1, 255)}", f"198.51.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        sport, dport = rng.randrange(1024, 65536), rng.choice([80, 443, 8080])
        match = {i: FieldMatch(v) for i, v in enumerate([1, _ip(src), _ip(dst), 6, sport, dport], start=1)}
        params = {1: 4, 2: 0x020000000104, 3: 0x0A0B0C0D0E0F, 4: _ip("192.0.2.1"), 5: _ip(dst), 6: sport, 7: dport}
        dp.insert(TableEntry(ids["ingress.flow_v4"], match, ids["ingress.offload_nat"], params))
        flows.append((src, dst, sport, dport))
    src, dst, sport, dport = flows[len(flows) // 2]
    payload = Raw(b"x" * 64)
    hit = bytes(Ether(dst="02:00:00:00:01:01") / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="A") /
                payload)
    miss = bytes(Ether(dst="02:00:00:00:01:01") / IP(src=src, dst=dst) / TCP(sport=sport ^ 1, dport=dport,
                 flags="A") / payload)
    assert dp.process(1, hit)[0][0] == 4 and dp.process(1, miss)[0][0] == profile.cpu_port
    hit_pps = measure(dp, 1, hit, args.seconds)
    miss_pps = measure(dp, 1, miss, args.seconds)
    result = {
        "benchmark": "softswitch Dataplane.process, one core",
        "profile": "default",
        "entries": args.entries,
        "frame_bytes": len(hit),
        "hit_pps": round(hit_pps),
        "miss_pps": round(miss_pps),
        "hit_us_per_packet": round(1e6 / hit_pps, 2),
        "miss_us_per_packet": round(1e6 / miss_pps, 2),
        "program_load_s": round(load_s, 3),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"softswitch default profile, {args.entries} flows, {len(hit)}-byte frames:")
    print(f"  hit  (NAT, TTL-1, checksums): {hit_pps:10,.0f} packets/s  ({1e6 / hit_pps:.2f} us/packet)")
    print(f"  miss (packet-in to CPU):      {miss_pps:10,.0f} packets/s  ({1e6 / miss_pps:.2f} us/packet)")
    print(f"  program load (parse, check, compile, P4Info): {load_s * 1000:.0f} ms")
    out = REPO / "bench" / "results" / "softswitch.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
