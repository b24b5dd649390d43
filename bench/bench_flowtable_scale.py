"""The control plane at scale: N concurrent TCP connections through the router (masquerade) into the switch.

For each switch and N: a LAN host (four source addresses) opens N connections to a WAN host (four server
ports) through softswitch or BMv2 driven by the real `offloadgen run` process; every connection sends 16
bytes every 5 s from the moment it is up and checks the echo; the flow timeout is short (10 s) and the
connections live for 3x it, so they stay alive only if the switch's counters, read by the controller, keep
them. Then every connection closes. Reported per run:

- connections/s reaching [HW_OFFLOAD] (N / time from the first SYN until all N are hw_offloaded),
- flows that expired while active (the flowtable's `expired` counter before the first close; must be 0),
- connections with a stall over 1 s (longest send-to-echo time; must be 0),
- entries left on the switch after close (read from the switch once closing flows have left; must be 0),
- the controller's and the switch's CPU % (utime+stime from /proc/<pid>/stat over the run; 100 % is one
  core) and the controller's RSS per flow,
- the controller's periodic-work durations when `offloadgen stats` exposes them,
- where the CPU went while the connections were opened (the machine, the controller, the switch),
- when each stall over 1 s began (in the ramp or the hold), and softswitch's own account of what it lost
  (frames the kernel dropped at a full receive ring, packet-ins dropped at a full stream).

The handshakes in flight are bounded over all client processes (--concurrent, default 512): a closed
loop, so an overloaded slow path slows the ramp down rather than drowning in SYN retransmissions.

    .venv/bin/python bench/bench_flowtable_scale.py [--n 1000,10000,30000] [--switch softswitch,bmv2] [--quick]
        [--concurrent 512] [--profile DIR]

Writes bench/results/flowtable_scale.json and flowtable_scale.png, prints a table. Needs root. Every run
is bounded in time and removes its namespaces and processes, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from offloadgen.build import build  # noqa: E402
from offloadgen.netlab import Host, Netlab  # noqa: E402
from offloadgen.profile import load_profile  # noqa: E402
from offloadgen.switchproc import SwitchKind, SwitchProcess, SwitchSpec, free_grpc_addr, free_port  # noqa: E402
from runtime.status import StatusError, query  # noqa: E402

RESULTS = REPO / "bench" / "results"
HOSTAPP = REPO / "bench" / "scale_hostapp.py"
B_ADDR, WAN_ADDR = "192.0.2.20", "192.0.2.1"
SRCS = ["10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.1.13"]
PORTS = [5010, 5011, 5012, 5013, 5014, 5015]
PER_CLIENT = 8000  # connections per client process: a process may not hold more fds than RLIMIT_NOFILE's hard limit
TIMEOUT_S = 10
CLOSE_TIMEOUT_S = 2
INTERVAL_S = 5
SPLIT = "\n[flowtable]"
FLOWTABLE = f"""
[flowtable]
ports = ["lan1", "wan"]
tcp_timeout = {TIMEOUT_S}
udp_timeout = {TIMEOUT_S}
close_timeout = {CLOSE_TIMEOUT_S}
"""
HZ = os.sysconf("SC_CLK_TCK")


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of proc(5))


def thread_ticks(pid: int) -> dict[str, int]:
    """CPU clock ticks per thread name (threads of one name summed): which of a process's threads is busy,
    where a sampling profiler cannot tell a thread in C without the GIL from one waiting."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[comm] = out.get(comm, 0) + int(fields[11]) + int(fields[12])
    return out


def thread_cpu_pct(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, float]:
    pct = {k: round(100 * (v - before.get(k, 0)) / HZ / seconds, 1) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in pct.items() if v >= 0.5), key=lambda kv: -kv[1]))


def machine_ticks() -> int:
    """Busy clock ticks of all CPUs together (the first line of /proc/stat, less idle and iowait)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(v[:8]) - v[3] - v[4]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Sampler:
    """The controller's flowtable stats over time, from its status socket (what `offloadgen stats` shows)."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.samples: list[dict[str, Any]] = []

    def stats(self) -> dict[str, Any] | None:
        try:
            return dict(query("stats", self.sock, timeout=20))
        except (StatusError, OSError, TimeoutError):
            return None

    def sample(self, t: float) -> dict[str, Any] | None:
        s = self.stats()
        if s is not None:
            ft = s["flowtable"]
            self.samples.append({"t": round(t, 2), "flows": ft["flows"], "hw_offloaded": ft["hw_offloaded"],
                                 "offloaded": ft["offloaded"], "expired": ft["counters"].get("expired", 0),
                                 "hw_add_ok": ft["counters"].get("hw_add_ok", 0),
                                 # whether the offload engine keeps up: its queues and its bulk reads so far
                                 "wq_add": ft.get("wq_add"), "wq_del": ft.get("wq_del"), "wq_stats": ft.get("wq_stats"),
                                 "stats_passes": ft["counters"].get("hw_stats_passes", 0),
                                 "gc_us_last": s.get("controller", {}).get("flowtable_gc_us_last")})
        return s


@contextlib.contextmanager
def lab(kind: str, build_dir: Path, tmp: Path, flowtable: str = FLOWTABLE) -> Iterator[tuple[Host, Host, SwitchProcess, subprocess.Popen[bytes],
                                                                   Path]]:
    config = tmp / "router.toml"
    text = (REPO / "configs" / "router.toml").read_text()
    config.write_text(text[:text.index(SPLIT)] + "\n" + flowtable)
    with Netlab() as net:
        a = net.add_host("a", mac="02:00:00:00:00:10", ipv4=f"{SRCS[0]}/24", gw4="10.0.1.1")
        for extra in SRCS[1:]:
            a.run("ip", "addr", "add", f"{extra}/24", "dev", "eth0")
        b = net.add_host("b", mac="02:00:00:00:00:20", ipv4=f"{B_ADDR}/24", gw4=WAN_ADDR)
        for h in (a, b):
            # Room for tens of thousands of sockets on one host: ports, backlog, SYN queue.
            h.run("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000", "net.core.somaxconn=65535",
                  "net.ipv4.tcp_max_syn_backlog=65535", check=False)
        spec = SwitchSpec(kind=cast(SwitchKind, kind), ports={1: a.switch_iface, 4: b.switch_iface}, grpc_addr=free_grpc_addr(),
                          cpu_port=255, log_file=tmp / "switch.log", thrift_port=free_port(),
                          log_level="info" if kind == "softswitch" else None)  # its stop summary is INFO
        sock = tmp / "ctl.sock"
        with SwitchProcess(spec) as sw:
            log = (tmp / "controller.log").open("ab")
            ctl = subprocess.Popen([sys.executable, "-m", "offloadgen.cli", "run", "--config", str(config),
                                    "--switch", spec.grpc_addr, "--build", str(build_dir), "--target", kind,
                                    "--status-socket", str(sock)], stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: ctl.poll() is None and Sampler(sock).stats() is not None, 60,
                         "the controller's status socket")
                yield a, b, sw, ctl, sock
            finally:
                ctl.send_signal(signal.SIGTERM)
                try:
                    ctl.wait(60)
                except subprocess.TimeoutExpired:
                    ctl.kill()
                    ctl.wait()
                log.close()


def read_line(proc: subprocess.Popen[str], want: str, timeout: float) -> None:
    """Wait for a host app to print `want` (the app prints one word per phase)."""
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"host app exited before printing {want!r}")
        if line.startswith(want):
            return
    raise TimeoutError(f"host app did not print {want!r} within {timeout:.0f} s")


def watch_for(proc: subprocess.Popen[str], want: str) -> threading.Event:
    """An event set when the process prints a line starting with `want` (read on a thread of its own)."""
    ev = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(want):
                ev.set()

    threading.Thread(target=reader, daemon=True).start()
    return ev


def run_one(kind: str, n: int, build_dir: Path, tmp: Path, profile: Path | None = None,
            concurrent: int = 512) -> dict[str, Any]:
    hold = 3 * TIMEOUT_S
    res: dict[str, Any] = {"switch": kind, "n": n, "flow_timeout_s": TIMEOUT_S, "hold_s": hold,
                           "concurrent_handshakes": concurrent}
    with lab(kind, build_dir, tmp) as (a, b, sw, ctl, sock):
        samp = Sampler(sock)
        servers = [b.popen(sys.executable, str(HOSTAPP), "server", B_ADDR, str(p), stdout=subprocess.PIPE)
                   for p in PORTS]
        clients: list[subprocess.Popen[str]] = []
        spy = None
        if profile is not None:
            # py-spy samples the controller from outside (no change to the measured process); collapsed stacks
            # per thread, for flamegraph.pl or a grep.
            profile.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(["py-spy", "record", "-p", str(ctl.pid), "-r", "100", "--threads", "--gil", "--format",
                                    "raw", "--nonblocking", "-o", str(profile / f"controller-{kind}-{n}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for srv in servers:
                read_line(srv, "ready", 30)
            rss0 = rss_kib(ctl.pid)
            assert sw.proc is not None
            cpu0, wall0, sw_cpu0 = cpu_ticks(ctl.pid), time.monotonic(), cpu_ticks(sw.proc.pid)
            shares = [PER_CLIENT] * (n // PER_CLIENT) + ([n % PER_CLIENT] if n % PER_CLIENT else [])
            outs = [tmp / f"client{i}.json" for i in range(len(shares))]
            for i, (k, out) in enumerate(zip(shares, outs, strict=True)):
                ports = PORTS[i % len(PORTS):] + PORTS[:i % len(PORTS)]
                # the handshakes in flight are bounded in total, whatever the number of processes
                share = max(1, round(concurrent * k / n))
                clients.append(a.popen(sys.executable, str(HOSTAPP), "client", B_ADDR, ",".join(map(str, ports)),
                                       ",".join(SRCS), str(k), str(INTERVAL_S), str(hold), str(out), str(share),
                                       stdout=subprocess.PIPE))
            t0 = time.monotonic()
            ramp0 = (machine_ticks(), cpu_ticks(ctl.pid), cpu_ticks(sw.proc.pid))
            # Until every connection is [HW_OFFLOAD], or the switch has acknowledged N flows' entries (when
            # flows expire during the ramp all N are never up at once), or 100 connections/s would be done.
            limit = max(60.0, n / 100)
            all_hw = None
            while time.monotonic() - t0 < limit:
                s = samp.sample(time.monotonic() - t0)
                if s is not None and s["flowtable"]["hw_offloaded"] >= n:
                    all_hw = time.monotonic() - t0
                    break
                if s is not None and s["flowtable"]["counters"].get("hw_add_ok", 0) >= n:
                    break
                time.sleep(0.5)
            res["time_to_all_hw_offload_s"] = all_hw
            # Where the CPU went while connections were being opened: the whole machine (all cores, 100 % = one
            # core, as for the processes), the controller and the switch; the rest is the hosts and the kernel.
            ramp_s = time.monotonic() - t0
            ramp1 = (machine_ticks(), cpu_ticks(ctl.pid), cpu_ticks(sw.proc.pid))
            res["ramp_cpu_pct"] = {name: round(100 * (b1 - b0) / HZ / ramp_s, 1) for name, b0, b1 in
                                   zip(("machine_busy", "controller", "switch"), ramp0, ramp1, strict=True)}
            res["hw_offload_per_s"] = round(n / all_hw, 1) if all_hw else None
            # When flows expire while others are still being added, all N are never [HW_OFFLOAD] at once;
            # then the time until N pairs had been acknowledged by the switch (re-adds included) is the rate.
            n_adds = next((x["t"] for x in samp.samples if x["hw_add_ok"] >= n), None)
            res["time_to_n_hw_adds_s"] = n_adds
            res["hw_adds_per_s"] = round(n / n_adds, 1) if n_adds else None
            peak_hw = max((x["hw_offloaded"] for x in samp.samples), default=0)
            res["hw_offloaded_peak"] = peak_hw
            rss1 = rss_kib(ctl.pid)
            res["rss_kib_before"], res["rss_kib_loaded"] = rss0, rss1
            res["rss_bytes_per_flow"] = round((rss1 - rss0) * 1024 / max(1, peak_hw))
            # The hold: sample until the first client starts closing. Only expiries up to then count as
            # false ones: a closed connection's flow also ends through the flowtable's `expired` counter
            # (its close timeout), and the client processes close one after another.
            closing = [watch_for(c, "closing") for c in clients]
            end = t0 + limit + hold + 120
            last = None
            while time.monotonic() < end:
                if any(ev.is_set() or c.poll() is not None for ev, c in zip(closing, clients, strict=True)):
                    break
                last = samp.sample(time.monotonic() - t0) or last
                time.sleep(1.0)
            expired_before_close = None
            if last is not None:
                expired_before_close = last["flowtable"]["counters"].get("expired", 0)
                res["hw_offloaded_before_close"] = last["flowtable"]["hw_offloaded"]
                # Pass durations wherever the controller shows them (the stats pass may join the flowtable's).
                timed = {**last["flowtable"].get("counters", {}), **last["flowtable"], **last["controller"]}
                res["periodic_work"] = {k: v for k, v in timed.items() if k.endswith(("_us_last", "_us_max"))}
                res["flowtable_counters"] = last["flowtable"]["counters"]
                res["controller_counters"] = {k: v for k, v in last["controller"].items()
                                              if isinstance(v, int) and not k.endswith(("_us_last", "_us_max"))}
            cpu1, wall1 = cpu_ticks(ctl.pid), time.monotonic()
            res["controller_cpu_pct"] = round(100 * (cpu1 - cpu0) / HZ / (wall1 - wall0), 1)
            res["switch_cpu_pct"] = round(100 * (cpu_ticks(sw.proc.pid) - sw_cpu0) / HZ / (wall1 - wall0), 1)
            res["expired_while_active"] = expired_before_close
            for c in clients:
                c.wait(timeout=max(90, n / 100))
            parts = [json.loads(o.read_text()) for o in outs]
            res["client"] = merge_clients(parts)
            res["stalled_over_1s"] = res["client"]["stalled_over_1s"]
            # Handshakes through the slow path: every SYN, SYN/ACK and ACK is a packet-in.
            res["handshakes_per_s"] = round(res["client"]["connected"] / max(res["client"]["connect_phase_s"], 1e-3))
            # After the close: closing flows leave after close_timeout; then nothing may be left on the switch.
            wait_for(lambda: (x := samp.sample(time.monotonic() - t0)) is not None and x["flowtable"]["flows"] == 0,
                     CLOSE_TIMEOUT_S + 60 + n / 500, "the flowtable to empty after the close")
            entries = query("entries", sock, timeout=60)
            res["entries_left_after_close"] = len(entries)
            # What the close cost the controller: every FIN, and every packet after it, is a packet-in.
            final = samp.stats()
            if final is not None and last is not None:
                res["controller_counters_close"] = {
                    k: v - res["controller_counters"].get(k, 0) for k, v in final["controller"].items()
                    if isinstance(v, int) and not k.endswith(("_us_last", "_us_max"))
                    and v != res["controller_counters"].get(k, 0)}
                res["close_holds"] = {k: final["flowtable"]["counters"].get(k)
                                      for k in ("held_flows", "hold_us_max", "hold_expired")}
                res["periodic_work_end"] = {k: v for k, v in {**final["flowtable"], **final["controller"]}.items()
                                            if k.endswith("_us_max")}
                res["flowtable_counters_close"] = {
                    k: v - last["flowtable"]["counters"].get(k, 0) for k, v in final["flowtable"]["counters"].items()
                    if isinstance(v, int) and v != last["flowtable"]["counters"].get(k, 0)}
            res["samples"] = samp.samples
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(30)
            for p in [*clients, *servers]:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    # The switch has stopped: softswitch's last lines say what each port lost in the kernel and how many
    # packet-ins it dropped (BMv2 logs no such summary).
    swlog = tmp / "switch.log"
    if swlog.exists():
        res["switch_summary"] = [line.split(": ", 1)[-1] for line in swlog.read_text(errors="replace").splitlines()
                                 if "dropped by the kernel" in line or "packet-ins:" in line]
    return res


def merge_clients(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: sum(p[k] for p in parts) for k in ("n", "connected", "sent", "echoed",
                                                                   "stalled_over_1s", "errors")}
    for k in ("connect_phase_s", "close_phase_s", "max_connect_s", "max_stall_s", "p99_stall_s"):
        out[k] = max(p[k] for p in parts)
    out["error_samples"] = [e for p in parts for e in p["error_samples"]][:5]
    began = sorted(t for p in parts for t in p.get("stalls_over_1s_began_s", []))
    out["stalls_over_1s_began_s"] = began
    # stalls while connections were still being opened, and after (the hold)
    ramp = out["connect_phase_s"]
    out["stalls_over_1s_in_ramp"] = sum(1 for t in began if t <= ramp)
    out["processes"] = len(parts)
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, ax = plt.subplots(figsize=(9, 5))
    for r in results:
        xs = [s["t"] for s in r.get("samples", [])]
        ax.plot(xs, [s["hw_offloaded"] for s in r.get("samples", [])], label=f"{r['switch']} N={r['n']}")
    ax.set_xlabel("seconds since the first SYN")
    ax.set_ylabel("flows [HW_OFFLOAD]")
    ax.set_title("connections reaching [HW_OFFLOAD], then held 3x the flow timeout, then closed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="1000,10000,30000", help="connection counts, comma separated")
    ap.add_argument("--switch", default="softswitch,bmv2", help="softswitch, bmv2 or both")
    ap.add_argument("--quick", action="store_true", help="N = 1000 only")
    ap.add_argument("--out", type=Path, default=RESULTS / "flowtable_scale.json")
    ap.add_argument("--profile", type=Path, help="record the controller with py-spy into this directory")
    ap.add_argument("--concurrent", type=int, default=512,
                    help="handshakes in flight at most, over all client processes (default 512)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_flowtable_scale: needs root (network namespaces); run it as root", file=sys.stderr)
        return 2
    ns = [1000] if args.quick else [int(x) for x in args.n.split(",")]
    kinds = args.switch.split(",")
    if "bmv2" in kinds and (shutil.which("simple_switch_grpc") is None or shutil.which("p4c-bm2-ss") is None):
        print("bench_flowtable_scale: simple_switch_grpc or p4c-bm2-ss not on PATH; BMv2 skipped")
        kinds.remove("bmv2")
    load0 = os.getloadavg()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ft-scale-") as tmpd:
        tmp = Path(tmpd)
        build_dir = tmp / "build"
        build(load_profile(REPO / "profiles" / "default.toml"), build_dir,
              use_p4c=shutil.which("p4c-bm2-ss") is not None)
        for kind in kinds:
            for i, n in enumerate(ns):  # the same N may be given twice (--n 30000,30000: two runs)
                run_tmp = tmp / f"{kind}-{i}-{n}"
                run_tmp.mkdir()
                t = time.monotonic()
                try:
                    r = run_one(kind, n, build_dir, run_tmp, args.profile, args.concurrent)
                except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
                    r = {"switch": kind, "n": n, "error": str(exc)}
                    log = run_tmp / "controller.log"
                    if log.exists():
                        r["controller_log_tail"] = log.read_text()[-2000:]
                r["wall_s"] = round(time.monotonic() - t, 1)
                results.append(r)
                print_row(r)
                write(args.out, results, load0)  # after every run, so an interrupted series keeps what it has
    plot(results, args.out.with_suffix(".png"))
    print(f"load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; wrote {args.out}")
    return 0


def write(out: Path, results: list[dict[str, Any]], load0: tuple[float, float, float]) -> None:
    doc = {"results": results, "loadavg": {"before": load0, "after": os.getloadavg()}, "cpus": os.cpu_count()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")


HEADER = (f"{'switch':10} {'N':>6} {'hw/s':>7} {'to all hw':>9} {'adds/s':>7} {'expired':>7} {'stalls>1s':>9} {'left':>5} "
          f"{'cpu %':>6} {'B/flow':>7}")


def print_row(r: dict[str, Any]) -> None:
    if not getattr(print_row, "headed", False):
        print(HEADER)
        print_row.headed = True  # type: ignore[attr-defined]
    if "error" in r:
        print(f"{r['switch']:10} {r['n']:>6} error: {r['error']}")
        return
    t = r.get("time_to_all_hw_offload_s")
    print(f"{r['switch']:10} {r['n']:>6} {r.get('hw_offload_per_s') or '-':>7} {f'{t:.1f}s' if t else 'never':>9} "
          f"{r.get('hw_adds_per_s') or '-':>7} "
          f"{r.get('expired_while_active')!s:>7} {r.get('stalled_over_1s')!s:>9} "
          f"{r.get('entries_left_after_close')!s:>5} {r.get('controller_cpu_pct')!s:>6} "
          f"{r.get('rss_bytes_per_flow')!s:>7}")


if __name__ == "__main__":
    sys.exit(main())
