"""A router testbed in Mininet: N LAN hosts and a WAN host around one P4 switch, and the controller running.

    sudo .venv/bin/python mininet/topo.py [--switch softswitch|bmv2] [--hosts 3] [--cli]

It builds the program for the profile, starts the topology (addresses and routes from the router config),
starts `offloadgen run` against the switch, prints how to query the controller, and then either drops into
Mininet's CLI (--cli) or waits for Ctrl-C. Everything is removed on exit. A plain script, not a package
module: this folder has no __init__.py (a package named `mininet` would shadow Mininet).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without the venv's editable install
    sys.path.insert(0, str(REPO))

from mininet.cli import CLI  # noqa: E402
from mininet.log import setLogLevel  # noqa: E402

from offloadgen.build import build  # noqa: E402
from offloadgen.pki import shell_argv  # noqa: E402
from offloadgen.profile import load_profile, resolve_profile  # noqa: E402
from offloadgen.switchproc import KINDS, find_bmv2  # noqa: E402
from offloadgen.testbed import Testbed, TestbedError  # noqa: E402
from runtime.config import load_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--switch", choices=KINDS, default="softswitch", help="switch to run (default softswitch)")
    ap.add_argument("--profile", default=None, help="target profile: TOML file or shipped name (default: default)")
    ap.add_argument("--config", default=str(REPO / "configs" / "router.toml"), help="router config (TOML)")
    ap.add_argument("--hosts", type=int, default=3, help="LAN hosts, one per LAN port (default 3)")
    ap.add_argument("--slowpath", choices=("offloadgen", "kernel"), default="offloadgen",
                    help="the controller's slow path: offloadgen's model (default) or the Linux kernel")
    ap.add_argument("--cli", action="store_true", help="drop into Mininet's CLI instead of waiting for Ctrl-C")
    ap.add_argument("--bmv2", default=None, help="simple_switch_grpc to use (default: the one on PATH)")
    ap.add_argument("--grpc-addr", default=None, help="switch P4Runtime address (default: a free loopback port)")
    ap.add_argument("--out", default=None, help="build and logs here (default: a temporary directory, kept)")
    ap.add_argument("--tls", action="store_true",
                    help="serve P4Runtime over mutual TLS (a throwaway CA and certificates in OUT/tls)")
    args = ap.parse_args()

    if args.switch == "bmv2" and find_bmv2(args.bmv2) is None:
        print("topo.py: simple_switch_grpc not found on PATH; install BMv2 or use --switch softswitch", file=sys.stderr)
        return 2
    setLogLevel("info")
    out = Path(args.out or tempfile.mkdtemp(prefix="offloadgen-topo-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile(resolve_profile(args.profile))
    result = build(profile, out / "build", use_p4c=args.switch == "bmv2")
    if args.switch == "bmv2" and result.bmv2_json is None:
        print("topo.py: BMv2 needs p4c-bm2-ss on PATH to compile the program", file=sys.stderr)
        return 2
    config = load_config(args.config)
    sock_dir = Path(tempfile.mkdtemp(prefix="ogtopo-"))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    bed = Testbed(config, Path(args.config), out / "build", args.switch, profile.cpu_port, args.hosts, out,
                 sock_dir / "ctl.sock", bmv2=args.bmv2, grpc_addr=args.grpc_addr, tls=args.tls,
                 slowpath=args.slowpath)
    try:
        with bed:
            bed.start_network()
            bed.start_controller()
            print(f"\nswitch {args.switch} on {bed.grpc_addr}{' (mutual TLS)' if bed.pki else ''}; logs and build "
                  f"in {out}")
            for p in bed.plans:
                print(f"  {p.name:<4} port {p.port}  {p.mac}  {p.ipv4 or '-'} {p.ipv6 or ''}  gw {p.gw4 or '-'}")
            print(f"query the controller:  offloadgen flows --status-socket {bed.status_socket}")
            print(f"                       offloadgen stats --status-socket {bed.status_socket}")
            print(f"inspect the switch:    {' '.join(shell_argv(bed.grpc_addr, bed.pki))}")
            if args.cli:
                CLI(bed.net)
            else:
                for s in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(s, on_signal)
                print("running; Ctrl-C to stop")
                while not stop.wait(1.0):
                    if bed.controller is not None and bed.controller.poll() is not None:
                        print(f"the controller exited ({bed.controller.returncode}); see {bed.controller_log}")
                        return 1
    except TestbedError as exc:
        print(f"topo.py: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
