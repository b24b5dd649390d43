"""The two slow paths compared on softswitch (or BMv2): how fast new connections reach [HW_OFFLOAD], and how
many packets per second the slow path forwards. Prints the figures and writes bench/results/slowpath-modes-<switch>.json.

- connections/s: host A opens N UDP connections to an echo server on B (two datagrams each way, all at
  once); the time from the first datagram until `offloadgen stats` counts N acknowledged hardware adds.
- slow-path packets/s: a TCP transfer to port 5001, which the policy keeps on the slow path; packet-ins per
  second at the controller and the transfer's Mbit/s.

    .venv/bin/python bench/bench_slowpath_modes.py [--switch softswitch|bmv2] [--conns 200] [--mib 8]

Needs root (namespaces, veths); uses random names and a free gRPC port like the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "runtime"))

from hostapps import TCP_CLIENT, TCP_SERVER, UDP_SERVER, start_server, stop, wait_for  # noqa: E402

from offloadgen.build import build  # noqa: E402
from offloadgen.netlab import Host, Netlab  # noqa: E402
from offloadgen.profile import load_profile  # noqa: E402
from offloadgen.switchproc import SwitchProcess, SwitchSpec, free_grpc_addr, free_port  # noqa: E402
from runtime.status import query  # noqa: E402

B_ADDR = "192.0.2.20"

#: N UDP connections from consecutive source ports, two datagrams each way.
MANY_UDP = r"""
import socket, sys
n, base = int(sys.argv[2]), int(sys.argv[3])
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", base + i)); s.settimeout(2)
    s.sendto(b"hello", (sys.argv[1], 5353)); socks.append(s)
ok = 0
for rnd in range(2):  # the second round: a packet of a connection seen both ways, which offers it
    for s in socks:
        try:
            s.recvfrom(2048); ok += rnd
        except OSError:
            pass
        if rnd == 0:
            s.sendto(b"again", (sys.argv[1], 5353))
print(ok)
"""

FLOWTABLE = """
[flowtable]
ports = ["lan1", "lan2", "lan3", "wan"]
tcp_timeout = 30
udp_timeout = 30

[[flowtable.rules]]
action = "skip"
proto = "tcp"
dport = 5001
"""


@contextlib.contextmanager
def lab(kind: str, slowpath: str, build_dir: Path, tmp: Path) -> Iterator[tuple[Host, Host, Path]]:
    text = (REPO / "configs" / "router.toml").read_text()
    config = tmp / "router.toml"
    config.write_text(text[:text.index("\n[flowtable]")] + "\n" + FLOWTABLE)
    with Netlab() as net:
        a = net.add_host("a", mac="02:00:00:00:00:10", ipv4="10.0.1.10/24", gw4="10.0.1.1")
        b = net.add_host("b", mac="02:00:00:00:00:20", ipv4=f"{B_ADDR}/24", gw4="192.0.2.1")
        spec = SwitchSpec(kind=kind, ports={1: a.switch_iface, 4: b.switch_iface}, grpc_addr=free_grpc_addr(),  # type: ignore[arg-type]
                          cpu_port=255, log_file=tmp / "switch.log", thrift_port=free_port())
        sock = tmp / "ctl.sock"
        with SwitchProcess(spec), open(tmp / f"controller-{slowpath}.log", "ab") as log:
            ctl = subprocess.Popen([sys.executable, "-m", "offloadgen.cli", "run", "--config", str(config), "--switch",
                                    spec.grpc_addr, "--build", str(build_dir), "--target", kind, "--status-socket",
                                    str(sock), "--slowpath", slowpath], stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: _ok(sock), 30, "the controller")
                yield a, b, sock
            except BaseException:
                print((tmp / f"controller-{slowpath}.log").read_text()[-3000:], file=sys.stderr)
                raise
            finally:
                ctl.terminate()
                ctl.wait(30)


def _ok(sock: Path) -> bool:
    try:
        query("stats", sock, timeout=2)
        return True
    except Exception:
        return False


def conns_per_s(a: Host, b: Host, sock: Path, n: int) -> dict[str, Any]:
    srv = start_server(b, UDP_SERVER, "0.0.0.0", "5353")
    # neighbours resolved first: a burst to an unresolved next hop measures the neighbour queue, not this
    a.run("ping", "-c", "2", "-i", "0.2", "-W", "2", B_ADDR, check=False)
    try:
        before = query("stats", sock)["flowtable"]["counters"]["hw_add_ok"]
        t0 = time.monotonic()
        out = a.run(sys.executable, "-c", MANY_UDP, B_ADDR, str(n), "20000", timeout=120)
        wait_for(lambda: query("stats", sock)["flowtable"]["counters"]["hw_add_ok"] - before >= n, 120,
                 f"{n} connections in hardware (answered: {out.stdout.strip()})")
        dt = time.monotonic() - t0
        st = query("stats", sock)
    finally:
        stop(srv)
    return {"counters": st["flowtable"]["counters"], "controller": st["controller"], "connections": n, "answered": int(out.stdout.strip()), "seconds": round(dt, 3),
            "connections_per_s_to_hw_offload": round(n / dt, 1)}


def slowpath_pps(a: Host, b: Host, sock: Path, mib: int) -> dict[str, Any]:
    srv = start_server(b, TCP_SERVER, "0.0.0.0", "5001")
    try:
        pin0 = query("stats", sock)["controller"]["packet_in"]
        t0 = time.monotonic()
        out = a.run(sys.executable, "-c", TCP_CLIENT, B_ADDR, "5001", str(mib * 1024 * 1024), timeout=600)
        dt = time.monotonic() - t0
        pin = query("stats", sock)["controller"]["packet_in"] - pin0
    finally:
        stop(srv)
    _peer, n, digest, sent = out.stdout.splitlines()[-1].split()
    return {"bytes": int(n), "intact": digest == sent, "seconds": round(dt, 3), "packet_in": pin,
            "slowpath_packets_per_s": round(pin / dt, 1), "mbit_per_s": round(int(n) * 8 / dt / 1e6, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--switch", choices=("softswitch", "bmv2"), default="softswitch")
    ap.add_argument("--conns", type=int, default=200)
    ap.add_argument("--mib", type=int, default=8)
    ap.add_argument("--slowpath", choices=("offloadgen", "kernel"), action="append",
                    help="only this slow path (repeatable; default both)")
    args = ap.parse_args()
    results: dict[str, Any] = {"switch": args.switch, "machine": platform.machine(), "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="ogbench-") as td:
        tmp = Path(td)
        build(load_profile(REPO / "profiles" / "default.toml"), tmp / "build",
              use_p4c=args.switch == "bmv2" and shutil.which("p4c-bm2-ss") is not None)
        for sp in args.slowpath or ("offloadgen", "kernel"):
            with lab(args.switch, sp, tmp / "build", tmp) as (a, b, sock):
                r = {"conns": conns_per_s(a, b, sock, args.conns), "slowpath": slowpath_pps(a, b, sock, args.mib)}
            results[sp] = r
            print(f"{args.switch} --slowpath {sp:<10}: {r['conns']['connections_per_s_to_hw_offload']:>8} connections/s "
                  f"to [HW_OFFLOAD]; slow path {r['slowpath']['slowpath_packets_per_s']:>8} packets/s "
                  f"({r['slowpath']['mbit_per_s']} Mbit/s TCP)", flush=True)
    out = REPO / "bench" / "results" / f"slowpath-modes-{args.switch}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
