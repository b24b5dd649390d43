"""The demo from start to end: build, topology, controller, traffic, sampling, report, plot, clean-up.

Clean-up is the part that must never be skipped: host programs (mnexec detaches them from our terminal, so
no signal reaches them), the controller (its own session), the switch and the Mininet network are stopped in
that order in a `finally`, with SIGINT and SIGTERM ignored while it runs so that a second Ctrl-C cannot leave
half a network behind. SIGTERM is turned into KeyboardInterrupt so that it takes the same path as Ctrl-C.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from mininet.log import setLogLevel

from offloadgen.build import build
from offloadgen.cli import UserError
from offloadgen.demo import plot, report
from offloadgen.demo.track import FlowTrack, Tracker
from offloadgen.demo.traffic import (
    DSCP_CAPTURE,
    TCP_SINK,
    TCP_SOURCE,
    UDP_CLIENT,
    UDP_ECHO,
    Proc,
    Programs,
    Schedule,
)
from offloadgen.pki import shell_argv
from offloadgen.profile import load_profile, resolve_profile
from offloadgen.switchproc import SwitchKind
from offloadgen.testbed import Testbed, TestbedError
from runtime.config import load_config

SAMPLE_INTERVAL = 0.25
BASELINE_PORT, OFFLOAD_PORT, UDP_PORT = 5001, 5002, 5353


@dataclass
class Options:
    switch: SwitchKind
    profile: str | None
    config: Path
    out: Path
    hosts: int
    duration: float
    bmv2: str | None = None
    p4c: str | None = None
    tls: bool = False  # the switch serves mutual TLS; the controller uses a throwaway CA's certificates
    slowpath: str = "offloadgen"


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _progress(t: float, track: FlowTrack) -> None:
    print(f"  {t:5.1f}s {track.label:<44} {track.path()}", flush=True)


def run_demo(opts: Options) -> int:
    opts.out.mkdir(parents=True, exist_ok=True)
    setLogLevel("warning")
    profile = load_profile(resolve_profile(opts.profile))
    config = load_config(opts.config)
    print(f"offloadgen demo: building profile {profile.name!r} for {opts.switch} ...", flush=True)
    result = build(profile, opts.out / "build", p4c=opts.p4c, use_p4c=opts.switch == "bmv2")
    if opts.switch == "bmv2" and result.bmv2_json is None:
        raise UserError("BMv2 needs the program compiled by p4c-bm2-ss, which is not on PATH")
    sock_dir = Path(tempfile.mkdtemp(prefix="ogdemo-"))  # short: a Unix socket path is at most 107 bytes
    programs = Programs()
    bed = Testbed(config, opts.config, opts.out / "build", opts.switch, profile.cpu_port, opts.hosts, opts.out,
                  sock_dir / "ctl.sock", bmv2=opts.bmv2, tls=opts.tls, slowpath=opts.slowpath)
    old_term = signal.signal(signal.SIGTERM, _sigterm)
    try:
        bed.start_network()
        print(f"  topology: {', '.join(f'{p.name} {p.ipv4} (port {p.port})' for p in bed.plans)}; "
              f"{opts.switch} on {bed.grpc_addr}"
              + (f" over mutual TLS (CA and certificates in {bed.pki.directory})" if bed.pki else ""), flush=True)
        bed.start_controller()
        print(f"  controller running (log {bed.controller_log}); status socket {bed.status_socket}", flush=True)
        if bed.pki is not None:
            print(f"  inspect the switch: {' '.join(shell_argv(bed.grpc_addr, bed.pki))}", flush=True)
        return _run_traffic(opts, bed, programs)
    except TestbedError as exc:
        raise UserError(str(exc)) from None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            programs.stop_all()
            bed.stop()
            shutil.rmtree(sock_dir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, old_term)


def _run_traffic(opts: Options, bed: Testbed, programs: Programs) -> int:
    sched = Schedule.for_duration(opts.duration)
    wan = bed.host(bed.wan.name)
    wan_ip = bed.wan.ip4
    if wan_ip is None:
        raise UserError(f"{opts.config}: the WAN port has no IPv4 address; the demo's traffic is IPv4")
    lan = bed.lan
    base_host = bed.host(lan[0].name)
    off_host = bed.host(lan[1 % len(lan)].name)
    udp_host = bed.host(lan[2 % len(lan)].name)

    servers = [programs.python(wan, "sink-baseline", TCP_SINK, str(BASELINE_PORT)),
               programs.python(wan, "sink-offloaded", TCP_SINK, str(OFFLOAD_PORT)),
               programs.python(wan, "udp-echo", UDP_ECHO, str(UDP_PORT)),
               programs.python(wan, "dscp-capture", DSCP_CAPTURE)]
    for srv in servers:
        if not srv.wait_ready(10):
            raise UserError(f"{srv.name} did not start on the WAN host: {' '.join(srv.text)} {srv.stderr_text()}")

    t0 = time.monotonic()
    tracker = Tracker(bed.status_socket, bed.switch_rx_packets, t0, _progress)
    started: dict[str, Proc] = {}
    plan: list[tuple[float, str, Any, list[str]]] = [
        (sched.baseline_start, "tcp-baseline", base_host,
         [sys.executable, "-u", "-c", TCP_SOURCE, wan_ip, str(BASELINE_PORT), str(sched.baseline_len)]),
        (sched.offload_start, "tcp-offloaded", off_host,
         [sys.executable, "-u", "-c", TCP_SOURCE, wan_ip, str(OFFLOAD_PORT), str(sched.offload_len)]),
        (sched.offload_start, "udp", udp_host,
         [sys.executable, "-u", "-c", UDP_CLIENT, wan_ip, str(UDP_PORT), str(sched.offload_len), str(sched.udp_pps)]),
    ]
    ping_secs = max(1, int(sched.traffic_end - sched.baseline_start))
    for lan_host in lan:
        plan.append((sched.baseline_start, f"ping-{lan_host.name}", bed.host(lan_host.name),
                     ["ping", "-q", "-i", str(sched.ping_interval), "-w", str(ping_secs), wan_ip]))
    print(f"  traffic: slow-path baseline tcp :{BASELINE_PORT} {sched.baseline_start:.1f}-"
          f"{sched.baseline_start + sched.baseline_len:.1f}s, offloaded tcp :{OFFLOAD_PORT} and udp :{UDP_PORT} "
          f"{sched.offload_start:.1f}-{sched.traffic_end:.1f}s, pings throughout; watching until {opts.duration:.0f}s",
          flush=True)

    tracker.sample()
    next_sample = time.monotonic() + SAMPLE_INTERVAL
    controller_died = False
    while True:
        now = tracker.now()
        for when, name, host, argv in plan:
            if name not in started and now >= when:
                started[name] = programs.start(host, name, argv)
        if bed.controller is not None and bed.controller.poll() is not None:
            controller_died = True
            print(f"  the controller exited ({bed.controller.returncode}); last lines of {bed.controller_log}:\n"
                  f"{bed.controller_log_tail()}", flush=True)
            break
        traffic_done = len(started) == len(plan) and all(p.popen.poll() is not None for p in started.values())
        flows_gone = all(t.state not in ("offloaded", "hw_offloaded", "closing", "teardown", "dying")
                         for t in tracker.tracks.values())
        if now >= opts.duration or (traffic_done and flows_gone and now >= sched.traffic_end + 1.0):
            break
        time.sleep(max(0.0, next_sample - time.monotonic()))
        next_sample += SAMPLE_INTERVAL
        tracker.sample()
    tracker.finish()

    for proc in started.values():
        proc.wait(5)
    capture = servers[3]
    capture.stop()  # SIGTERM: it prints what it saw
    named = _named_counters(bed.status_socket)
    sinks = {"baseline": servers[0], "offloaded": servers[1]}
    sources = {"baseline": started.get("tcp-baseline"), "offloaded": started.get("tcp-offloaded")}
    transfers = []
    for name, sink in sinks.items():
        series = [(round(x["t"] - t0, 3), int(x["bytes"])) for x in sink.lines if "t" in x and "bytes" in x]
        src = sources[name]
        sport = src.first("sport") if src else None
        track = report.find_track(tracker, "tcp", BASELINE_PORT if name == "baseline" else OFFLOAD_PORT)
        if sport is not None:
            track = report.find_track(tracker, "tcp", BASELINE_PORT if name == "baseline" else OFFLOAD_PORT,
                                      sport=sport) or track
        transfers.append(report.transfer(name, series, track, src.done() if src else None))
    udp = started.get("udp")
    pings = {name.removeprefix("ping-"): _ping_summary(p) for name, p in started.items() if name.startswith("ping-")}
    traffic = {"udp": udp.done() if udp else None, "ping": pings,
               "schedule": {"baseline": [sched.baseline_start, sched.baseline_len],
                            "offloaded_and_udp": [sched.offload_start, sched.offload_len],
                            "udp_pps": sched.udp_pps, "ping_interval_s": sched.ping_interval}}
    switch_log = bed.switch_process.log_path if bed.switch_process else None
    meta = {"switch": opts.switch, "slowpath": opts.slowpath, "profile": profile_name(opts), "config": str(opts.config),
            "duration_s": opts.duration, "sample_interval_s": SAMPLE_INTERVAL, "grpc_addr": bed.grpc_addr,
            "hosts": [vars(p) for p in bed.plans], "controller_log": str(bed.controller_log),
            "switch_log": str(switch_log) if switch_log else None}
    rep = report.build_report(meta, tracker, transfers, traffic, capture.done(), named)
    report.write_report(rep, opts.out / "report.json")
    plot.draw(rep, opts.out / "timeline.png")
    print(report.summary_table(rep))
    print(f"\nreport {opts.out / 'report.json'}, timeline {opts.out / 'timeline.png'}, logs in {opts.out}")
    problems = _problems(rep, controller_died)
    for problem in problems:
        print(f"offloadgen demo: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _named_counters(sock: Path) -> dict[str, Any]:
    from runtime.status import StatusError, query

    try:
        return dict(query("stats", sock)["flowtable"].get("named_counters") or {})
    except (StatusError, OSError, KeyError):
        return {}


def profile_name(opts: Options) -> str:
    return str(resolve_profile(opts.profile))


def _ping_summary(p: Proc) -> str:
    lines = [x for x in p.text if "packets transmitted" in x]
    return lines[0] if lines else f"no summary (exit {p.popen.returncode})"


def _problems(rep: dict[str, Any], controller_died: bool) -> list[str]:
    """What makes this run a failed demonstration; each is said in one line."""
    out = []
    if controller_died:
        out.append("the controller exited during the run; see controller.log")
    s = rep["summary"]
    if not s["tcp_hw_offloaded"]:
        out.append("no TCP flow reached [HW_OFFLOAD]; see controller.log")
    if not s["udp_hw_offloaded"]:
        out.append("the UDP flow never reached [HW_OFFLOAD]; see controller.log")
    for x in rep["throughput"]:
        sent = x.get("sender") or {}
        if not x["bytes"] or not sent.get("done"):
            out.append(f"the {x['name']} TCP transfer did not complete")
    udp = rep["traffic"].get("udp") or {}
    if not udp.get("received"):
        out.append("the UDP exchange got no replies")
    out += report.unmarked(rep)
    return out
