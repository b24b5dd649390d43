"""P4Runtime table-entry rates on `ingress.flow_v4`: insert, read-all-with-counters, modify and delete,
entries/s, for softswitch and BMv2 (when simple_switch_grpc and p4c are installed) side by side, per batch
size and table size; and the same four through the controller's own client (runtime/client.py). With batch size 1, also the
rate of a grpcio server whose Write does nothing, the ceiling for any switch served by Python's gRPC.

The raw rates measure the switch: every request is built and serialized before the clock starts and sent as
bytes on a gRPC method with identity serializers, and replies are kept as bytes and only parsed (to check the
count) after the clock stops. The client rates add what the controller pays on top: entries by name encoded
against the P4Info, protobuf messages, decoding of reads. Prints the figures and writes
bench/results/p4runtime.json and bench/results/p4runtime.png.

    .venv/bin/python bench/bench_p4runtime.py [--quick] [--switch softswitch|bmv2 ...]
        [--sizes 1000 10000 65000] [--batches 1 100 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import ipaddress
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.internal import api_implementation
from p4.v1 import p4runtime_pb2

from offloadgen.build import build
from offloadgen.p4c import find_p4c
from offloadgen.profile import load_profile
from offloadgen.switchproc import SwitchProcess, SwitchSpec, find_bmv2, free_grpc_addr
from runtime.client import SwitchClient
from runtime.entities import TableEntry, update
from runtime.errors import P4RuntimeError
from runtime.pipeline import load_build

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TABLE = "ingress.flow_v4"
SIZES = (1000, 10000, 65000)
QUICK_SIZES = (1000, 4000)
BATCHES = (1, 100, 1000)
OPS = ("insert", "read", "modify", "delete")
ELECTION = (0, 1)
RPC_TIMEOUT = 300.0
# A read of 65k entries with counters is one multi-megabyte ReadResponse on BMv2; gRPC's default 4 MiB
# receive limit would cut the measurement short, not the switch.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def flow(i: int, port: int) -> TableEntry:
    """Entry *i*: one distinct IPv4 5-tuple per index; *port* differs between insert and modify."""
    src = ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.0.0.0")) + i)
    return TableEntry(TABLE, {"in_port": 1, "src_addr": src, "dst_addr": "198.51.100.20", "proto": 6,
                              "src_port": 40000 + i % 20000, "dst_port": 443},
                      "ingress.offload", {"port": port, "smac": "02:00:00:00:01:04", "dmac": "02:bb:00:00:00:02"})


def write_requests(kind: str, entries: Sequence[p4runtime_pb2.TableEntry], batch: int, device_id: int) -> list[bytes]:
    out = []
    for start in range(0, len(entries), batch):
        req = p4runtime_pb2.WriteRequest(device_id=device_id, atomicity=p4runtime_pb2.WriteRequest.CONTINUE_ON_ERROR)
        req.election_id.high, req.election_id.low = ELECTION
        req.updates.extend(update(kind, e) for e in entries[start:start + batch])  # type: ignore[arg-type]
        out.append(req.SerializeToString())
    return out


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


class RawClient:
    """Write and Read as bytes in, bytes out: nothing of the measuring client's protobuf work is timed."""

    def __init__(self, channel: grpc.Channel, table_id: int, device_id: int = 1) -> None:
        self.device_id = device_id
        # no serializers: gRPC sends and returns the bytes as they are
        self.write = channel.unary_unary("/p4.v1.P4Runtime/Write")
        self.read = channel.unary_stream("/p4.v1.P4Runtime/Read")
        req = p4runtime_pb2.ReadRequest(device_id=device_id)
        ent = req.entities.add()
        ent.table_entry.table_id = table_id
        ent.table_entry.counter_data.SetInParent()
        self.read_all_req = req.SerializeToString()

    def timed_writes(self, reqs: list[bytes]) -> float:
        write = self.write
        t0 = time.perf_counter()
        for r in reqs:
            write(r, timeout=RPC_TIMEOUT)
        return time.perf_counter() - t0

    def timed_read_all(self) -> tuple[float, list[bytes]]:
        t0 = time.perf_counter()
        chunks = list(self.read(self.read_all_req, timeout=RPC_TIMEOUT))
        return time.perf_counter() - t0, chunks

    def count(self) -> tuple[int, int]:
        """(entries in the table, of which carry counter data), parsed off the clock."""
        _, chunks = self.timed_read_all()
        entities = [e for c in chunks for e in p4runtime_pb2.ReadResponse.FromString(c).entities]
        return len(entities), sum(e.table_entry.HasField("counter_data") for e in entities)


def raw_cycle(raw: RawClient, encoded: tuple[list[Any], list[Any]], batch: int) -> dict[str, float]:
    """Fill the table, read it all with counters, modify every entry, delete every entry."""
    first, second = encoded
    n = len(first)
    reqs = {"insert": write_requests("INSERT", first, batch, raw.device_id),
            "modify": write_requests("MODIFY", second, batch, raw.device_id),
            "delete": write_requests("DELETE", second, batch, raw.device_id)}
    got = {}
    got["insert"] = rate(n, raw.timed_writes(reqs["insert"]))
    seconds, chunks = raw.timed_read_all()
    got["read"] = rate(n, seconds)
    entities = [e for c in chunks for e in p4runtime_pb2.ReadResponse.FromString(c).entities]
    if len(entities) != n or not all(e.table_entry.HasField("counter_data") for e in entities):
        raise SystemExit(f"bench: read back {len(entities)} entries (with counters: "
                         f"{sum(e.table_entry.HasField('counter_data') for e in entities)}), expected {n}")
    got["modify"] = rate(n, raw.timed_writes(reqs["modify"]))
    got["delete"] = rate(n, raw.timed_writes(reqs["delete"]))
    left, _ = raw.count()
    if left:
        raise SystemExit(f"bench: {left} entries left after deleting all {n}")
    return got


def client_cycle(client: SwitchClient, n: int) -> tuple[dict[str, float | None], dict[str, str]]:
    """The controller's path: entries by name, encoded and batched by SwitchClient (1000 per Write). An
    operation the client cannot do at this size is recorded with its error (a finding, not a crash)."""
    first = [flow(i, 2) for i in range(n)]
    second = [flow(i, 3) for i in range(n)]
    got: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    timed: list[tuple[str, Callable[[], Any]]] = [
        ("insert", lambda: client.insert(first)),
        ("read", lambda: client.read_table(TABLE, counters=True)),
        ("modify", lambda: client.modify(second)),
        ("delete", lambda: client.delete(second)),
    ]
    for op, call in timed:
        t0 = time.perf_counter()
        try:
            out = call()
        except P4RuntimeError as exc:
            got[op], errors[op] = None, str(exc)
            continue
        got[op] = rate(n, time.perf_counter() - t0)
        if op == "read" and (len(out) != n or any(e.counter is None for e in out)):
            raise SystemExit(f"bench: the client read {len(out)} entries, expected {n} with counters")
    return got, errors


FLOOR_SERVER = """
import asyncio, sys
import grpc

async def write(request, context):
    return b""  # an empty WriteResponse: nothing applied, nothing decoded

async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("p4.v1.P4Runtime", {
        "Write": grpc.unary_unary_rpc_method_handler(write)}),))
    server.add_insecure_port(sys.argv[1])
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def grpcio_floor(encoded: list[Any], seconds_cap: int = 2000) -> float:
    """Single-update Writes/s against a Python gRPC server (grpcio's asyncio server, as softswitch uses)
    whose Write does nothing: the most a switch written in Python can answer one at a time with this
    client, whatever it does per update. Run in its own process, as the switches are."""
    addr = free_grpc_addr()
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, addr], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("bench: the grpcio floor server did not start")
        channel = grpc.insecure_channel(addr, options=CHANNEL_OPTIONS)
        raw = RawClient(channel, 0)
        reqs = write_requests("INSERT", encoded[:seconds_cap], 1, raw.device_id)
        raw.timed_writes(reqs[:200])  # connection set up and warm
        got = rate(len(reqs), raw.timed_writes(reqs))
        channel.close()
        return got
    finally:
        proc.terminate()
        proc.wait()


def switches(kinds: Sequence[str], build_dir: Path) -> Iterator[tuple[str, SwitchProcess]]:
    for kind in kinds:
        spec = SwitchSpec(kind=kind, grpc_addr=free_grpc_addr(), device_id=1,  # type: ignore[arg-type]
                          log_file=build_dir / f"{kind}.log")
        with SwitchProcess(spec) as proc:
            yield kind, proc


def run(kinds: Sequence[str], sizes: Sequence[int], batches: Sequence[int], work: Path) -> dict[str, Any]:
    base = load_profile(REPO / "profiles" / "default.toml")
    # A table with room for the largest size (BMv2 refuses an insert into a full table).
    size = max(base.ipv4_table_size, 1 << (max(sizes) - 1).bit_length())
    profile = dataclasses.replace(base, ipv4_table_size=size)
    res = build(profile, work / "build")
    results: dict[str, Any] = {}
    for kind, proc in switches(kinds, work):
        pipeline = load_build(work / "build", kind)  # type: ignore[arg-type]
        client = SwitchClient(proc.grpc_addr, device_id=1, election_id=ELECTION, reconnect=False,
                              rpc_timeout=RPC_TIMEOUT)
        with client:
            client.set_pipeline(pipeline)
            table_id = pipeline.p4info.table(TABLE).id
            channel = grpc.insecure_channel(proc.grpc_addr, options=CHANNEL_OPTIONS)
            raw = RawClient(channel, table_id)
            rows = []
            for n in sizes:
                encoded = ([flow(i, 2).encode(pipeline.p4info) for i in range(n)],
                           [flow(i, 3).encode(pipeline.p4info) for i in range(n)])
                for batch in batches:
                    got = raw_cycle(raw, encoded, batch)
                    rows.append({"table_size": n, "batch": batch, **got})
                    print(f"{kind:10} raw    n={n:6} batch={batch:5}  " +
                          "  ".join(f"{op} {got[op]:9.0f}/s" for op in OPS), flush=True)
            client_rows = []
            for n in sizes:
                cgot, errors = client_cycle(client, n)
                client_rows.append({"table_size": n, "batch": 1000, **cgot, **({"errors": errors} if errors else {})})
                print(f"{kind:10} client n={n:6} batch= 1000  " +
                      "  ".join(f"{op} {cgot[op]:9.0f}/s" if cgot[op] is not None else f"{op}    FAILED"
                                for op in OPS), flush=True)
                for op, err in errors.items():
                    print(f"{kind:10} client n={n:6} {op} failed: {err}", flush=True)
            channel.close()
        results[kind] = {"raw": rows, "client": client_rows}
    if 1 in batches:
        pipeline = load_build(work / "build")
        floor = grpcio_floor([flow(i, 2).encode(pipeline.p4info) for i in range(2000)])
        results["_grpcio_floor"] = {"batch": 1, "writes_per_s": round(floor)}
        print(f"grpcio floor       batch=    1  {floor:9.0f} Writes/s (a Python gRPC server whose Write does "
              "nothing)", flush=True)
    results["_table_capacity"] = size
    results["_p4c"] = res.manifest().get("p4c_version")
    return results


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5), sharey=False)
    styles = {"softswitch": "-", "bmv2": "--"}
    for ax, op in zip(axes, OPS, strict=True):
        for kind, res in data["switches"].items():
            for batch in sorted({r["batch"] for r in res["raw"]}):
                pts = [(r["table_size"], r[op]) for r in res["raw"] if r["batch"] == batch]
                ax.plot(*zip(*pts, strict=True), styles.get(kind, "-"), marker="o", label=f"{kind} batch {batch}")
            pts = [(r["table_size"], r[op]) for r in res["client"] if r[op] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), styles.get(kind, "-"), marker="x", color="black", alpha=0.6,
                        label=f"{kind} runtime client")
        ax.set_title(f"{op} ({'all entries, with counters' if op == 'read' else 'entries'})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("entries in table")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("entries/s")
    axes[-1].legend(fontsize=7, loc="best")
    m = data["machine"]
    fig.suptitle(f"P4Runtime on {TABLE}, entries/s (1-min load average {m['loadavg_start'][0]:.1f} -> "
                 f"{m['loadavg_end'][0]:.1f} on {m['cpus']} CPUs; raw: pre-serialized requests)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"table sizes {QUICK_SIZES} instead of {SIZES}")
    ap.add_argument("--switch", action="append", choices=["softswitch", "bmv2"],
                    help="switch(es) to measure (default: softswitch, and bmv2 when installed)")
    ap.add_argument("--sizes", type=int, nargs="+", help="table sizes (entries)")
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="updates per Write")
    args = ap.parse_args()
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    kinds = args.switch or ["softswitch"] + (["bmv2"] if find_bmv2() and find_p4c() else [])
    if "bmv2" in kinds and not (find_bmv2() and find_p4c()):
        sys.exit("bench: --switch bmv2 needs simple_switch_grpc and p4c-bm2-ss on PATH (README, 'Running on BMv2')")
    if api_implementation.Type() != "upb":
        print(f"bench: warning: protobuf runs on {api_implementation.Type()}, not upb; the client figures "
              "will be far lower (rerun scripts/setup.sh)", file=sys.stderr)
    load_start = os.getloadavg()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-p4rt-") as tmp:
        found = run(kinds, sizes, args.batches, Path(tmp))
    data = {
        "benchmark": f"P4Runtime entries/s on {TABLE}: raw (pre-serialized bytes) and runtime/client.py",
        "unit": "entries/s",
        "table": TABLE,
        "table_capacity": found.pop("_table_capacity"),
        # the single-update Write rate of a grpcio asyncio server that does nothing: the ceiling for softswitch
        "grpcio_floor": found.pop("_grpcio_floor", None),
        "sizes": list(sizes),
        "batches": list(args.batches),
        "quick": args.quick,
        "p4c": found.pop("_p4c"),
        "switches": found,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                    "seconds": round(time.time() - t0, 1)},
        "protobuf": {"implementation": api_implementation.Type(),
                     "version": importlib.metadata.version("protobuf"),
                     "grpcio": importlib.metadata.version("grpcio")},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "p4runtime.json").write_text(json.dumps(data, indent=2) + "\n")
    plot(data, RESULTS / "p4runtime.png")
    print(f"load average {load_start[0]:.2f} -> {data['machine']['loadavg_end'][0]:.2f} on "
          f"{data['machine']['cpus']} CPUs; wrote {RESULTS / 'p4runtime.json'} and {RESULTS / 'p4runtime.png'}")


if __name__ == "__main__":
    main()
