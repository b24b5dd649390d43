"""Shared by `offloadgen flows`, `stats` and `entries`: the status-socket option and the JSON switch."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from runtime.status import DEFAULT_SOCKET, query


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status-socket", default=DEFAULT_SOCKET,
                   help=f"the running controller's status socket (default {DEFAULT_SOCKET}; see `offloadgen run`)")
    p.add_argument("--json", action="store_true", help="print the controller's answer as JSON")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the controller's answer (default 10)")


def ask(args: argparse.Namespace, cmd: str) -> Any:
    return query(cmd, args.status_socket, timeout=args.timeout)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
