"""Packets/s through the controller's slow path and its software fast path.

Two layers, so the controller's own cost can be told apart from the switch's and gRPC's:

- in-process: frames handed straight to runtime's SlowPath (parse, conntrack, NAT, route, rewrite; the
  packet-out is a list append) and to the flowtable's FastPath. Three loads: new connections (one TCP SYN
  each from distinct source ports, through masquerade), established connections (data segments both ways on
  connections already tracked) and the fast path (data segments of flows in the software flowtable).
- through a switch (``--switch softswitch,bmv2``): hosts in namespaces send UDP datagrams through the router
  (port 5001... kept on the slow path by a policy rule, so every packet is a packet-in, a slow-path decision
  and a packet-out) and, with the flowtable's hardware offload switched off, through the software fast path
  (every packet a packet-in, a fast-path rewrite and a packet-out). The rate is what reaches the receiver.
- the stream floor (with ``--switch``, or alone with ``--floor``): a grpc.aio server that does nothing but
  send packet-ins, answered by the controller's own client with packet-outs. What a slow path served by
  Python gRPC on both ends passes at most on this machine, before any packet is looked at.

Prints the figures and writes bench/results/slowpath.json.

    .venv/bin/python bench/bench_slowpath.py [--quick] [--switch softswitch,bmv2] [--floor] [--profile FILE] [--spy DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from runtime import packet as P  # noqa: E402
from runtime.config import RouterConfig, load_config  # noqa: E402
from runtime.conntrack import NS, Dir  # noqa: E402
from runtime.flowtable.core import FlowTable  # noqa: E402
from runtime.flowtable.fastpath import FastPath  # noqa: E402
from runtime.flowtable.model import FlowTuple  # noqa: E402
from runtime.flowtable.policy import FlowtableConfig  # noqa: E402
from runtime.slowpath import SlowPath  # noqa: E402

RESULTS = REPO / "bench" / "results"
CONFIG = REPO / "configs" / "router.toml"
A_MAC, R1_MAC, B_MAC, R4_MAC = (bytes.fromhex(m) for m in ("020000000010", "020000000101", "020000000020",
                                                             "020000000104"))
A_IP, B_IP, WAN_IP = bytes([10, 0, 1, 10]), bytes([192, 0, 2, 20]), bytes([192, 0, 2, 1])


def tcp(src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int, ack: int, payload: bytes = b"") -> bytes:
    """An IPv4 TCP segment with correct checksums (no options)."""
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    seg = hdr + payload
    csum = P.checksum(seg, P.pseudo_sum(src, dst, 6, len(seg)))
    seg = seg[:16] + struct.pack("!H", csum) + seg[18:]
    return P.ipv4(src, dst, 6, seg)


def frame(dst_mac: bytes, src_mac: bytes, ip: bytes) -> bytes:
    return P.ethernet(dst_mac, src_mac, P.ETH_P_IP, ip)


class Clock:
    def __init__(self) -> None:
        self.now = 1000 * NS

    def __call__(self) -> int:
        return self.now


def new_slowpath(config: RouterConfig) -> tuple[SlowPath, list[tuple[int, bytes]], Clock]:
    clock = Clock()
    out: list[tuple[int, bytes]] = []
    sp = SlowPath(config, clock=clock, emit=lambda port, f: out.append((port, f)))
    # A and B answer ARP once, as after their first exchange.
    sp.handle(1, P.ethernet(b"\xff" * 6, A_MAC, P.ETH_P_ARP, P.arp(1, A_MAC, A_IP, b"\0" * 6, bytes([10, 0, 1, 1]))))
    sp.handle(4, P.ethernet(b"\xff" * 6, B_MAC, P.ETH_P_ARP, P.arp(1, B_MAC, B_IP, b"\0" * 6, WAN_IP)))
    out.clear()
    return sp, out, clock


def timed(n: int, fn: Callable[[], None], prof: cProfile.Profile | None) -> float:
    """Packets per second of this process's CPU time: on a machine shared with other work the wall clock
    mostly measures the others (the figure is per core either way, the loop is single-threaded)."""
    if prof is not None:
        prof.enable()
    t0 = time.process_time()
    fn()
    dt = time.process_time() - t0
    if prof is not None:
        prof.disable()
    return n / dt


SYN, ACK, PSH = 0x02, 0x10, 0x08


def bench_new(config: RouterConfig, n: int, prof: cProfile.Profile | None) -> dict[str, Any]:
    """n TCP SYNs from distinct source ports: each is a new connection (conntrack, masquerade, route)."""
    sp, out, _ = new_slowpath(config)
    frames = [frame(R1_MAC, A_MAC, tcp(A_IP, B_IP, 1024 + i % 60000, 5001 + i // 60000, SYN, 1000, 0))
              for i in range(n)]

    def run() -> None:
        h = sp.handle
        for f in frames:
            h(1, f)

    pps = timed(n, run, prof)
    return {"packets": n, "pps": round(pps), "forwarded": len(out), "connections": len(sp.conntrack)}


def establish(sp: SlowPath, out: list[tuple[int, bytes]], conns: int) -> list[tuple[int, bytes]]:
    """Open `conns` connections (SYN, SYN/ACK, ACK) and return a data segment per direction for each."""
    data: list[tuple[int, bytes]] = []
    for i in range(conns):
        sport = 1024 + i
        sp.handle(1, frame(R1_MAC, A_MAC, tcp(A_IP, B_IP, sport, 5001, SYN, 1000, 0)))
        nat_port = struct.unpack("!H", out[-1][1][34:36])[0]
        sp.handle(4, frame(R4_MAC, B_MAC, tcp(B_IP, WAN_IP, 5001, nat_port, SYN | ACK, 5000, 1001)))
        sp.handle(1, frame(R1_MAC, A_MAC, tcp(A_IP, B_IP, sport, 5001, ACK, 1001, 5001)))
        data.append((1, frame(R1_MAC, A_MAC, tcp(A_IP, B_IP, sport, 5001, ACK | PSH, 1001, 5001, b"x" * 16))))
        data.append((4, frame(R4_MAC, B_MAC, tcp(B_IP, WAN_IP, 5001, nat_port, ACK | PSH, 5001, 1017, b"y" * 16))))
    out.clear()
    return data


def bench_established(config: RouterConfig, n: int, conns: int, prof: cProfile.Profile | None) -> dict[str, Any]:
    sp, out, _ = new_slowpath(config)
    data = establish(sp, out, conns)
    seq = [data[i % len(data)] for i in range(n)]

    def run() -> None:
        h = sp.handle
        for port, f in seq:
            h(port, f)

    pps = timed(n, run, prof)
    return {"packets": n, "connections": conns, "pps": round(pps), "forwarded": len(out)}


class _Ref:
    """The flowtable's handle on a connection (ConnRef); the bench counts nothing per connection."""

    def is_dying(self) -> bool:
        return False

    def acct_add(self, direction: Dir, packets: int, nbytes: int) -> None:
        pass

    def on_teardown(self) -> None:
        pass


def bench_fastpath(config: RouterConfig, n: int, conns: int, prof: cProfile.Profile | None) -> dict[str, Any]:
    """Data segments of flows held by the software flowtable (offered from the slow path's connections)."""
    sp, out, clock = new_slowpath(config)
    data = establish(sp, out, conns)
    ft = FlowTable(FlowtableConfig(), clock=clock)
    from runtime.flowtable.core import FlowDirection

    offered = 0
    for conn in sp.conntrack.conns():
        dirs = []
        for d in (Dir.ORIGINAL, Dir.REPLY):
            t = conn.tuples[d]
            acts, iif = conn.actions[d], conn.iif[d]
            if acts is None or iif is None:
                break
            dirs.append(FlowDirection(FlowTuple(iif, t.src, t.dst, t.proto, t.sport, t.dport), acts))
        if len(dirs) == 2:
            _, flow = ft.offer(_Ref(), dirs[0], dirs[1], seen_reply=True, tcp_established=True)
            offered += flow is not None
    fp = FastPath(ft)
    seq = [data[i % len(data)] for i in range(n)]
    hits = 0

    def run() -> None:
        nonlocal hits
        fwd = fp.forward
        for port, f in seq:
            if fwd(f, port) is not None:
                hits += 1

    pps = timed(n, run, prof)
    return {"packets": n, "connections": offered, "pps": round(pps), "forwarded": hits}


SLOW_FT = """
[flowtable]
ports = ["lan1", "wan"]
[[flowtable.rules]]
action = "skip"
proto = "udp"
dport = 5001
"""
FAST_FT = """
[flowtable]
ports = ["lan1", "wan"]
hw_offload = false
"""


def through_switch(kind: str, build_dir: Path, tmp: Path, path: str, rate: float, seconds: float,
                   spy: Path | None = None) -> dict[str, Any]:
    """UDP datagrams from A to B at `rate`/s through the switch: every one a packet-in, a decision by the
    slow path (policy skip) or the software fast path (hardware offload off), and a packet-out."""
    import subprocess

    import bench_flowtable_scale as scale

    port = 5001 if path == "slow" else 5002
    with scale.lab(kind, build_dir, tmp, SLOW_FT if path == "slow" else FAST_FT) as (a, b, sw, ctl, sock):
        hostapp = str(scale.HOSTAPP)
        sink = b.popen(sys.executable, hostapp, "udpsink", scale.B_ADDR, str(port), str(seconds),
                       stdout=subprocess.PIPE)
        assert sw.proc is not None
        spies = []
        if spy is not None:
            # py-spy samples from outside (the measured processes are unchanged): per-thread raw stacks
            spy.mkdir(parents=True, exist_ok=True)
            spies = [subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", "200", "--threads", "--gil", "--format", "raw",
                                       "--nonblocking", "-d", str(int(seconds) + 1), "-o",
                                       str(spy / f"{who}-{kind}-{path}.txt")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for who, pid in (("controller", ctl.pid), ("switch", sw.proc.pid)) if kind == "softswitch"
                     or who == "controller"]
        try:
            scale.read_line(sink, "ready", 30)
            cpu0, sw0, t0 = scale.cpu_ticks(ctl.pid), scale.cpu_ticks(sw.proc.pid), time.monotonic()
            threads0 = (scale.thread_ticks(ctl.pid), scale.thread_ticks(sw.proc.pid))
            blast = a.run(sys.executable, hostapp, "udpblast", scale.B_ADDR, str(port), str(rate), str(seconds),
                          timeout=seconds + 120)
            cpu1, sw1, t1 = scale.cpu_ticks(ctl.pid), scale.cpu_ticks(sw.proc.pid), time.monotonic()
            threads = {who: scale.thread_cpu_pct(before, scale.thread_ticks(pid), t1 - t0)
                       for who, before, pid in zip(("controller", "switch"), threads0, (ctl.pid, sw.proc.pid),
                                                   strict=True)}
            sent = json.loads(blast.stdout.strip().splitlines()[-1])
            assert sink.stdout is not None
            got = json.loads(sink.stdout.readline())
            stats = scale.Sampler(sock).stats() or {}
        finally:
            if sink.poll() is None:
                sink.kill()
            sink.wait()
            for p in spies:
                p.wait()
    c = stats.get("controller", {})
    return {"switch": kind, "path": path, "offered_pps": round(sent["sent"] / sent["seconds"]),
            "delivered_pps": round(got["received"] / seconds), "sent": sent["sent"], "received": got["received"],
            "controller_cpu_pct": round(100 * (cpu1 - cpu0) / scale.HZ / (t1 - t0), 1),
            "switch_cpu_pct": round(100 * (sw1 - sw0) / scale.HZ / (t1 - t0), 1), "threads_cpu_pct": threads,
            "packet_in": c.get("packet_in"), "slowpath_packets": c.get("slowpath_packets"),
            "fastpath_packets": c.get("fastpath_packets"), "queue_dropped": c.get("queue_dropped")}


STREAM_FLOOR_SERVER = """
import asyncio, sys
import grpc
from p4.v1 import p4runtime_pb2 as pb

WINDOW, PACKET_IN = int(sys.argv[2]), bytes.fromhex(sys.argv[3])

async def stream(requests, context):
    # The first message is the client's arbitration: make it primary. Every later one is a packet-out,
    # counted and never parsed. Packet-ins go out whenever fewer than WINDOW are unanswered.
    first = pb.StreamMessageRequest.FromString(await requests.__anext__())
    await context.write(pb.StreamMessageResponse(arbitration=first.arbitration).SerializeToString())
    state = {"answered": 0}
    room = asyncio.Event()

    async def count() -> None:
        async for _ in requests:
            state["answered"] += 1
            room.set()

    counter = asyncio.ensure_future(count())
    sent = 0
    while not counter.done():
        if sent - state["answered"] >= WINDOW:
            room.clear()
            await room.wait()
            continue
        await context.write(PACKET_IN)
        sent += 1

async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("p4.v1.P4Runtime", {
        "StreamChannel": grpc.stream_stream_rpc_method_handler(stream)}),))
    server.add_insecure_port(sys.argv[1])
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def stream_floor(p4info_path: Path, seconds: float, window: int = 256) -> dict[str, Any]:
    """Packets/s that a slow path served by Python gRPC on both ends passes when neither end does any work:
    a grpc.aio server (as softswitch is) sends one encoded packet-in after another, keeping `window`
    unanswered, and the controller's own `SwitchClient` answers each from a worker thread with a packet-out
    of the same frame, as the controller's worker does (packet-in decoded against the P4Info, packet-out
    encoded). No parsing, conntrack, NAT or table lookup on either side: what a real slow path can at most
    reach on this machine, and what its two processes spend only on the stream."""
    import queue
    import subprocess
    import threading

    import bench_flowtable_scale as scale
    from p4.v1 import p4runtime_pb2

    from offloadgen.switchproc import free_grpc_addr
    from runtime.client import StreamHandlers, SwitchClient
    from runtime.entities import PacketIn
    from runtime.p4info import P4Info

    p4info = P4Info.load(p4info_path)
    fields = {f.name: f for f in p4info.packet_metadata("packet_in")}
    msg = p4runtime_pb2.StreamMessageResponse()
    msg.packet.payload = frame(R1_MAC, A_MAC, tcp(A_IP, B_IP, 40000, 5001, 0x18, 1, 1, bytes(18)))
    msg.packet.metadata.add(metadata_id=fields["ingress_port"].id, value=b"\x01")
    addr = free_grpc_addr()
    server = subprocess.Popen([sys.executable, "-c", STREAM_FLOOR_SERVER, addr, str(window),
                               msg.SerializeToString().hex()], stdout=subprocess.PIPE, text=True)
    inbox: queue.SimpleQueue[PacketIn | None] = queue.SimpleQueue()
    answered = 0
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("bench: the stream floor server did not start")
        client = SwitchClient(addr, p4info=p4info, reconnect=False, name="floor",
                              handlers=StreamHandlers(on_packet_in=inbox.put))

        def worker() -> None:
            nonlocal answered
            while (pkt := inbox.get()) is not None:
                client.packet_out(pkt.payload, egress_port=2)
                answered += 1

        with client:
            thread = threading.Thread(target=worker, name="floor-worker", daemon=True)
            thread.start()
            time.sleep(1.0)  # warm: connection up, the window full
            a0, cpu0, sw0, t0 = answered, os.times(), scale.cpu_ticks(server.pid), time.monotonic()
            time.sleep(seconds)
            a1, cpu1, sw1, t1 = answered, os.times(), scale.cpu_ticks(server.pid), time.monotonic()
            inbox.put(None)
            thread.join(timeout=5)
    finally:
        server.terminate()
        server.wait()
    wall = t1 - t0
    return {"window": window, "seconds": round(wall, 2), "pps": round((a1 - a0) / wall),
            "controller_cpu_pct": round(100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / wall, 1),
            "switch_cpu_pct": round(100 * (sw1 - sw0) / scale.HZ / wall, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer packets")
    ap.add_argument("--profile", type=Path, help="write cProfile stats of the in-process runs here")
    ap.add_argument("--out", type=Path, default=RESULTS / "slowpath.json")
    ap.add_argument("--switch", default="", help="also through softswitch and/or bmv2 (needs root), comma separated")
    ap.add_argument("--spy", type=Path, help="py-spy the controller and softswitch through the switch; raw "
                    "per-thread stacks into this directory (py-spy on PATH)")
    ap.add_argument("--floor", action="store_true", help="measure the gRPC stream floor (no root needed); "
                    "also measured with --switch")
    ap.add_argument("--rate", type=float, default=25000, help="datagrams/s offered through the switch")
    args = ap.parse_args(argv)
    n = 20000 if args.quick else 100000
    conns = 1000 if args.quick else 5000
    config = load_config(CONFIG)
    prof = cProfile.Profile() if args.profile else None
    load_before = os.getloadavg()
    res: dict[str, Any] = {"in_process": {}}
    res["in_process"]["new_connections"] = bench_new(config, n, prof)
    res["in_process"]["established"] = bench_established(config, n, conns, prof)
    res["in_process"]["fastpath"] = bench_fastpath(config, n, conns, prof)
    kinds = [k for k in args.switch.split(",") if k]
    if "bmv2" in kinds and (shutil.which("simple_switch_grpc") is None or shutil.which("p4c-bm2-ss") is None):
        print("bench_slowpath: simple_switch_grpc or p4c-bm2-ss not on PATH; BMv2 skipped")
        kinds.remove("bmv2")
    if kinds or args.floor:
        from offloadgen.build import build
        from offloadgen.profile import load_profile

        res["through_switch"] = []
        seconds = 5.0 if args.quick else 15.0
        with tempfile.TemporaryDirectory(prefix="slowpath-") as tmpd:
            tmp = Path(tmpd)
            built = build(load_profile(REPO / "profiles" / "default.toml"), tmp / "build",
                          use_p4c=shutil.which("p4c-bm2-ss") is not None)
            assert built.p4info is not None
            floor = stream_floor(built.p4info, seconds)
            res["stream_floor"] = floor
            print(f"stream floor     {floor['pps']:>7,} packets/s answered (packet-in -> packet-out, no work on "
                  f"either side); CPU controller {floor['controller_cpu_pct']} %, switch {floor['switch_cpu_pct']} %")
            for kind in kinds:
                for path in ("slow", "fast"):
                    run_tmp = tmp / f"{kind}-{path}"
                    run_tmp.mkdir()
                    r = through_switch(kind, tmp / "build", run_tmp, path, args.rate, seconds, args.spy)
                    res["through_switch"].append(r)
                    print(f"{kind:10} {path} path: {r['delivered_pps']:>7,} packets/s delivered of "
                          f"{r['offered_pps']:,} offered; CPU controller {r['controller_cpu_pct']} %, "
                          f"switch {r['switch_cpu_pct']} %, "
                          f"queue drops {r['queue_dropped']}")
    res["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    res["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    for name, r in res["in_process"].items():
        print(f"in-process {name:16} {r['pps']:>9,} packets/s of CPU time  ({r['packets']} packets, {r['forwarded']} out)")
    print(f"load average {load_before[0]:.1f} -> {res['loadavg']['after'][0]:.1f} on {os.cpu_count()} cores")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    if prof is not None:
        prof.dump_stats(str(args.profile))
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
