"""softswitch's P4Runtime server with idle StreamChannels open: the primary's Write / Read / Capabilities
latency and its packet-in rate, with 0, 63 and 1,000 streams that never send anything (opened from this
process on their own connection). Before the server moved to grpc.aio, 63 idle streams took every worker of
its thread pool and the primary's RPCs waited for their deadline.

    .venv/bin/python bench/bench_p4runtime_streams.py [--rpcs 500] [--streams 0,63,1000]

Prints the figures and writes bench/results/p4runtime_streams.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from google.rpc import code_pb2
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "softswitch"))

from test_server import IdleStreams, Sink, Stream, _artifacts, flow, tcp_frame  # noqa: E402

from offloadgen.profile import load_profile  # noqa: E402
from offloadgen.switchproc import free_grpc_addr  # noqa: E402
from softswitch.server import SoftSwitch, serve  # noqa: E402

PACKET_INS = 3000  # below the server's per-client packet-in queue, so none is dropped


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p50_ms": round(s[len(s) // 2] * 1000, 3), "p99_ms": round(s[int(len(s) * 0.99)] * 1000, 3),
            "max_ms": round(s[-1] * 1000, 3)}


def measure(stub: p4runtime_pb2_grpc.P4RuntimeStub, sw: SoftSwitch, primary: Stream, art: Any, rpcs: int,
            base: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    writes, reads, caps = [], [], []
    table = art.id("tables", "flow_v4")
    for i in range(rpcs):
        req = p4runtime_pb2.WriteRequest(device_id=1, election_id={"low": 1})
        req.updates.add(type=p4runtime_pb2.Update.INSERT).entity.table_entry.CopyFrom(flow(art, sport=base + i))
        t = time.perf_counter()
        stub.Write(req, timeout=60)
        writes.append(time.perf_counter() - t)
        rreq = p4runtime_pb2.ReadRequest(device_id=1, entities=[{"table_entry": {
            "table_id": table, "match": flow(art, sport=base + i).match}}])
        t = time.perf_counter()
        list(stub.Read(rreq, timeout=60))
        reads.append(time.perf_counter() - t)
        t = time.perf_counter()
        stub.Capabilities(p4runtime_pb2.CapabilitiesRequest(), timeout=60)
        caps.append(time.perf_counter() - t)
    out["write"], out["read"], out["capabilities"] = percentiles(writes), percentiles(reads), percentiles(caps)
    frame = tcp_frame(sport=60000)  # a miss: to the primary
    t = time.perf_counter()
    for _ in range(PACKET_INS):
        sw.receive(1, frame)
    for _ in range(PACKET_INS):
        primary.get("packet", timeout=60)
    out["packet_in_per_s"] = round(PACKET_INS / (time.perf_counter() - t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rpcs", type=int, default=500, help="Writes, Reads and Capabilities each, per step")
    ap.add_argument("--streams", default="0,63,1000", help="idle stream counts to measure with")
    args = ap.parse_args()
    art = _artifacts(Path(tempfile.mkdtemp(prefix="bench-streams-")), load_profile(REPO / "profiles" / "default.toml"),
                     use_p4c=False)
    sw = SoftSwitch(1, 255)
    sw.add_port(1, Sink())
    sw.add_port(2, Sink())
    addr = free_grpc_addr()
    server = serve(sw, addr)
    channel = grpc.insecure_channel(addr)
    stub = p4runtime_pb2_grpc.P4RuntimeStub(channel)
    primary = Stream(stub)
    results: list[dict[str, Any]] = []
    try:
        assert primary.arbitrate((0, 1)).arbitration.status.code == code_pb2.OK
        req = p4runtime_pb2.SetForwardingPipelineConfigRequest(
            device_id=1, election_id={"low": 1}, config=art.config(),
            action=p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT)
        stub.SetForwardingPipelineConfig(req, timeout=60)
        for step, n in enumerate(int(x) for x in args.streams.split(",")):
            with IdleStreams(addr, n, 3600):
                figures = measure(stub, sw, primary, art, args.rpcs, 1 + step * args.rpcs)
            figures["idle_streams"] = n
            results.append(figures)
            print(f"{n:5} idle streams: write {figures['write']}, read {figures['read']}, "
                  f"capabilities {figures['capabilities']}, {figures['packet_in_per_s']} packet-ins/s", flush=True)
    finally:
        primary.close()
        channel.close()
        server.stop(0).wait(5)
        sw.stop()
    out = REPO / "bench" / "results" / "p4runtime_streams.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                               "grpc": grpc.__version__, "steps": results}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
