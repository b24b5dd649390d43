"""`offloadgen entries`: what the switch holds in its flow tables, read through the running controller and
joined to the flows that own each entry (an entry with no flow would be a reconciliation bug)."""

from __future__ import annotations

import argparse
from typing import Any

from ._status import add_options, ask, print_json


def register(sub: Any) -> None:
    p = sub.add_parser("entries", help="flow-table entries on the switch, with counters and owning flow")
    add_options(p)
    p.set_defaults(func=run)


def format_entry(e: dict[str, Any]) -> str:
    m = e["match"]
    params = " ".join(f"{k}={v}" for k, v in e["params"].items())
    owner = f"flow={e['flow']}/{e['dir']}" if e.get("flow") is not None else "flow=NONE"
    idle = f" idle_ms={e['since_last_hit_ms']}" if e.get("since_last_hit_ms") is not None else ""
    stmts = f" statements={e['statements']}" if e.get("statements") else ""
    return (f"{e['table']} in_port={m['in_port']} src={m['src_addr']} dst={m['dst_addr']} proto={m['proto']} "
            f"sport={m['src_port']} dport={m['dst_port']} -> {e['action']}({params}) packets={e['packets']} "
            f"bytes={e['bytes']} timeout_ms={e['idle_timeout_ns'] // 1_000_000}{idle} {owner}{stmts}")


def run(args: argparse.Namespace) -> int:
    entries = ask(args, "entries")
    if args.json:
        print_json(entries)
        return 0
    for e in entries:
        print(format_entry(e))
    print(f"offloadgen: {len(entries)} flow-table entries on the switch.")
    return 0
