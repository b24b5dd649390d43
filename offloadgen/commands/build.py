"""`offloadgen build [--profile FILE] [--out DIR] [--p4c PATH | --no-p4c]`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from offloadgen.build import build, summary
from offloadgen.profile import load_profile, resolve_profile


def register(sub: Any) -> None:
    p = sub.add_parser("build", help="generate the P4 program (and BMv2 JSON + P4Info) for a target profile")
    p.add_argument("--profile", default=None, help="target profile: a TOML file or a shipped name (default: profiles/default.toml)")
    p.add_argument("--out", default="build", help="output directory (default: build/)")
    p.add_argument("--p4c", default=None, help="p4c-bm2-ss to use (default: the one on PATH, if any)")
    p.add_argument("--no-p4c", action="store_true", help="do not run p4c; derive P4Info with softswitch's front end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    profile = load_profile(resolve_profile(args.profile))
    result = build(profile, Path(args.out), p4c=args.p4c, use_p4c=not args.no_p4c)
    print(summary(result))
    return 0
