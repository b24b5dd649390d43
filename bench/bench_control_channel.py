"""The control channel's costs: connecting (plaintext, TLS, mutual TLS), writing flow entries over each, and
how long a mastership change takes to be seen and, after the other client leaves, reconciled. Prints the
figures and writes bench/results/control_channel.json. Needs root only if the switches do (they do not here:
no ports are attached).

    .venv/bin/python bench/bench_control_channel.py [--kinds softswitch,bmv2] [--entries 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from offloadgen.build import build
from offloadgen.pki import TestPki, make_test_pki
from offloadgen.profile import load_profile
from offloadgen.switchproc import SwitchProcess, SwitchSpec, SwitchTls, free_grpc_addr
from runtime.client import SwitchClient
from runtime.config import load_config
from runtime.controller import Controller
from runtime.entities import TableEntry
from runtime.pipeline import Pipeline, load_build
from runtime.tls import TlsConfig

REPO = Path(__file__).resolve().parent.parent


def entries(n: int) -> list[TableEntry]:
    return [TableEntry("flow_v4", {"in_port": 1, "src_addr": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                                   "dst_addr": "192.0.2.20", "proto": 6, "src_port": 1000 + i % 60000, "dst_port": 80},
                       "offload", {"port": 4, "smac": "02:00:00:00:01:04", "dmac": "02:00:00:00:00:20"})
            for i in range(n)]


def channel(kind: str, pipeline: Pipeline, pki: TestPki, mode: str, n: int, rounds: int) -> dict[str, Any]:
    tls = None if mode == "plaintext" else SwitchTls(pki.server_cert, pki.server_key, pki.ca,
                                                     client_auth=mode == "mutual TLS")
    ctl_tls = {"plaintext": None, "TLS": TlsConfig(pki.ca),
               "mutual TLS": TlsConfig(pki.ca, pki.client_cert, pki.client_key)}[mode]
    with SwitchProcess(SwitchSpec(kind=kind, grpc_addr=free_grpc_addr(), tls=tls)) as sw:
        connects = []
        for _ in range(rounds):
            t = time.perf_counter()
            c = SwitchClient(sw.grpc_addr, election_id=(0, 10), tls=ctl_tls, reconnect=False).connect(10)
            connects.append(time.perf_counter() - t)
            c.close()
        with SwitchClient(sw.grpc_addr, election_id=(0, 10), tls=ctl_tls) as c:
            c.set_pipeline(pipeline)
            batch = entries(n)
            t = time.perf_counter()
            c.insert(batch)
            insert_s = time.perf_counter() - t
            t = time.perf_counter()
            got = len(c.read_table("flow_v4", counters=True))
            read_s = time.perf_counter() - t
            c.delete(batch)
    return {"connect_ms_median": round(statistics.median(connects) * 1000, 1),
            "insert_per_s": round(n / insert_s), "read_with_counters_per_s": round(got / read_s)}


def mastership(kind: str, pipeline: Pipeline, rounds: int) -> dict[str, Any]:
    seen, regained = [], []
    with SwitchProcess(SwitchSpec(kind=kind, grpc_addr=free_grpc_addr())) as sw, \
            Controller(load_config(REPO / "configs" / "router.toml"), pipeline, sw.grpc_addr,
                       election_id=(0, 10)) as ctl:
        for _ in range(rounds):
            intruder = SwitchClient(sw.grpc_addr, election_id=(0, 20), p4info=pipeline.p4info, reconnect=False)
            t = time.perf_counter()
            intruder.connect(10)
            while ctl.mastership.primary:
                time.sleep(0.001)
            seen.append(time.perf_counter() - t)
            reconciles = ctl.offloader.reconciles
            t = time.perf_counter()
            intruder.close()
            while not (ctl.mastership.primary and ctl.offloader.reconciles > reconciles):
                time.sleep(0.001)
            regained.append(time.perf_counter() - t)
    return {"backup_seen_ms_median": round(statistics.median(seen) * 1000, 1),
            "primary_and_reconciled_ms_median": round(statistics.median(regained) * 1000, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="softswitch,bmv2")
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cc-"))
    try:
        build(load_profile(REPO / "profiles" / "default.toml"), tmp / "build",
              use_p4c=shutil.which("p4c-bm2-ss") is not None)
        pki = make_test_pki(tmp / "pki")
        results: dict[str, Any] = {"host": platform.node(), "entries": args.entries, "rounds": args.rounds}
        for kind in args.kinds.split(","):
            if kind == "bmv2" and shutil.which("simple_switch_grpc") is None:
                continue
            pipeline = load_build(tmp / "build", kind)
            res: dict[str, Any] = {m: channel(kind, pipeline, pki, m, args.entries, args.rounds)
                                   for m in ("plaintext", "TLS", "mutual TLS")}
            res["mastership"] = mastership(kind, pipeline, args.rounds)
            results[kind] = res
            for mode in ("plaintext", "TLS", "mutual TLS"):
                r = res[mode]
                print(f"{kind:<10} {mode:<10} connect {r['connect_ms_median']:>7} ms  insert {r['insert_per_s']:>7}/s  "
                      f"read {r['read_with_counters_per_s']:>7}/s")
            m = res["mastership"]
            print(f"{kind:<10} mastership: backup seen after {m['backup_seen_ms_median']} ms; primary again and "
                  f"reconciled {m['primary_and_reconciled_ms_median']} ms after the other client left")
        out = REPO / "bench" / "results" / "control_channel.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
