"""`offloadgen ptf [--switch softswitch|bmv2] [--profile FILE] [TEST ...]`: the PTF packet tests, one command.

It builds the program, wires one veth pair per profile port (PTF's end and the switch's end), starts the
switch, and runs the real `ptf` runner on tests/ptf with the switch's address and the build in
--test-params. Everything it creates is removed when it ends, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from offloadgen.build import build
from offloadgen.cli import UserError
from offloadgen.netlab import Netlab
from offloadgen.profile import load_profile, resolve_profile
from offloadgen.switchproc import KINDS, SwitchProcess, SwitchSpec, find_bmv2, free_grpc_addr

PTF_DIR = Path(__file__).resolve().parent.parent.parent / "tests" / "ptf"


def register(sub: Any) -> None:
    p = sub.add_parser("ptf", help="run the PTF packet tests (tests/ptf) against softswitch or BMv2")
    p.add_argument("--switch", choices=KINDS, default="softswitch", help="switch to test (default: softswitch)")
    p.add_argument("--profile", default=None, help="target profile: a TOML file or a shipped name (default: default)")
    p.add_argument("--bmv2", default=None, help="simple_switch_grpc to use (default: the one on PATH)")
    p.add_argument("--p4c", default=None, help="p4c-bm2-ss to use (default: the one on PATH)")
    p.add_argument("--log-dir", default=None, help="keep ptf.log and the switch log here")
    p.add_argument("tests", nargs="*", help="test names (module or module.Class), default: all")
    p.set_defaults(func=run)


def ptf_binary() -> str:
    here = Path(sys.executable).parent / "ptf"
    found = str(here) if here.exists() else shutil.which("ptf")
    if not found:
        raise UserError("the ptf runner is not installed; run scripts/setup.sh (pip install ptf)")
    return found


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise UserError("needs root: it creates veth pairs and the switch opens raw sockets")
    if args.switch == "bmv2" and find_bmv2(args.bmv2) is None:
        raise UserError("simple_switch_grpc not found on PATH; install BMv2 (README, 'Running on BMv2') or use --switch softswitch")
    profile_path = resolve_profile(args.profile)
    profile = load_profile(profile_path)
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="offloadgen-ptf-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    build_dir = log_dir / "build"
    result = build(profile, build_dir, p4c=args.p4c, use_p4c=True)
    if args.switch == "bmv2" and result.bmv2_json is None:
        raise UserError("BMv2 needs the BMv2 JSON from p4c-bm2-ss, which is not on PATH")
    with Netlab() as lab:
        interfaces: list[str] = []
        ports: dict[int, str] = {}
        for port in profile.ports:
            ptf_end, sw_end = lab.veth(f"p{lab.tag}{port.number}", f"s{lab.tag}{port.number}", mtu=9000)
            interfaces += ["-i", f"{port.number}@{ptf_end}"]
            ports[port.number] = sw_end
        spec = SwitchSpec(kind=args.switch, ports=ports, grpc_addr=free_grpc_addr(), cpu_port=profile.cpu_port,
                          binary=args.bmv2, log_file=log_dir / f"{args.switch}.log")
        with SwitchProcess(spec) as switch:
            params = {
                "grpc_addr": switch.grpc_addr,
                "device_id": spec.device_id,
                "build_dir": str(build_dir),
                "target": args.switch,
                "profile": str(profile_path.resolve()),
            }
            argv = [ptf_binary(), "--test-dir", str(PTF_DIR), *interfaces,
                    "--log-file", str(log_dir / "ptf.log"), "--pypath", str(PTF_DIR),
                    "--test-params", ";".join(f"{k}={v!r}" for k, v in params.items()), *args.tests]
            print(f"offloadgen ptf: {args.switch} on {switch.grpc_addr}, logs in {log_dir}", flush=True)
            proc = subprocess.run(argv, check=False)
    return proc.returncode
