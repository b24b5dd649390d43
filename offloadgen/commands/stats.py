"""`offloadgen stats`: flowtable counters of the running controller, like /proc/net/stats/nf_flowtable."""

from __future__ import annotations

import argparse
from typing import Any

from runtime.flowtable.status import StatsRecord, format_stats

from ._status import add_options, ask, print_json

#: Controller counters worth a line of their own (the rest are in --json).
_PATHS = (("packet_in", "packets punted to the controller"), ("slowpath_packets", "handled by the slow path"),
          ("fastpath_packets", "forwarded by the software fast path"),
          ("hw_packets", "forwarded by the switch (read from its counters)"))


def register(sub: Any) -> None:
    p = sub.add_parser("stats", help="flowtable counters, offload queues, table-full rejections, table occupancy")
    add_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = ask(args, "stats")
    if args.json:
        print_json(data)
        return 0
    ft = dict(data["flowtable"])
    extra = {k: ft.pop(k) for k in ("hw_packets", "hw_bytes", "rebuilt", "reconciles", "policy", "named_counters",
                                    "switch_statements") if k in ft}
    print(format_stats(StatsRecord.from_dict(ft)))
    ctl = data.get("controller", {})
    print()
    for key, what in _PATHS:
        if key in ctl:
            print(f"{key:<18} {ctl[key]:>12}  {what}")
    print(f"{'reconciliations':<18} {extra.get('reconciles', 0):>12}  (flows rebuilt from switch entries: "
          f"{extra.get('rebuilt', 0)})")
    print(f"{'switch statements':<18} {','.join(extra.get('switch_statements') or []) or 'none':>12}  "
          "(policy statements the switch applies itself; flows with others stay in software)")
    named = extra.get("named_counters") or {}
    if named:
        print()
        print("named counters (every path: slow path, software fast path, switch)")
        for name, v in named.items():
            print(f"  counter {name:<14} packets {v['packets']:>10} bytes {v['bytes']:>12}")
    if "mastership" in data:
        print()
        print(format_mastership(data["mastership"]))
    return 0


def format_mastership(m: dict[str, Any]) -> str:
    """``mastership: primary`` or ``mastership: backup since <time> (primary election id X)``, then the counters:
    a backup writes nothing to the switch, so this is the first place to look when offload stopped."""
    if m["primary"]:
        head = "mastership: primary"
    else:
        head = f"mastership: backup since {m['since_utc']} (primary election id {m['primary_election_id']})"
    return f"{head}\n{'  lost':<18} {m['lost']:>12}\n{'  regained':<18} {m['regained']:>12}"
