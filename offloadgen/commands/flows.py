"""`offloadgen flows`: the flowtable of the running controller, the way `conntrack -L` lists connections."""

from __future__ import annotations

import argparse
from typing import Any

from runtime.conntrack import CtRecord, format_conntrack
from runtime.flowtable.status import FlowRecord, format_flows

from ._status import add_options, ask, print_json


def register(sub: Any) -> None:
    p = sub.add_parser("flows", help="list offloaded connections ([OFFLOAD] / [HW_OFFLOAD]) of the running controller")
    add_options(p)
    p.add_argument("--all", action="store_true", help="also list connections on the slow path (all of conntrack)")
    p.add_argument("--no-actions", action="store_true", help="leave out each direction's action list")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    flows = ask(args, "flows")
    conns = ask(args, "conntrack") if args.all else None
    if args.json:
        print_json({"flows": flows, "conntrack": conns} if args.all else flows)
        return 0
    print(format_flows([FlowRecord.from_dict(f) for f in flows], actions=not args.no_actions))
    if conns is not None:
        print()
        print(format_conntrack([CtRecord.from_dict(c) for c in conns]))
        print(f"conntrack: {len(conns)} connections.")
    return 0
