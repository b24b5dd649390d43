"""Packet I/O on veths: frames offered on one veth, counted on another, through softswitch (mmap rings),
softswitch (plain sockets), BMv2 simple_switch_grpc and the kernel's own IPv4 forwarding, side by side.

    sudo .venv/bin/python bench/bench_packet_io.py [--seconds 5] [--warmup 1] [--rates 0,120000]
        [--only ring,plain,bmv2,kernel] [--size 64]

Topology: host `src` (namespace) --veth-- switch ports 1 and 2 (root namespace) --veth-- host `dst`
(namespace). A sender inside `src` offers one UDP flow through a TPACKET transmit ring, as fast as it can
(rate 0) and at each fixed rate of --rates; the
switch has a flow_v4 entry for it (offload to port 2, MAC rewrite), so every frame is a table hit. Forwarded
frames (addressed to a MAC dst does not own, so its stack drops them at once) are counted from dst's
/sys/class/net/eth0/statistics/rx_packets, offered ones from src's tx_packets,
over `--seconds` after `--warmup`. For the kernel, both switch-side veth ends move into a router namespace
with ip_forward on. The machine load (os.getloadavg) is recorded with every figure: the sender, the switch
and the kernel's receive path share the CPUs, so a busy machine lowers every figure; rerun when it is idle.
Prints a table and writes bench/results/packet_io.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ROUTER_MAC = "02:00:00:00:01:01"
SRC_MAC, DST_MAC = "02:00:00:00:00:10", "02:00:00:00:00:20"
# Forwarded frames are addressed to a MAC nobody has: dst's veth still counts them (rx_packets), and its stack
# drops them as PACKET_OTHERHOST at once, so the receiving host's IP/UDP/ICMP work is not billed to the
# forwarder (for the switches it runs in their send() call; for the kernel, on the sender's CPU).
COUNT_MAC = "02:00:00:00:00:99"
SRC_IP, DST_IP = "10.1.0.2", "10.2.0.2"
SPORT, DPORT = 40000, 9  # discard port: dst's stack drops the datagrams quietly

SOL_PACKET = 263
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_QDISC_BYPASS = 20
TPACKET_V2 = 1


def frame(size: int) -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    base = Ether(dst=ROUTER_MAC, src=SRC_MAC) / IP(src=SRC_IP, dst=DST_IP, ttl=64) / UDP(sport=SPORT, dport=DPORT)
    return bytes(base / Raw(b"x" * max(size - len(base), 0)))


def send_loop(iface: str, data: bytes, seconds: float, rate: int = 0) -> int:
    """Offer `data` on `iface` through a TPACKET_V2 transmit ring whose slots all hold the frame: each round
    re-arms slots the kernel has completed and kicks them with one send(). `rate` 0: as fast as this process
    can (it then spins on a CPU the switch could use); otherwise that many frames/s, sleeping in between."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
    sock.setsockopt(SOL_PACKET, PACKET_LOSS, 1)
    sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    fsize, nr = 2048, 512
    sock.setsockopt(SOL_PACKET, PACKET_TX_RING, struct.pack("=IIII", fsize * 16, nr // 16, fsize, nr))
    ring = mmap.mmap(sock.fileno(), fsize * nr, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    sock.bind((iface, 0))
    for i in range(nr):
        ring[i * fsize + 32:i * fsize + 32 + len(data)] = data
        struct.pack_into("=I", ring, i * fsize + 4, len(data))
    status = struct.Struct("=I")
    sent = 0
    slot = 0
    start = time.monotonic()
    end = start + seconds
    while (now := time.monotonic()) < end:
        budget = nr if rate == 0 else min(nr, int(rate * (now - start)) - sent)
        if budget <= 0:
            time.sleep(0.0005)
            continue
        armed = 0
        # A completed slot reads TP_STATUS_AVAILABLE, possibly with a timestamp flag: test the busy bits only.
        while armed < budget and not status.unpack_from(ring, slot * fsize)[0] & 0x7:
            status.pack_into(ring, slot * fsize, 1)
            slot = (slot + 1) % nr
            armed += 1
        sent += armed
        with contextlib.suppress(BlockingIOError):  # the device is busy: re-arm and kick again
            sock.send(b"", socket.MSG_DONTWAIT)
    return sent


def sysfs_counter(ns: str, iface: str, name: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{iface}/statistics/{name}"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process `pid` and its threads (0 without a process: the kernel case)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(lab: Any, data: bytes, seconds: float, warmup: float, rate: int, pid: int | None = None) -> dict[str, Any]:
    src, dst = lab.hosts["src"], lab.hosts["dst"]
    load_before = os.getloadavg()[0]
    sender = subprocess.Popen(["ip", "netns", "exec", src.ns, sys.executable, __file__, "--send", src.iface,
                               "--frame", data.hex(), "--seconds", str(warmup + seconds + 1),
                               "--rate", str(rate)],
                              stdout=subprocess.PIPE, text=True)
    try:
        # Wait until frames flow (the sender is up), then the warm-up, then the measured window.
        deadline = time.monotonic() + 10
        first = sysfs_counter(src.ns, src.iface, "tx_packets")
        while sysfs_counter(src.ns, src.iface, "tx_packets") == first:
            if time.monotonic() > deadline or sender.poll() is not None:
                raise RuntimeError("the sender did not start")
            time.sleep(0.05)
        time.sleep(warmup)
        off0, fwd0, t0, cpu0 = (sysfs_counter(src.ns, src.iface, "tx_packets"),
                                sysfs_counter(dst.ns, dst.iface, "rx_packets"), time.monotonic(), cpu_seconds(pid))
        time.sleep(seconds)
        off1, fwd1, t1, cpu1 = (sysfs_counter(src.ns, src.iface, "tx_packets"),
                                sysfs_counter(dst.ns, dst.iface, "rx_packets"), time.monotonic(), cpu_seconds(pid))
    finally:
        sender.wait(timeout=warmup + seconds + 30)
    dt = t1 - t0
    out = {"forwarded_pps": round((fwd1 - fwd0) / dt), "offered_pps": round((off1 - off0) / dt),
           "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2)}
    if pid is not None:
        # The switch's own CPU share of the window, and what it forwards per CPU-second it got: on a loaded
        # machine the second figure says more about the switch than the first.
        out["switch_cpu_share"] = round((cpu1 - cpu0) / dt, 2)
        out["forwarded_per_switch_cpu_s"] = round((fwd1 - fwd0) / max(cpu1 - cpu0, 1e-9))
    return out


def switch_case(lab: Any, kind: Literal["softswitch", "bmv2"], extra: tuple[str, ...], build_dir: Path, data: bytes,
                seconds: float, warmup: float, rates: list[int]) -> dict[str, Any]:
    from offloadgen.switchproc import SwitchProcess, SwitchSpec, free_grpc_addr
    from runtime.client import SwitchClient
    from runtime.entities import TableEntry
    from runtime.pipeline import load_build

    src, dst = lab.hosts["src"], lab.hosts["dst"]
    spec = SwitchSpec(kind=kind, ports={1: src.switch_iface, 2: dst.switch_iface}, grpc_addr=free_grpc_addr(),
                      extra=extra, log_level="warn")
    with SwitchProcess(spec) as sw, SwitchClient(sw.grpc_addr) as client:
        client.set_pipeline(load_build(build_dir, kind))
        client.insert([TableEntry("flow_v4", {"in_port": 1, "src_addr": SRC_IP, "dst_addr": DST_IP, "proto": 17,
                                              "src_port": SPORT, "dst_port": DPORT},
                                  "offload", {"port": 2, "smac": ROUTER_MAC, "dmac": COUNT_MAC})])
        result: dict[str, Any] = {rate_key(r): measure(lab, data, seconds, warmup, r, sw.proc.pid if sw.proc else None)
                  for r in rates}
        hits = client.read_table("flow_v4", counters=True)
        result["entry_hits"] = hits[0].counter.packets if hits and hits[0].counter else None
        log = sw.log_tail(5).strip()
        if "packet ring unavailable" in log:
            result["note"] = log
    return result


def rate_key(rate: int) -> str:
    return "offered_max" if rate == 0 else f"offered_{rate}"


def kernel_case(lab: Any, data: bytes, seconds: float, warmup: float, rates: list[int]) -> dict[str, Any]:
    from offloadgen.netlab import sh

    src, dst = lab.hosts["src"], lab.hosts["dst"]
    rt = f"og{lab.tag}-rt"
    sh("ip", "netns", "add", rt)
    lab._namespaces.append(rt)  # removed with the lab; deleting it deletes the moved veth ends
    for iface, addr in ((src.switch_iface, "10.1.0.1/24"), (dst.switch_iface, "10.2.0.1/24")):
        sh("ip", "link", "set", iface, "netns", rt)
        sh("ip", "addr", "add", addr, "dev", iface, ns=rt)
        sh("ip", "link", "set", iface, "up", ns=rt)
    sh("ip", "link", "set", "lo", "up", ns=rt)
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=rt)
    sh("ip", "neigh", "replace", DST_IP, "lladdr", COUNT_MAC, "dev", dst.switch_iface, "nud", "permanent", ns=rt)
    return {rate_key(r): measure(lab, data, seconds, warmup, r) for r in rates}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=64, help="frame size in bytes without FCS (default 64)")
    ap.add_argument("--rates", default="0,120000",
                    help="offered rates in frames/s, comma-separated; 0 = as fast as the sender can (default 0,120000)")
    ap.add_argument("--only", default="ring,plain,bmv2,kernel", help="comma-separated cases to run")
    ap.add_argument("--send", help=argparse.SUPPRESS)
    ap.add_argument("--frame", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.send:
        print(send_loop(args.send, bytes.fromhex(args.frame), args.seconds, args.rate))
        return
    if os.geteuid() != 0:
        sys.exit("bench_packet_io: needs root (namespaces, veths, raw sockets); run it with sudo")
    from offloadgen.build import build
    from offloadgen.netlab import Netlab, sh
    from offloadgen.profile import load_profile

    cases = [c.strip() for c in args.only.split(",") if c.strip()]
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    data = frame(args.size)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pio-") as tmp, Netlab() as lab:
        build_dir = Path(tmp)
        build(load_profile(REPO / "profiles" / "default.toml"), build_dir,
              use_p4c=shutil.which("p4c-bm2-ss") is not None)
        lab.add_host("src", SRC_MAC, f"{SRC_IP}/24", "10.1.0.1")
        lab.add_host("dst", DST_MAC, f"{DST_IP}/24", "10.2.0.1")
        sh("ip", "link", "set", lab.hosts["src"].switch_iface, "address", ROUTER_MAC)
        for case in cases:
            if case == "kernel":
                continue  # last: it moves the switch-side veth ends away
            if case == "bmv2" and shutil.which("simple_switch_grpc") is None:
                results[case] = {"skipped": "simple_switch_grpc not on PATH"}
                continue
            if case == "bmv2":
                results[case] = switch_case(lab, "bmv2", (), build_dir, data, args.seconds, args.warmup, rates)
            else:
                results[case] = switch_case(lab, "softswitch", ("--packet-io", case), build_dir, data, args.seconds,
                                            args.warmup, rates)
            print(f"{case:8s} {results[case]}", flush=True)
        if "kernel" in cases:
            results["kernel"] = kernel_case(lab, data, args.seconds, args.warmup, rates)
            print(f"{'kernel':8s} {results['kernel']}", flush=True)
    names = {"ring": "softswitch (mmap rings)", "plain": "softswitch (plain sockets)", "bmv2": "BMv2 simple_switch_grpc",
             "kernel": "Linux ip_forward"}
    print(f"\n{len(data)}-byte UDP frames, one flow (a table hit), {args.seconds:g} s per figure, {os.cpu_count()} CPUs:")
    for rate in rates:
        key = rate_key(rate)
        print(f" offered {'as fast as the sender can' if rate == 0 else f'{rate:,d} frames/s'}:")
        kernel_pps = results.get("kernel", {}).get(key, {}).get("forwarded_pps")
        for case, r in results.items():
            m = r.get(key)
            if m is None:
                print(f"  {names.get(case, case):28s} {r}")
                continue
            rel = f"  {m['forwarded_pps'] / kernel_pps:.2f}x kernel" if kernel_pps else ""
            cpu = (f"  switch CPU {m['switch_cpu_share']:.2f}, {m['forwarded_per_switch_cpu_s']:,d}/CPU-s"
                   if "switch_cpu_share" in m else "")
            print(f"  {names.get(case, case):28s} {m['forwarded_pps']:9,d} forwarded/s of {m['offered_pps']:9,d}"
                  f"{rel}{cpu}  (load {m['load_1min_before']}->{m['load_1min_after']})")
    out = REPO / "bench" / "results" / "packet_io.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "packet I/O on veths: frames offered on one veth, counted on another",
        "frame_bytes": len(data), "seconds": args.seconds, "warmup": args.warmup, "cpus": os.cpu_count(),
        "rates": rates, "results": results, "python": platform.python_version(), "kernel": platform.release(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2) + "\n")
    print(f"  written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
