"""`offloadgen demo [--switch softswitch|bmv2] [--duration S | --quick] [--out DIR]`: offload, made visible.

Builds the program, starts a Mininet topology (LAN hosts and a WAN host around the switch) and the
controller, runs a slow-path TCP baseline, an offloaded TCP transfer, a UDP exchange and pings, and shows each
flow going from the slow path to [OFFLOAD] to [HW_OFFLOAD] and out of the flowtable, the packets per second
on each path and the throughput before and after offload. Writes report.json, timeline.png and the logs to
--out. The demo modules are imported only when the command runs: `offloadgen --help` must work without
Mininet, and a missing Mininet must be a one-line message, not an ImportError.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from offloadgen.cli import UserError
from offloadgen.switchproc import KINDS, SwitchKind, find_bmv2

REPO = Path(__file__).resolve().parent.parent.parent
QUICK_DURATION = 24.0


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="Mininet demo: flows going from the slow path to [HW_OFFLOAD], with a report and plot")
    p.add_argument("--switch", choices=(*KINDS, "auto"), default="auto",
                   help="switch to run; auto (the default): BMv2 when simple_switch_grpc and p4c-bm2-ss are on PATH, "
                        "else softswitch")
    p.add_argument("--profile", default=None, help="target profile: a TOML file or a shipped name (default: default)")
    p.add_argument("--config", default=str(REPO / "configs" / "router.toml"),
                   help="router config (default: configs/router.toml)")
    p.add_argument("--out", default="demo-out", help="report.json, timeline.png and logs go here (default: demo-out/)")
    p.add_argument("--hosts", type=int, default=3, help="LAN hosts, one per LAN port (default 3)")
    p.add_argument("--duration", type=float, default=65.0,
                   help="seconds of traffic and watching, from the first packet; it ends sooner once every flow "
                        "has left the flowtable (default 65: room for the 30 s UDP idle timeout after the traffic, plus the GC)")
    p.add_argument("--quick", action="store_true", help=f"a shorter run ({QUICK_DURATION:.0f} s), for tests")
    p.add_argument("--tls", action="store_true",
                   help="serve P4Runtime over mutual TLS: a throwaway CA and certificates in OUT/tls, the switch with "
                        "--grpc-server-ssl and client authentication, the controller with --tls-ca/--tls-cert/--tls-key")
    p.add_argument("--bmv2", default=None, help="simple_switch_grpc to use (default: the one on PATH)")
    p.add_argument("--p4c", default=None, help="p4c-bm2-ss to use (default: the one on PATH)")
    p.add_argument("--slowpath", choices=("offloadgen", "kernel"), default="offloadgen",
                   help="what forwards the punted packets: offloadgen's model (default) or the Linux kernel in a "
                        "router namespace")
    p.set_defaults(func=run)


def pick_switch(requested: str, bmv2: str | None, p4c: str | None) -> SwitchKind:
    """``auto``: the real BMv2 when it and p4c are installed (the README's first command then shows offload on
    BMv2), otherwise the embedded softswitch."""
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if find_bmv2(bmv2) is not None and shutil.which(p4c or "p4c-bm2-ss") is not None:
        return "bmv2"
    return "softswitch"


def run(args: argparse.Namespace) -> int:
    from offloadgen.demo.checks import check_prerequisites

    args.switch = pick_switch(args.switch, args.bmv2, args.p4c)
    print(f"offloadgen demo: switch {args.switch}"
          + (" (BMv2 and p4c found on PATH; --switch softswitch for the embedded one)" if args.switch == "bmv2" else ""),
          flush=True)
    check_prerequisites(args.switch, args.bmv2)
    duration = QUICK_DURATION if args.quick else args.duration
    if duration < 10:
        raise UserError("--duration must be at least 10 s (a baseline, an offloaded transfer and their end)")
    config = Path(args.config)
    if not config.exists():
        raise UserError(f"{config}: no such router config")
    from offloadgen.demo.run import Options, run_demo  # imports Mininet, present by now

    return run_demo(Options(switch=args.switch, profile=args.profile, config=config.resolve(),
                            out=Path(args.out).resolve(), hosts=args.hosts, duration=duration, bmv2=args.bmv2,
                            p4c=args.p4c, tls=args.tls, slowpath=args.slowpath))
