"""The `offloadgen` command. Each subcommand lives in offloadgen/commands/<name>.py with `register()`.

Errors a user can cause (bad profile, p4c rejecting the program, an unreachable switch) end with a clear
message and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Subcommand modules, in the order `offloadgen --help` lists them.
COMMANDS = ("build", "run", "flows", "stats", "entries", "demo", "ptf")


class UserError(Exception):
    """An error whose message is the whole story for the user."""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offloadgen",
        description="P4 hardware flow-offload target generator and testbed (the nf_flow_table model on a P4 switch)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"offloadgen.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"offloadgen.commands.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # user-facing errors carry their own explanation
        if _is_user_error(exc):
            print(f"offloadgen {args.command}: {exc}", file=sys.stderr)
            return 2
        raise


def _is_user_error(exc: Exception) -> bool:
    names = {"UserError", "ProfileError", "P4cError", "P4FrontendError", "ConfigError", "P4RuntimeError",
             "SwitchStartError", "StatusError", "TlsError", "PkiError"}
    return any(cls.__name__ in names for cls in type(exc).__mro__)


if __name__ == "__main__":
    sys.exit(main())
